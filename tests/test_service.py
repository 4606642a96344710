"""
Tests for L{twisted_rp.service}: from a configuration to listening services.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.names.common import ResolverBase
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_rp.config import Config, ConfigError, parse_config
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.http.message import AccessRecord
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.redirect import HTTPSRedirectFactory
from twisted_rp.pool import BackendPool, RoundRobin
from twisted_rp.pool.balancers import HashBalancer, LeastConnections
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import (
    FTPMonitor,
    HealthChecker,
    HTTPMonitor,
    TCPMonitor,
    TLSMonitor,
)
from twisted_rp.pool.sticky import SourceIPStickiness, UserStickiness
from twisted_rp.proxyservice import ReverseProxyService
from twisted_rp.service import (
    PerBackendMonitor,
    build_monitor,
    build_pools,
    build_router,
    build_server_tls,
    build_service,
    check_files,
)
from twisted_rp.settings import ProxySettings
from twisted_rp.tap import Options
from twisted_rp.tcp import TCPProxyFactory
from twisted_rp.tls import INSECURE_WARNING

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

    def test_without_dns_or_health_checks(self) -> None:
        """
        A worker's service (C{dns=False}, C{health_checks=False}) builds neither: the master
        runs them and sends their news.
        """
        service = ReverseProxyService(
            config_from(POOLS), MemoryReactorClock(), NoAnswers(), health_checks=False, dns=False
        )
        self.assertEqual([s.name for s in service if s.name.startswith(("dns:", "health:"))], [])
        self.assertEqual(service.pools["dyn"].backends(), ())

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


class FTPHealthTests(SynchronousTestCase):
    """
    The FTP health check of a pool of FTPS backends speaks FTPS, as the pool's ftp table says.
    """

    def test_ftps_backends_checked_over_ftps(self) -> None:
        config = parse_config(
            tomllib.loads(
                """
