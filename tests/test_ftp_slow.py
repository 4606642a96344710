"""
Back-pressure through the FTP proxy, in a child process whose memory is measured: a client that
reads a download slowly holds the backend back, and so does a backend that reads an upload
slowly hold the client back, rather than the proxy buffering what the fast side sends.

The backend is an in-process L{FTPTestServer} (so that what it has sent or received can be
watched); the client drives the control connection itself, and its data connection pauses.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests import ftpproc
from tests.ftpproc import FTPProxyProcess, FTPTestServer, Upload, generated_bytes
from tests.proxyproc import Memory
from tests.servers import RawClient, connect_raw, wait_until

MiB = 1 << 20
#: How much a slow transfer moves, and how much the proxy may grow while it does.
SLOW_SIZE = 64 * MiB
GROWTH_LIMIT = 16 * MiB
#: Downloaded at full speed first, so that what the first transfer allocates once is not counted.
WARM_UP_SIZE = 4 * MiB
#: Every wait is bounded by this, except the slow transfers themselves.
REPLY_TIMEOUT = 10
SLOW_TRANSFER_TIMEOUT = 60


class ControlClient(LineReceiver):
    """
    An FTP client's control connection, one command and reply at a time.

    @ivar closed: fires once the connection is closed.
    """

    delimiter = b"\r\n"
    transport: Any

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.closed: Deferred[None] = Deferred()
        self._replies: list[str] = []
        self._waiting: list[Deferred[str]] = []
        self._lines: list[str] = []

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._lines.append(text)
        code = self._lines[0][:3]
        # A reply ends with a line of its code and a space (the first line, if single-line).
        if text[:3] == code and text[3:4] != "-":
            reply, self._lines = "\n".join(self._lines), []
            if self._waiting:
                self._waiting.pop(0).callback(reply)
            else:
                self._replies.append(reply)

    def reply(self) -> Deferred[str]:
        """The next reply (bounded by L{REPLY_TIMEOUT})."""
        if self._replies:
            d: Deferred[str] = Deferred()
            d.callback(self._replies.pop(0))
            return d
        waiting: Deferred[str] = Deferred()
        self._waiting.append(waiting)
        return waiting.addTimeout(REPLY_TIMEOUT, self.clock)

    async def command(self, line: str, expected: str) -> str:
        """Send C{line}; its reply, after checking that its code starts with C{expected}."""
        self.sendLine(line.encode())
        reply = await self.reply()
        if not reply.startswith(expected):
            raise AssertionError(f"{line!r} got {reply!r}, not {expected}xx")
        return reply

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


@implementer(IPushProducer)
class Uploader(Protocol):
    """
    An upload's data connection: it writes zeros as long as its transport takes them, so that
    it is held back exactly when the transport's buffer is full.

    @ivar written: bytes handed to the transport so far.
    """

    transport: Any

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self._paused = True
        self._block = bytes(256 * 1024)
        self.closed = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def start(self) -> None:
        """Begin writing (once the command that opens the transfer was sent)."""
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and self.written < self.size:
            chunk = self._block[: self.size - self.written]
            self.written += len(chunk)
            # Writing past the buffer's size calls pauseProducing before write returns.
            self.transport.write(chunk)
        if self.written >= self.size and not self._paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            self._paused = True

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True


class _HeldUpload(ftpproc.CountingUpload):
    """An upload the backend reads only when the test says, then slowly."""

    #: The uploads of the test running (the class is patched in for a test only).
    held: list[_HeldUpload] = []

    def __init__(self, upload: Upload) -> None:
        super().__init__(upload)
        self.producer: Any = None
        self.pause_every = 0
        self.pause_for = 0.0
        self.clock: Any = None
        self._since_pause = 0
        self._resume_call: IDelayedCall | None = None
        self.held.append(self)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        producer.pauseProducing()

    def read_slowly(self, clock: Any, pause_every: int, pause_for: float) -> None:
        """Read from now on, stopping C{pause_for} seconds after every C{pause_every} bytes."""
        self.clock = clock
        self.pause_every = pause_every
        self.pause_for = pause_for
        self.producer.resumeProducing()

    def write(self, data: bytes) -> None:
        super().write(data)
        self._since_pause += len(data)
        if self.clock is not None and self._since_pause >= self.pause_every:
            self._since_pause = 0
            self.producer.pauseProducing()
            self._resume_call = self.clock.callLater(self.pause_for, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        if not self.upload.complete:
            self.producer.resumeProducing()

    def close(self) -> Deferred[None]:
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        return super().close()


def _passive_port(reply: str) -> int:
    match = re.search(r"\(\|\|\|(\d+)\|\)", reply)
    if match is None:
        raise AssertionError(f"no port in the EPSV reply {reply!r}")
    return int(match.group(1))


class SlowPeerTests(TestCase):
    """A slow reader on either side holds the other side back; the proxy's memory stays flat."""

    timeout = 120

    async def start(self) -> tuple[FTPTestServer, FTPProxyProcess]:
        self.reactor: Any = global_reactor
        backend = FTPTestServer(
            "slow", {"big": SLOW_SIZE, "small": WARM_UP_SIZE}, discard_uploads=True
        )
        backend.start(self.reactor)
        self.addCleanup(backend.stop)
        proxy = await FTPProxyProcess.start(self.reactor, [backend.port])
        self.addCleanup(proxy.stop)
        return backend, proxy

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds)

    async def log_in(self, port: int) -> ControlClient:
        """A control connection to the proxy, logged in anonymously, in binary mode."""
        control = ControlClient(self.reactor)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=5)
        await connectProtocol(endpoint, control).addTimeout(REPLY_TIMEOUT, self.reactor)
        self.addCleanup(self.close_control, control)
        banner = await control.reply()
        self.assertTrue(banner.startswith("220"), banner)
        await control.command("USER anonymous", "331")
        await control.command("PASS guest@example.test", "230")
        await control.command("TYPE I", "200")
        return control

    async def close_control(self, control: ControlClient) -> None:
        if not control.closed.called:
            control.transport.loseConnection()
        await control.closed.addTimeout(REPLY_TIMEOUT, self.reactor)

    async def quit(self, control: ControlClient) -> None:
        await control.command("QUIT", "221")
        await control.closed.addTimeout(REPLY_TIMEOUT, self.reactor)

    async def download(self, port: int, path: str, **reading: Any) -> tuple[ControlClient, Any]:
        """Open a passive data connection and send C{RETR path}; the control and data clients."""
        control = await self.log_in(port)
        data_port = _passive_port(await control.command("EPSV", "229"))
        data = await connect_raw(self.reactor, data_port, keep=4096, **reading)
        self.addCleanup(self.close_data, data)
        return control, data

    async def close_data(self, data: RawClient) -> None:
        if not data.closed:
            data.transport.abortConnection()
        await wait_until(self.reactor, lambda: data.closed, REPLY_TIMEOUT, "the data close")

    async def warm_up(self, port: int) -> None:
        control, data = await self.download(port, "small")
        await control.command("RETR small", "1")
        final = await control.reply()
        self.assertTrue(final.startswith("226"), final)
        await wait_until(self.reactor, lambda: data.closed, REPLY_TIMEOUT, "the warm-up")
        self.assertEqual(data.total, WARM_UP_SIZE)
        await self.quit(control)

    def assert_growth_bounded(self, before: Memory, after: Memory) -> None:
        growth = after.peak - before.rss
        self.assertLess(
            growth,
            GROWTH_LIMIT,
            f"proxy peak RSS grew by {growth / MiB:.1f} MiB "
            f"(before {before.rss / MiB:.1f}, peak {after.peak / MiB:.1f} MiB)",
        )

    async def test_slow_reading_retr_client_holds_the_backend_back(self) -> None:
        backend, proxy = await self.start()
        await self.warm_up(proxy.port)
        before = proxy.memory()
        control, data = await self.download(proxy.port, "big", pause_every=MiB, pause_for=0.03)
        # Not reading at all for a while: every buffer on the way fills up.
        data.transport.pauseProducing()
        await control.command("RETR big", "1")
        await self.sleep(0.7)
        download = backend.downloads[-1]
        sent_at_first = download.sent
        await self.sleep(0.3)
        self.assertEqual(download.sent, sent_at_first, "the backend kept sending")
        self.assertLess(download.sent, SLOW_SIZE // 2)
        data.transport.resumeProducing()
        await wait_until(
            self.reactor, lambda: data.closed, SLOW_TRANSFER_TIMEOUT, "the slow download"
        )
        final = await control.reply()
        self.assertTrue(final.startswith("226"), final)
        self.assertEqual(data.total, SLOW_SIZE)
        self.assertEqual(data.received, generated_bytes(0, 4096))
        self.assertEqual(download.sent, SLOW_SIZE)
        after = proxy.memory()
        await self.quit(control)
        self.assert_growth_bounded(before, after)

    async def test_slow_reading_stor_backend_holds_the_client_back(self) -> None:
        self.patch(_HeldUpload, "held", [])
        self.patch(ftpproc, "CountingUpload", _HeldUpload)
        _, proxy = await self.start()
        await self.warm_up(proxy.port)
        before = proxy.memory()
        control = await self.log_in(proxy.port)
        data_port = _passive_port(await control.command("EPSV", "229"))
        uploader = Uploader(SLOW_SIZE)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", data_port, timeout=5)
        await connectProtocol(endpoint, uploader).addTimeout(REPLY_TIMEOUT, self.reactor)
        self.addCleanup(self.close_uploader, uploader)
        await control.command("STOR upload.bin", "1")
        uploader.start()
        await wait_until(self.reactor, lambda: bool(_HeldUpload.held), REPLY_TIMEOUT, "STOR")
        [held] = _HeldUpload.held
        await wait_until(
            self.reactor, lambda: held.producer is not None, REPLY_TIMEOUT, "the backend's data"
        )
        # The backend reads nothing for a while: every buffer on the way fills up.
        await self.sleep(0.7)
        written_at_first = uploader.written
        await self.sleep(0.3)
        self.assertEqual(uploader.written, written_at_first, "the client kept sending")
        self.assertLess(uploader.written, SLOW_SIZE // 2)
        self.assertEqual(held.upload.length, 0)
        held.read_slowly(self.reactor, MiB, 0.03)
        await wait_until(
            self.reactor, lambda: held.upload.complete, SLOW_TRANSFER_TIMEOUT, "the slow upload"
        )
        final = await control.reply()
        self.assertTrue(final.startswith("226"), final)
        self.assertTrue(held.upload.complete)
        self.assertEqual(held.upload.length, SLOW_SIZE)
        self.assertTrue(held.upload.all_zero)
        after = proxy.memory()
        await self.quit(control)
        self.assert_growth_bounded(before, after)

    async def close_uploader(self, uploader: Uploader) -> None:
        if not uploader.closed:
            uploader.transport.abortConnection()
        await wait_until(self.reactor, lambda: uploader.closed, REPLY_TIMEOUT, "the data close")
