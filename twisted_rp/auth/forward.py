"""
Forward authentication: an auth service decides on each request (single sign-on in front of
several applications, as Traefik's C{forwardAuth} and nginx's C{auth_request}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as WebHeaders
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from twisted_rp.http.forwarding import CLIENT_CERT_FIELDS, HOP_BY_HOP
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.interfaces import IAuthenticator

_log = Logger()

#: The most of an auth service's response body passed on to the client.
BODY_LIMIT = 64 * 1024

#: Never passed from the client to the auth service: set anew by the proxy, or they would
#: let a client tell the auth service where it comes from.
_NOT_TO_SERVICE = (
    HOP_BY_HOP
    | CLIENT_CERT_FIELDS
    | {
        b"host",
        b"content-length",
        b"expect",
        b"proxy-authorization",
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-method",
        b"x-forwarded-uri",
        b"x-forwarded-prefix",
    }
)

#: Never passed from the auth service's response to the client: the proxy frames its own.
_NOT_TO_CLIENT = HOP_BY_HOP | {b"content-length"}


class _CappedBody(Protocol):
    """Collects a response body up to a limit, then stops reading it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.finished: Deferred[tuple[bytes, bool]] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[tuple[bytes, bool]]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self._limit - self._size
        if len(data) > room:
            self._parts.append(data[:room])
            self._size = self._limit
            self.truncated = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)
        self._size += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if self.truncated or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback((b"".join(self._parts), self.truncated))
        else:
            self.finished.errback(reason)


def read_capped(response: IResponse, limit: int) -> Deferred[tuple[bytes, bool]]:
    """
    The first C{limit} bytes of C{response}'s body, and whether there was more (in which case
    the rest is not read and the connection is dropped).
    """
    reader = _CappedBody(limit)
    response.deliverBody(reader)
    return reader.finished


