"""
One request's way through the proxy: authentication, rewriting, picking a backend, streaming
the request body out and the response back, and reporting how it went.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.http.accesslog import exchange_record
from twisted_rp.http.backend import BackendTLSError, tls_failure
from twisted_rp.http.body import LAST_CHUNK, ChunkedDecoder, LengthDecoder, encode_chunk
from twisted_rp.http.express import ExpressStart
from twisted_rp.http.flow import Valve
from twisted_rp.http.message import (
    IDEMPOTENT,
    ErrorResponse,
    Headers,
    HTTPError,
    ProxyRequest,
    RequestHead,
)
from twisted_rp.http.parser import RequestInfo
from twisted_rp.http.request import RequestSide
from twisted_rp.http.response import ResponseHeads
from twisted_rp.http.routing import Route
from twisted_rp.pool.backend import (
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    may_retry,
)

if TYPE_CHECKING:
    from twisted_rp.http.backend import BackendConnection
    from twisted_rp.http.front import HTTPProxyProtocol


class Exchange(RequestSide, ResponseHeads, ExpressStart):
    """
    A request from one client connection and the response to it.
    """

    # Per-exchange state that starts the same for every request is a class default: an
    # exchange is made for every request, and most keep most of these.
    lease: Lease | None = None
    connection: BackendConnection | None = None
    decoder: ChunkedDecoder | LengthDecoder | None = None
    body_producer = False
    request_done = False
    finished = False
    bytes_sent = 0
    body_received = 0
    context: PickContext | None = None
    #: Names of the backends that failed this request (replaced, never changed in place).
    failed_backends: frozenset[str] = frozenset()
    stale_retried = False
    expect_continue = False
    _early: tuple[list[bytes], bytes | None] | None = None
    attempts = 0
    sent_at = 0.0

    _log = Logger()

    def __init__(
        self,
        front: HTTPProxyProtocol,
        head: RequestHead,
        info: RequestInfo,
        route: Route,
        request: ProxyRequest,
        upgrade: bytes | None,
    ) -> None:
        self.front = front
        self.head = head
        self.info = info
        framing = self.framing = info.framing
        self.route = route
        self.request = request
        if info.expect is not None and framing.kind != "none":
            self.expect_continue = True
        self.upgrade = upgrade
        self.client_method = head.method
        self.client_target = head.target
        self.client_version = head.version
        self.started = front.clock.seconds()
        self._out: list[bytes] = []

    def _may_retry(self) -> bool:
        """Whether another try is allowed: within the pool's retries, on a backend not yet
        failed for this request (trying a lone dead backend again helps nobody)."""
        return may_retry(self.route.pool, self.attempts, self.failed_backends)

    def _pick(self) -> None:
        self.attempts += 1
        bound = self.front.bound
        if bound is not None and not bound.lost:
            # NTLM/Negotiate authenticated the connection, not the request: stay on it.
            bound.backend.active += 1
            self._picked(Lease(bound.backend, self.route.pool))
            return
        request = self.request
        context = self.context = self._context(request.client_ip, request.host, self.head.headers)
        try:
            lease = self.front.factory.pick_backend(request, context)
        except NoBackendAvailable as e:
            self._no_backend(Failure(e))
            return
        except Exception:
            self._no_backend(Failure())
            return
        # Deferred's metaclass makes isinstance() slow: most picks are synchronous.
        if type(lease) is not Lease and isinstance(lease, Deferred):
            lease.addCallbacks(self._picked, self._no_backend)
        else:
            self._picked(lease)

    def _context(self, client_ip: str, host: str, headers: Headers) -> PickContext:
        """What a pool is told of this request."""
        return PickContext(
            "http",
            client_ip,
            host,
            self.client_target.decode("latin-1"),
            None,
            headers.text,
            headers.cookie,
            self.failed_backends,
        )

    def _no_backend(self, failure: Failure) -> None:
        if self.finished:
            return
        if failure.check(NoBackendAvailable):
            self._log.warn(
                "{request_id}: no backend: {reason}",
                request_id=self.request.request_id,
                reason=failure.getErrorMessage(),
            )
        else:
            self._log.failure("picking a backend failed", failure)
        self.fail(503, "no backend available")

    def _picked(self, lease: Lease) -> None:
        if self.finished:
            lease.release(Outcome("aborted"))
            return
        self.lease = lease
        self.request.backend = lease.backend
        bound = self.front.bound
        if bound is not None and bound.backend is lease.backend and not bound.lost:
            self._send(bound)
            return
        connection = self.front.connections.take_idle(lease.backend)
        if connection is not None:
            self._send(connection)
        else:
            self._connect_new()

    def _connect_new(self) -> None:
        assert self.lease is not None
        self.front.connections.connect(self.lease.backend).addCallbacks(
            self._connected, self._connect_failed
        )

    def _connected(self, connection: BackendConnection) -> None:
        if self.finished:
            connection.detach()
            return
        self._send(connection)

    def _connect_failed(self, failure: Failure) -> None:
        lease, self.lease = self.lease, None
        assert lease is not None
        timed_out = failure.check(ConnectTimeout) is not None
        lease.release(Outcome("timeout" if timed_out else "connect_failed"))
        self.failed_backends = self.failed_backends | {lease.backend.name}
        self._log.warn(
            "{request_id}: cannot connect to backend {backend} ({address}): {reason}",
            request_id=self.request.request_id,
            backend=lease.backend.name,
            address=lease.backend.address,
            reason=failure.getErrorMessage(),
        )
        if self.finished:
            return
        if not failure.check(ConnectError, ConnectTimeout):
            self._log.failure("unexpected connect failure", failure)
        # Nothing was sent yet, so trying another backend is safe for any request.
        if self._may_retry():
            self._pick()
        else:
            self.fail(504 if timed_out else 502, "backend unavailable")

    def _send(self, connection: BackendConnection) -> None:
        self.connection = connection
        connection.start(self, self.client_method)
        front = self.front
        head = self.head
        if front.client_full:
            connection.transport.pauseProducing()
        if not self.route.preserve_host:
            head.headers.set(b"Host", connection.backend.address.encode("ascii"))
        data = (
            head.method + b" " + head.target + b" HTTP/1.1\r\n" + head.headers.serialize() + b"\r\n"
        )
        if self.expect_continue:
            front.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.sent_at = front.clock.seconds()
        if self.upgrade is not None or self.framing.kind == "none":
            connection.write(data)
            self._request_sent()
            return
        # Bytes that arrived while connecting: more body, or (after the body) the next request.
        pending = front.take_buffer()
        front.reading_body()
        connection.transport.registerProducer(
            Valve(lambda: front.pause_reading("backend"), lambda: front.resume_reading("backend")),
            True,
        )
        self.body_producer = True
        early, self._early = self._early, None
        if early is None:
            self._forward_body(pending, [data])
            return
        pieces, leftover = early
        if leftover is not None:
            self._forward_decoded(pieces, leftover + pending, [data])
            return
        out = [data]
        out.extend(self._encode_body(pieces))
        self._forward_body(pending, out)

    def client_body(self, data: bytes) -> None:
        """Request body bytes arrived from the client."""
        self._forward_body(data, [])

    def _over_body_limit(self, pieces: list[bytes]) -> bool:
        """Count chunked body bytes; answer 413 and return C{True} past C{limits.max_body}."""
        max_body = self.front.settings.limits.max_body
        if max_body and self.framing.kind == "chunked":
            # A length-framed body was checked against the limit before it was read.
            self.body_received += sum(len(p) for p in pieces)
            if self.body_received > max_body:
                self.fail(413, "request body too large")
                return True
        return False

    def _encode_body(self, pieces: list[bytes]) -> list[bytes]:
        if self.framing.kind == "chunked":
            return [encode_chunk(p) for p in pieces]
        return pieces

    def _forward_body(self, data: bytes, out: list[bytes]) -> None:
        assert self.decoder is not None
        try:
            pieces, leftover = self.decoder.feed(data) if data else ([], None)
        except HTTPError as e:
            self.fail(e.status, e.detail)
            return
        if self._over_body_limit(pieces):
            return
        self._forward_decoded(pieces, leftover, out)

    def _forward_decoded(
        self, pieces: list[bytes], leftover: bytes | None, out: list[bytes]
    ) -> None:
        assert self.connection is not None
        out.extend(self._encode_body(pieces))
        if leftover is not None and self.framing.kind == "chunked":
            out.append(LAST_CHUNK)
        if out:
            self.connection.write(out[0] if len(out) == 1 else b"".join(out))
        if leftover is not None:
            self._unregister_body_producer()
            self.front.body_done(leftover)
            self._request_sent()
        else:
            self.front.restart_timer(self.front.settings.timeouts.client_body)

    def _unregister_body_producer(self) -> None:
        if self.body_producer:
            self.body_producer = False
            connection = self.connection
            if connection is not None and connection.transport is not None:
                connection.transport.unregisterProducer()
            self.front.resume_reading("backend")

    def _request_sent(self) -> None:
        self.request_done = True
        # Without a body, the first-byte timer armed when the head arrived still runs.
        if self.decoder is not None and not self.response_started:
            self.front.restart_timer(self.front.settings.timeouts.backend_first_byte)

    # Response side (a ResponseSink for BackendConnection)

    def on_response_body(self, pieces: list[bytes]) -> None:
        # Called once per read from the backend: the filter flushes here.
        if self.body_filter is not None:
            pieces = self._filtered(pieces)
        for piece in pieces:
            self.bytes_sent += len(piece)
        if self.response_chunked:
            self._out.extend([encode_chunk(p) for p in pieces])
        else:
            self._out.extend(pieces)

    def on_tunnel_data(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self, more: bool = True) -> None:
        """
        Send what the last read from the backend produced, in one write.

        @param more: whether more of the response is expected (the idle timeout restarts).
        """
        out = self._out
        if out:
            self._out = []
            self.front.write(out[0] if len(out) == 1 else b"".join(out))
            if more and not self.finished and self.status != 101:
                self.front.restart_timer(self.front.settings.timeouts.backend_idle)

    def on_response_end(self) -> None:
        body_filter = self.body_filter
        if body_filter is not None and not self._finish_filter(body_filter):
            return
        if self.response_chunked:
            self._out.append(LAST_CHUNK)
        self.flush(more=False)
        outcome = Outcome("server_error" if self.status >= 500 else "ok", self._elapsed())
        self._end(outcome, keep_alive=not self.close_after)

    def on_backend_error(self, reason: str) -> None:
        self._backend_failed(f"invalid response: {reason}", "bad_response", 502)

    def on_backend_lost(self, reason: Failure) -> None:
        connection = self.connection
        tls_problem = tls_failure(reason)
        if tls_problem is not None and connection is not None:
            # The handshake failed: the connection was never established and nothing reached
            # the backend, so this is a connect failure (retried elsewhere like one).
            self.connection = None
            self._connect_failed(Failure(BackendTLSError(tls_problem)))
            return
        replayable = (
            connection is not None
            and not connection.received_response_bytes
            and self.framing.kind == "none"
            and self.client_method in IDEMPOTENT
            and self.upgrade is None
        )
        if replayable and connection is not None:
            self.connection = None
            if connection.requests > 1 and not self.stale_retried:
                # A reused connection the backend closed while idle: the request most
                # likely never reached it; send it again on a fresh connection.
                self.stale_retried = True
                self._connect_new()
                return
            lease = self.lease
            if lease is not None:
                self.failed_backends = self.failed_backends | {lease.backend.name}
            if self._may_retry():
                # The backend died before answering an idempotent request: another one may.
                self.lease = None
                if lease is not None:
                    lease.release(Outcome("bad_response", self._elapsed()))
                self._log.warn(
                    "{request_id}: backend {backend} closed without answering; trying again",
                    request_id=self.request.request_id,
                    backend=lease.backend.name if lease else "?",
                )
                self._pick()
                return
            self.connection = connection
        self._backend_failed(f"connection lost: {reason.getErrorMessage()}", "bad_response", 502)

    def timed_out(self) -> None:
        """The backend took longer than the configured timeout to answer or to go on."""
        if self.response_started:
            self._backend_failed("timed out reading the response", "timeout", 504)
        else:
            self._backend_failed("timed out waiting for the response", "timeout", 504)

    def _backend_failed(self, reason: str, kind: str, status: int) -> None:
        self._log.warn(
            "{request_id}: backend {backend} failed: {reason}",
            request_id=self.request.request_id,
            backend=self.lease.backend.name if self.lease else "?",
            reason=reason,
        )
        if self.response_started:
            # Never fake a clean end: the client must see the response is incomplete.
            self._end(Outcome(kind, self._elapsed()), keep_alive=False, abort=True)
        else:
            self.fail(status, reason, outcome=Outcome(kind, self._elapsed()))

    # Endings

    def _elapsed(self) -> float:
        return self.front.clock.seconds() - self.sent_at if self.sent_at else 0.0

    def respond(self, response: ErrorResponse) -> None:
        """Answer the client with a response of the proxy's own instead of a backend's."""
        self.status = response.status
        self.bytes_sent = len(response.body)
        # A request without a body is complete once its head was read; one with a body
        # that was never read leaves the connection unusable.
        self.request_done = self.framing.kind == "none"
        keep_alive = self.request_done and self.front.wants_keepalive
        self.front.write_response(response, keep_alive)
        self._end(Outcome("aborted"), keep_alive=keep_alive)

    def fail(self, status: int, reason: str, outcome: Outcome | None = None) -> None:
        """Answer with a small error page (the reason is logged, not shown for 5xx)."""
        if self.finished:
            return
        if self.response_started:
            self._end(outcome or Outcome("aborted"), keep_alive=False, abort=True)
            return
        self.status = status
        self.front.write_error(status, reason, request=self.request)
        self._end(outcome or Outcome("aborted"), keep_alive=False)

    def client_lost(self) -> None:
        """The client went away: abandon the backend request."""
        if not self.finished:
            self.close_after = True
            self._end(Outcome("aborted", self._elapsed()), keep_alive=False, abort=True)

    def _end(self, outcome: Outcome, keep_alive: bool, abort: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        connection = self.connection
        if connection is not None:
            if self.body_producer:
                self._unregister_body_producer()
            self.connection = None
            if self.front.client_full and connection.transport is not None:
                connection.transport.resumeProducing()
            if abort or not self.request_done or outcome.kind not in ("ok", "server_error"):
                connection.abort()
            elif self.bind_connection or self.front.bound is connection:
                self.front.bind(connection)
            else:
                connection.detach()
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release(outcome)
        if self.front.access_log is not None:
            self._log_access()
        self.front.exchange_done(keep_alive and self.request_done, abort)

    def _log_access(self) -> None:
        access_log = self.front.access_log
        assert access_log is not None
        access_log.log(exchange_record(self))
