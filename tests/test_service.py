"""
Tests for L{twisted_rp.service}: from a configuration to listening services.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolver
from twisted.internet.testing import MemoryReactorClock
from twisted.names.common import ResolverBase
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_rp.config import Config, ConfigError, parse_config
from twisted_rp.http.message import AccessRecord
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.pool import BackendPool, RoundRobin
from twisted_rp.pool.balancers import HashBalancer, LeastConnections
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import HealthChecker, HTTPMonitor, TCPMonitor
from twisted_rp.pool.sticky import SourceIPStickiness
from twisted_rp.service import build_pools, build_router, build_service
from twisted_rp.settings import ProxySettings
from twisted_rp.tcp import TCPProxyFactory

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

TWO_LISTENERS = """
[[listener]]
name = "public"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[listener]]
name = "internal"
protocol = "http"
endpoint = "tcp:9090:interface=127.0.0.1"

[[route]]
hosts = ["www.example.test"]
pool = "web"

[[route]]
path_prefix = "/api"
strip_prefix = true
preserve_host = false
pool = "api"
listeners = ["internal"]

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "10.0.0.1:8000"
name = "web-1"

[[pool.web.backends]]
address = "10.0.0.2:8000"
name = "web-2"
weight = 3
backup = true

[pool.api]
[[pool.api.backends]]
address = "10.0.1.1:9000"
"""


def config_from(text: str, **log: str) -> Config:
    data: dict[str, Any] = tomllib.loads(text)
    if log:
        data["log"] = log
    return parse_config(data, "test.toml")


def factory_of(service: object) -> HTTPProxyFactory:
    assert isinstance(service, StreamServerEndpointService)
    factory = service.factory
    assert isinstance(factory, HTTPProxyFactory)
    return factory


class BuildPoolsTests(SynchronousTestCase):
    """
    L{build_pools} makes one L{BackendPool} per configured pool.
    """

    def test_backends(self) -> None:
        pools = build_pools(config_from(TWO_LISTENERS))
        self.assertEqual(sorted(pools), ["api", "web"])
        web = pools["web"]
        self.assertIsInstance(web, BackendPool)
        self.assertEqual(web.name, "web")
        self.assertEqual(
            [(b.name, b.host, b.port, b.weight, b.backup) for b in web.backends()],
            [("web-1", "10.0.0.1", 8000, 1, False), ("web-2", "10.0.0.2", 8000, 3, True)],
        )
        self.assertEqual([b.name for b in pools["api"].backends()], ["10.0.1.1:9000"])

    def test_own_balancer(self) -> None:
        """
        Each pool balances on its own: taking turns in one pool does not skip backends of
        another.
        """
        pools = build_pools(config_from(TWO_LISTENERS))
        self.assertIsInstance(pools["web"].balancer, RoundRobin)
        self.assertIsNot(pools["web"].balancer, pools["api"].balancer)


class BuildRouterTests(SynchronousTestCase):
    """
    L{build_router} gives a listener the routes that apply to it.
    """

    def test_routes_for_listener(self) -> None:
        config = config_from(TWO_LISTENERS)
        pools = build_pools(config)
        public, internal = config.listeners
        public_routes = build_router(config, public, pools).routes
        internal_routes = build_router(config, internal, pools).routes
        self.assertEqual([r.name for r in public_routes], ["route[0]", "route[2]"])
        self.assertEqual([r.name for r in internal_routes], ["route[0]", "route[1]", "route[2]"])

    def test_route_settings(self) -> None:
        config = config_from(TWO_LISTENERS)
        pools = build_pools(config)
        router = build_router(config, config.listeners[1], pools)
        hosts, api, fallback = router.routes
        self.assertEqual(hosts.hosts, ("www.example.test",))
        self.assertIs(hosts.pool, pools["web"])
        self.assertEqual(
            (api.path_prefix, api.strip_prefix, api.preserve_host), ("/api", True, False)
        )
        self.assertIs(api.pool, pools["api"])
        self.assertEqual((fallback.hosts, fallback.path_prefix), ((), "/"))

    def test_routing(self) -> None:
        """
        The router sends requests where the configuration says.
        """
        config = config_from(TWO_LISTENERS)
        pools = build_pools(config)
        router = build_router(config, config.listeners[1], pools)
        api_route = router.route("anything.test", "/api/users")
        assert api_route is not None
        self.assertIs(api_route.pool, pools["api"])
        public_router = build_router(config, config.listeners[0], pools)
        web_route = public_router.route("anything.test", "/api/users")
        assert web_route is not None
        self.assertIs(web_route.pool, pools["web"])


class BuildServiceTests(SynchronousTestCase):
    """
    L{build_service} assembles one listening service per listener.
    """

    def test_services_named_after_listeners(self) -> None:
        service = build_service(config_from(TWO_LISTENERS), MemoryReactorClock())
        for name in ("public", "internal"):
            self.assertIsInstance(service.getServiceNamed(name), StreamServerEndpointService)

    def test_pool_shared_between_listeners(self) -> None:
        """
        Both listeners' routes to pool C{web} use the same pool object, so round-robin and
        backend state span listeners.
        """
        service = build_service(config_from(TWO_LISTENERS), MemoryReactorClock())
        public = factory_of(service.getServiceNamed("public"))
        internal = factory_of(service.getServiceNamed("internal"))
        web_pools = {id(route.pool) for route in public.router.routes}
        web_pools.add(id(internal.router.routes[0].pool))
        web_pools.add(id(internal.router.routes[2].pool))
        self.assertEqual(len(web_pools), 1)
        self.assertEqual(internal.router.routes[0].pool.name, "web")
        self.assertIsNot(public.router, internal.router)

    def test_settings_reach_factories(self) -> None:
        config = config_from(TWO_LISTENERS + "\n[timeouts]\nbackend_connect = 2.5\n")
        service = build_service(config, MemoryReactorClock())
        factory = factory_of(service.getServiceNamed("public"))
        self.assertEqual(factory.settings.timeouts.backend_connect, 2.5)
        self.assertEqual(factory.scheme, "http")
        self.assertIsNone(factory.access_log)

    def test_listens_on_endpoints(self) -> None:
        """
        Starting the service listens where each listener's endpoint says.
        """
        reactor = MemoryReactorClock()
        service = build_service(config_from(TWO_LISTENERS), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = {
            (port, interface): factory for port, factory, _, interface in reactor.tcpServers
        }
        self.assertEqual(set(listening), {(8080, "127.0.0.1"), (9090, "127.0.0.1")})
        self.assertIs(listening[(8080, "127.0.0.1")], factory_of(service.getServiceNamed("public")))

    def test_access_log_file(self) -> None:
        """
        With C{log.access_file}, every listener logs to that one file, which is closed when
        the service stops.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "access.log")
        config = config_from(TWO_LISTENERS, access="json", access_file=path)
        service = build_service(config, MemoryReactorClock())
        service.startService()
        public = factory_of(service.getServiceNamed("public"))
        internal = factory_of(service.getServiceNamed("internal"))
        self.assertIs(public.access_log, internal.access_log)
        assert public.access_log is not None
        record = AccessRecord(
            "127.0.0.1",
            "GET",
            "/",
            "HTTP/1.1",
            200,
            2,
            "",
            "",
            "h",
            "rid",
            "web-1",
            "web",
            0.0,
            0.1,
            0.1,
        )
        public.access_log.log(record)
        service.stopService()
        public.access_log.log(record)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_access_log_file_cannot_open(self) -> None:
        missing = os.path.join(self.mktemp(), "no", "such", "access.log")
        config = config_from(TWO_LISTENERS, access="combined", access_file=missing)
        error = self.assertRaises(ConfigError, build_service, config, MemoryReactorClock())
        self.assertTrue(str(error).startswith("test.toml: log.access_file: cannot open"))


