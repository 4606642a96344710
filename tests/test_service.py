"""
Tests for L{twisted_rp.service}: from a configuration to listening services.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.config import Config, ConfigError, parse_config
from twisted_rp.http.message import AccessRecord
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.pool import BackendPool, RoundRobin
from twisted_rp.service import build_pools, build_router, build_service

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
