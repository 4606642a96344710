"""
Real FTP clients (curl, lftp) and hostile raw clients through an in-process L{FTPProxyFactory}
to in-process Twisted FTP servers, over real sockets on the loopback network.

The security tests use 127.0.0.2 as "another address": Linux routes all of 127.0.0.0/8 to the
loopback interface, so a socket bound there is a second host as far as the proxy can tell.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from tests.ftpproc import USERS, FTPTestServer
from tests.servers import CurlResult, run_curl
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.pool.sticky import UserStickiness

T = TypeVar("T")

#: Socket timeout of the raw clients: a hung test fails rather than blocks.
CLIENT_TIMEOUT = 15
DATA = os.urandom(2 * 1024 * 1024 + 17)
LFTP = shutil.which("lftp")
OTHER_ADDRESS = "127.0.0.2"


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class RawControl:
    """A blocking FTP control connection that sends exactly what it is told."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.file = self.socket.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        """The next reply, all of its lines."""
        lines = [self.file.readline().decode("utf-8", "replace")]
        if lines[0][3:4] == "-":
            end = lines[0][:3] + " "
            while not lines[-1].startswith(end):
                line = self.file.readline()
                if not line:
                    break
                lines.append(line.decode("utf-8", "replace"))
        return "".join(lines)

    def command(self, line: str) -> str:
        """Send C{line}; its (first) reply."""
        self.socket.sendall(line.encode() + b"\r\n")
        return self.reply()

    def login(self, user: str = "alice") -> None:
        assert self.command(f"USER {user}").startswith("331")
        reply = self.command(f"PASS {USERS[user]}")
        assert reply.startswith("230"), reply

    def close(self) -> None:
        self.file.close()
        self.socket.close()


def _passive_port(reply: str) -> int:
    numbers = reply[reply.index("(") + 1 : reply.index(")")].split(",")
    return int(numbers[4]) * 256 + int(numbers[5])


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class _ProxyTestCase(TestCase):
    """Two Twisted FTP servers behind an in-process proxy with per-user stickiness."""

    timeout = 120

    def setUp(self) -> None:
        self.reactor: Any = global_reactor
        self.addCleanup(self.sessions_closed)
        self.backends: list[FTPTestServer] = []
        for name in ("one", "two"):
            backend = FTPTestServer(name)
            backend.start(self.reactor)
            self.addCleanup(backend.stop)
            _write(os.path.join(backend.root, "data.bin"), DATA)
            _write(os.path.join(backend.root, "tree", "a.txt"), b"alpha\n")
            _write(os.path.join(backend.root, "tree", "sub", "b.bin"), DATA[:100_000])
            self.backends.append(backend)
        self.pool = BackendPool(
            "ftp",
            [Backend(b.name, "127.0.0.1", b.port) for b in self.backends],
            clock=self.reactor,
            stickiness=UserStickiness(clock=self.reactor),
        )
        self.factory = FTPProxyFactory(self.reactor, self.pool, banner="proxy ready")
        self.proxy_port = self.listen(self.factory)
        self.local = tempfile.mkdtemp(prefix="ftp-client-")
        self.addCleanup(shutil.rmtree, self.local, True)

    def listen(self, factory: FTPProxyFactory) -> int:
        listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port: int = listening.getHost().port
        return port

    async def sessions_closed(self) -> None:
        """Wait for the proxy to see every client go, and the backends to see it go."""
        for _ in range(250):
            if not self.factory.sessions:
                break
            await deferLater(self.reactor, 0.02)
        await deferLater(self.reactor, 0.05)

    def in_thread(self, work: Callable[[], T]) -> Deferred[T]:
        return deferToThread(work)

    def url(self, path: str = "", user: str = "alice") -> str:
        return f"ftp://{user}:{USERS[user]}@127.0.0.1:{self.proxy_port}/{path}"

    async def curl(self, *args: str) -> CurlResult:
        """Run curl verbosely (the protocol on stderr), checking that it succeeded."""
        result = await run_curl(self.reactor, "--verbose", *args)
        self.assertEqual(result.code, 0, result.err.decode("utf-8", "replace"))
        return result

    def backend_named(self, name: str) -> FTPTestServer:
        return next(b for b in self.backends if b.name == name)

    async def whoami(self, user: str) -> str:
        return (await self.curl(self.url("whoami.txt", user))).out.decode()


class CurlTests(_ProxyTestCase):
    """curl in each data-connection mode, listing, uploading and resuming."""

    def commands(self, result: CurlResult) -> list[str]:
        """The verbs curl sent, from its verbose output."""
        return [
            line[2:].split(" ")[0].strip()
            for line in result.err.decode("utf-8", "replace").splitlines()
            if line.startswith("> ")
        ]

    async def round_trip(self, *mode: str) -> list[str]:
        """Upload a file and download it again in C{mode}; the verbs curl used."""
        local = os.path.join(self.local, "up.bin")
        _write(local, DATA[::-1])
        upload = await self.curl(*mode, "--upload-file", local, self.url("up.bin"))
        fetched = os.path.join(self.local, "fetched.bin")
        download = await self.curl(*mode, "--output", fetched, self.url("up.bin"))
        self.assertEqual(_read(fetched), DATA[::-1])
        stored = [os.path.join(b.root, "up.bin") for b in self.backends]
        self.assertEqual([_read(p) for p in stored if os.path.exists(p)], [DATA[::-1]])
        return self.commands(upload) + self.commands(download)

    async def test_epsv(self) -> None:
        """curl's default, EPSV, for STOR and RETR."""
        commands = await self.round_trip()
        self.assertEqual(commands.count("EPSV"), 2)
        self.assertNotIn("PASV", commands)

    async def test_pasv(self) -> None:
        """curl --disable-epsv: PASV for STOR and RETR."""
        commands = await self.round_trip("--disable-epsv")
        self.assertEqual(commands.count("PASV"), 2)
        self.assertNotIn("EPSV", commands)

    async def test_eprt(self) -> None:
        """curl --ftp-port: EPRT (active) for STOR and RETR."""
        commands = await self.round_trip("--ftp-port", "127.0.0.1")
        self.assertEqual(commands.count("EPRT"), 2)
        self.assertNotIn("PORT", commands)

    async def test_port(self) -> None:
        """curl --ftp-port --disable-eprt: PORT (active) for STOR and RETR."""
        commands = await self.round_trip("--ftp-port", "127.0.0.1", "--disable-eprt")
        self.assertEqual(commands.count("PORT"), 2)
        self.assertNotIn("EPRT", commands)

    async def test_list(self) -> None:
        """A URL ending in / lists the directory (LIST)."""
        result = await self.curl(self.url(""))
        names = {line.split()[-1] for line in result.out.decode().splitlines()}
        self.assertEqual(names, {"data.bin", "tree", "whoami.txt"})
        self.assertIn("LIST", self.commands(result))

    async def test_resume(self) -> None:
        """curl -C - on a partial download resumes it with REST, byte for byte."""
        have = 1_234_567
        local = os.path.join(self.local, "partial.bin")
        _write(local, DATA[:have])
        result = await self.curl("--continue-at", "-", "--output", local, self.url("data.bin"))
        self.assertIn(f"> REST {have}", result.err.decode())
        self.assertEqual(_read(local), DATA)


