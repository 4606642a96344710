"""
Persistent HTTP/1.1 connections to backends, and the per-backend pool of idle ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from twisted_rp.http.body import ChunkedDecoder, LengthDecoder
from twisted_rp.http.message import HTTPError, ResponseHead
from twisted_rp.http.parser import ResponseInfo, analyze_response, parse_response_head
from twisted_rp.http.scan import SimpleResponse, scan_response
from twisted_rp.pool.backend import Backend
from twisted_rp.sendnow import writer_for
from twisted_rp.settings import Limits, Timeouts

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConnector

_MAX_RESPONSE_HEAD = 65536
_MAX_RESPONSE_HEADERS = 200

_HEAD, _BODY, _CLOSE_DELIMITED, _TUNNEL, _DONE = range(5)


class ResponseSink(TypingProtocol):
    """What a L{BackendConnection} reports a response to (an exchange)."""

    def on_informational(self, head: ResponseHead) -> bool:
        """A 1xx head; return C{True} to switch the connection to a raw tunnel (after a 101)."""

    def on_response_head(self, head: ResponseHead, info: ResponseInfo) -> None:
        """A final response head, with its framing and C{Connection} tokens."""

    def simple_response(self, simple: SimpleResponse, body: bytes) -> bool:
        """
        A complete simple response, with all its C{body}: take it whole and return C{True}
        (the connection's response is then over), or return C{False} to be given it the
        general way (L{on_response_head}, ...).
        """

    def on_response_body(self, pieces: list[bytes]) -> None: ...

    def on_response_end(self) -> None: ...

    def on_tunnel_data(self, data: bytes) -> None: ...

    def on_backend_error(self, reason: str) -> None:
        """The response was invalid; the connection is being aborted."""

    def on_backend_lost(self, reason: Failure) -> None:
        """The connection closed before the response ended."""

    def flush(self) -> None:
        """Called after each chunk of received bytes was processed."""


class BackendConnection(Protocol):
    """
    One connection to a backend, used by one exchange at a time.

    @ivar requests: how many requests were started on it (more than 1 means it was reused).
    @ivar reusable: whether it may go back to the idle pool after the current response.
    """

    # A TCP transport: the producer and abort methods are used.
    transport: Any

    def __init__(self, pool: BackendConnections, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.sink: ResponseSink | None = None
        self.requests = 0
        self.reusable = True
        self.lost = False
        self.received_response_bytes = False
        self.idle_since = 0.0
        self._method = b"GET"
        # The last simple response head, the method it answered, and its reading.
        self._last_head = self._last_method = b""
        self._last_simple: SimpleResponse | None = None
        #: A simple head (by identity) known to give the route hooks of C{quiet_triggers}
        #: (L{twisted_rp.http.routing.Route.response_triggers}) nothing to act on.
        self.quiet_head: SimpleResponse | None = None
        self.quiet_triggers: object = None
        self._state = _DONE
        self._buffer = b""
        self._decoder: ChunkedDecoder | LengthDecoder | None = None
        self.connected_deferred: Deferred[BackendConnection] | None = None

    def connectionMade(self) -> None:
        self.write = writer_for(self.transport, self.pool.send_now)
        self.transport.setTcpNoDelay(True)
        if self.connected_deferred is not None:
            d, self.connected_deferred = self.connected_deferred, None
            d.callback(self)

    def start(self, sink: ResponseSink, method: bytes) -> None:
        """Attach to an exchange that is about to send a request with C{method}."""
        self.sink = sink
        self._method = method
        self._state = _HEAD
        self._buffer = b""
        self.requests += 1
        self.received_response_bytes = False

    def detach(self) -> None:
        """The exchange is done with this connection; keep it for reuse if that is safe."""
        self.sink = None
        if self.reusable and self._state == _DONE and not self._buffer:
            self.pool.keep(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close without reuse."""
        self.reusable = False
        self.sink = None
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # Bytes on an idle connection: it no longer frames requests reliably.
            self.abort()
            return
        self.received_response_bytes = True
        if (
            self._state == _BODY
            and type(decoder := self._decoder) is LengthDecoder
            and len(data) < decoder.remaining
        ):
            # The middle of a body of known length, most reads of a large response: nothing
            # in it to look for.
            decoder.remaining -= len(data)
            sink.on_response_body([data])
        else:
            try:
                self._process(sink, data)
            except HTTPError as e:
                self.reusable = False
                sink.on_backend_error(e.detail)
                self.abort()
                return
        if self.sink is sink:
            # (A response that ended here was flushed by its exchange, which let go.)
            sink.flush()

    def _process(self, sink: ResponseSink, data: bytes) -> None:
        state = self._state
        if state != _HEAD:
            self._process_body(sink, state, data)
            return
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_RESPONSE_HEAD:
                    raise HTTPError(502, "response head too large")
                self._buffer = buffer
                return
            head_bytes = buffer[:end]
            if head_bytes == self._last_head and self._method == self._last_method:
                # Backends often send the same head again (within the second of its Date).
                simple = self._last_simple
            else:
                simple = scan_response(head_bytes, self._method, _MAX_RESPONSE_HEADERS)
                if simple is not None:
                    self._last_head, self._last_method = head_bytes, self._method
                    self._last_simple = simple
            if simple is not None:
                buffer = buffer[end + 4 :]
                self._buffer = b""
                if simple.connection == b"close":
                    self.reusable = False
                if len(buffer) == simple.length:
                    # The whole response is here (most small ones): the exchange may answer
                    # in one go, unless its route has response hooks.
                    self._state = _DONE
                    if sink.simple_response(simple, buffer):
                        return
                    self._state = _HEAD
                head, info = simple.parsed()
                self._response(sink, head, info, buffer)
                return
            head = parse_response_head(buffer[:end], _MAX_RESPONSE_HEADERS)
            buffer = buffer[end + 4 :]
            if head.status < 200:
                if sink.on_informational(head):
                    self._state = _TUNNEL
                    self.reusable = False
                    self._buffer = b""
                    if buffer:
                        sink.on_tunnel_data(buffer)
                    return
                continue
            self._buffer = b""
            self._response(sink, head, analyze_response(self._method, head), buffer)
            return

    def _process_body(self, sink: ResponseSink, state: int, data: bytes) -> None:
        if state == _BODY:
            assert self._decoder is not None
            pieces, leftover = self._decoder.feed(data)
            if pieces:
                sink.on_response_body(pieces)
            if leftover is not None:
                self._finish(sink, leftover)
        elif state == _CLOSE_DELIMITED:
            sink.on_response_body([data])
        elif state == _TUNNEL:
            sink.on_tunnel_data(data)
        else:
            raise HTTPError(502, "data after the end of the response")

    def _response(
        self, sink: ResponseSink, head: ResponseHead, info: ResponseInfo, buffer: bytes
    ) -> None:
        """A final response head arrived, with the C{buffer} bytes that followed it."""
        framing = info.framing
        if not framing.reusable or b"close" in info.connection:
            self.reusable = False
        sink.on_response_head(head, info)
        if self.sink is not sink:
            return
        kind = framing.kind
        if kind == "length" and len(buffer) == framing.length:
            # The whole body came with the head (most small responses).
            sink.on_response_body([buffer])
            self._finish(sink, b"")
            return
        if kind == "none":
            self._finish(sink, buffer)
            return
        if kind == "close":
            self.reusable = False
            self._state = _CLOSE_DELIMITED
            if buffer:
                sink.on_response_body([buffer])
            return
        decoder = self._decoder = (
            LengthDecoder(framing.length) if kind == "length" else ChunkedDecoder()
        )
        self._state = _BODY
        if buffer:
            pieces, leftover = decoder.feed(buffer)
            if pieces:
                sink.on_response_body(pieces)
            if leftover is not None:
                self._finish(sink, leftover)

    def _finish(self, sink: ResponseSink, leftover: bytes) -> None:
        self._state = _DONE
        self._decoder = None
        if leftover:
            self.reusable = False
        sink.on_response_end()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reusable = False
        self.lost = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if self.connected_deferred is not None:
            d, self.connected_deferred = self.connected_deferred, None
            d.errback(reason)
        if sink is None:
            return
        if self._state == _CLOSE_DELIMITED and reason.check(ConnectionDone):
            self._state = _DONE
            sink.on_response_end()
            sink.flush()
        elif self._state == _TUNNEL:
            sink.on_response_end()
        else:
            sink.on_backend_lost(reason)


class BackendTLSError(ConnectError):
    """The TLS handshake with a backend failed (verification, protocol)."""

    def __str__(self) -> str:
        return str(self.osError)


def tls_failure(reason: Failure) -> str | None:
    """A plain description of a TLS handshake failure, or L{None} for anything else."""
    if reason.check(VerificationError):
        errors = getattr(reason.value, "errors", [])
        names = [
            getattr(getattr(e, "mismatched_id", None), "hostname", b"").decode("ascii", "replace")
            for e in errors
        ]
        wanted = ", ".join(n for n in names if n) or "the expected name"
        return f"TLS: the backend's certificate is not valid for {wanted}"
    if reason.check(SSL.Error):
        # pyOpenSSL's errors are a list of (library, function, reason) triples.
        args = getattr(reason.value, "args", ())
        triples = args[0] if args and isinstance(args[0], list) else []
        details = [part for triple in triples for part in triple if part]
        return f"TLS handshake with the backend failed: {'; '.join(details) or reason.value}"
    return None


class _ConnectingFactory(ClientFactory):
    # One per backend connection: "Starting factory" lines for each would drown the log.
    noisy = False

    def __init__(self, connection: BackendConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: object) -> BackendConnection:
        return self.connection

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        d, self.connection.connected_deferred = self.connection.connected_deferred, None
        if d is not None:
            d.errback(reason)


class BackendConnections:
    """
    Idle persistent connections per backend, most recently used first, each closed after
    C{timeouts.backend_keepalive} seconds unused.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        send_now: bool = True,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.timeouts = timeouts
        self.limits = limits
        self.send_now = send_now
        self._idle: dict[Backend, list[BackendConnection]] = {}
        self._reaper: IDelayedCall | None = None

    def idle_count(self, backend: Backend) -> int:
        """How many idle connections to C{backend} are kept."""
        return len(self._idle.get(backend, ()))

    def take_idle(self, backend: Backend) -> BackendConnection | None:
        """An idle connection to C{backend} that may be reused now, if any."""
        idle = self._idle.get(backend)
        deadline = self.clock.seconds() - self.timeouts.backend_keepalive
        while idle:
            connection = idle.pop()
            if connection.idle_since > deadline and connection.reusable:
                return connection
            connection.abort()
        return None

    def connect(self, backend: Backend) -> Deferred[BackendConnection]:
        """A new connection to C{backend}."""
        connection = BackendConnection(self, backend)
        d: Deferred[BackendConnection] = Deferred()
        connection.connected_deferred = d
        factory: Any = _ConnectingFactory(connection)
        if backend.tls is not None:
            # Writes wait for the handshake; a failed verification closes the connection with
            # the reason, before any byte of the request was sent.
            factory = TLSMemoryBIOFactory(cast(Any, backend.tls), True, factory)
        self.reactor.connectTCP(
            backend.host,
            backend.port_for("https" if backend.tls is not None else "http"),
            factory,
            timeout=self.timeouts.backend_connect,
        )
        return d

    def keep(self, connection: BackendConnection) -> None:
        """Put C{connection} back for reuse, or close it if the pool is full."""
        idle = self._idle.setdefault(connection.backend, [])
        if len(idle) >= self.limits.backend_idle_connections:
            connection.abort()
            return
        connection.idle_since = self.clock.seconds()
        idle.append(connection)
        if self._reaper is None:
            self._reaper = self.clock.callLater(self.timeouts.backend_keepalive, self._reap)

    def forget(self, connection: BackendConnection) -> None:
        """C{connection} closed; drop it if it was idle."""
        idle = self._idle.get(connection.backend)
        if idle and connection in idle:
            idle.remove(connection)

    def _reap(self) -> None:
        self._reaper = None
        deadline = self.clock.seconds() - self.timeouts.backend_keepalive
        for idle in list(self._idle.values()):
            for connection in [c for c in idle if c.idle_since <= deadline]:
                idle.remove(connection)
                connection.abort()
        if any(self._idle.values()):
            self._reaper = self.clock.callLater(self.timeouts.backend_keepalive / 2, self._reap)

    def close_idle(self) -> None:
        """Close every idle connection (on shutdown)."""
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.abort()
