"""
The client side of the HTTP/1.1 reverse proxy: reading requests, in order, from one client
connection (the front of each exchange).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.http.accesslog import refused_record
from twisted_rp.http.backend import BackendConnection
from twisted_rp.http.exchange import Exchange
from twisted_rp.http.express import simple_request
from twisted_rp.http.flow import Deadline, Valve
from twisted_rp.http.message import (
    ErrorResponse,
    Headers,
    HTTPError,
    ProxyRequest,
    RequestHead,
    checked_error_page,
    default_error_page,
    reason_phrase,
)
from twisted_rp.http.parser import (
    HTTP_11,
    analyze_request,
    parse_request_head,
    split_absolute_target,
)
from twisted_rp.http.routing import Route, host_name
from twisted_rp.http.scan import scan_request
from twisted_rp.sendnow import writer_for

if TYPE_CHECKING:
    from twisted_rp.http.proxy import HTTPProxyFactory

# Connection states.
_HEAD, _BUSY, _BODY, _TUNNEL, _CLOSED = range(5)


class HTTPProxyProtocol(Protocol):
    """
    One client connection.  Requests are handled one at a time; bytes of pipelined requests
    wait (bounded) until the response before them is complete.
    """

    _log = Logger()
    # A TCP transport (or a TLS one around it): the producer and abort methods are used.
    transport: Any

    def __init__(self, factory: HTTPProxyFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        limits = factory.settings.limits
        self._max_head = limits.max_header_bytes
        self._max_line = limits.max_request_line
        self._max_fields = limits.max_headers
        self.clock = factory.clock
        self.connections = factory.connections
        self.access_log = factory.access_log
        self.request_observers = factory.request_observers
        self.forwarding = factory.forwarding
        self._needs_fields = factory.forwarding.needs_fields
        self.forwarding_cache: dict[bytes | None, bytes] = {}
        self.client_full = False
        self.closing = False
        self.bound: BackendConnection | None = None
        self._client_cert_fields: list[tuple[bytes, bytes]] | None = None
        self._tls: tuple[str | None, str | None] | None = None
        self.wants_keepalive = True
        self.exchange: Exchange | None = None
        self._state = _HEAD
        self._buffer = b""
        self._paused: set[str] = set()
        # One timer serves every phase; _timed_out asks the state which timeout it was.
        timer = Deadline(self.clock, self._timed_out)
        self.restart_timer = timer.restart
        self.stop_timer = timer.stop
        self._head_started = False
        self._reading_heads = False
        # The last Host value and its host name (most connections send one Host).
        self._authority: bytes | None = None
        self._host = ""
        # The last simple request head's reading (scan_request).
        self._scanned: tuple[bytes, bytes, bytes, bytes, bytes] | None = None

    def connectionMade(self) -> None:
        self.factory.live.add(self)
        self.write = writer_for(self.transport, self.factory.send_now)
        _no_delay(self.transport)
        peer: Any = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "") or ""
        self.client_port = getattr(peer, "port", 0) or 0
        self.local_port = getattr(self.transport.getHost(), "port", 0) or 0
        self.restart_timer(self.settings.timeouts.client_header)
        # Registered once for the connection's life: it pauses whichever backend connection
        # is answering when the client reads more slowly than the backend sends.
        self.transport.registerProducer(Valve(self._client_full, self._client_drained), True)

    def _client_full(self) -> None:
        self.client_full = True
        exchange = self.exchange
        if exchange is not None and exchange.connection is not None:
            exchange.connection.transport.pauseProducing()

    def _client_drained(self) -> None:
        self.client_full = False
        exchange = self.exchange
        if exchange is not None and exchange.connection is not None:
            exchange.connection.transport.resumeProducing()

    # Reading

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _HEAD:
            if not self._buffer and not self._reading_heads and data[:1] != b"\r":
                # Most reads are one whole request head and nothing more.
                end = data.find(b"\r\n\r\n")
                if 0 < end == len(data) - 4 and end <= self._max_head:
                    self._state = _BUSY
                    self._start_exchange(data[:end])
                    return
            self._buffer = self._buffer + data if self._buffer else data
            self._read_heads()
        elif state == _BODY:
            assert self.exchange is not None
            self.exchange.client_body(data)
        elif state == _TUNNEL:
            assert self.exchange is not None and self.exchange.connection is not None
            self.exchange.connection.write(data)
        elif state == _BUSY:
            self._buffer += data
            if len(self._buffer) > self.settings.limits.max_header_bytes:
                self.pause_reading("pipeline")

    def _read_heads(self) -> None:
        # Requests answered at once (errors) end inside this loop; it, not recursion, goes on
        # to the next pipelined request.
        if self._reading_heads:
            return
        self._reading_heads = True
        try:
            self._read_heads_loop()
        finally:
            self._reading_heads = False

    def _read_heads_loop(self) -> None:
        limits = self.settings.limits
        while self._state == _HEAD and self._buffer:
            buffer = self._buffer
            if buffer.startswith(b"\r\n"):
                # RFC 9112 section 2.2: ignore an empty line before a request line.
                self._buffer = buffer[2:]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if not self._head_started:
                    # A head that comes whole needs no timer of its own.
                    self._head_started = True
                    self.restart_timer(self.settings.timeouts.client_header)
                if len(buffer) > limits.max_header_bytes:
                    self._reject(HTTPError(431, "request head too large"))
                elif buffer.find(b"\r\n", 0, limits.max_request_line + 2) < 0 and (
                    len(buffer) > limits.max_request_line
                ):
                    self._reject(HTTPError(414, "request line too long"))
                return
            if end > limits.max_header_bytes:
                self._reject(HTTPError(431, "request head too large"))
                return
            self._buffer = buffer[end + 4 :]
            self._head_started = False
            self._state = _BUSY
            self._start_exchange(buffer[:end])

    def _start_exchange(self, raw: bytes) -> None:
        scanned = scan_request(
            raw,
            self._needs_fields,
            self._max_line,
            self._max_fields,
            self._authority,
            self._scanned,
        )
        if scanned is None:
            self._start_general(raw)
            return
        self._scanned = scanned
        # A simple request (scan_request): no body, no connection options, HTTP/1.1.
        method, target, block, lowered, authority = scanned
        if authority == self._authority:
            host = self._host
        else:
            host = self._host = host_name(authority)
            self._authority = authority
        factory = self.factory
        self.wants_keepalive = True
        route: Route | None = None
        if factory.express:
            # route_for is not overridden: the router's choice is the route.
            route = factory.router.route_target(host, target)
            if route is None:
                self._start_general(raw)
                return
            triggers = route.request_triggers
            if triggers is not None and self.bound is None and not triggers(lowered):
                self.restart_timer(self.settings.timeouts.backend_first_byte)
                exchange = self.exchange = Exchange.__new__(Exchange)
                exchange.start_express(self, route, method, target, block, lowered, authority, host)
                return
        head, info, request = simple_request(
            self, method, target, Headers.from_block(block), lowered, authority, host
        )
        if route is None:
            route = factory.route_for(request)
            if route is None:
                self._start_general(raw)
                return
        request.route = route
        exchange = self.exchange = Exchange(self, head, info, route, request, None)
        self.restart_timer(self.settings.timeouts.backend_first_byte)
        exchange.begin()

    def _start_general(self, raw: bytes) -> None:
        limits = self.settings.limits
        try:
            head = parse_request_head(raw, limits.max_request_line, limits.max_headers)
            info = analyze_request(head)
        except HTTPError as e:
            self._reject(e)
            return
        if head.target[:1] != b"/" and head.target != b"*":
            # Absolute form: the authority in the target wins over Host (RFC 9112 3.2.2).
            in_target, head.target = split_absolute_target(head.target)
            if in_target is not None:
                head.headers.set(b"Host", in_target)
        framing = info.framing
        host = host_name(info.host)
        connection_tokens = info.connection
        if head.version == HTTP_11:
            self.wants_keepalive = b"close" not in connection_tokens
        else:
            self.wants_keepalive = b"keep-alive" in connection_tokens
        request = ProxyRequest(
            head=head,
            client_ip=self.client_ip,
            client_port=self.client_port,
            scheme=self.factory.scheme,
            host=host,
            authority=info.host,
        )
        route = request.route = self.factory.route_for(request)
        expect = info.expect
        upgrade = info.upgrade if b"upgrade" in connection_tokens else None
        if framing.kind != "none" or head.version != b"HTTP/1.1":
            upgrade = None
        error: HTTPError | None = None
        if route is None:
            error = HTTPError(404, "no route for this host and path")
        elif expect is not None and expect.lower() != b"100-continue":
            error = HTTPError(417, "unsupported expectation")
        elif limits.max_body and framing.kind == "length" and framing.length > limits.max_body:
            error = HTTPError(413, "request body too large")
        if error is not None:
            if framing.kind != "none":
                self.wants_keepalive = False
            self._log_refused(error.status, head, host)
            self.write_error(error.status, error.detail, self.wants_keepalive, request)
            self.exchange_done(self.wants_keepalive, False)
            return
        assert route is not None
        self.exchange = Exchange(self, head, info, route, request, upgrade)
        self.restart_timer(self.settings.timeouts.backend_first_byte)
        self.exchange.begin()

    def _reject(self, error: HTTPError) -> None:
        self._log.info("{client}: rejected request: {error}", client=self.client_ip, error=error)
        self._state = _BUSY
        self._log_refused(error.status)
        self.write_error(error.status, error.detail)
        self.exchange_done(False, False)

    def _log_refused(self, status: int, head: RequestHead | None = None, host: str = "") -> None:
        """An access log record for a request the proxy answered without any backend."""
        for observer in self.request_observers:
            observer.request_done("", "", "", status, 0.0)
        if self.access_log is None:
            return
        now = self.clock.seconds()
        self.access_log.log(refused_record(self.client_ip, head, host, now, status))

    # Called by the exchange

    def take_buffer(self) -> bytes:
        """Bytes received after the head and not yet handed on."""
        buffer, self._buffer = self._buffer, b""
        return buffer

    def reading_body(self) -> None:
        """Hand further bytes to C{exchange} as request body."""
        self._state = _BODY
        self.resume_reading("pipeline")
        self.restart_timer(self.settings.timeouts.client_body)

    def body_done(self, leftover: bytes) -> None:
        """The request body ended; C{leftover} starts the next request."""
        self._state = _BUSY
        self._buffer = leftover

    def start_tunnel(self, exchange: Exchange) -> None:
        """After a 101, relay raw bytes both ways until either side closes."""
        self._state = _TUNNEL
        self.stop_timer()
        connection = exchange.connection
        assert connection is not None
        connection.transport.registerProducer(
            Valve(lambda: self.pause_reading("backend"), lambda: self.resume_reading("backend")),
            True,
        )
        exchange.body_producer = True
        if self._buffer:
            connection.write(self.take_buffer())
        self.resume_reading("pipeline")

    def exchange_done(self, keep_alive: bool, abort: bool) -> None:
        """The response (or error) for the current request was written."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None and self.request_observers:
            self._observed(exchange)
        if self._state == _CLOSED:
            return
        if abort:
            self._close(abort=True)
            return
        if not keep_alive or self.closing:
            self._close(abort=False)
            return
        self._state = _HEAD
        self.restart_timer(self.settings.timeouts.client_keepalive)
        if self._paused:
            self.resume_reading("pipeline")
        if self._buffer:
            self._read_heads()

    def _observed(self, exchange: Exchange) -> None:
        backend: Any = exchange.request.backend
        route = exchange.route
        duration = self.clock.seconds() - exchange.started
        for observer in self.request_observers:
            observer.request_done(
                route.name,
                route.pool.name,
                "" if backend is None else backend.name,
                exchange.status,
                duration,
            )

    def _close(self, abort: bool) -> None:
        self._state = _CLOSED
        self.stop_timer()
        self._buffer = b""
        if abort:
            self.transport.abortConnection()
        else:
            # A transport whose buffer paused its streaming producer resumes the producer when
            # the buffer drains instead of closing: without the producer, it closes.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    # Writing

    def write_error(
        self,
        status: int,
        detail: str,
        keep_alive: bool = False,
        request: ProxyRequest | None = None,
    ) -> None:
        """
        The error page L{HTTPProxyFactory.error_response} makes; the default one if that
        fails or changes the status.
        """
        factory = self.factory
        response = checked_error_page(
            lambda status, detail: factory.error_response(request, status, detail),
            default_error_page,
            status,
            detail,
            self._log,
        )
        self.write_response(response, keep_alive)

    def write_response(self, response: ErrorResponse, keep_alive: bool) -> None:
        """Send a complete response the proxy made itself."""
        headers = response.headers
        headers.set(b"Content-Type", headers.get(b"content-type") or b"text/plain; charset=utf-8")
        headers.set(b"Content-Length", b"%d" % len(response.body))
        if not keep_alive:
            headers.set(b"Connection", b"close")
        self.write(
            b"HTTP/1.1 %d %s\r\n%s\r\n%s"
            % (response.status, reason_phrase(response.status), headers.serialize(), response.body)
        )

    # Flow control and timers

    def pause_reading(self, reason: str) -> None:
        """Stop reading from the client until every reason to is withdrawn."""
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self._state != _CLOSED:
                self.transport.resumeProducing()

    def _timed_out(self) -> None:
        state = self._state
        exchange = self.exchange
        if state == _HEAD:
            if self._head_started or self._buffer:
                self._log.info("{client}: timed out reading a request head", client=self.client_ip)
                self.write_error(408, "timed out reading the request")
            self._close(abort=False)
        elif state == _BODY and exchange is not None and not exchange.response_started:
            self._log.info("{client}: timed out reading a request body", client=self.client_ip)
            exchange.fail(408, "timed out reading the request")
        elif exchange is not None:
            exchange.timed_out()

    def client_cert_fields(self) -> list[tuple[bytes, bytes]]:
        """The client-certificate fields for backends, worked out once per connection."""
        fields = self._client_cert_fields
        if fields is None:
            from twisted_rp.tls import client_cert_fields

            fields = self._client_cert_fields = client_cert_fields(self.transport)
        return fields

    def tls_parameters(self) -> tuple[str | None, str | None]:
        """The connection's TLS version and cipher, or C{(None, None)} for plain TCP."""
        tls = self._tls
        if tls is None:
            tls = (None, None)
            if self.factory.scheme == "https":
                from twisted_rp.tls import negotiated

                tls = negotiated(self.transport)
            self._tls = tls
        return tls

    def bind(self, connection: BackendConnection) -> None:
        """
        Keep C{connection} for this client connection's later requests (NTLM and Negotiate
        authenticate the connection, not the request); it is never shared or pooled.
        """
        connection.sink = None
        self.bound = connection

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.live.discard(self)
        self._state = _CLOSED
        self.stop_timer()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_lost()
        bound, self.bound = self.bound, None
        if bound is not None:
            bound.abort()

    def shutdown(self) -> None:
        """
        Close once the current response is complete, which says C{Connection: close} if its
        head is not sent yet (now, if idle); a tunnel goes on until either side closes it.
        """
        self.closing = True
        if self.exchange is None and self._state in (_HEAD, _BUSY):
            self._close(abort=False)


def _no_delay(transport: Any) -> None:
    # Responses go out in one write; Nagle would hold back the next one for a delayed ACK.
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)