class LftpTests(_ProxyTestCase):
    """lftp mirrors a tree down and up, and lists, in passive and active mode."""

    def setUp(self) -> None:
        if LFTP is None:
            if os.environ.get("CI"):
                # .ci/run installs lftp: missing there, it is a broken CI, not a skip.
                self.fail("lftp is not installed in CI: .ci/run must install it")
            self.skipTest("lftp is not installed (apt-get install lftp)")
        super().setUp()

    async def lftp(self, *commands: str) -> tuple[bytes, str]:
        """Run lftp's C{commands} on a session with alice; its output and its debug log."""
        settings = [
            "debug 5",
            "set ftp:ssl-allow no",
            "set net:max-retries 1",
            "set net:timeout 10",
            "set cmd:fail-exit yes",
            f"open -u alice,{USERS['alice']} -p {self.proxy_port} 127.0.0.1",
        ]
        assert LFTP is not None
        d = getProcessOutputAndValue(
            LFTP,
            ["-c", "; ".join([*settings, *commands])],
            env={"HOME": self.local, "PATH": "/usr/bin:/bin"},
            path=self.local,
            reactor=self.reactor,
        )
        out, err, code = await d.addTimeout(90, self.reactor)
        log = err.decode("utf-8", "replace")
        self.assertEqual(code, 0, log)
        return out, log

    async def mirror_both_ways(self, passive: str) -> str:
        """Mirror C{tree} down and back up as C{tree-up}; lftp's debug log."""
        out, log = await self.lftp(
            f"set ftp:passive-mode {passive}",
            "cls -1 /",
            "mirror tree down",
            "mirror -R down tree-up",
            "cls -1 /tree-up/sub",
        )
        self.assertEqual(
            out.decode().split(),
            ["/data.bin", "/tree/", "/whoami.txt", "/tree-up/sub/b.bin"],
        )
        self.assertEqual(_read(os.path.join(self.local, "down", "a.txt")), b"alpha\n")
        self.assertEqual(_read(os.path.join(self.local, "down", "sub", "b.bin")), DATA[:100_000])
        [backend] = [b for b in self.backends if os.path.exists(os.path.join(b.root, "tree-up"))]
        self.assertEqual(_read(os.path.join(backend.root, "tree-up", "a.txt")), b"alpha\n")
        self.assertEqual(
            _read(os.path.join(backend.root, "tree-up", "sub", "b.bin")), DATA[:100_000]
        )
        return log

    async def test_mirror_passive(self) -> None:
        log = await self.mirror_both_ways("on")
        self.assertIn("---> PASV", log)
        self.assertNotIn("---> PORT", log)

    async def test_mirror_active(self) -> None:
        log = await self.mirror_both_ways("off")
        self.assertIn("---> PORT", log)
        self.assertNotIn("---> PASV", log)


