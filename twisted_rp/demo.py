"""
C{twistd -n reverseproxy --demo}: three small web applications behind the proxy, to try it
without writing a configuration.

The demo backends are ordinary L{twisted.web} sites on 127.0.0.1, named demo-1 to demo-3.
Each answers C{GET /} with its name, how many requests it served, and the forwarding headers
the proxy added.  demo-2 can be made to fail (C{POST /toggle}): it then answers 503 to
everything, its health check fails, and within about 4 seconds the pool takes it out of
rotation; toggled back, it returns after two good checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define
from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_rp.http.accesslog import AccessLog
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IBackendPool
from twisted_rp.pool import Backend, BackendPool, PassiveHealth
from twisted_rp.pool.health import HealthChecker, HTTPMonitor

DEMO_HOST = "127.0.0.1"
DEFAULT_PROXY_ENDPOINT = "tcp:8080:interface=127.0.0.1"
DEFAULT_BACKEND_PORTS = (8081, 8082, 8083)

#: The demo pool's health check: C{GET /health} every 2 seconds; 2 failures in a row take a
#: backend out (so within about 4 seconds), 2 successes bring it back.
HEALTH_PATH = "/health"
HEALTH_INTERVAL = 2.0
HEALTH_TIMEOUT = 1.0
HEALTH_RISE = 2
HEALTH_FALL = 2

# Shown in the response body so users see what the proxy added on the way.
_SHOWN_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded", "Via", "X-Request-ID")


@define
class DemoApp:
    """
    The state of one demo backend.

    @ivar healthy: whether it answers normally; when not, everything but C{/toggle} gets a 503.
    @ivar served: how many greetings it has answered.
    """

    name: str
    healthy: bool = True
    served: int = 0


class DemoResource(Resource):
    """
    The whole web application of a demo backend: C{/toggle}, C{/health} and a greeting
    everywhere else.
    """

    isLeaf = True

    def __init__(self, app: DemoApp) -> None:
        super().__init__()
        self.app = app

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        app = self.app
        if request.path == b"/toggle":
            if request.method != b"POST":
                request.setResponseCode(405)
                request.setHeader(b"Allow", b"POST")
                return b"use POST /toggle\n"
            app.healthy = not app.healthy
            state = "healthy" if app.healthy else "failing (503 to everything but /toggle)"
            return f"{app.name} is now {state}\n".encode()
        if not app.healthy:
            request.setResponseCode(503)
            return f"{app.name} is failing; POST /toggle to make it healthy again\n".encode()
        if request.path == b"/health":
            return b"ok\n"
        app.served += 1
        lines = [f"Hello from {app.name} (request #{app.served})"]
        lines.append(f"Host: {_header(request, 'Host') or '-'}")
        lines.extend(
            f"{name}: {value}" for name in _SHOWN_HEADERS if (value := _header(request, name))
        )
        return ("\n".join(lines) + "\n").encode()


def _header(request: Request, name: str) -> str | None:
    value = request.getHeader(name.encode("ascii"))
    return value.decode("latin-1") if value is not None else None


class DemoSite(Site):
    """
    A demo backend's site; it does not log requests, since the proxy's access log shows them.
    """

    def __init__(self, app: DemoApp, reactor: Any) -> None:
        super().__init__(DemoResource(app), reactor=reactor)
        self.app = app
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: http.Request) -> None:
        pass


class _OpenConnections(WrappingFactory):
    """
    Remembers a factory's open connections so that stopping can close them and wait.
    """

    def __init__(self, wrapped: IProtocolFactory) -> None:
        super().__init__(wrapped)
        self.noisy = False
        self._all_closed: list[Deferred[None]] = []

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        """Abort every open connection; fires once all of them are closed."""
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return d


class ListeningService(Service):
    """
    Listens on C{endpoint} while running.

    Unlike L{twisted.application.internet.StreamServerEndpointService} it tells where it
    listens (L{address}), which matters when the endpoint's port is 0.
    """

    _log = Logger()

    def __init__(
        self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        self.setName(name)
        self.endpoint = endpoint
        self.factory = factory
        self._port: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self.endpoint.listen(self.factory)
        self._port.addErrback(self._cannot_listen)

    def _cannot_listen(self, failure: Failure) -> Failure:
        # The message says which address is in use, which is all there is to know.
        self._log.error("{service}: {reason}", service=self.name, reason=failure.getErrorMessage())
        return failure

    def address(self) -> Deferred[IAddress]:
        """Fires with the address listened on, once listening."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running")
        listening: Deferred[IListeningPort] = Deferred()
        self._port.addBoth(_chain_to, listening)
        return listening.addCallback(lambda port: port.getHost())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = port.addCallbacks(
            lambda listening_port: listening_port.stopListening(), lambda failure: None
        )
        return stopped


def _chain_to(result: Any, listening: Deferred[Any]) -> Any:
    """Pass C{result} on to C{listening} too, without consuming it."""
    if isinstance(result, Failure):
        listening.errback(result)
    else:
        listening.callback(result)
    return result