[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:2121"
pool = "ftp"

[pool.ftp.ftp]
tls = "explicit"

[pool.ftp.tls]
verify = false

[pool.ftp.health]
kind = "ftp"

[[pool.ftp.backends]]
address = "127.0.0.1:21"
"""
            ),
            "test.toml",
        )
        monitor = build_monitor(config.pool("ftp").health, MemoryReactorClock(), config.pool("ftp"))
        assert isinstance(monitor, PerBackendMonitor)
        (backend,) = build_pools(config, MemoryReactorClock())["ftp"].backends()
        probe = monitor.make(monitor.creator_for(backend))
        assert isinstance(probe, FTPMonitor)
        self.assertEqual(probe.tls, "explicit")


class Certificates:
    """
    A trustme CA and PEM files of certificates it issues, in a temporary directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True)
        self.ca = trustme.CA()
        self.ca_file = self.write("ca.pem", self.ca.cert_pem.bytes())

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def issue(self, name: str, **options: Any) -> tuple[str, str]:
        """Certificate (with its chain) and key files for C{name}."""
        leaf = self.ca.issue_cert(name, common_name=name, **options)
        cert = self.write(f"{name}.pem", b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return cert, self.write(f"{name}.key", leaf.private_key_pem.bytes())


def https_config(
    www: tuple[str, str], api: tuple[str, str], client_ca: str, extra: str = ""
) -> str:
    return f"""
[[listener]]
name = "secure"
protocol = "https"
endpoint = "tcp:8443:interface=127.0.0.1"
certificates = [
  {{ cert = "{www[0]}", key = "{www[1]}" }},
  {{ cert = "{api[0]}", key = "{api[1]}" }},
]
client_certs = "optional"
client_ca_files = ["{client_ca}"]
hsts = "max-age=600"

[[listener]]
name = "secure-2"
protocol = "https"
endpoint = "tcp:9443:interface=127.0.0.1"
certificates = [{{ cert = "{api[0]}", key = "{api[1]}" }}]
reload_interval = 0

[[listener]]
name = "plain"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"
redirect_to_https = 8443

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "https://app-1.internal:8443"

[[pool.web.backends]]
address = "https://app-2.internal:8443"

[[pool.web.backends]]
address = "10.0.0.3:8080"
name = "plain"
{extra}"""


def served_certificate(factory: Any, server_name: str, ca_file: str) -> x509.Certificate:
    """
    The certificate a server built by C{factory} presents to a client asking for
    C{server_name}, the handshake run in memory; the client verifies it with C{ca_file}.
    """
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
    transport = StringTransport()
    server.makeConnection(transport)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(ca_file)
    context.set_verify(SSL.VERIFY_PEER)
    client = SSL.Connection(context, None)
    client.set_tlsext_host_name(server_name.encode("ascii"))
    client.set_connect_state()
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            server.dataReceived(client.bio_read(65536))
            client.bio_write(transport.value())
            transport.clear()
    certificate = client.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    server.connectionLost(None)
    return certificate


def common_name(certificate: x509.Certificate) -> object:
    return certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


class HTTPSServiceTests(SynchronousTestCase):
    """
    L{build_service} serves https listeners with the configured certificates, redirects from
    http listeners, and connects to https backends with the pool's TLS settings; unusable
    files are configuration errors naming their key.
    """

    def setUp(self) -> None:
        self.certificates = Certificates(self.mktemp())
        self.www = self.certificates.issue("www.example.test")
        self.api = self.certificates.issue("api.example.test")
        self.reactor = MemoryReactorClock()
        # Certificates' validity is checked against the reactor's time.
        self.reactor.advance(time.time())

    def config(self, extra: str = "", **replace: str) -> Config:
        text = https_config(self.www, self.api, self.certificates.ca_file, extra)
        for old, new in replace.items():
            text = text.replace(old, new)
        return config_from(text)

    def build(self, extra: str = "", **replace: str) -> MultiService:
        return build_service(self.config(extra, **replace), self.reactor)

    def assertBuildError(self, key: str, config: Config) -> ConfigError:
        error = self.assertRaises(ConfigError, build_service, config, self.reactor)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        # check_files (--check-config) finds the same problem.
        same = self.assertRaises(ConfigError, check_files, config)
        self.assertEqual(str(same), str(error))
        return error

    def test_https_listener(self) -> None:
        """
        An https listener wraps the HTTP proxy in TLS, chooses its certificate by SNI (the
        first without a match), and passes its settings to the proxy.
        """
        service = self.build()
        listening = service.getServiceNamed("secure")
        assert isinstance(listening, StreamServerEndpointService)
        factory = listening.factory
        assert isinstance(factory, TLSMemoryBIOFactory)
        http = factory.wrappedFactory
        assert isinstance(http, HTTPProxyFactory)
        self.assertEqual(
            (http.scheme, http.client_cert_headers, http.hsts), ("https", True, b"max-age=600")
        )
        ca = self.certificates.ca_file
        self.assertEqual(
            common_name(served_certificate(factory, "api.example.test", ca)), "api.example.test"
        )
        self.assertEqual(
            common_name(served_certificate(factory, "other.test", ca)), "www.example.test"
        )
        second = service.getServiceNamed("secure-2")
        assert isinstance(second, StreamServerEndpointService)
        assert isinstance(second.factory, TLSMemoryBIOFactory)
        second_http = second.factory.wrappedFactory
        assert isinstance(second_http, HTTPProxyFactory)
        self.assertEqual((second_http.client_cert_headers, second_http.hsts), (False, None))
        # Both share the backend connections and pools of plain listeners.
        self.assertIs(http.connections, second_http.connections)

    def test_reload_services(self) -> None:
        """
        Each https listener with a reload interval gets a file watcher; all get one SIGHUP
        reloader (the service's C{signals}, which reloads the configuration and with it the
        certificates), which is installed while the service runs.
        """
        import signal

        service = self.build()
        names = [child.name for child in service]
        self.assertIn("tls-watch:secure", names)
        self.assertNotIn("tls-watch:secure-2", names)
        self.assertEqual(names.count("signals"), 1)
        before = signal.getsignal(signal.SIGHUP)
        service.startService()
        try:
            self.assertIsNot(signal.getsignal(signal.SIGHUP), before)
            # The watcher polls on the reactor every reload_interval (5 s by default).
            self.assertIn(
                self.reactor.seconds() + 5.0,
                [call.getTime() for call in self.reactor.getDelayedCalls()],
            )
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    def test_no_tls_services_without_https(self) -> None:
        names = [child.name for child in build_service(config_from(TWO_LISTENERS), self.reactor)]
        self.assertFalse([name for name in names if name.startswith("tls-")], names)

    def test_redirect_listener(self) -> None:
        listening = self.build().getServiceNamed("plain")
        assert isinstance(listening, StreamServerEndpointService)
        factory = listening.factory
        assert isinstance(factory, HTTPSRedirectFactory)
        self.assertEqual(factory.https_port, 8443)

    def test_missing_certificate(self) -> None:
        missing = str(self.certificates.directory / "missing.pem")
        error = self.assertBuildError(
            "listener[0].certificates[0].cert", self.config(**{self.www[0]: missing})
        )
        self.assertIn(missing, error.message)
        self.assertIn("not found", error.message)
        self.assertBuildError(
            "listener[0].certificates[1].key",
            self.config(**{f'key = "{self.api[1]}" }},\n]': 'key = "/nonexistent/k.pem" },\n]'}),
        )

    def test_key_mismatch(self) -> None:
        error = self.assertBuildError(
            "listener[0].certificates[1].key",
            self.config(**{f'key = "{self.api[1]}" }},\n]': f'key = "{self.www[1]}" }},\n]'}),
        )
        self.assertIn("does not match", error.message)

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = self.certificates.issue(
            "old.example.test",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        error = self.assertBuildError(
            "listener[0].certificates[0].cert",
            self.config(**{self.www[0]: expired[0], self.www[1]: expired[1]}),
        )
        self.assertIn("expired", error.message)

    def test_client_ca_file(self) -> None:
        garbage = self.certificates.write("garbage.pem", b"not a certificate")
        self.assertBuildError(
            "listener[0].client_ca_files[0]",
            self.config(**{self.certificates.ca_file: garbage}),
        )

    def test_https_backends(self) -> None:
        """
        https backends get client TLS, one per server name; plain ones none.
        """
        pools = build_pools(self.config(), self.reactor)
        app1, app2, plain = pools["web"].backends()
        self.assertIsNotNone(app1.tls)
        self.assertIsNotNone(app2.tls)
        self.assertIsNot(app1.tls, app2.tls)
        self.assertIsNone(plain.tls)
        ca_file = self.certificates.ca_file
        tls = f'[pool.web.tls]\nserver_name = "app.internal"\nca_files = ["{ca_file}"]\n'
        shared = build_pools(self.config(tls), self.reactor)
        app1, app2, _ = shared["web"].backends()
        self.assertIs(app1.tls, app2.tls)

    def test_pool_tls_files(self) -> None:
        missing = str(self.certificates.directory / "missing.pem")
        self.assertBuildError(
            "pool.web.tls.ca_files[0]", self.config(f'[pool.web.tls]\nca_files = ["{missing}"]\n')
        )
        self.assertBuildError(
            "pool.web.tls.client_cert",
            self.config(
                f'[pool.web.tls]\nclient_cert = "{missing}"\nclient_key = "{self.www[1]}"\n'
            ),
        )
        self.assertBuildError(
            "pool.web.tls.client_key",
            self.config(
                f'[pool.web.tls]\nclient_cert = "{self.www[0]}"\nclient_key = "{self.api[1]}"\n'
            ),
        )

    def test_insecure_warning(self) -> None:
        """
        verify = false logs a warning at start-up for each backend name not verified.
        """
        with capturedLogs() as events:
            self.build("[pool.web.tls]\nverify = false\n")
        warnings = [e for e in events if e.get("log_format") == INSECURE_WARNING]
        self.assertEqual(
            sorted(e["server_name"] for e in warnings), ["app-1.internal", "app-2.internal"]
        )
        with capturedLogs() as events:
            self.build()
        self.assertFalse([e for e in events if e.get("log_format") == INSECURE_WARNING])

    def test_tls_health_check(self) -> None:
        """
        A tls health check reuses an https backend's client TLS, and makes one with the pool's
        settings for a plain backend; an http one speaks HTTPS to https backends.
        """
        for kind in ("tls", "http"):
            service = self.build(f'[pool.web.health]\nkind = "{kind}"\n')
            checker = service.getServiceNamed("health:web")
            assert isinstance(checker, HealthChecker)
            monitor = checker._monitor
            assert isinstance(monitor, PerBackendMonitor)
            app, _, plain = checker._pool.backends()
            self.assertIs(monitor.creator_for(app), app.tls)
            if kind == "tls":
                self.assertIsNotNone(monitor.creator_for(plain))
                self.assertIsInstance(monitor.make(monitor.creator_for(app)), TLSMonitor)
            else:
                self.assertIsNone(monitor.creator_for(plain))
                https = monitor.make(monitor.creator_for(app))
                assert isinstance(https, HTTPMonitor)
                self.assertEqual(https.url_for(app), "https://app-1.internal:8443/")
                plain_monitor = monitor.make(None)
                assert isinstance(plain_monitor, HTTPMonitor)
                self.assertEqual(plain_monitor.url_for(plain), "http://10.0.0.3:8080/")

    def test_check_config(self) -> None:
        """
        C{--check-config} reads the certificate files: a missing one fails with its key.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        missing = str(self.certificates.directory / "missing.pem")
        path = self.certificates.write(
            "proxy.toml",
            https_config((missing, self.www[1]), self.api, self.certificates.ca_file).encode(),
        )
        exit = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", path, "--check-config"]
        )
        self.assertEqual(exit.code, 1)
        self.assertEqual(stdout.getvalue(), "")
        self.assertTrue(
            stderr.getvalue().startswith(f"{path}: listener[0].certificates[0].cert: {missing}"),
            stderr.getvalue(),
        )
        good = self.certificates.write(
            "good.toml",
            https_config(self.www, self.api, self.certificates.ca_file).encode(),
        )
        exit = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", good, "--check-config"]
        )
        self.assertEqual((exit.code, stdout.getvalue()), (0, f"OK: {good}\n"))


FTP = """
[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:2100:interface=127.0.0.1"
pool = "ftp"
banner = "Example FTP"
passive_ports = [30000, 30009]
masquerade_address = "203.0.113.10"
idle_timeout = 120
data_timeout = 20
max_sessions_per_ip = 3
backend_passive = "pasv"
show_backend_features = true

[[listener]]
name = "web"
protocol = "tcp"
endpoint = "tcp:8000"
pool = "ftp"

[timeouts]
backend_connect = 4

[pool.ftp]
[[pool.ftp.backends]]
address = "10.0.0.1:8000"
name = "ftp-1"
ports = { ftp = 2121 }

[pool.ftp.sticky]
kind = "user"
expiry = 900

[pool.ftp.health]
kind = "ftp"
user = "probe"
password = "secret"
"""


def ftp_factory_of(service: MultiService, name: str) -> FTPProxyFactory:
    listening = service.getServiceNamed(name)
    assert isinstance(listening, StreamServerEndpointService)
    factory = listening.factory
    assert isinstance(factory, FTPProxyFactory)
    return factory


def alpn_chosen(server_tls: Any, offered: list[bytes]) -> bytes:
    """The ALPN protocol C{server_tls} picks from C{offered}, the handshake run in memory."""
    server: SSL.Connection = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_alpn_protos(offered)
    client.set_connect_state()
    for _ in range(10):
        for this, other in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                this.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(this.bio_read(65536))
    return client.get_alpn_proto_negotiated()


class FTPServiceTests(SynchronousTestCase):
    """
    L{build_service} serves ftp listeners with an L{FTPProxyFactory} on the shared pools.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())

    def build(self, text: str = FTP) -> MultiService:
        return build_service(config_from(text), self.reactor)

    def test_ftp_listener(self) -> None:
        factory = ftp_factory_of(self.build(), "files")
        self.assertEqual(
            (factory.banner, factory.masquerade_address, factory.backend_passive),
            ("Example FTP", "203.0.113.10", "pasv"),
        )
        self.assertEqual(factory.passive_ports, tuple(range(30000, 30010)))
        self.assertEqual(
            (factory.idle_timeout, factory.data_timeout, factory.connect_timeout),
            (120.0, 20.0, 4.0),
        )
        self.assertEqual((factory.max_sessions_per_ip, factory.show_backend_features), (3, True))
        self.assertIs(factory.reactor, self.reactor)

    def test_defaults(self) -> None:
        text = FTP.split("banner =")[0] + "\n[pool.ftp]\n[[pool.ftp.backends]]\naddress = 'a:21'\n"
        factory = ftp_factory_of(self.build(text), "files")
        default = FTPProxyFactory(self.reactor, BackendPool("x", []))
        self.assertEqual(
            (factory.banner, factory.passive_ports, factory.idle_timeout, factory.data_timeout),
            (default.banner, None, default.idle_timeout, default.data_timeout),
        )
        self.assertEqual(factory.connect_timeout, ProxySettings().timeouts.backend_connect)

    def test_listens(self) -> None:
        service = self.build()
        service.startService()
        self.addCleanup(service.stopService)
        listening = {(port, interface): f for port, f, _, interface in self.reactor.tcpServers}
        self.assertIs(listening[(2100, "127.0.0.1")], ftp_factory_of(service, "files"))

    def test_pool_health_and_stickiness(self) -> None:
        """
        The FTP listener shares its pool with the other listeners and the health checker,
        which logs in on the backends' C{ftp} port; the pool keeps users on their backend.
        """
        service = self.build()
        factory = ftp_factory_of(service, "files")
        tcp = service.getServiceNamed("web")
        checker = service.getServiceNamed("health:ftp")
        assert isinstance(tcp, StreamServerEndpointService) and isinstance(checker, HealthChecker)
        assert isinstance(tcp.factory, TCPProxyFactory)
        self.assertIs(factory.pool, tcp.factory.pool)
        self.assertIs(checker._pool, factory.pool)
        monitor = checker._monitor
        assert isinstance(monitor, FTPMonitor)
        self.assertEqual((monitor.user, monitor.password), ("probe", "secret"))
        pool = factory.pool
        assert isinstance(pool, BackendPool)
        stickiness = pool.stickiness
        assert isinstance(stickiness, UserStickiness)
        self.assertEqual(stickiness.expiry, 900.0)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for _, port, *_ in self.reactor.tcpClients], [2121])

    def test_session_reaches_the_pool(self) -> None:
        """
        A client gets the configured banner and, after C{USER}, the proxy dials the pool's
        backend on its C{ftp} port.
        """
        factory = ftp_factory_of(self.build(), "files")
        session = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 2100),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
        )
        session.makeConnection(transport)
        self.assertEqual(transport.value(), b"220 Example FTP\r\n")
        session.dataReceived(b"USER alice\r\n")
        self.assertEqual([(h, p) for h, p, *_ in self.reactor.tcpClients], [("10.0.0.1", 2121)])
        session.connectionLost(None)  # type: ignore[arg-type]