class SecurityTests(_ProxyTestCase):
    """FTP bounce, data-port theft and a backend pointing elsewhere are all refused."""

    async def test_port_to_third_address_refused(self) -> None:
        """PORT or EPRT naming another address gets 5xx, and nothing connects there."""

        def session() -> tuple[str, str, str, bool]:
            with socket.create_server((OTHER_ADDRESS, 0)) as victim:
                port = victim.getsockname()[1]
                control = RawControl(self.proxy_port)
                try:
                    control.login()
                    port_reply = control.command(f"PORT 127,0,0,2,{port >> 8},{port & 255}")
                    eprt_reply = control.command(f"EPRT |1|{OTHER_ADDRESS}|{port}|")
                    retr_reply = control.command("RETR data.bin")
                    control.command("QUIT")
                finally:
                    control.close()
                victim.settimeout(0.5)
                try:
                    victim.accept()[0].close()
                except TimeoutError:
                    contacted = False
                else:
                    contacted = True
            return port_reply, eprt_reply, retr_reply, contacted

        port_reply, eprt_reply, retr_reply, contacted = await self.in_thread(session)
        self.assertEqual(port_reply[:1], "5", port_reply)
        self.assertEqual(eprt_reply[:1], "5", eprt_reply)
        self.assertRegex(retr_reply, r"^[45]\d\d ")
        self.assertFalse(contacted)

    async def test_passive_port_refuses_other_address(self) -> None:
        """
        A connection to a passive port from another address is closed without a byte, while
        the file waits; the client's own connection then gets it all.
        """

        def session() -> tuple[bytes, bytes, str, str]:
            control = RawControl(self.proxy_port)
            try:
                control.login()
                control.command("TYPE I")
                port = _passive_port(control.command("PASV"))
                started = control.command("RETR data.bin")
                intruder = socket.create_connection(
                    ("127.0.0.1", port), timeout=CLIENT_TIMEOUT, source_address=(OTHER_ADDRESS, 0)
                )
                with intruder:
                    try:
                        stolen = _read_all(intruder)
                    except ConnectionResetError:
                        stolen = b""
                with socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as data:
                    received = _read_all(data)
                return stolen, received, started, control.reply()
            finally:
                control.close()

        stolen, received, started, finished = await self.in_thread(session)
        self.assertEqual(started[:1], "1", started)
        self.assertEqual(stolen, b"")
        self.assertEqual(received, DATA)
        self.assertEqual(finished[:3], "226", finished)

    async def test_backend_227_foreign_address_not_followed(self) -> None:
        """
        A backend's 227 naming 10.1.2.3 is not followed: the proxy connects to the port at
        the backend's control address, and the transfer works.
        """
        fake = _ForeignPassiveBackend(self.reactor, b"from the fake backend")
        self.addCleanup(fake.stop)
        fake_port = self.listen_fake(fake)
        for mode in ("epsv", "pasv"):
            factory = FTPProxyFactory(
                self.reactor,
                BackendPool("fake", [Backend("fake", "127.0.0.1", fake_port)], clock=self.reactor),
                backend_passive=mode,
            )
            port = self.listen(factory)

            def session(port: int = port) -> bytes:
                control = RawControl(port)
                try:
                    control.login()
                    data_port = _passive_port(control.command("PASV"))
                    assert control.command("RETR file")[:1] == "1"
                    with socket.create_connection(("127.0.0.1", data_port), CLIENT_TIMEOUT) as data:
                        received = _read_all(data)
                    finished = control.reply()
                    assert finished.startswith("226"), finished
                    control.command("QUIT")
                    return received
                finally:
                    control.close()

            self.assertEqual(await self.in_thread(session), b"from the fake backend")
        self.assertEqual(fake.data_peers, ["127.0.0.1", "127.0.0.1"])
        self.assertEqual(fake.commands.count("PASV"), 2)

    def listen_fake(self, fake: _ForeignPassiveBackend) -> int:
        listening = self.reactor.listenTCP(0, fake, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port: int = listening.getHost().port
        return port


class BalancingTests(_ProxyTestCase):
    """Per-user stickiness over two backends, and failing over when one is gone."""

    async def test_sticky_per_user(self) -> None:
        """Each user keeps landing on the backend of its first session."""
        seen: dict[str, list[str]] = {"alice": [], "bob": []}
        for _ in range(3):
            for user in ("alice", "bob"):
                seen[user].append(await self.whoami(user))
        self.assertEqual(len(set(seen["alice"])), 1, seen)
        self.assertEqual(len(set(seen["bob"])), 1, seen)
        self.assertNotEqual(seen["alice"][0], seen["bob"][0])

    async def test_backend_killed_between_sessions(self) -> None:
        """With its backend gone, a user's next session lands on the other one, and stays."""
        first = await self.whoami("alice")
        await self.backend_named(first).stop_listening()
        second = await self.whoami("alice")
        third = await self.whoami("alice")
        self.assertEqual({first, second}, {"one", "two"})
        self.assertEqual(third, second)


class _ForeignPassiveControl(LineReceiver):
    """A backend control session that answers PASV with 10.1.2.3 and a local port."""

    delimiter = b"\r\n"
    transport: Any
    factory: _ForeignPassiveBackend

    def connectionMade(self) -> None:
        self.sendLine(b"220 fake backend")

    def lineReceived(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].decode().upper()
        self.factory.commands.append(verb)
        answers = {"USER": b"331 password", "PASS": b"230 ok", "TYPE": b"200 ok"}
        if verb in answers:
            self.sendLine(answers[verb])
        elif verb == "PASV":
            port = self.factory.open_data_port()
            self.sendLine(b"227 Entering Passive Mode (10,1,2,3,%d,%d)" % (port >> 8, port & 255))
        elif verb == "RETR":
            self.sendLine(b"150 here it comes")
            self.factory.send_file(lambda: self.sendLine(b"226 done"))
        elif verb == "QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 not here")


