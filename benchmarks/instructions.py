"""
Instructions per proxied request, for twisted_rp and its Twisted peers, counted by valgrind.

Each proxy runs as its own process under C{valgrind --tool=callgrind} in front of a small
keep-alive backend, and a client sends the same 101-byte-response requests through it on 10
connections.  The count for C{N} requests minus the count for none (start-up and shutdown) is
the work the proxy's process does per request in user space: its Python, Twisted's reactor
and the C library, but not the kernel's side of its system calls.

    python benchmarks/instructions.py                   # all peers, 2,000 requests each
    python benchmarks/instructions.py --only twisted_rp,twisted-l4 --requests 4000

Wall-clock figures on a shared machine move by 15-30 % from run to run; these do not, so they
tell two versions of the code (or two peers) apart where C{benchmarks/run.sh} cannot.  The
ratio of instructions is not the ratio of requests per second: system calls (about a third
of a proxied request's time here) are left out, and peers make different numbers of them
(twisted-l4 writes through Twisted's buffered path, which polls for every write).

Run from the repository; C{../shared/bench} holds the peers.  Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = REPO.parent / "shared" / "bench" / "proxies"

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
BODY = b"x" * 101
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 00:42:56 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 101\r\nConnection: keep-alive\r\n\r\n" + BODY
)
CONNECTIONS = 10

BACKEND = f"""
import sys
from twisted.internet import protocol, reactor
RESPONSE = {RESPONSE!r}
class Answer(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(RESPONSE * data.count(b"\\r\\n\\r\\n"))
factory = protocol.Factory.forProtocol(Answer)
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
reactor.run()
"""


def peers(python: str) -> dict[str, list[str]]:
    """The command of each peer, with C{{port}} and C{{backend_port}} to fill in."""
    twistd = str(Path(python).with_name("twistd"))
    return {
        "twisted_rp": [
            twistd, "-n", "--pidfile=", "reverseproxy",
            "--listen", "tcp:{port}:interface=127.0.0.1",
            "--backend", "127.0.0.1:{backend_port}",
        ],
        "skeleton": [
            python, str(HERE / "skeleton.py"), "{port}", "127.0.0.1", "{backend_port}",
        ],
        "twisted-l4": [
            python, str(PEERS / "twisted_l4.py"), "{port}", "127.0.0.1", "{backend_port}",
        ],
        "twisted": [
            python, str(PEERS / "twisted_revproxy.py"), "--client-keepalive",
            "{port}", "127.0.0.1", "{backend_port}",
        ],
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


def send(port: int, count: int) -> None:
    """C{count} requests on C{CONNECTIONS} keep-alive connections, each answered in full."""
    connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        for _ in range(0, count, CONNECTIONS):
            for connection in connections:
                connection.sendall(REQUEST)
            for connection in connections:
                received = b""
                while not received.endswith(BODY):
                    data = connection.recv(65536)
                    if not data:
                        raise RuntimeError("the proxy closed the connection")
                    received += data
                if b" 200 " not in received[:16]:
                    raise RuntimeError(f"unexpected answer: {received[:80]!r}")
    finally:
        for connection in connections:
            connection.close()


def instructions(
    command: list[str], count: int, backend_port: int, workdir: str, env: dict[str, str]
) -> int:
    """Instructions the proxy process runs in all, sending it C{count} requests."""
    port = free_port()
    out = os.path.join(workdir, f"callgrind.{port}")
    argv = [part.format(port=port, backend_port=backend_port) for part in command]
    with open(out + ".log", "wb") as log:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        try:
            wait_for(port, process, 120)
            if count:
                send(port, count)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
    with open(out + ".log") as log:
        match = re.search(r"Collected : (\d+)", log.read())
    if match is None:
        raise RuntimeError(f"no count from valgrind for {argv}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per peer")
    parser.add_argument(
        "--only", default="twisted_rp,skeleton,twisted-l4,twisted", help="peers, comma-separated"
    )
    parser.add_argument("--python", default=sys.executable, help="the peers' interpreter")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    commands = peers(options.python)
    names = options.only.split(",")
    unknown = set(names) - set(commands)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    count = max(CONNECTIONS, options.requests - options.requests % CONNECTIONS)
    # A fixed hash seed: string hashes decide dictionary probes, which move the count.
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as workdir:
        backend_port = free_port()
        script = os.path.join(workdir, "backend.py")
        Path(script).write_text(BACKEND)
        backend = subprocess.Popen([options.python, script, str(backend_port)], env=env)
        try:
            wait_for(backend_port, backend, 30)
            per_request = {}
            for name in names:
                start = instructions(commands[name], 0, backend_port, workdir, env)
                total = instructions(commands[name], count, backend_port, workdir, env)
                per_request[name] = (total - start) / count
                print(f"{name:12} {per_request[name]:10,.0f} instructions per request", flush=True)
        finally:
            backend.terminate()
            backend.wait()
    for base in ("twisted-l4", "twisted"):
        if base in per_request and "twisted_rp" in per_request:
            ratio = per_request["twisted_rp"] / per_request[base]
            print(f"twisted_rp / {base}: {ratio:.2f}x the instructions")


if __name__ == "__main__":
    main()