@implementer(IAuthenticator)
class ForwardAuthenticator:
    """
    Asks an auth service whether a request may pass.

    For each request, a C{GET} goes to C{url} with the client's request headers (all but
    hop-by-hop and framing fields, or only C{request_headers}: the auth service needs the
    C{Cookie} or C{Authorization} it decides on) and, set by the proxy whatever the client
    sent, C{X-Forwarded-Method}, C{X-Forwarded-Proto}, C{X-Forwarded-Host},
    C{X-Forwarded-Uri} (the target as the client sent it) and C{X-Forwarded-For} (the client's
    address alone).

    A 2xx answer allows the request: each of C{copy_headers} is removed from it and set to
    the values of the auth service's response, if any (so that a client can never send them
    itself), and C{identity_from}, when set, names the response header whose value becomes
    C{request.identity}.  Any other answer (401 with C{WWW-Authenticate}, 302 to a login
    page, 403) goes to the client as it is: status, headers (less hop-by-hop fields) and body
    up to 64 KiB.  A larger body is dropped (with its C{Content-Type} and
    C{Content-Encoding}), keeping status and headers, since half a body would be corrupt.

    When the auth service cannot be reached, times out, or breaks its response, the client
    gets C{failure_status}, 503 by default: the request is refused (never let through), and
    the status says the refusal is temporary.  (Traefik and nginx answer 500 there; set
    C{failure_status=500} to match them.)
    """

    def __init__(
        self,
        url: str,
        agent: IAgent | None = None,
        reactor: Any = None,
        copy_headers: Sequence[str] = ("X-Auth-User",),
        request_headers: Sequence[str] | None = None,
        identity_from: str | None = None,
        timeout: float = 5.0,
        failure_status: int = 503,
    ) -> None:
        """
        @param url: the auth service's C{http://} or C{https://} URL.
        @param agent: makes the sub-requests; by default an L{Agent} with a persistent
            connection pool (see L{close}).
        @param reactor: provides C{IReactorTime} (and what L{Agent} needs when C{agent} is
            not given); the global reactor by default.
        @param request_headers: the only client headers passed to the auth service; L{None}
            passes all of them.
        @param timeout: seconds for the whole sub-request, body included.
        @raise ValueError: C{url} is not an HTTP(S) URL, or C{failure_status} is not 5xx.
        """
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        if not 500 <= failure_status <= 599:
            raise ValueError(f"failure_status must be 5xx, not {failure_status}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = url
        self._reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, pool=self._pool)
        self._agent = agent
        self._copy = tuple(name.encode("ascii") for name in copy_headers)
        self._request_headers = (
            None
            if request_headers is None
            else frozenset(name.lower().encode("ascii") for name in request_headers)
        )
        self._identity_from = None if identity_from is None else identity_from.encode("ascii")
        self._timeout = timeout
        self._failure_status = failure_status

    def __repr__(self) -> str:
        return f"ForwardAuthenticator({self.url!r})"

    def close(self) -> Deferred[None]:
        """Close the idle connections of the default pool (at shutdown)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    def sub_request_headers(self, request: ProxyRequest) -> WebHeaders:
        """The headers of the sub-request for C{request}."""
        headers = request.head.headers
        connection = frozenset(headers.tokens(b"connection"))
        wanted = self._request_headers
        out = WebHeaders()
        for lname, name, value in headers.fields:
            if lname in _NOT_TO_SERVICE or lname in connection:
                continue
            if wanted is not None and lname not in wanted:
                continue
            out.addRawHeader(name, value)
        host = headers.get(b"host") or request.host.encode("idna")
        out.setRawHeaders(b"X-Forwarded-Method", [request.head.method])
        out.setRawHeaders(b"X-Forwarded-Proto", [request.scheme.encode("ascii")])
        out.setRawHeaders(b"X-Forwarded-Host", [host])
        out.setRawHeaders(b"X-Forwarded-Uri", [request.head.target])
        out.setRawHeaders(b"X-Forwarded-For", [request.client_ip.encode("ascii")])
        return out

    def authenticate(self, request: ProxyRequest) -> Deferred[ErrorResponse | None]:
        asking = Deferred.fromCoroutine(self._ask(request))
        asking.addTimeout(self._timeout, self._reactor)
        return asking.addErrback(self._unavailable, request)

    async def _ask(self, request: ProxyRequest) -> ErrorResponse | None:
        response: IResponse = await self._agent.request(
            b"GET", self.url.encode("ascii"), self.sub_request_headers(request), None
        )
        body, truncated = await read_capped(response, BODY_LIMIT)
        if 200 <= response.code < 300:
            self._allow(request, response)
            return None
        return self._deny(request, response, body, truncated)

    def _allow(self, request: ProxyRequest, response: IResponse) -> None:
        headers = request.head.headers
        for name in self._copy:
            headers.remove(name)
            for value in response.headers.getRawHeaders(name, ()):
                headers.add(name, value)
        if self._identity_from is not None:
            identity = response.headers.getRawHeaders(self._identity_from)
            if identity:
                request.identity = identity[0].decode("utf-8", "replace")

    def _deny(
        self, request: ProxyRequest, response: IResponse, body: bytes, truncated: bool
    ) -> ErrorResponse:
        drop = _NOT_TO_CLIENT
        if truncated:
            _log.warn(
                "auth service response over {limit} bytes: passing status and headers only",
                limit=BODY_LIMIT,
            )
            body = b""
            drop = drop | {b"content-type", b"content-encoding"}
        headers = Headers()
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in drop:
                for value in values:
                    headers.add(name, value)
        _log.info(
            "auth service refused {method} {target} from {client}: {status}",
            method=request.head.method.decode("latin-1"),
            target=request.head.target.decode("latin-1"),
            client=request.client_ip,
            status=response.code,
        )
        return ErrorResponse(response.code, body, headers)

    def _unavailable(self, failure: Failure, request: ProxyRequest) -> ErrorResponse:
        _log.warn(
            "auth service {url} failed for {client}: {error!r}",
            url=self.url,
            client=request.client_ip,
            error=failure.value,
        )
        return ErrorResponse(
            self._failure_status, b"%d auth service unavailable\n" % self._failure_status
        )