class DemoBackendService(ListeningService):
    """
    One demo backend: a L{DemoSite} listening on 127.0.0.1; once listening, the L{Backend}
    that the proxy's pool uses for it is given the real port.
    """

    def __init__(self, app: DemoApp, backend: Backend, reactor: Any) -> None:
        self.app = app
        self.backend = backend
        self._connections = _OpenConnections(DemoSite(app, reactor))
        super().__init__(
            app.name,
            TCP4ServerEndpoint(reactor, backend.port, interface=backend.host),
            self._connections,
        )

    def startService(self) -> None:
        super().startService()
        # A failure to listen was logged already.
        self.address().addCallbacks(self._listening, lambda failure: None)

    def _listening(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.backend.port = address.port

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        return gatherResults([stopped, self._connections.close_all()]).addCallback(lambda _: None)


def make_demo_pool(backends: Sequence[Backend], clock: Any = None) -> BackendPool:
    """
    The pool of the demo backends, round-robin, with passive health: three 5xx answers in a
    row eject a backend at once, which shortens the time users see a failing backend's
    errors when traffic is heavy.  The ejection lasts longer than the active check
    (L{make_demo_health_checker}) needs to notice, which then keeps the backend out until it
    recovers.
    """
    passive = PassiveHealth(consecutive_failures=3, base_ejection=5.0, max_ejection=10.0)
    return BackendPool("demo", backends, clock=clock, passive=passive)


def make_demo_health_checker(pool: BackendPool, reactor: Any) -> HealthChecker:
    """
    The active health check of the demo pool: C{GET /health} answered 2xx or 3xx.
    """
    checker = HealthChecker(
        pool,
        HTTPMonitor(reactor, path=HEALTH_PATH),
        reactor,
        interval=HEALTH_INTERVAL,
        timeout=HEALTH_TIMEOUT,
        rise=HEALTH_RISE,
        fall=HEALTH_FALL,
    )
    checker.setName("health")
    return checker


class DemoService(MultiService):
    """
    The demo backends and the proxy in front of them.

    @ivar apps: the demo backends' state, demo-1 first.
    @ivar pool: the pool the proxy balances over.
    @ivar health: the service checking the pool's backends.
    """

    def __init__(
        self,
        reactor: Any,
        proxy_endpoint: str = DEFAULT_PROXY_ENDPOINT,
        backend_ports: Sequence[int] = DEFAULT_BACKEND_PORTS,
    ) -> None:
        super().__init__()
        self.apps = [DemoApp(f"demo-{n}") for n in range(1, len(backend_ports) + 1)]
        backends = [
            Backend(app.name, DEMO_HOST, port)
            for app, port in zip(self.apps, backend_ports, strict=True)
        ]
        # Children start in order: the backends know their real ports before the proxy listens.
        self.backend_services = [
            DemoBackendService(app, backend, reactor)
            for app, backend in zip(self.apps, backends, strict=True)
        ]
        for service in self.backend_services:
            service.setServiceParent(self)
        self.pool = make_demo_pool(backends, reactor)
        pool: IBackendPool = self.pool
        factory = HTTPProxyFactory(
            reactor,
            Router([Route(pool, name="demo")]),
            access_log=AccessLog.to_logger("combined"),
        )
        self.proxy = ListeningService("proxy", serverFromString(reactor, proxy_endpoint), factory)
        self.proxy.setServiceParent(self)
        # Last, so that it starts once the backends listen and stops first.
        self.health = make_demo_health_checker(self.pool, reactor)
        self.health.setServiceParent(self)

    def addresses(self) -> Deferred[dict[str, IAddress]]:
        """
        Fires, once everything listens, with the address of C{"proxy"} and of each demo backend
        by name.
        """
        return Deferred.fromCoroutine(self._addresses())

    async def _addresses(self) -> dict[str, IAddress]:
        named: list[tuple[str, ListeningService]] = [("proxy", self.proxy)]
        named.extend((service.app.name, service) for service in self.backend_services)
        return {name: await service.address() for name, service in named}


def make_demo_service(
    reactor: Any,
    proxy_endpoint: str = DEFAULT_PROXY_ENDPOINT,
    backend_ports: Sequence[int] = DEFAULT_BACKEND_PORTS,
) -> DemoService:
    """
    The demo: backends demo-1, demo-2, ... on 127.0.0.1 at C{backend_ports} (0 picks free
    ports) and the proxy, round-robin over them with health checks, listening on
    C{proxy_endpoint}.
    """
    return DemoService(reactor, proxy_endpoint, backend_ports)


def demo_instructions(proxy_port: int = 8080, toggle_port: int = DEFAULT_BACKEND_PORTS[1]) -> str:
    """
    What to try once the demo runs, as printed by C{twistd reverseproxy --demo}.
    """
    proxy = f"http://{DEMO_HOST}:{proxy_port}"
    toggle = f"curl -X POST http://{DEMO_HOST}:{toggle_port}/toggle"
    return f"""\
twisted_rp demo: the proxy on {proxy}/ in front of demo-1, demo-2 and demo-3
(127.0.0.1:8081-8083), round-robin, each checked with GET /health every 2 s.
Try, in another terminal:

  Balancing: three requests, three backends
    for i in 1 2 3; do curl -s {proxy}/; done

  Failover: break demo-2 (it answers 503 to everything), then keep asking
    {toggle}
    while sleep 0.5; do curl -s {proxy}/ | head -1; done
  For up to ~4 s every third answer is demo-2's 503; then its health check
  fails twice, the pool takes it out and only demo-1 and demo-3 answer.
  The log says why: "pool demo: backend demo-2 (...): 2 failed checks: HTTP
  status 503".  Run the toggle again: after two good checks (~4 s) demo-2 is
  back in rotation.

  Headers: what the proxy sends the backend (Host, X-Forwarded-For, ...) and returns to you
    curl -si -H 'Host: www.example.test' {proxy}/

Each request is logged below in the combined format.  Stop with Ctrl-C.
"""
