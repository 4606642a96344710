"""
A backend pool mounted in a C{twisted.web} site: L{ProxyResource} forwards every request
under its place in the resource tree to a backend of the pool.

It is built on C{twisted.web.client.Agent}, not on the proxy's own HTTP code, and has
C{twisted.web}'s limits: C{twisted.web} reads each request body completely (into memory, or a
temporary file past 100 KB) before the resource sees the request, so uploads reach the
backend only once they have fully arrived, and it sets no limit on their size.  Responses do
stream, with backpressure: while the client reads slowly, the backend connection is not read.
For large uploads, C{Expect: 100-continue} or protocol upgrades, listen with
L{twisted_rp.http.proxy.HTTPProxyFactory} instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as ResponseTimeout
from twisted.internet.error import ConnectError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as WebHeaders
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twisted_rp.http.forwarding import CLIENT_CERT_FIELDS, HOP_BY_HOP
from twisted_rp.http.message import IDEMPOTENT, ErrorResponse, checked_error_page, reason_phrase
from twisted_rp.http.routing import host_name
from twisted_rp.interfaces import IBackendPool
from twisted_rp.pool.backend import (
    Backend,
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    StickyResponse,
    may_retry,
)
from twisted_rp.pool.sticky import request_cookie
from twisted_rp.settings import HeaderPolicy

__all__ = ["ProxyResource"]

#: Request fields never forwarded: hop-by-hop, re-created by the client (framing), handled by
#: twisted.web (C{Expect}), or only trustworthy when the proxy sets them.
_DROP = HOP_BY_HOP | CLIENT_CERT_FIELDS | {b"content-length", b"expect", b"proxy-authorization"}
_FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"forwarded",
    }
)
_PROTECTED = frozenset({b"host"})
_NO_BODY_STATUS = frozenset({204, 304})


@implementer(IPolicyForHTTPS)
class _BackendTLS:
    """The client TLS of C{https} backends, by the address the agent connects to."""

    def __init__(self) -> None:
        self.creators: dict[tuple[bytes, int], Any] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creators[hostname, port]


class _WebStickyResponse(StickyResponse):
    """A backend's response as the pool's stickiness sees it."""

    def __init__(self, response: IResponse, request: Request) -> None:
        self._response = response
        self._request = request

    def header_values(self, name: str) -> list[str]:
        values = self._response.headers.getRawHeaders(name.encode("latin-1")) or []
        return [value.decode("latin-1") for value in values]

    def set_cookie(self, value: str) -> None:
        self._request.responseHeaders.addRawHeader(b"Set-Cookie", value.encode("latin-1"))


class ProxyResource(Resource):
    """
    Forwards each request for this resource or below it to a backend of C{pool}.

    The backend gets the client's C{Host} (unless C{preserve_host} is false), new
    C{X-Forwarded-For}, C{-Proto}, C{-Host} and C{-Port} fields (appended to or kept when
    the client is in C{trusted_proxies}) and, when the prefix is stripped,
    C{X-Forwarded-Prefix}; hop-by-hop fields are removed both ways.  A connection failure is
    retried on another backend, as the pool's C{retries} allows; the client gets 503 when the
    pool has no backend, 502 when the backend failed before answering, 504 when it did not
    answer in time, and a cut connection when the backend failed in the middle of a response.
    When the client goes away, the backend request is abandoned.

    Subclasses may override L{backend_target} and L{error_response}.

    @param pool: where requests go.
    @param reactor: provides TCP, time and name resolution.
    @param strip_prefix: send C{/a/b} to the backend for C{/PREFIX/a/b}, C{PREFIX} being
        where the resource is in the site; otherwise the path as the client sent it.
    @param connect_timeout: seconds to connect to a backend.
    @param response_timeout: seconds from sending the request to the response head.
    @param idle_timeout: seconds the backend may pause in the middle of a response body
        while the client reads.
    @param connection_pool: the idle backend connections to reuse, shared with other
        resources if given; L{close} closes them.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        pool: IBackendPool,
        reactor: Any,
        *,
        strip_prefix: bool = True,
        preserve_host: bool = True,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        idle_timeout: float = 60.0,
        trusted_proxies: Sequence[str] = (),
        connection_pool: HTTPConnectionPool | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.reactor = reactor
        self.strip_prefix = strip_prefix
        self.preserve_host = preserve_host
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self._trust = HeaderPolicy(trusted_proxies=tuple(trusted_proxies)).trusts
        if connection_pool is None:
            connection_pool = HTTPConnectionPool(reactor, persistent=True)
            connection_pool.maxPersistentPerHost = 8
        self.connection_pool = connection_pool
        self._tls = _BackendTLS()
        self.agent = Agent(
            reactor,
            contextFactory=self._tls,
            connectTimeout=connect_timeout,
            pool=connection_pool,
        )
        # Request bodies are read by the injected reactor, not the global one.
        self.cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    def render(self, request: Request) -> int:
        forward = _Forward(self, request)
        request.notifyFinish().addErrback(forward.client_gone)
        forward.start()
        return NOT_DONE_YET

    def close(self) -> Deferred[None]:
        """Close the idle backend connections (when the site stops)."""
        closed: Deferred[None] = self.connection_pool.closeCachedConnections()
        return closed

    # Override points

    def backend_target(self, request: Request) -> bytes:
        """
        The request target to send to the backend: the one the client sent, without the
        resource's own path when C{strip_prefix} is set.
        """
        target: bytes = request.uri
        if not self.strip_prefix or not request.prepath:
            return target
        path, question, query = target.partition(b"?")
        # Segments as sent (prepath holds decoded ones): drop as many as the site consumed.
        rest = path.split(b"/")[1 + len(request.prepath) :]
        return b"/" + b"/".join(rest) + question + query

    def error_response(self, request: Request, status: int, detail: str) -> ErrorResponse:
        """
        The page for C{status} (502, 503 or 504); C{detail} says why, for the log only.
        Content-Length is set by the resource.
        """
        return ErrorResponse(status, b"%d %s\n" % (status, reason_phrase(status)))

    # Used by _Forward

    def forward_headers(self, request: Request) -> WebHeaders:
        """The request fields for the backend."""
        incoming = request.requestHeaders
        connection = {
            token.strip().lower()
            for value in incoming.getRawHeaders(b"connection") or []
            for token in value.split(b",")
        }
        client_ip = _client_ip(request)
        trusted = self._trust(client_ip)
        drop = _DROP | (connection - _PROTECTED)
        if not trusted:
            drop = drop | _FORWARDING
        if not self.preserve_host:
            drop = drop | {b"host"}
        headers = WebHeaders()
        for name, values in incoming.getAllRawHeaders():
            if name.lower() not in drop:
                headers.setRawHeaders(name, values)
        forwarded_for = client_ip.encode("ascii", "replace")
        if trusted:
            earlier = headers.getRawHeaders(b"x-forwarded-for")
            if earlier:
                forwarded_for = b", ".join([*earlier, forwarded_for])
        headers.setRawHeaders(b"X-Forwarded-For", [forwarded_for])
        host = incoming.getRawHeaders(b"host")
        local: Any = request.getHost()
        for name, value in (
            (b"X-Forwarded-Proto", b"https" if request.isSecure() else b"http"),
            (b"X-Forwarded-Host", host[0] if host else None),
            (b"X-Forwarded-Port", b"%d" % getattr(local, "port", 0)),
        ):
            if value is not None and not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])
        if self.strip_prefix and request.prepath:
            prefix = request.uri.partition(b"?")[0].split(b"/")[: 1 + len(request.prepath)]
            headers.setRawHeaders(b"X-Forwarded-Prefix", [b"/".join(prefix)])
        return headers

    def backend_url(self, backend: Backend, target: bytes) -> bytes:
        """The URL the agent requests: C{target} on C{backend}, registering its TLS."""
        if backend.tls is None:
            return b"http://%s:%d%s" % (
                _url_host(backend.host),
                backend.port_for("http"),
                target,
            )
        port = backend.port_for("https")
        self._tls.creators[backend.host.encode("ascii"), port] = backend.tls
        return b"https://%s:%d%s" % (_url_host(backend.host), port, target)


