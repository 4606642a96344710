"""
Real HTTP/1.1 test backends on 127.0.0.1 for the integration tests, and the clients (curl, a
raw TCP client) that talk to them through the proxy.

L{BackendServer} answers by request path, never holding a large body in memory:

    - C{/stream?bytes=N} (C{&chunked=1}): N bytes of L{pattern}, generated as the
      connection drains (an L{IPushProducer}), with Content-Length (or chunked).
    - C{/die?bytes=N&send=M} (C{&chunked=1}, C{&how=close}): announces N bytes, sends M, then
      aborts the connection (or closes it cleanly with C{how=close}).
    - C{/slow?delay=S}: the echo below, after S seconds.
    - C{/hang}: never answers.
    - C{/upgrade}: with an C{Upgrade} header, C{101 Switching Protocols}, then L{GREETING}, then
      every byte received is echoed back; without one, the echo below.
    - anything else: a JSON echo of the request as received (L{ReceivedRequest.as_json}).

Request bodies (Content-Length or chunked) are counted and hashed, not kept.

Every wait here is bounded: L{wait_until} and L{run_curl} give up after their timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from zope.interface import implementer

#: One block of the streamed pattern: byte I of any stream is C{I % 256}.
PATTERN_BLOCK = bytes(range(256)) * 256

#: What C{/upgrade} sends right after its 101 head, before echoing.
GREETING = b"hello from the backend\n"

_MAX_HEAD = 65536


def pattern(length: int) -> bytes:
    """The first C{length} bytes of every stream C{/stream} and C{/die} send."""
    whole, rest = divmod(length, len(PATTERN_BLOCK))
    return PATTERN_BLOCK * whole + PATTERN_BLOCK[:rest]


@define(eq=False)
class ReceivedRequest:
    """
    A request as one backend connection received it.

    @ivar headers: C{(name, value)} pairs, in order and with their original case.
    @ivar framing: C{"none"}, C{"length"} or C{"chunked"}, as the request arrived.
    @ivar body_length: body bytes received so far (after de-chunking).
    @ivar complete: whether the whole body arrived.
    @ivar connection_number: which accepted connection of the server (from 1) carried it.
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    framing: str
    connection_number: int
    backend: str
    body_length: int = 0
    complete: bool = False
    _hash: Any = field(factory=hashlib.sha256)

    def header(self, name: str) -> list[str]:
        """Every value of header C{name} (case-insensitive), in order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def add_body(self, data: bytes | memoryview) -> None:
        self.body_length += len(data)
        self._hash.update(data)

    @property
    def body_sha256(self) -> str:
        return str(self._hash.hexdigest())

    def as_json(self, answered_at: float | None = None) -> bytes:
        """The echo; C{answered_at}: when the backend answered, on its reactor's clock."""
        return json.dumps(
            {
                "answered_at": answered_at,
                "backend": self.backend,
                "method": self.method,
                "target": self.target,
                "version": self.version,
                "headers": self.headers,
                "framing": self.framing,
                "body_length": self.body_length,
                "body_sha256": self.body_sha256,
                "connection_number": self.connection_number,
            }
        ).encode()


class _ChunkedReader:
    """
    An incremental chunked-body decoder written for the tests, independent of the proxy's.
    Only partial size lines are buffered; chunk data goes straight to C{on_data}.
    """

    def __init__(self, on_data: Callable[[memoryview], None]) -> None:
        self._on_data = on_data
        self._pending = b""
        self._remaining = 0
        self._state = "size"

    def feed(self, data: bytes) -> bytes | None:
        """Decode C{data}; return the bytes after the body once it ended, else L{None}."""
        buffer = self._pending + data if self._pending else data
        self._pending = b""
        view = memoryview(buffer)
        position = 0
        while position < len(buffer):
            if self._state == "data":
                take = min(self._remaining, len(buffer) - position)
                self._on_data(view[position : position + take])
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._state = "data-end"
                continue
            end = buffer.find(b"\r\n", position)
            if end < 0:
                if len(buffer) - position > 4096:
                    raise ValueError("chunk line too long")
                self._pending = buffer[position:]
                return None
            line = buffer[position:end]
            position = end + 2
            if self._state == "size":
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size:
                    self._remaining = size
                    self._state = "data"
                else:
                    self._state = "trailer"
            elif self._state == "data-end":
                if line:
                    raise ValueError("chunk data longer than its size")
                self._state = "size"
            elif not line:
                return buffer[position:]
        return None


