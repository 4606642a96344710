"""
Loopback integration tests of L{twisted_rp.ftp} against pyftpdlib: Python's C{ftplib} (in a
thread) through an in-process proxy to a pyftpdlib server (in another thread) serving real
files from a temporary directory.  pyftpdlib implements what Twisted's FTP server lacks:
C{MLSD}, C{APPE}, C{ABOR} during a transfer, and ASCII type with line-end conversion.

The transfer timeout (what the proxy does when a transfer takes too long whatever the server)
is tested in memory, on a L{MemoryReactorClock}, at the end.
"""

from __future__ import annotations

import ftplib
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_ftp_control import Harness, Peer
from tests.test_ftp_data import connect_data
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.pool import Backend, BackendPool

try:
    from pyftpdlib.authorizers import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        DummyAuthorizer,
    )
    from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - pyftpdlib is in the test extra
    FTPServer = None

T = TypeVar("T")

#: Socket timeout of the clients: a hung test fails rather than blocks.
CLIENT_TIMEOUT = 15
USER, PASSWORD = "alice", "alice-pw"
#: Large enough that it cannot all sit in socket buffers when the client aborts.
BIG_SIZE = 48 * 1024 * 1024
TEXT = b"first line\nsecond line\n\nlast line\n"


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class PyftpdlibTests(TestCase):
    """ftplib through the proxy to pyftpdlib."""

    timeout = 60

    def setUp(self) -> None:
        if FTPServer is None:
            self.skipTest("pyftpdlib is not installed (it is in the test extra)")
        self.root = tempfile.mkdtemp(prefix="ftp-pyftpdlib-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.payload = os.urandom(1024 * 1024 + 33)
        self.write("data.bin", self.payload)
        self.write("text.txt", TEXT)
        with open(os.path.join(self.root, "big.bin"), "wb") as file:
            file.truncate(BIG_SIZE)
        backend_port = self.start_pyftpdlib()
        pool = BackendPool("ftp", [Backend("py", "127.0.0.1", backend_port)])
        self.factory = FTPProxyFactory(reactor, pool, banner="proxy ready")
        listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(self.sessions_closed)
        self.proxy_port: int = listening.getHost().port  # type: ignore[attr-defined]

    def write(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as file:
            file.write(data)

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as file:
            return file.read()

    def start_pyftpdlib(self) -> int:
        quiet = logging.NullHandler()
        library_logger = logging.getLogger("pyftpdlib")
        library_logger.addHandler(quiet)
        self.addCleanup(library_logger.removeHandler, quiet)
        authorizer = DummyAuthorizer()
        authorizer.add_user(USER, PASSWORD, self.root, perm="elradfmwMT")
        handler: Any = type("Handler", (FTPHandler,), {})
        handler.authorizer = authorizer
        server = FTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1})
        thread.daemon = True
        thread.start()

        def stop() -> None:
            server.close_all()
            thread.join(5)

        self.addCleanup(stop)
        number: int = server.address[1]
        return number

    async def sessions_closed(self) -> None:
        for _ in range(250):
            if not self.factory.sessions:
                break
            await deferLater(reactor, 0.02)
        await deferLater(reactor, 0.05)

    def in_thread(self, work: Callable[[ftplib.FTP], T]) -> Deferred[T]:
        """Run C{work} with a logged-in client in a thread; the client quits after."""

        def session() -> T:
            client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            try:
                client.connect("127.0.0.1", self.proxy_port)
                client.login(USER, PASSWORD)
                result = work(client)
                client.quit()
                return result
            finally:
                client.close()

        return deferToThread(session)

    async def test_mlsd(self) -> None:
        """MLSD lists the directory with machine-readable facts, relayed byte for byte."""

        def work(client: ftplib.FTP) -> tuple[bytes, dict[str, dict[str, str]]]:
            client.voidcmd("TYPE A")
            with client.transfercmd("MLSD") as connection:
                raw = _read_all(connection)
            client.voidresp()
            return raw, dict(client.mlsd(facts=["type", "size"]))

        raw, listing = await self.in_thread(work)
        lines = raw.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        names = sorted(line.rpartition(b"; ")[2] for line in lines[:-1])
        self.assertEqual(names, [b"big.bin", b"data.bin", b"text.txt"])
        self.assertEqual(listing["data.bin"]["type"], "file")
        self.assertEqual(listing["data.bin"]["size"], str(len(self.payload)))
        self.assertEqual(listing["big.bin"]["size"], str(BIG_SIZE))

    async def test_rest_resumes_retr(self) -> None:
        """REST then RETR sends the file from that offset on, exactly."""
        offset = 654_321

        def work(client: ftplib.FTP) -> tuple[str, bytes]:
            client.voidcmd("TYPE I")
            received = io.BytesIO()
            reply = client.retrbinary("RETR data.bin", received.write, rest=offset)
            return reply, received.getvalue()

        reply, data = await self.in_thread(work)
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual(data, self.payload[offset:])

    async def test_rest_resumes_stor(self) -> None:
        """REST then STOR overwrites the file from that offset on."""
        self.write("partial.bin", self.payload[:1000] + b"garbage")

        def work(client: ftplib.FTP) -> str:
            return client.storbinary("STOR partial.bin", io.BytesIO(self.payload[1000:]), rest=1000)

        reply = await self.in_thread(work)
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual(self.read("partial.bin"), self.payload)

    async def test_appe(self) -> None:
        """APPE adds to the end of an existing file."""
        self.write("log.txt", b"one\n")

        def work(client: ftplib.FTP) -> str:
            return client.storbinary("APPE log.txt", io.BytesIO(b"two\nthree\n"))

        reply = await self.in_thread(work)
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual(self.read("log.txt"), b"one\ntwo\nthree\n")

    async def test_abort_during_retr(self) -> None:
        """
        ABOR (sent as urgent data by ftplib) during a large RETR: the client gets the
        transfer's 426 and ABOR's 226 (or 225), in order, and the session goes on.
        """

        def work(client: ftplib.FTP) -> tuple[int, list[str], str, list[str]]:
            client.voidcmd("TYPE I")
            connection = client.transfercmd("RETR big.bin")
            received = 0
            while received < 256 * 1024:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
            replies = [client.abort()]
            connection.close()
            replies.append(client.getmultiline())
            noop = client.voidcmd("NOOP")
            names = client.nlst()
            return received, replies, noop, names

        received, replies, noop, names = await self.in_thread(work)
        self.assertGreaterEqual(received, 256 * 1024)
        self.assertEqual([reply[:3] for reply in replies][:1], ["426"])
        self.assertIn(replies[1][:3], ("225", "226"))
        self.assertTrue(noop.startswith("200"), noop)
        self.assertEqual(sorted(names), ["big.bin", "data.bin", "text.txt"])

    async def test_abort_then_transfer(self) -> None:
        """After an aborted RETR the next transfer delivers a whole file."""

        def work(client: ftplib.FTP) -> bytes:
            client.voidcmd("TYPE I")
            connection = client.transfercmd("RETR big.bin")
            connection.recv(65536)
            client.abort()
            connection.close()
            client.getmultiline()
            received = io.BytesIO()
            client.retrbinary("RETR data.bin", received.write)
            return received.getvalue()

        self.assertEqual(await self.in_thread(work), self.payload)

    async def test_ascii_and_binary_types(self) -> None:
        """
        TYPE A turns the file's LF line ends into CRLF on the wire (the server does it; the
        proxy passes the bytes on); TYPE I sends the file as it is.
        """

        def work(client: ftplib.FTP) -> tuple[bytes, bytes]:
            fetched = {}
            for kind in ("A", "I"):
                client.voidcmd(f"TYPE {kind}")
                with client.transfercmd("RETR text.txt") as connection:
                    fetched[kind] = _read_all(connection)
                client.voidresp()
            return fetched["A"], fetched["I"]

        ascii, binary = await self.in_thread(work)
        self.assertEqual(ascii, b"first line\r\nsecond line\r\n\r\nlast line\r\n")
        self.assertEqual(binary, TEXT)

    async def test_ascii_upload(self) -> None:
        """A TYPE A upload's CRLF line ends are stored as the server's LF."""

        def work(client: ftplib.FTP) -> str:
            client.voidcmd("TYPE A")
            with client.transfercmd("STOR up.txt") as connection:
                connection.sendall(b"alpha\r\nbeta\r\n")
            return client.voidresp()

        reply = await self.in_thread(work)
        self.assertTrue(reply.startswith("226"), reply)
        self.assertEqual(self.read("up.txt"), b"alpha\nbeta\n")