class _Forward:
    """One request's way through a L{ProxyResource}."""

    _log = Logger()

    def __init__(self, resource: ProxyResource, request: Request) -> None:
        self.resource = resource
        self.request = request
        self.gone = False
        self.deferred: Deferred[None] | None = None
        self.lease: Lease | None = None
        self.backend: Backend | None = None
        self.sent_at = 0.0
        self.head_copied = False

    def start(self) -> None:
        self.deferred = Deferred.fromCoroutine(self.run())
        self.deferred.addErrback(self._crashed)

    def client_gone(self, reason: Failure) -> None:
        self.gone = True
        if self.deferred is not None:
            self.deferred.cancel()

    def _crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self.gone:
            return
        self._log.failure("forwarding a request failed", failure)
        self._release(Outcome("aborted"))
        if not self.gone:
            self._abort_client()

    def _elapsed(self) -> float:
        return float(self.resource.reactor.seconds()) - self.sent_at

    def _release(self, outcome: Outcome) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release(outcome)

    async def run(self) -> None:
        resource = self.resource
        pool = resource.pool
        request = self.request
        target = resource.backend_target(request)
        headers = resource.forward_headers(request)
        method: bytes = request.method
        has_body = request.requestHeaders.hasHeader(
            b"content-length"
        ) or request.requestHeaders.hasHeader(b"transfer-encoding")
        failed: set[str] = set()
        attempts = 0
        while True:
            attempts += 1
            context = self._context(frozenset(failed))
            try:
                picked = pool.pick(context)
                self.lease = await picked if isinstance(picked, Deferred) else picked
            except NoBackendAvailable as e:
                self._log.warn("no backend: {reason}", reason=str(e))
                self._error(503, str(e))
                return
            except Exception:
                if self.gone:
                    return
                self._log.failure("picking a backend failed")
                self._error(503, "picking a backend failed")
                return
            backend = self.backend = self.lease.backend
            body = None
            if has_body and request.content is not None:
                request.content.seek(0)
                body = FileBodyProducer(request.content, resource.cooperator)
            self.sent_at = resource.reactor.seconds()
            try:
                sending = resource.agent.request(
                    method, resource.backend_url(backend, target), headers, body
                )
                response = await sending.addTimeout(
                    resource.response_timeout, resource.reactor, _timed_out
                )
            except Exception as e:
                if self.gone:
                    self._release(Outcome("aborted", self._elapsed()))
                    return
                kind, status = _failure_kind(e)
                self._release(Outcome(kind, self._elapsed()))
                self._log.warn(
                    "backend {backend} ({address}) failed: {error!r}",
                    backend=backend.name,
                    address=backend.address,
                    error=e,
                )
                failed.add(backend.name)
                unanswered = isinstance(e, ResponseNeverReceived) and not has_body
                retry_safe = kind == "connect_failed" or (unanswered and method in IDEMPOTENT)
                if retry_safe and may_retry(self.resource.pool, attempts, failed):
                    continue
                self._error(status, str(e))
                return
            break
        self._copy_head(response)
        # After the copy, which would replace a Set-Cookie the stickiness adds.
        pool.sticky_response_done(context, backend, _WebStickyResponse(response, request))
        await self._relay(response)

    def _context(self, avoid: frozenset[str]) -> PickContext:
        request = self.request
        incoming = request.requestHeaders

        def header(name: str) -> str | None:
            values = incoming.getRawHeaders(name.encode("latin-1"))
            return values[0].decode("latin-1") if values else None

        def cookie(name: str) -> str | None:
            values = incoming.getRawHeaders(b"cookie")
            if not values:
                return None
            return request_cookie("; ".join(v.decode("latin-1") for v in values), name)

        host = incoming.getRawHeaders(b"host")
        return PickContext(
            "http",
            _client_ip(request),
            host_name(host[0] if host else b""),
            request.uri.decode("latin-1"),
            None,
            header,
            cookie,
            avoid,
        )

    def _copy_head(self, response: IResponse) -> None:
        self.head_copied = True
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        if (
            response.length != UNKNOWN_LENGTH
            and response.code not in _NO_BODY_STATUS
            and request.method != b"HEAD"
        ):
            # A HEAD response's Content-Length is an ordinary field, copied above.
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])

    async def _relay(self, response: IResponse) -> None:
        request = self.request
        relay = _BodyRelay(self)
        response.deliverBody(relay)
        try:
            await relay.done
        except Exception as e:
            if self.gone:
                self._release(Outcome("aborted", self._elapsed()))
                return
            timed_out = relay.timed_out
            self._release(Outcome("timeout" if timed_out else "bad_response", self._elapsed()))
            self._log.warn(
                "backend {backend} failed during the response: {error}",
                backend=self.backend.name if self.backend else "?",
                error="idle timeout" if timed_out else repr(e),
            )
            if request.startedWriting:
                # Never fake a clean end: the client must see the response is incomplete.
                self._abort_client()
            else:
                self._error(504 if timed_out else 502, str(e))
            return
        kind = "server_error" if response.code >= 500 else "ok"
        self._release(Outcome(kind, self._elapsed()))
        if not self.gone:
            request.finish()

    def _error(self, status: int, detail: str) -> None:
        if self.gone:
            return
        request = self.request
        resource = self.resource
        page = checked_error_page(
            lambda status, detail: resource.error_response(request, status, detail),
            lambda status, detail: ProxyResource.error_response(resource, request, status, detail),
            status,
            detail,
            self._log,
        )
        request.setResponseCode(status, reason_phrase(status))
        if self.head_copied:
            # The backend's fields (cookies, caching) do not belong on the proxy's page.
            old, request.responseHeaders = request.responseHeaders, WebHeaders()
            for name in (b"Date", b"Server"):
                values = old.getRawHeaders(name)
                if values:
                    request.responseHeaders.setRawHeaders(name, values)
        request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/plain; charset=utf-8"])
        for name, value in page.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(page.body)])
        request.write(page.body)
        request.finish()

    def _abort_client(self) -> None:
        transport = getattr(self.request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            self.request.loseConnection()


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Writes a backend's response body to the client's request, registered with it as the
    producer: while the client's connection is full, the backend connection is not read.
    """

    transport: Any

    def __init__(self, forward: _Forward) -> None:
        self.forward = forward
        self.request = forward.request
        self.done: Deferred[None] = Deferred(self._cancel)
        self.timed_out = False
        self._paused = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if not self.forward.gone:
            self.request.write(data)
        self._arm()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if not self.forward.gone:
            self.request.unregisterProducer()
        if self.done.called:
            return
        if not self.timed_out and reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    # IPushProducer, for the client's connection

    def pauseProducing(self) -> None:
        # A slow client is not the backend's fault: no idle timeout while paused.
        self._paused = True
        self._disarm()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._arm()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # Timers and cancellation

    def _arm(self) -> None:
        if self._paused:
            return
        timeout = self.forward.resource.idle_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.forward.resource.reactor.callLater(timeout, self._idle)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self._timer = None
        self.timed_out = True
        self.transport.stopProducing()

    def _cancel(self, done: Deferred[None]) -> None:
        self._disarm()
        self.transport.stopProducing()


def _timed_out(result: object, timeout: float) -> IResponse:
    # The agent fails a cancelled request in its own way; whatever it said, it was the timer.
    raise ResponseTimeout(f"no response in {timeout} seconds")


def _failure_kind(error: Exception) -> tuple[str, int]:
    """The L{Outcome} kind and the status to answer for a request that got no response."""
    if isinstance(error, (ConnectTimeout, ResponseTimeout)):
        return "timeout", 504
    if isinstance(error, ConnectError):
        return "connect_failed", 502
    return "bad_response", 502


def _client_ip(request: Request) -> str:
    address: Any = request.getClientAddress()
    return str(getattr(address, "host", "") or "")


def _url_host(host: str) -> bytes:
    return (f"[{host}]" if ":" in host else host).encode("ascii")