POOLS = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[listener]]
name = "db"
protocol = "tcp"
endpoint = "tcp:5432:interface=127.0.0.1"
pool = "web"
send_proxy = "v1"
accept_proxy = true
trusted_proxies = ["10.0.0.0/8"]
idle_timeout = 60

[[route]]
pool = "web"

[pool.web]
balance = "least_connections"
retries = 1
slow_start = 10
queue_size = 5
queue_timeout = 3

[[pool.web.backends]]
address = "10.0.0.1:8000"
name = "web-1"
max_connections = 7
ports = { tcp = 5432 }

[pool.web.health]
kind = "http"
path = "/health"
expect_status = [200, 204]
interval = 3
fall = 4

[pool.web.passive]
consecutive_failures = 2

[pool.web.sticky]
kind = "source_ip"
expiry = 60

[pool.dyn]
balance = "hash"
hash_key = "header:X-User"

[pool.dyn.dns]
name = "dyn.internal"
port = 8080

[pool.dyn.health]
kind = "tcp"
"""


@implementer(IResolver)
class NoAnswers(ResolverBase):
    """A resolver that never answers; enough for services that are built but not started."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> Deferred[object]:
        return Deferred()


class PoolServiceTests(SynchronousTestCase):
    """
    L{build_service} gives pools their settings, health checkers and DNS membership, and
    serves TCP listeners from the same pool objects as HTTP ones.
    """

    def build(self) -> tuple[MultiService, MemoryReactorClock, IResolver]:
        reactor = MemoryReactorClock()
        resolver = NoAnswers()
        return build_service(config_from(POOLS), reactor, resolver), reactor, resolver

    def test_pool_settings(self) -> None:
        pools = build_pools(config_from(POOLS), MemoryReactorClock())
        web = pools["web"]
        self.assertIsInstance(web.balancer, LeastConnections)
        self.assertIsInstance(pools["dyn"].balancer, HashBalancer)
        self.assertEqual(
            (web.retries, web.slow_start, web.queue_size, web.queue_timeout), (1, 10.0, 5, 3.0)
        )
        (backend,) = web.backends()
        self.assertEqual((backend.max_connections, backend.port_for("tcp")), (7, 5432))
        assert web.passive is not None
        self.assertEqual(web.passive.consecutive_failures, 2)
        self.assertIsInstance(web.stickiness, SourceIPStickiness)
        self.assertIsNone(pools["dyn"].stickiness)
        self.assertIsNone(pools["dyn"].passive)
        self.assertEqual(pools["dyn"].backends(), ())

    def test_health_checkers(self) -> None:
        service, _, _ = self.build()
        web = service.getServiceNamed("health:web")
        dyn = service.getServiceNamed("health:dyn")
        assert isinstance(web, HealthChecker) and isinstance(dyn, HealthChecker)
        self.assertIsInstance(web._monitor, HTTPMonitor)
        self.assertIsInstance(dyn._monitor, TCPMonitor)
        self.assertEqual((web._interval, web._fall), (3.0, 4))

    def test_health_checks_run(self) -> None:
        """
        Started, the health checker probes the pool's backends on the reactor.
        """
        service, reactor, _ = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        # The memory reactor resolves every name to 127.0.0.1; the port is the backend's.
        self.assertEqual([port for _, port, *_ in reactor.tcpClients], [8000])

    def test_dns_membership(self) -> None:
        service, _, resolver = self.build()
        membership = service.getServiceNamed("dns:dyn")
        assert isinstance(membership, DNSMembership)
        self.assertIs(membership.resolver, resolver)
        self.assertEqual(
            (membership.query_name, membership.port, membership.kind), ("dyn.internal", 8080, "A")
        )
        self.assertRaises(KeyError, service.getServiceNamed, "dns:web")

    def test_tcp_listener(self) -> None:
        service, _, _ = self.build()
        listening = service.getServiceNamed("db")
        assert isinstance(listening, StreamServerEndpointService)
        factory = listening.factory
        assert isinstance(factory, TCPProxyFactory)
        self.assertEqual(
            (factory.send_proxy, factory.accept_proxy, factory.idle_timeout), ("v1", True, 60.0)
        )
        self.assertEqual(factory.connect_timeout, ProxySettings().timeouts.backend_connect)
        self.assertTrue(factory.trusts(IPv4Address("TCP", "10.1.2.3", 1)))

    def test_pools_shared(self) -> None:
        """
        The TCP listener, the HTTP routes and the health checker use one pool object.
        """
        service, _, _ = self.build()
        tcp = service.getServiceNamed("db")
        assert isinstance(tcp, StreamServerEndpointService)
        assert isinstance(tcp.factory, TCPProxyFactory)
        http = factory_of(service.getServiceNamed("web"))
        checker = service.getServiceNamed("health:web")
        assert isinstance(checker, HealthChecker)
        self.assertIs(tcp.factory.pool, http.router.routes[0].pool)
        self.assertIs(checker._pool, tcp.factory.pool)