@implementer(IPushProducer)
class PatternProducer:
    """
    Writes C{length} bytes of L{pattern} to a transport as fast as it drains, chunked if
    asked, then calls C{done}.  At most one block is written past the point where the
    transport asks it to pause.
    """

    def __init__(
        self,
        clock: Any,
        transport: Any,
        length: int,
        chunked: bool,
        done: Callable[[], None],
        stop_after: int | None = None,
    ) -> None:
        self._clock = clock
        self._transport = transport
        self._remaining = length if stop_after is None else min(length, stop_after)
        self._chunked = chunked
        self._done = done
        self._offset_in_block = 0
        self._paused = False
        self._stopped = False
        self._call: IDelayedCall | None = None
        #: Body bytes written so far.
        self.sent = 0

    def start(self) -> None:
        self._transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self._stopped:
            self._call = self._clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        # Bounded per reactor turn, so that the reactor can serve the other side meanwhile.
        for _ in range(64):
            if self._paused or self._stopped:
                return
            if not self._remaining:
                self._finish()
                return
            size = min(self._remaining, len(PATTERN_BLOCK))
            # Blocks are whole multiples of 256, so every block starts the pattern afresh.
            data = PATTERN_BLOCK[:size]
            self._remaining -= size
            self.sent += size
            if self._chunked:
                self._transport.writeSequence([b"%x\r\n" % size, data, b"\r\n"])
            else:
                self._transport.write(data)
        self._schedule()

    def _finish(self) -> None:
        self._stopped = True
        self._transport.unregisterProducer()
        self._done()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._stopped = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