class TransferTimeoutTests(SynchronousTestCase):
    """
    C{transfer_timeout} caps a transfer's whole duration, even while its data flows (which
    C{data_timeout} alone would allow forever).
    """

    def setUp(self) -> None:
        self.harness = Harness(transfer_timeout=30, data_timeout=10)
        self.backend = self.harness.login()

    def start_retr(
        self, harness: Harness | None = None, backend: Peer | None = None
    ) -> tuple[Peer, Peer]:
        """A passive RETR under way: its client and backend data legs."""
        harness = harness or self.harness
        backend = backend or self.backend
        harness.send("EPSV")
        backend.say("229 ok (|||4000|)")
        backend_leg = harness.accept()
        client_leg = connect_data(harness)
        assert client_leg is not None
        harness.send("RETR big")
        backend.say("150 Opening")
        assert harness.replies() == [
            "229 Entering Extended Passive Mode (|||30000|)",
            "150 Opening",
        ]
        assert backend.heard() == ["EPSV", "RETR big"]
        return client_leg, backend_leg

    def flow(self, backend_leg: Peer, seconds: int) -> None:
        """Data every 5 seconds for C{seconds}: never idle long enough for C{data_timeout}."""
        for _ in range(seconds // 5):
            backend_leg.protocol.dataReceived(b"x" * 100)
            self.harness.reactor.advance(5)

    def test_steady_transfer_cut_at_the_cap(self) -> None:
        """Past the cap both legs close, the client hears 426, and the backend is sent ABOR."""
        harness = self.harness
        client_leg, backend_leg = self.start_retr()
        self.flow(backend_leg, 25)
        self.assertFalse(client_leg.transport.aborted)
        self.assertEqual(len(client_leg.transport.value()), 500)
        self.assertEqual(harness.replies(), [])
        self.flow(backend_leg, 5)
        self.assertTrue(client_leg.transport.aborted)
        self.assertTrue(backend_leg.transport.aborted)
        self.assertEqual(harness.replies(), ["426 Transfer timed out (30 seconds)."])
        self.assertEqual(self.backend.heard(), ["ABOR"])

    def test_backend_replies_swallowed_and_session_goes_on(self) -> None:
        """
        The client does not hear the backend's replies about the stopped transfer; its next
        command waits for them, so every later reply answers the right command.
        """
        harness = self.harness
        self.start_retr()
        harness.reactor.advance(30)
        self.assertEqual(harness.replies(), ["426 Transfer timed out (30 seconds)."])
        harness.send("NOOP")
        self.assertEqual(self.backend.heard(), ["ABOR"])  # NOOP waits.
        self.backend.say("426 Connection closed; transfer aborted.")
        self.assertEqual(self.backend.heard(), [])
        self.backend.say("226 ABOR command successful.")
        self.assertEqual(self.backend.heard(), ["NOOP"])
        self.backend.say("200 NOOP ok")
        self.assertEqual(harness.replies(), ["200 NOOP ok"])
        harness.reactor.advance(60)  # The guard against a silent backend is off.
        self.assertFalse(harness.client.transport.disconnecting)

    def test_late_preliminary_reply_opens_nothing(self) -> None:
        """A backend that sends its 150 after the cap: the client is not connected to."""
        harness = self.harness
        harness.send("EPRT |1|192.0.2.10|50001|")
        self.backend.say("229 ok (|||4000|)")
        harness.accept()
        harness.replies()
        self.backend.heard()
        harness.send("RETR big")
        dials = len(harness.reactor.tcpClients)
        harness.reactor.advance(30)
        self.assertEqual(harness.replies(), ["426 Transfer timed out (30 seconds)."])
        self.backend.say("150 Opening", "426 aborted", "226 ABOR ok")
        self.assertEqual(harness.replies(), [])
        self.assertEqual(len(harness.reactor.tcpClients), dials)

    def test_backend_finished_already(self) -> None:
        """The backend sent its 226, only the client is still reading: no ABOR is needed."""
        harness = self.harness
        self.start_retr()
        self.backend.say("226 Transfer complete")
        self.assertEqual(harness.replies(), [])  # Held until the client has every byte.
        harness.reactor.advance(30)
        self.assertEqual(harness.replies(), ["426 Transfer timed out (30 seconds)."])
        self.assertEqual(self.backend.heard(), [])
        harness.send("NOOP")
        self.assertEqual(self.backend.heard(), ["NOOP"])

    def test_silent_backend_closes_the_session(self) -> None:
        """A backend that never answers the ABOR: 421 after C{data_timeout}, session closed."""
        harness = self.harness
        self.start_retr()
        harness.reactor.advance(30)
        harness.replies()
        harness.reactor.advance(9)
        self.assertFalse(harness.client.transport.disconnecting)
        harness.reactor.advance(1)
        self.assertEqual(
            harness.replies(), ["421 Service not available, remote server does not respond."]
        )
        self.assertTrue(harness.client.transport.disconnecting)

    def test_finished_transfer_stops_the_clock(self) -> None:
        """A transfer done in time leaves nothing behind to fire later."""
        harness = self.harness
        client_leg, backend_leg = self.start_retr()
        backend_leg.protocol.dataReceived(b"contents")
        backend_leg.transport.close_from_peer()
        self.backend.say("226 Done")
        harness.reactor.advance(0)
        self.assertEqual(harness.replies(), ["226 Done"])
        self.assertEqual(client_leg.transport.value(), b"contents")
        harness.reactor.advance(60)
        self.assertEqual(harness.replies(), [])
        self.assertEqual(self.backend.heard(), [])
        # Only the control connection's idle check is still scheduled.
        pending = [cast(DelayedCall, call).func for call in harness.reactor.getDelayedCalls()]
        self.assertEqual(pending, [harness.session._check_idle])

    def test_no_cap_by_default(self) -> None:
        """transfer_timeout 0 (the default): a steady transfer runs as long as it takes."""
        harness = Harness(data_timeout=10, idle_timeout=0)
        backend = harness.login()
        self.harness = harness
        client_leg, backend_leg = self.start_retr(harness, backend)
        self.flow(backend_leg, 3600)
        self.assertFalse(client_leg.transport.aborted)
        self.assertEqual(harness.replies(), [])
        self.assertEqual(backend.heard(), [])

    def test_negative_refused(self) -> None:
        with self.assertRaises(ValueError):
            Harness(transfer_timeout=-1)