class _DataConnection(Protocol):
    transport: Any
    factory: _ForeignPassiveBackend

    def connectionMade(self) -> None:
        self.factory.data_connected(self)


class _ForeignPassiveBackend(Factory):
    """
    A fake FTP server whose 227 names 10.1.2.3 while it listens on 127.0.0.1.

    @ivar data_peers: the addresses data connections came from.
    """

    protocol = _ForeignPassiveControl  # type: ignore[assignment]

    def __init__(self, reactor: Any, payload: bytes) -> None:
        self.reactor = reactor
        self.payload = payload
        self.commands: list[str] = []
        self.data_peers: list[str] = []
        self._data_ports: list[IListeningPort] = []
        self._connection: _DataConnection | None = None
        self._waiting: Callable[[], None] | None = None

    def open_data_port(self) -> int:
        port = self.reactor.listenTCP(0, _DataFactory(self), interface="127.0.0.1")
        self._data_ports.append(port)
        number: int = port.getHost().port
        return number

    def data_connected(self, connection: _DataConnection) -> None:
        self.data_peers.append(connection.transport.getPeer().host)
        self._connection = connection
        self._maybe_send()

    def send_file(self, done: Callable[[], None]) -> None:
        self._waiting = done
        self._maybe_send()

    def _maybe_send(self) -> None:
        connection, done = self._connection, self._waiting
        if connection is None or done is None:
            return
        self._connection = self._waiting = None
        connection.transport.write(self.payload)
        connection.transport.loseConnection()
        done()

    async def stop(self) -> None:
        ports, self._data_ports = self._data_ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping


class _DataFactory(Factory):
    def __init__(self, backend: _ForeignPassiveBackend) -> None:
        self.backend = backend

    def buildProtocol(self, addr: Any) -> Protocol:
        connection = _DataConnection()
        connection.factory = self.backend
        return connection