class BackendServerProtocol(Protocol):
    """
    One connection accepted by a L{BackendServer}: reads requests in turn and answers each.

    @ivar lost_reason: why the connection was lost, once it was.
    @ivar last_stream: what writes (or wrote) the latest C{/stream} or C{/die} body.
    @ivar bytes_received: every byte read from the connection.
    """

    transport: Any

    def __init__(self, server: BackendServer, number: int) -> None:
        self.server = server
        self.number = number
        self.lost_reason: Failure | None = None
        self.is_closed = False
        self._close_waiters: list[Deferred[None]] = []
        self.bytes_received = 0
        self.requests: list[ReceivedRequest] = []
        self._buffer = b""
        self._state = "head"
        self._body_left = 0
        self._chunked: _ChunkedReader | None = None
        self._request: ReceivedRequest | None = None
        self._producer: PatternProducer | None = None
        self.last_stream: PatternProducer | None = None
        self._delayed: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is lost (at once if it already was)."""
        if self.is_closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._state == "tunnel":
            self.transport.write(data)
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        try:
            while self._buffer and not self.is_closed:
                if self._state == "head":
                    if not self._read_head():
                        return
                elif self._state == "body":
                    self._read_body()
                else:
                    # Answering: later requests wait in the buffer.
                    return
        except ValueError as e:
            self._answer(400, b"text/plain", str(e).encode(), close=True)

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise ValueError("request head too large")
            return False
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
        request = ReceivedRequest(
            method, target, version, headers, "none", self.number, self.server.name
        )
        if request.header("transfer-encoding"):
            request.framing = "chunked"
            self._chunked = _ChunkedReader(request.add_body)
        elif request.header("content-length"):
            request.framing = "length"
            self._body_left = int(request.header("content-length")[0])
        self._request = request
        self.requests.append(request)
        self.server.requests.append(request)
        self._state = "body"
        if request.framing == "none" or (request.framing == "length" and not self._body_left):
            self._body_done(self._buffer)
        return True

    def _read_body(self) -> None:
        request = self._request
        assert request is not None
        data, self._buffer = self._buffer, b""
        if self._chunked is not None:
            leftover = self._chunked.feed(data)
            if leftover is not None:
                self._chunked = None
                self._body_done(leftover)
            return
        take = min(self._body_left, len(data))
        request.add_body(memoryview(data)[:take])
        self._body_left -= take
        if not self._body_left:
            self._body_done(data[take:])

    def _body_done(self, leftover: bytes) -> None:
        request = self._request
        assert request is not None
        request.complete = True
        self._buffer = leftover
        self._state = "answering"
        self._respond(request)

    # Answers

    def _respond(self, request: ReceivedRequest) -> None:
        url = urlsplit(request.target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        close = any(v.lower() == "close" for v in request.header("connection"))
        path = url.path
        if path == "/stream":
            self._stream(int(query["bytes"]), query.get("chunked") == "1", None, close)
        elif path == "/die":
            self._stream(
                int(query["bytes"]),
                query.get("chunked") == "1",
                int(query["send"]),
                close,
                query.get("how", "abort"),
            )
        elif path == "/slow":
            self._delayed = self.server.reactor.callLater(
                float(query["delay"]), self._echo, request, close
            )
        elif path == "/hang":
            pass
        elif path == "/upgrade" and request.header("upgrade"):
            self._state = "tunnel"
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: " + request.header("upgrade")[0].encode("latin-1") + b"\r\n\r\n"
            )
            self.transport.write(GREETING)
            data, self._buffer = self._buffer, b""
            if data:
                self.transport.write(data)
        else:
            self._echo(request, close)

    def _echo(self, request: ReceivedRequest, close: bool) -> None:
        self._delayed = None
        answered_at = self.server.reactor.seconds()
        self._answer(200, b"application/json", request.as_json(answered_at), close)

    def _answer(self, status: int, content_type: bytes, body: bytes, close: bool) -> None:
        self.transport.write(
            b"HTTP/1.1 %d Whatever\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, content_type, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        self._answered(close)

    def _stream(
        self,
        length: int,
        chunked: bool,
        stop_after: int | None,
        close: bool,
        how: str = "abort",
    ) -> None:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n%s\r\n%s\r\n"
            % (framing, b"Connection: close\r\n" if close else b"")
        )

        def done() -> None:
            self._producer = None
            if stop_after is not None:
                if how == "close":
                    self.transport.loseConnection()
                else:
                    self.transport.abortConnection()
                return
            if chunked:
                self.transport.write(b"0\r\n\r\n")
            self._answered(close)

        self._producer = PatternProducer(
            self.server.reactor, self.transport, length, chunked, done, stop_after
        )
        self.last_stream = self._producer
        self._producer.start()

    def _answered(self, close: bool) -> None:
        if close:
            self._state = "closing"
            self.transport.loseConnection()
            return
        self._state = "head"
        self._request = None
        if self._buffer:
            self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.is_closed = True
        self.lost_reason = reason
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        if self._producer is not None:
            self._producer.stopProducing()
        self.server.open_connections.discard(self)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)


class BackendServer(Factory):
    """
    A test backend listening on 127.0.0.1, on a port the system picks.

    @ivar accepted: connections accepted so far.
    @ivar connections: every connection accepted, in order.
    @ivar requests: every request received, in order.
    """

    def __init__(self, reactor: Any, name: str = "backend") -> None:
        self.reactor = reactor
        self.name = name
        self.accepted = 0
        self.connections: list[BackendServerProtocol] = []
        self.open_connections: set[BackendServerProtocol] = set()
        self.requests: list[ReceivedRequest] = []
        self._port: Any = None

    def start(self) -> int:
        """Listen; return the port."""
        self._port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port

    @property
    def port(self) -> int:
        assert self._port is not None
        port: int = self._port.getHost().port
        return port

    def buildProtocol(self, addr: Any) -> BackendServerProtocol:
        self.accepted += 1
        protocol = BackendServerProtocol(self, self.accepted)
        self.connections.append(protocol)
        self.open_connections.add(protocol)
        return protocol

    @property
    def bytes_received(self) -> int:
        """Bytes read on every connection, heads included."""
        return sum(c.bytes_received for c in self.connections)

    async def stop(self) -> None:
        """Stop listening, abort every open connection and wait until they are closed."""
        if self._port is not None:
            port, self._port = self._port, None
            stopped: Deferred[None] | None = port.stopListening()
            if stopped is not None:
                await stopped.addTimeout(10, self.reactor)
        for connection in list(self.open_connections):
            closed = connection.when_closed()
            connection.transport.abortConnection()
            await closed.addTimeout(10, self.reactor)


#: Fixed ports for programs that cannot listen on port 0 are taken from here: below the
#: kernel's ephemeral range (32768 and up), so no outgoing connection can be holding one.
FIXED_PORTS = range(20000, 32768)


#: Where test processes note the fixed ports they took, so that parallel ones (trial -j)
#: never pick the same port between choosing it and listening on it.
PORT_CLAIMS = os.path.join(tempfile.gettempdir(), "twisted_rp-test-ports")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(port: int) -> bool:
    """Note C{port} as this process's; C{False} if a live process has it."""
    os.makedirs(PORT_CLAIMS, exist_ok=True)
    path = os.path.join(PORT_CLAIMS, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as claim:
                    owner = int(claim.read() or 0)
            except (OSError, ValueError):
                return False
            if not owner or owner == os.getpid() or _alive(owner):
                return False
            # Left by a process that is gone: take it over (one claimant wins the create).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as claim:
            claim.write(str(os.getpid()))
        if not _CLAIMED:
            atexit.register(_release_claims)
        _CLAIMED.append(path)
        return True
    return False


_CLAIMED: list[str] = []


def _release_claims() -> None:
    for path in _CLAIMED:
        with contextlib.suppress(OSError):
            os.unlink(path)


def free_port() -> int:
    """
    A TCP port of 127.0.0.1 below 32768 that nothing listens on just now and no other test
    process took, for a program that must be told its port in advance (a configuration
    file, a command line).
    """
    import random
    import socket

    for _ in range(400):
        port = random.choice(FIXED_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _claim(port):
            return port
    raise RuntimeError("no free port below 32768 on 127.0.0.1")


# Clients


CURL = "/usr/bin/curl"


async def wait_until(
    reactor: Any, predicate: Callable[[], bool], timeout: float = 10, what: str = "it"
) -> None:
    """Poll C{predicate} until it is true; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.005)


@frozen
class CurlResult:
    """What a curl run printed and its exit code (0 success, 18 partial file, ...)."""

    out: bytes
    err: bytes
    code: int


async def run_curl(reactor: Any, *args: str, timeout: float = 30) -> CurlResult:
    """
    Run curl with C{args}, ignoring any proxy settings and configuration file; it gives up
    (exit code 28) a few seconds before C{timeout}.
    """
    argv = ["-q", "--silent", "--show-error", "--noproxy", "*", "--max-time", str(timeout - 3)]
    d = getProcessOutputAndValue(CURL, [*argv, *args], env={}, reactor=reactor)
    out, err, code = await d.addTimeout(timeout, reactor)
    return CurlResult(out, err, code)


@frozen
class RawResponse:
    """A response head as a raw client received it, and the body bytes kept after it."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        """Every value of header C{name} (case-insensitive)."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def parse_response(data: bytes) -> RawResponse | None:
    """The first response head in C{data} and the bytes after it; L{None} if incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    _, status, reason = ([*lines[0].split(b" ", 2), b""])[:3]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return RawResponse(int(status), reason, headers, data[end + 4 :])


class RawClient(Protocol):
    """
    A TCP client that writes whatever a test gives it and records what comes back.

    @ivar received: the first C{keep} bytes received.
    @ivar total: how many bytes were received (kept or not).
    @param pause_every: when nonzero, read this many bytes, then stop reading for
        C{pause_for} seconds (a slow reader), and so on.
    """

    transport: Any

    def __init__(
        self, clock: Any, keep: int = 1 << 20, pause_every: int = 0, pause_for: float = 0.0
    ) -> None:
        self.clock = clock
        self.keep = keep
        self.pause_every = pause_every
        self.pause_for = pause_for
        self.received = b""
        self.total = 0
        self.closed = False
        self.lost_reason: Failure | None = None
        self._since_pause = 0
        self._resume_call: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self.total += len(data)
        if len(self.received) < self.keep:
            self.received += data[: self.keep - len(self.received)]
        if self.pause_every:
            self._since_pause += len(data)
            if self._since_pause >= self.pause_every:
                self._since_pause = 0
                self.transport.pauseProducing()
                self._resume_call = self.clock.callLater(self.pause_for, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        self.transport.resumeProducing()

    def response(self) -> RawResponse | None:
        """The response, once its head and whole Content-Length body (or the close) arrived."""
        response = parse_response(self.received)
        if response is None:
            return None
        lengths = response.header(b"content-length")
        body_received = self.total - (len(self.received) - len(response.body))
        if lengths and body_received < int(lengths[0]) and not self.closed:
            return None
        return response

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.lost_reason = reason
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()


async def connect_raw(reactor: Any, port: int, **options: Any) -> RawClient:
    """A L{RawClient} connected to 127.0.0.1:C{port}; C{options} go to its constructor."""
    client = RawClient(reactor, **options)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    await connectProtocol(endpoint, client).addTimeout(10, reactor)
    return client
