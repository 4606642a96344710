"""
FTP throughput through the proxy as a ratio of direct: curl RETRs and STORs a file straight
from a Twisted FTP server, then through the FTP proxy, and prints MiB/s and the ratios.

    python benchmarks/ftp_bench.py [--size-mib 512] [--rounds 3]

The backend (L{tests.ftpproc}, which generates downloads and discards uploads, so no disk is
involved) and the client run on CPU 1, the proxy alone on CPU 0 (C{taskset}), so that the
proxy's cost is not hidden by, or charged to, the processes around it.  Each figure is the
median of the rounds; each transfer's time is curl's, login included.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
CURL = "curl -q --silent --show-error --noproxy '*' --max-time 600"


@contextmanager
def child(cpu: int, arguments: Sequence[str]) -> Iterator[int]:
    """Run C{python -m tests.ftpproc arguments} pinned to C{cpu}; yield its port."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    argv = ["taskset", "--cpu-list", str(cpu), sys.executable, "-m", "tests.ftpproc"]
    process = subprocess.Popen(
        [*argv, *arguments], stdout=subprocess.PIPE, env=env, cwd=REPO, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("LISTENING "):
            raise SystemExit(f"{arguments[0]} did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(10)


def transfer(cpu: int, port: int, direction: str, size: int) -> float:
    """RETR or STOR C{size} bytes with curl on C{cpu}; MiB/s."""
    if direction == "RETR":
        command = (
            f"{CURL} --output /dev/null --write-out '%{{size_download}} %{{time_total}}' "
            f"ftp://127.0.0.1:{port}/big"
        )
    else:
        command = (
            f"head -c {size} /dev/zero | {CURL} --upload-file - "
            f"--write-out '%{{size_upload}} %{{time_total}}' ftp://127.0.0.1:{port}/upload"
        )
    out = subprocess.run(
        ["taskset", "--cpu-list", str(cpu), "sh", "-c", command],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    moved, seconds = out.split()
    if int(moved) != size:
        raise SystemExit(f"{direction} via port {port} moved {moved} bytes, not {size}")
    return size / MiB / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    size = options.size_mib * MiB
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: the proxy on CPU 0, backend and client on CPU 1")
    results: dict[tuple[str, str], float] = {}
    with child(1, ["backend", str(size)]) as backend, child(0, ["proxy", str(backend)]) as proxy:
        for direction in ("RETR", "STOR"):
            for target, port in (("direct", backend), ("proxy", proxy)):
                rates = [transfer(1, port, direction, size) for _ in range(options.rounds)]
                results[direction, target] = statistics.median(rates)
                shown = " ".join(f"{rate:.0f}" for rate in rates)
                print(f"{direction} {target:6} {shown} MiB/s", file=sys.stderr)
    print(f"FTP, {options.size_mib} MiB, median of {options.rounds} (MiB/s)")
    print(f"{'':6} {'direct':>9} {'proxy':>9} {'ratio':>7}")
    for direction in ("RETR", "STOR"):
        direct, proxied = results[direction, "direct"], results[direction, "proxy"]
        print(f"{direction:6} {direct:9.0f} {proxied:9.0f} {proxied / direct:7.2f}")
    print(f"(command: {shlex.join(sys.argv)})")


if __name__ == "__main__":
    main()
