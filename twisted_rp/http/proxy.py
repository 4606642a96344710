"""
The factory an HTTP listener serves (L{HTTPProxyFactory}) and its override points; the
protocol for each client connection is L{twisted_rp.http.front.HTTPProxyProtocol}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.forwarding import RequestForwarding
from twisted_rp.http.front import HTTPProxyProtocol
from twisted_rp.http.message import (
    ErrorResponse,
    ProxyRequest,
    default_error_page,
    reason_phrase,
)
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IAccessLog, IRequestObserver
from twisted_rp.pool.backend import Lease, PickContext
from twisted_rp.settings import ProxySettings


class HTTPProxyFactory(Factory):
    """
    Serves one listener: reverse-proxies every connection by C{router}.

    @param reactor: provides TCP (for backend connections) and time.
    @param scheme: C{"http"} or C{"https"}, as the client sees it.
    @param connections: backend connections, shared with other factories if given.
    @param send_now: use the immediate write path (L{twisted_rp.sendnow}) where possible.
    @param client_cert_headers: tell backends about the client's TLS certificate (RFC 9440
        C{Client-Cert} and C{Client-Cert-Chain}, C{X-SSL-Client-Verify}, C{-S-DN},
        C{-Fingerprint}); for HTTPS listeners that ask for client certificates.
    @param hsts: the C{Strict-Transport-Security} value added to responses that have none.
    @ivar request_observers: told of every answered request; add to the list at any time.
    @ivar live: the open client connections, for a graceful stop.

    A subclass may override L{route_for}, L{rewrite_request}, L{pick_backend} and
    L{error_response}.
    """

    protocol = HTTPProxyProtocol
    # The listening port already logs "HTTPProxyFactory starting on PORT".
    noisy = False

    def __init__(
        self,
        reactor: Any,
        router: Router,
        settings: ProxySettings = ProxySettings(),
        scheme: str = "http",
        access_log: IAccessLog | None = None,
        connections: BackendConnections | None = None,
        send_now: bool = True,
        client_cert_headers: bool = False,
        hsts: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.router = router
        self.settings = settings
        self.scheme = scheme
        self.access_log = access_log
        self.request_observers: list[IRequestObserver] = []
        self.live: set[HTTPProxyProtocol] = set()
        self.send_now = send_now
        self.forwarding = RequestForwarding.from_policy(settings.headers)
        self.client_cert_headers = client_cert_headers
        #: Whether a request no route hook acts on may skip the request hooks: not when a
        #: subclass rewrites requests.
        self.plain_requests = type(self).rewrite_request is HTTPProxyFactory.rewrite_request
        #: Whether a simple request no hook acts on may take the express way
        #: (L{Exchange.start_express}): not when a subclass overrides how requests are routed,
        #: rewritten or sent to a backend.
        self.express = (
            self.plain_requests
            and not client_cert_headers
            and type(self).route_for is HTTPProxyFactory.route_for
            and type(self).pick_backend is HTTPProxyFactory.pick_backend
        )
        self.hsts = hsts.encode("latin-1") if hsts else None
        self.connections = connections or BackendConnections(
            reactor, reactor, settings.timeouts, settings.limits, send_now
        )

    def buildProtocol(self, addr: Any) -> HTTPProxyProtocol:
        return HTTPProxyProtocol(self)

    # Override points (docs/extending.rst): called for every request, they must not block.

    def route_for(self, request: ProxyRequest) -> Route | None:
        """
        The route of C{request}, whose head is as the client sent it and C{host} the
        lower-cased host name; L{None} answers 404.  By default, C{self.router}'s choice.
        """
        return self.router.route_target(request.host, request.head.target)

    def rewrite_request(self, request: ProxyRequest) -> ErrorResponse | None:
        """
        Change C{request.head}, as it will be sent, after the route's authenticators and
        rewriters; or return an L{ErrorResponse} to answer with.  By default, nothing.
        """
        return None

    def pick_backend(self, request: ProxyRequest, context: PickContext) -> Lease | Deferred[Lease]:
        """
        Lease a backend for C{request}, again for each retry (C{context.avoid} names the
        failed backends).  By default, C{request.route.pool.pick(context)}.

        @raise twisted_rp.pool.NoBackendAvailable: answers 503.
        """
        return request.route.pool.pick(context)

    def error_response(
        self, request: ProxyRequest | None, status: int, detail: str
    ) -> ErrorResponse:
        """
        The page for an error the proxy answers itself, with C{status} (else, or if this
        raises, the default page is sent); C{Content-Type} defaults to plain text.

        @param request: L{None} when the request head could not be read (400, 408, 431, ...).
        @param detail: why, for logs: the default page shows it for 4xx only, since for 5xx
            it may name backends and addresses.
        """
        return default_error_page(status, detail)

    def stopFactory(self) -> None:
        self.connections.close_idle()


# HTTPProxyProtocol and reason_phrase have been importable from here since the start.
__all__ = ["HTTPProxyFactory", "HTTPProxyProtocol", "reason_phrase"]