class FTPSServiceTests(SynchronousTestCase):
    """
    FTPS listeners and FTPS backends reach the FTP proxy.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())
        self.certificates = Certificates(self.mktemp())
        cert, key = self.certificates.issue("ftp.example.test")
        self.tls = f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n'

    def config(self, listener: str = "", pool: str = "") -> Config:
        text = FTP.replace('banner = "Example FTP"\n', listener) + pool
        # Implicit FTPS backends cannot be probed in plain FTP.
        return config_from(
            text.replace('kind = "ftp"\nuser = "probe"\npassword = "secret"', 'kind = "tls"')
        )

    def backend_tls(self, mode: str, extra: str = "") -> str:
        ca = self.certificates.ca_file
        return f'[pool.ftp.ftp]\ntls = "{mode}"\n[pool.ftp.tls]\nca_files = ["{ca}"]\n{extra}'

    def test_front_ftps(self) -> None:
        """
        An FTP listener with certificates offers FTPS with them (ALPN naming FTP), reloaded
        like an https listener's.
        """
        service = build_service(self.config(self.tls + "require_tls = true\n"), self.reactor)
        factory = ftp_factory_of(service, "files")
        assert factory.tls is not None
        self.assertEqual(alpn_chosen(factory.tls, [b"http/1.1", b"ftp"]), b"ftp")
        self.assertEqual((factory.require_tls, factory.implicit), (True, False))
        names = [child.name for child in service]
        self.assertIn("tls-watch:files", names)
        self.assertIn("signals", names)
        plain = ftp_factory_of(build_service(self.config(), self.reactor), "files")
        self.assertEqual((plain.tls, plain.require_tls), (None, False))

    def test_implicit(self) -> None:
        service = build_service(self.config(self.tls + "implicit = true\n"), self.reactor)
        # Not wrapped in TLS here: the FTP proxy starts TLS itself.
        factory = ftp_factory_of(service, "files")
        self.assertTrue(factory.implicit)
        self.assertIsNotNone(factory.tls)

    def test_https_keeps_its_alpn(self) -> None:
        https = config_from(
            f'[[listener]]\nname = "s"\nprotocol = "https"\nendpoint = "tcp:1"\n{self.tls}'
            '[[route]]\npool = "p"\n[pool.p]\n[[pool.p.backends]]\naddress = "a:1"\n'
        )
        server_tls = build_server_tls(https.listeners[0], "listener[0]", clock=self.reactor)
        self.assertEqual(alpn_chosen(server_tls, [b"ftp", b"http/1.1"]), b"http/1.1")

    def test_backend_ftps(self) -> None:
        """
        FTPS backends get one client TLS made from the pool's TLS table.
        """
        for mode in ("explicit", "implicit"):
            service = build_service(self.config(pool=self.backend_tls(mode)), self.reactor)
            factory = ftp_factory_of(service, "files")
            self.assertEqual(factory.backend_tls, mode)
            (backend,) = factory.pool.backends()
            self.assertIsNotNone(factory.backend_tls_creator)
            self.assertIs(factory.backend_creator(backend), factory.backend_tls_creator)
        plain = ftp_factory_of(build_service(self.config(), self.reactor), "files")
        self.assertEqual((plain.backend_tls, plain.backend_tls_creator), ("none", None))

    def test_backend_verified_name(self) -> None:
        """
        The client TLS verifies C{server_name}, else the backends' host; an unverified one is
        warned about.
        """
        with capturedLogs() as events:
            build_service(self.config(pool=self.backend_tls("explicit")), self.reactor)
            named = self.backend_tls("explicit", 'server_name = "ftp.internal"\n')
            build_service(self.config(pool=named), self.reactor)
            insecure = '[pool.ftp.ftp]\ntls = "explicit"\n[pool.ftp.tls]\nverify = false\n'
            build_service(self.config(pool=insecure), self.reactor)
        warnings = [e for e in events if e.get("log_format") == INSECURE_WARNING]
        self.assertEqual([e["server_name"] for e in warnings], ["10.0.0.1"])

    def test_backend_tls_files(self) -> None:
        """
        A bad CA file of an FTPS pool is reported at start-up, at its key.
        """
        missing = str(self.certificates.directory / "missing.pem")
        text = f'[pool.ftp.ftp]\ntls = "explicit"\n[pool.ftp.tls]\nca_files = ["{missing}"]\n'
        for check in (check_files, lambda config: build_service(config, self.reactor)):
            error = self.assertRaises(ConfigError, check, self.config(pool=text))
            self.assertEqual(error.key, "pool.ftp.tls.ca_files[0]")
