"""
Tests for L{twisted_rp.config}.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.config import (
    Config,
    ConfigError,
    FTPListenerConfig,
    ListenerConfig,
    ListenerTLSConfig,
    RouteConfig,
    load_config,
    parse_config,
    quick_config,
)
from twisted_rp.config_pools import (
    BackendConfig,
    BackendTLSConfig,
    DNSConfig,
    FTPBackendsConfig,
    HealthConfig,
    PassiveConfig,
    PoolConfig,
    StickyConfig,
)
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.pool import BackendPool, PassiveHealth
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.pool.health import HealthChecker
from twisted_rp.pool.sticky import (
    AppCookieStickiness,
    CookieStickiness,
    SourceIPStickiness,
    UserStickiness,
)
from twisted_rp.settings import HeaderPolicy, Limits, LogSettings, ProxySettings, Timeouts
from twisted_rp.tcp import TCPProxyFactory
from twisted_rp.tls import MOZILLA_INTERMEDIATE_CIPHERS, CertificateFiles, ServerTLS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

REPOSITORY = Path(__file__).resolve().parent.parent

MINIMAL = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "127.0.0.1:8081"
"""

FULL = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[listener]]
name = "admin"
protocol = "http"
endpoint = "tcp:8081"

[[route]]
hosts = ["Example.COM", "*.example.com", "[::1]"]
path_prefix = "/api"
strip_prefix = true
pool = "api"
preserve_host = false
listeners = ["web"]

[[route]]
pool = "web"

[pool.web]
balance = "round_robin"
[[pool.web.backends]]
address = "127.0.0.1:8082"
name = "app1"
weight = 3
[[pool.web.backends]]
address = "[::1]:8083"
backup = true
weight = 0

[pool.api]
[[pool.api.backends]]
address = "api.internal:9000"

[timeouts]
client_header = 10
client_keepalive = 75.5
backend_connect = 2

[limits]
max_body = 1048576
backend_idle_connections = 0

[headers]
via = false
via_name = "edge-1"
request_id_header = "X-Trace"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]

[log]
access = "json"
access_file = "/var/log/access.log"
"""


def parse(text: str, source: str = "test.toml") -> Config:
    return parse_config(tomllib.loads(text), source)


class LoadTests(SynchronousTestCase):
    """
    Valid files give the objects they describe, with defaults from the settings classes.
    """

    def test_full(self) -> None:
        path = self.mktemp()
        Path(path).write_text(FULL)
        config = load_config(path)
        self.assertEqual(
            config,
            Config(
                listeners=(
                    ListenerConfig("web", "http", "tcp:8080:interface=127.0.0.1"),
                    ListenerConfig("admin", "http", "tcp:8081"),
                ),
                routes=(
                    RouteConfig(
                        pool="api",
                        hosts=("example.com", "*.example.com", "[::1]"),
                        path_prefix="/api",
                        strip_prefix=True,
                        preserve_host=False,
                        listeners=("web",),
                    ),
                    RouteConfig(pool="web"),
                ),
                pools=(
                    PoolConfig(
                        "web",
                        (
                            BackendConfig("app1", "127.0.0.1", 8082, weight=3),
                            BackendConfig("[::1]:8083", "::1", 8083, weight=0, backup=True),
                        ),
                    ),
                    PoolConfig("api", (BackendConfig("api.internal:9000", "api.internal", 9000),)),
                ),
                proxy=ProxySettings(
                    timeouts=Timeouts(client_header=10, client_keepalive=75.5, backend_connect=2),
                    limits=Limits(max_body=1048576, backend_idle_connections=0),
                    headers=HeaderPolicy(
                        via=False,
                        via_name="edge-1",
                        request_id_header="X-Trace",
                        trusted_proxies=("10.0.0.0/8", "127.0.0.1", "fd00::/8"),
                    ),
                ),
                log=LogSettings(access="json", access_file="/var/log/access.log"),
                source=path,
            ),
        )
        self.assertEqual(config.pool("api").backends[0].address, "api.internal:9000")
        self.assertEqual(config.pool("web").backends[1].address, "[::1]:8083")
        self.assertTrue(config.proxy.headers.trusts("10.1.2.3"))
        self.assertIsInstance(config.proxy.timeouts.client_header, float)

    def test_defaults(self) -> None:
        """
        Omitted optional tables and keys take the settings classes' defaults.
        """
        config = parse(MINIMAL)
        self.assertEqual(config.proxy, ProxySettings())
        self.assertEqual(config.log, LogSettings())
        self.assertEqual(config.routes, (RouteConfig(pool="web"),))
        self.assertEqual(
            config.pool("web").backends, (BackendConfig("127.0.0.1:8081", "127.0.0.1", 8081),)
        )
        self.assertEqual(config.source, "test.toml")

    def test_pool_absent(self) -> None:
        self.assertRaises(KeyError, parse(MINIMAL).pool, "nope")

    def test_examples(self) -> None:
        """
        Every example file shipped in the repository is valid.
        """
        examples = sorted((REPOSITORY / "examples").glob("*.toml"))
        names = [path.name for path in examples]
        for name in (
            "basic.toml",
            "multi-site.toml",
            "failover.toml",
            "tcp.toml",
            "https.toml",
            "ftp.toml",
        ):
            self.assertIn(name, names)
        for path in examples:
            config = load_config(str(path))
            self.assertTrue(config.listeners, path)

    def test_pool_examples(self) -> None:
        """
        The failover and TCP examples show what their comments say.
        """
        failover = load_config(str(REPOSITORY / "examples" / "failover.toml")).pool("app")
        assert failover.health is not None and failover.sticky is not None
        self.assertEqual((failover.health.kind, failover.health.fall), ("http", 3))
        self.assertEqual((failover.sticky.kind, failover.passive), ("cookie", PassiveConfig()))
        self.assertEqual([b.backup for b in failover.backends], [False, False, False, True])
        tcp = load_config(str(REPOSITORY / "examples" / "tcp.toml"))
        self.assertEqual([listener.protocol for listener in tcp.listeners], ["tcp", "tcp", "http"])
        self.assertEqual(
            tcp.pool("postgres").dns, DNSConfig("postgres.db.svc.cluster.local", 5432, "A", 10.0)
        )

    def test_ftp_example(self) -> None:
        """
        The FTP example offers FTPS on its listener and keeps users on their backend.
        """
        config = load_config(str(REPOSITORY / "examples" / "ftp.toml"))
        (listener,) = config.listeners
        assert listener.ftp is not None and listener.tls is not None
        self.assertEqual((listener.protocol, listener.pool), ("ftp", "files"))
        self.assertEqual(listener.ftp.passive_ports, (50000, 50099))
        self.assertTrue(listener.ftp.require_tls)
        files = config.pool("files")
        assert files.sticky is not None and files.health is not None
        self.assertEqual((files.sticky.kind, files.health.kind), ("user", "ftp"))
        self.assertEqual(config.routes, ())

    def test_ftp_documentation_example(self) -> None:
        """
        The worked example of the FTP documentation is valid.
        """
        text = (REPOSITORY / "docs" / "ftp.rst").read_text()
        match = re.search(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", text)
        assert match is not None
        config = parse("\n".join(line[3:] for line in match[1].splitlines()))
        self.assertEqual([listener.protocol for listener in config.listeners], ["ftp", "ftp"])
        implicit = config.listeners[1].ftp
        assert implicit is not None
        self.assertTrue(implicit.implicit)
        self.assertEqual(config.pool("files").ftp, FTPBackendsConfig("explicit"))

    def test_documentation_example(self) -> None:
        """
        The complete example at the top of the configuration documentation is valid.
        """
        text = (REPOSITORY / "docs" / "configuration.rst").read_text()
        match = re.search(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", text)
        assert match is not None
        block = "\n".join(line[3:] for line in match[1].splitlines())
        config = parse(block)
        self.assertEqual(len(config.routes), 2)
        self.assertEqual(config.log.access, "json")
        self.assertEqual(config.listeners[2].pool, "db")
        web = config.pool("web")
        self.assertTrue(web.sticky and web.health and web.passive)
        self.assertIsNotNone(config.pool("db").dns)


class ErrorTests(SynchronousTestCase):
    """
    Every problem is a L{ConfigError} naming the file and the exact key.
    """

    def assertError(self, text: str, key: str, message: str | None = None) -> ConfigError:
        """
        Parsing C{text} fails at C{key}, with exactly C{message} if given.
        """
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        if message is not None:
            self.assertEqual(str(error), f"test.toml: {key}: {message}")
        return error

    def replace(self, old: str, new: str) -> str:
        self.assertIn(old, MINIMAL)
        return MINIMAL.replace(old, new)

    def test_bad_address(self) -> None:
        text = MINIMAL + '[[pool.web.backends]]\naddress = "127.0.0.2:1"\n'
        text += '[[pool.web.backends]]\naddress = "x"\n'
        self.assertError(text, "pool.web.backends[2].address", "expected host:port, got 'x'")

    def test_bad_addresses(self) -> None:
        for address in ("host:0", "host:65536", "::1:8080", "[nothost]:80", "a b:80", "host"):
            text = self.replace('"127.0.0.1:8081"', repr(address))
            self.assertError(text, "pool.web.backends[0].address")
        text = self.replace('"127.0.0.1:8081"', "8081")
        self.assertError(text, "pool.web.backends[0].address", "expected host:port, got 8081")

    def test_unknown_key_top(self) -> None:
        error = self.assertError(MINIMAL + "[timeout]\n", "timeout")
        self.assertIn("'timeouts'", error.message)

    def test_unknown_key_nested(self) -> None:
        self.assertError(MINIMAL + "[timeouts]\nclient = 3\n", "timeouts.client")
        self.assertError(MINIMAL + "[log]\nfile = 'x'\n", "log.file")

    def test_unknown_key_in_array(self) -> None:
        error = self.assertError(
            self.replace("address =", "adress ="), "pool.web.backends[0].adress"
        )
        self.assertEqual(error.message, "unknown key (did you mean 'address'?)")
        self.assertError(self.replace("endpoint =", "port = 1\nendpoint ="), "listener[0].port")

    def test_missing_pool_reference(self) -> None:
        self.assertError(
            self.replace('pool = "web"', 'pool = "api"'),
            "route[0].pool",
            "no pool named 'api' (defined: web)",
        )

    def test_unknown_route_listener(self) -> None:
        text = self.replace('pool = "web"', 'pool = "web"\nlisteners = ["web", "admin"]')
        self.assertError(text, "route[0].listeners[1]", "no listener named 'admin'")

    def test_duplicate_listener(self) -> None:
        text = MINIMAL + '[[listener]]\nname = "web"\nprotocol = "http"\nendpoint = "tcp:1"\n'
        self.assertError(text, "listener[1].name", "duplicate listener name 'web'")

    def test_duplicate_backend(self) -> None:
        self.assertError(
            MINIMAL + '[[pool.web.backends]]\naddress = "127.0.0.1:8081"\n',
            "pool.web.backends[1].address",
        )
        self.assertError(
            MINIMAL + '[[pool.web.backends]]\naddress = "127.0.0.2:1"\nname = "127.0.0.1:8081"\n',
            "pool.web.backends[1].name",
        )

    def test_bad_endpoint(self) -> None:
        for endpoint in ("tcp:http", "nosuchtype:80", "tcp:80:colour=red", ""):
            text = self.replace('"tcp:8080:interface=127.0.0.1"', repr(endpoint))
            self.assertError(text, "listener[0].endpoint")

    def test_bad_protocol(self) -> None:
        error = self.assertError(self.replace('"http"', '"gopher"'), "listener[0].protocol")
        self.assertIn("'gopher'", error.message)
        self.assertIn("'ftp'", error.message)

    def test_bad_cidr(self) -> None:
        self.assertError(
            MINIMAL + '[headers]\ntrusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]\n',
            "headers.trusted_proxies[1]",
            "expected an IP address or CIDR network like '10.0.0.0/8', got '10.0.0.0/33'",
        )

    def test_wrong_types(self) -> None:
        self.assertError(
            MINIMAL + '[timeouts]\nbackend_connect = "x"\n',
            "timeouts.backend_connect",
            "expected a positive number, got 'x'",
        )
        self.assertError(
            MINIMAL + "[timeouts]\nbackend_connect = true\n",
            "timeouts.backend_connect",
            "expected a positive number, got true",
        )
        self.assertError(MINIMAL + "[timeouts]\nclient_body = 0\n", "timeouts.client_body")
        self.assertError(MINIMAL + "[timeouts]\nclient_body = inf\n", "timeouts.client_body")
        self.assertError(MINIMAL + "[limits]\nmax_headers = 1.5\n", "limits.max_headers")
        self.assertError(MINIMAL + "[limits]\nmax_headers = 0\n", "limits.max_headers")
        self.assertError(MINIMAL + "[limits]\nmax_body = -1\n", "limits.max_body")
        self.assertError(MINIMAL + "[headers]\nvia = 1\n", "headers.via")
        self.assertError(MINIMAL + '[headers]\nvia_name = "my proxy"\n', "headers.via_name")
        self.assertError(
            MINIMAL + '[headers]\ntrusted_proxies = "10.0.0.0/8"\n', "headers.trusted_proxies"
        )
        self.assertError("timeouts = 5\n" + MINIMAL, "timeouts", "expected a table, got 5")
        self.assertError(
            self.replace('pool = "web"', 'pool = "web"\nstrip_prefix = "yes"'),
            "route[0].strip_prefix",
            "expected true or false, got 'yes'",
        )
        self.assertError(
            self.replace('pool = "web"', 'pool = "web"\nhosts = "example.com"'),
            "route[0].hosts",
            "expected an array, got 'example.com'",
        )
        self.assertError(
            self.replace("[pool.web]", "[pool.web]\nbalance = 'fastest'"), "pool.web.balance"
        )
        self.assertError(MINIMAL + '[log]\naccess = "common"\n', "log.access")
        # The log level is twistd's (and, later, the structured-log option's), not ours.
        self.assertError(MINIMAL + '[log]\nlevel = "info"\n', "log.level")

    def test_weight_range(self) -> None:
        self.assertError(
            self.replace('address = "127.0.0.1:8081"', 'address = "127.0.0.1:8081"\nweight = 1001'),
            "pool.web.backends[0].weight",
            "expected an integer from 0 to 1000, got 1001",
        )

    def test_route_values(self) -> None:
        self.assertError(
            self.replace('pool = "web"', 'pool = "web"\nhosts = ["a.example", "example.com:8080"]'),
            "route[0].hosts[1]",
            "expected a host name without a port, got 'example.com:8080'",
        )
        self.assertError(
            self.replace('pool = "web"', 'pool = "web"\nhosts = ["foo.*.com"]'), "route[0].hosts[0]"
        )
        self.assertError(
            self.replace('pool = "web"', 'pool = "web"\npath_prefix = "api"'),
            "route[0].path_prefix",
        )

    def test_missing_required(self) -> None:
        self.assertError(
            self.replace('endpoint = "tcp:8080:interface=127.0.0.1"', ""),
            "listener[0].endpoint",
            "required key is missing",
        )
        self.assertError(
            self.replace('address = "127.0.0.1:8081"', 'name = "a"'), "pool.web.backends[0].address"
        )
        self.assertError(
            self.replace('[[pool.web.backends]]\naddress = "127.0.0.1:8081"', ""),
            "pool.web.backends",
        )
        self.assertError(self.replace('[[route]]\npool = "web"', ""), "route")
        self.assertError('[pool.web]\n[[pool.web.backends]]\naddress = "h:1"\n', "listener")

    def test_array_shapes(self) -> None:
        self.assertError(
            self.replace("[[listener]]", "[listener]"),
            "listener",
            "expected an array of tables [[listener]], got a table",
        )
        self.assertError(
            "route = [1]\n" + self.replace('[[route]]\npool = "web"', ""),
            "route[0]",
            "expected a table, got 1",
        )

    def test_access_file_without_access(self) -> None:
        self.assertError(MINIMAL + '[log]\naccess_file = "/tmp/a.log"\n', "log.access_file")

    def test_syntax_error(self) -> None:
        path = self.mktemp()
        Path(path).write_text(MINIMAL + "[timeouts\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual((error.source, error.key), (path, ""))
        self.assertTrue(str(error).startswith(f"{path}: invalid TOML: "), str(error))
        self.assertIn(f"line {MINIMAL.count(chr(10)) + 1}", str(error))

    def test_missing_file(self) -> None:
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: cannot read the file: No such file or directory")


class QuickConfigTests(SynchronousTestCase):
    """
    L{quick_config} builds the command line's one-pool configuration.
    """

    def test_config(self) -> None:
        config = quick_config(
            ["tcp:8080:interface=127.0.0.1", "8081", "[::1]:8082"],
            ["127.0.0.1:9001", "http://backend.internal:9002/", "[::1]:9003"],
        )
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig("http-1", "http", "tcp:8080:interface=127.0.0.1"),
                ListenerConfig("http-2", "http", "tcp:8081"),
                ListenerConfig("http-3", "http", r"tcp:8082:interface=\:\:1"),
            ),
        )
        self.assertEqual(config.routes, (RouteConfig(pool="default"),))
        self.assertEqual(
            config.pool("default"),
            PoolConfig(
                "default",
                (
                    BackendConfig("127.0.0.1:9001", "127.0.0.1", 9001),
                    BackendConfig("backend.internal:9002", "backend.internal", 9002),
                    BackendConfig("[::1]:9003", "::1", 9003),
                ),
            ),
        )
        self.assertEqual((config.proxy, config.log), (ProxySettings(), LogSettings()))
        self.assertEqual(config.source, "<command line>")

    def assertError(
        self, key: str, listen: list[str], backends: list[str], balance: str = "round_robin"
    ) -> None:
        error = self.assertRaises(ConfigError, quick_config, listen, backends, balance)
        self.assertEqual((error.source, error.key), ("<command line>", key), str(error))
        self.assertTrue(str(error).startswith(f"<command line>: {key}: "))

    def test_bad_backend(self) -> None:
        for backend in ("x", "https://h:1", "http://h:1/app", "h:99999", "::1:80"):
            self.assertError("--backend", ["tcp:8080"], [backend])
        self.assertError("--backend", ["tcp:8080"], ["h:1", "h:1"])
        self.assertError("--backend", ["tcp:8080"], [])

    def test_bad_listen(self) -> None:
        for listen in ("tcp:port", "nowhere", "localhost:70000", "70000", ""):
            self.assertError("--listen", [listen], ["h:1"])
        self.assertError("--listen", [], ["h:1"])

    def test_bad_balance(self) -> None:
        self.assertError("--balance", ["tcp:8080"], ["h:1"], "fastest")

    def test_every_balancer(self) -> None:
        for name in BALANCERS:
            self.assertEqual(quick_config(["8080"], ["h:1"], name).pools[0].balance, name)

    def test_listen_host_port(self) -> None:
        config = quick_config(["localhost:8080"], ["h:1"])
        self.assertEqual(config.listeners[0].endpoint, "tcp:8080:interface=localhost")


class ConfigErrorTests(SynchronousTestCase):
    def test_str(self) -> None:
        error = ConfigError("x.toml", "pool.web.backends[2].address", "expected host:port, got 'x'")
        self.assertEqual(
            str(error), "x.toml: pool.web.backends[2].address: expected host:port, got 'x'"
        )
        self.assertEqual(str(ConfigError("x.toml", "", "invalid TOML")), "x.toml: invalid TOML")

    def test_network_values(self) -> None:
        config = parse(MINIMAL + '[headers]\ntrusted_proxies = ["10.1.2.3/8"]\n')
        self.assertEqual(
            config.proxy.headers.trusted_proxies, (ipaddress.ip_network("10.0.0.0/8"),)
        )


POOLS = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080"

[[listener]]
name = "db"
protocol = "tcp"
endpoint = "tcp:5432"
pool = "db"
send_proxy = "v2"
accept_proxy = true
trusted_proxies = ["10.0.0.0/8", "::1"]
idle_timeout = 3600

[[route]]
pool = "web"

[pool.web]
balance = "hash"
hash_key = "cookie:session"
retries = 0
slow_start = 30
queue_size = 100
queue_timeout = 2.5

[[pool.web.backends]]
address = "10.0.0.1:8000"
name = "web-1"
max_connections = 50
ports = { http = 8000, ftp = 2121 }

[pool.web.sticky]
kind = "cookie"
strict = true
cookie = "SERVER"
secret = "0123456789abcdef0123"
path = "/app"
max_age = 3600
secure = true
http_only = false
same_site = "none"

[pool.web.health]
kind = "http"
interval = 2
timeout = 1
jitter = 0
rise = 3
fall = 1
path = "/health"
method = "HEAD"
host = "app.example.com"
expect_status = [200, 204]
body_regex = "ok|fine"

[pool.web.passive]
consecutive_failures = 3
base_ejection = 10
max_ejection = 60
max_ejected_share = 0.25

[pool.db]
balance = "least_connections"

[pool.db.sticky]
kind = "source_ip"
expiry = 60
max_entries = 10

[pool.db.health]
kind = "tcp"

[pool.db.dns]
name = "_postgres._tcp.db.internal"
kind = "SRV"
interval = 15

[pool.app]
[pool.app.dns]
name = "app.internal"
port = 8080

[pool.app.sticky]
kind = "app_cookie"
cookie = "JSESSIONID"

[pool.app.health]
kind = "ftp"
user = "probe"
password = "secret"

[pool.tls]
[[pool.tls.backends]]
address = "10.0.0.9:443"
[pool.tls.health]
kind = "tls"
server_name = "tls.example.com"
"""


class PoolKeyTests(SynchronousTestCase):
    """
    Every key of C{[pool.NAME]} and of C{tcp} listeners reaches the configuration objects.
    """

    def test_round_trip(self) -> None:
        config = parse(POOLS)
        web = config.pool("web")
        self.assertEqual(
            web,
            PoolConfig(
                "web",
                (
                    BackendConfig(
                        "web-1",
                        "10.0.0.1",
                        8000,
                        max_connections=50,
                        ports=(("http", 8000), ("ftp", 2121)),
                    ),
                ),
                balance="hash",
                hash_key="cookie:session",
                retries=0,
                slow_start=30.0,
                queue_size=100,
                queue_timeout=2.5,
                sticky=StickyConfig(
                    "cookie",
                    strict=True,
                    cookie="SERVER",
                    secret=b"0123456789abcdef0123",
                    path="/app",
                    max_age=3600,
                    secure=True,
                    http_only=False,
                    same_site="None",
                ),
                health=HealthConfig(
                    "http",
                    interval=2.0,
                    timeout=1.0,
                    jitter=0.0,
                    rise=3,
                    fall=1,
                    path="/health",
                    method="HEAD",
                    host="app.example.com",
                    expect_status=(200, 204),
                    body_regex="ok|fine",
                ),
                passive=PassiveConfig(3, 10.0, 60.0, 0.25),
            ),
        )
        self.assertEqual(
            config.pool("db"),
            PoolConfig(
                "db",
                (),
                balance="least_connections",
                sticky=StickyConfig("source_ip", expiry=60.0, max_entries=10),
                health=HealthConfig("tcp"),
                dns=DNSConfig("_postgres._tcp.db.internal", kind="SRV", interval=15.0),
            ),
        )
        app = config.pool("app")
        self.assertEqual(app.dns, DNSConfig("app.internal", port=8080))
        self.assertEqual(
            app.sticky,
            StickyConfig("app_cookie", cookie="JSESSIONID", expiry=3600.0, max_entries=100_000),
        )
        self.assertEqual(app.health, HealthConfig("ftp", user="probe", password="secret"))
        self.assertNotIn("secret", repr(app.health))
        self.assertNotIn("0123456789", repr(web.sticky))
        tls = config.pool("tls").health
        self.assertEqual(tls, HealthConfig("tls", server_name="tls.example.com"))
        self.assertEqual(
            config.listeners[1],
            ListenerConfig(
                "db",
                "tcp",
                "tcp:5432",
                pool="db",
                send_proxy="v2",
                accept_proxy=True,
                trusted_proxies=(
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("::1"),
                ),
                idle_timeout=3600.0,
            ),
        )

    def test_defaults_are_the_librarys(self) -> None:
        """
        What a file leaves out is what the classes it configures do by default.
        """
        config = parse(
            MINIMAL
            + "[pool.web.health]\nkind = 'http'\n[pool.web.passive]\n"
            + "[pool.web.sticky]\nkind = 'cookie'\nsecret = '"
            + "s" * 16
            + "'\n"
        )
        web = config.pool("web")
        pool = BackendPool("x", [])
        self.assertEqual(
            (web.balance, web.retries, web.slow_start, web.queue_size, web.queue_timeout),
            ("round_robin", pool.retries, pool.slow_start, pool.queue_size, pool.queue_timeout),
        )
        passive = PassiveHealth()
        assert web.passive is not None
        self.assertEqual(
            web.passive,
            PassiveConfig(
                passive.consecutive_failures,
                passive.base_ejection,
                passive.max_ejection,
                passive.max_ejected_share,
            ),
        )
        assert web.health is not None
        checker = HealthChecker(pool, None, None)  # type: ignore[arg-type]
        self.assertEqual(
            (web.health.interval, web.health.timeout, web.health.jitter),
            (checker._interval, checker._timeout, checker._jitter),
        )
        self.assertEqual((web.health.rise, web.health.fall), (checker._rise, checker._fall))
        self.assertEqual(
            (web.health.path, web.health.method, web.health.expect_status), ("/", "GET", (200, 399))
        )
        cookie = CookieStickiness(b"s" * 16)
        assert web.sticky is not None
        self.assertEqual(
            (web.sticky.cookie, web.sticky.path, web.sticky.max_age, web.sticky.same_site),
            (cookie.name, cookie.path, 0, cookie.same_site),
        )
        self.assertEqual(
            (web.sticky.secure, web.sticky.http_only, web.sticky.strict),
            (cookie.secure, cookie.http_only, cookie.strict),
        )
        self.assertEqual(config.listeners[0].idle_timeout, 0.0)

    def test_table_kind_defaults(self) -> None:
        app = parse(MINIMAL + "[pool.web.sticky]\nkind = 'app_cookie'\n").pool("web").sticky
        source = parse(MINIMAL + "[pool.web.sticky]\nkind = 'source_ip'\n").pool("web").sticky
        assert app is not None and source is not None
        app_default, source_default = AppCookieStickiness(), SourceIPStickiness()
        self.assertEqual(
            (app.cookie, app.expiry, app.max_entries),
            (app_default.cookie, app_default.expiry, app_default.max_entries),
        )
        self.assertEqual(
            (source.cookie, source.expiry, source.max_entries),
            (None, source_default.expiry, source_default.max_entries),
        )

    def test_tcp_listener_defaults(self) -> None:
        text = MINIMAL + '[[listener]]\nname = "t"\nprotocol = "tcp"\nendpoint = "tcp:1"\n'
        listener = parse(text + 'pool = "web"\n').listeners[1]
        factory = TCPProxyFactory(MemoryReactorClock(), BackendPool("x", []))
        self.assertEqual(
            (listener.send_proxy, listener.accept_proxy, listener.idle_timeout),
            (factory.send_proxy, factory.accept_proxy, factory.idle_timeout),
        )

    def test_tcp_only(self) -> None:
        """
        A file with only TCP listeners needs no routes.
        """
        text = MINIMAL.replace('protocol = "http"', 'protocol = "tcp"\npool = "web"')
        text = text.replace('[[route]]\npool = "web"\n', "")
        config = parse(text)
        self.assertEqual((config.routes, config.listeners[0].pool), ((), "web"))

    def test_every_balancer(self) -> None:
        for name in BALANCERS:
            text = MINIMAL.replace("[pool.web]", f"[pool.web]\nbalance = {name!r}")
            self.assertEqual(parse(text).pool("web").balance, name)

    def test_hash_keys(self) -> None:
        for key in ("source_ip", "uri", "header:X-User", "cookie:sid"):
            text = MINIMAL.replace(
                "[pool.web]", f"[pool.web]\nbalance = 'hash'\nhash_key = {key!r}"
            )
            self.assertEqual(parse(text).pool("web").hash_key, key)

    def test_secret_file(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"k" * 32 + b"\n")
        text = MINIMAL + f"[pool.web.sticky]\nkind = 'cookie'\nsecret_file = {str(path)!r}\n"
        sticky = parse(text).pool("web").sticky
        assert sticky is not None
        self.assertEqual(sticky.secret, b"k" * 32)

    def test_dns_without_backends(self) -> None:
        text = MINIMAL.replace('[[pool.web.backends]]\naddress = "127.0.0.1:8081"', "")
        config = parse(text + "[pool.web.dns]\nname = 'web.internal'\nport = 80\nkind = 'A+AAAA'\n")
        self.assertEqual(config.pool("web").backends, ())
        self.assertEqual(config.pool("web").dns, DNSConfig("web.internal", 80, "A+AAAA"))


class PoolErrorTests(SynchronousTestCase):
    """
    Each mistake in the pool and TCP listener keys is reported at its exact key path.
    """

    def assertError(self, extra: str, key: str, message: str | None = None) -> ConfigError:
        """
        C{MINIMAL} with C{extra} appended fails at C{key}, with exactly C{message} if given.
        """
        error = self.assertRaises(ConfigError, parse, MINIMAL + extra)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        if message is not None:
            self.assertEqual(error.message, message)
        return error

    def assertPoolKeyError(self, keys: str, key: str, message: str | None = None) -> None:
        """C{keys} in the C{[pool.web]} table (not its last backend) fail at C{key}."""
        error = self.assertRaises(
            ConfigError, parse, MINIMAL.replace("[pool.web]\n", f"[pool.web]\n{keys}")
        )
        self.assertEqual(error.key, key, str(error))
        if message is not None:
            self.assertEqual(error.message, message)

    def test_pool_keys(self) -> None:
        self.assertPoolKeyError(
            "retries = -1\n", "pool.web.retries", "expected an integer >= 0, got -1"
        )
        self.assertPoolKeyError("retries = 1.5\n", "pool.web.retries")
        self.assertPoolKeyError("slow_start = -1\n", "pool.web.slow_start")
        self.assertPoolKeyError("queue_size = -1\n", "pool.web.queue_size")
        self.assertPoolKeyError(
            "queue_timeout = 0\n", "pool.web.queue_timeout", "expected a number > 0, got 0"
        )
        self.assertPoolKeyError("hash_key = 'uri'\n", "pool.web.hash_key")
        self.assertPoolKeyError("balance = 'hash'\nhash_key = 'body'\n", "pool.web.hash_key")
        self.assertPoolKeyError("balance = 'hash'\nhash_key = 'header:'\n", "pool.web.hash_key")
        self.assertPoolKeyError("stickiness = {}\n", "pool.web.stickiness")

    def test_backend_keys(self) -> None:
        backend = '[[pool.web.backends]]\naddress = "10.0.0.2:1"\n'
        self.assertError(backend + "max_connections = -1\n", "pool.web.backends[1].max_connections")
        self.assertError(
            backend + "ports = { http = 0 }\n",
            "pool.web.backends[1].ports.http",
            "expected an integer from 1 to 65535, got 0",
        )
        self.assertError(backend + "ports = { HTTP = 80 }\n", "pool.web.backends[1].ports.HTTP")
        self.assertError(backend + "ports = 80\n", "pool.web.backends[1].ports")

    def test_no_backends(self) -> None:
        error = self.assertRaises(
            ConfigError,
            parse,
            MINIMAL.replace('[[pool.web.backends]]\naddress = "127.0.0.1:8081"', ""),
        )
        self.assertEqual(error.key, "pool.web.backends")
        self.assertIn("[pool.web.dns]", error.message)

    def test_sticky_keys(self) -> None:
        sticky = "[pool.web.sticky]\n"
        cookie = sticky + "kind = 'cookie'\nsecret = '" + "s" * 16 + "'\n"
        self.assertError(sticky, "pool.web.sticky.kind", "required key is missing")
        self.assertError(sticky + "kind = 'url'\n", "pool.web.sticky.kind")
        self.assertError(sticky + "kind = 'cookie'\n", "pool.web.sticky.secret")
        self.assertError(
            sticky + "kind = 'cookie'\nsecret = 'short'\n",
            "pool.web.sticky.secret",
            "the secret must be at least 16 bytes, got 5",
        )
        self.assertError(
            cookie + "secret_file = '/x'\n",
            "pool.web.sticky.secret_file",
            "give either secret or secret_file, not both",
        )
        self.assertError(cookie + "max_age = -1\n", "pool.web.sticky.max_age")
        self.assertError(cookie + "same_site = 'sometimes'\n", "pool.web.sticky.same_site")
        self.assertError(cookie + "same_site = 'None'\n", "pool.web.sticky.same_site")
        self.assertError(cookie + "cookie = 'a b'\n", "pool.web.sticky.cookie")
        self.assertError(cookie + "secure = 'yes'\n", "pool.web.sticky.secure")
        self.assertError(cookie + "http_only = 1\n", "pool.web.sticky.http_only")
        self.assertError(cookie + "strict = 1\n", "pool.web.sticky.strict")
        self.assertError(cookie + "path = 'app'\n", "pool.web.sticky.path")
        self.assertError(cookie + "expiry = 5\n", "pool.web.sticky.expiry")
        # What the class itself refuses is reported at the table.
        self.assertError(cookie + "cookie = '__Host-x'\n", "pool.web.sticky")
        self.assertError(
            sticky + "kind = 'source_ip'\ncookie = 'x'\n",
            "pool.web.sticky.cookie",
            "only used with kind = 'cookie' or 'app_cookie', not 'source_ip'",
        )
        self.assertError(sticky + "kind = 'source_ip'\nexpiry = 0\n", "pool.web.sticky.expiry")
        self.assertError(
            sticky + "kind = 'app_cookie'\nmax_entries = 0\n", "pool.web.sticky.max_entries"
        )
        self.assertError(sticky + "kind = 'app_cookie'\ncolour = 1\n", "pool.web.sticky.colour")

    def test_secret_file_missing(self) -> None:
        missing = self.mktemp()
        error = self.assertError(
            f"[pool.web.sticky]\nkind = 'cookie'\nsecret_file = {missing!r}\n",
            "pool.web.sticky.secret_file",
        )
        self.assertIn("No such file", error.message)
        self.assertIn(missing, error.message)
        short = Path(self.mktemp())
        short.write_bytes(b"tiny\n")
        self.assertError(
            f"[pool.web.sticky]\nkind = 'cookie'\nsecret_file = {str(short)!r}\n",
            "pool.web.sticky.secret_file",
            "the secret must be at least 16 bytes, got 4",
        )

    def test_health_keys(self) -> None:
        health = "[pool.web.health]\n"
        http = health + "kind = 'http'\n"
        self.assertError(health, "pool.web.health.kind")
        self.assertError(health + "kind = 'icmp'\n", "pool.web.health.kind")
        self.assertError(http + "interval = 0\n", "pool.web.health.interval")
        self.assertError(http + "timeout = -1\n", "pool.web.health.timeout")
        self.assertError(http + "jitter = 1\n", "pool.web.health.jitter")
        self.assertError(http + "rise = 0\n", "pool.web.health.rise")
        self.assertError(http + "fall = 0\n", "pool.web.health.fall")
        self.assertError(http + "path = 'health'\n", "pool.web.health.path")
        self.assertError(http + "method = 'GET /'\n", "pool.web.health.method")
        self.assertError(http + "expect_status = 200\n", "pool.web.health.expect_status")
        self.assertError(http + "expect_status = [300, 200]\n", "pool.web.health.expect_status")
        self.assertError(http + "expect_status = [200, 600]\n", "pool.web.health.expect_status")
        error = self.assertError(http + "body_regex = 'ok('\n", "pool.web.health.body_regex")
        self.assertIn("'ok('", error.message)
        self.assertError(
            health + "kind = 'tcp'\npath = '/'\n",
            "pool.web.health.path",
            "only used with kind = 'http', not 'tcp'",
        )
        self.assertError(
            health + "kind = 'tls'\nserver_name = 'a b'\n", "pool.web.health.server_name"
        )
        self.assertError(health + "kind = 'ftp'\npassword = 'x'\n", "pool.web.health.password")
        self.assertError(
            health + "kind = 'ftp'\nserver_name = 'x'\n", "pool.web.health.server_name"
        )

    def test_passive_keys(self) -> None:
        passive = "[pool.web.passive]\n"
        self.assertError(
            passive + "consecutive_failures = 0\n", "pool.web.passive.consecutive_failures"
        )
        self.assertError(passive + "base_ejection = 0\n", "pool.web.passive.base_ejection")
        self.assertError(
            passive + "base_ejection = 60\nmax_ejection = 30\n",
            "pool.web.passive.max_ejection",
            "must not be less than base_ejection (60), got 30",
        )
        self.assertError(
            passive + "max_ejected_share = 1.5\n",
            "pool.web.passive.max_ejected_share",
            "expected a number from 0 to 1, got 1.5",
        )
        self.assertError(passive + "eject = true\n", "pool.web.passive.eject")

    def test_dns_keys(self) -> None:
        dns = "[pool.web.dns]\n"
        self.assertError(dns + "port = 80\n", "pool.web.dns.name")
        self.assertError(dns + "name = 'a b'\nport = 80\n", "pool.web.dns.name")
        self.assertError(dns + "name = 'a.b'\n", "pool.web.dns.port", "required key is missing")
        self.assertError(dns + "name = 'a.b'\nport = 80\nkind = 'MX'\n", "pool.web.dns.kind")
        self.assertError(dns + "name = 'a.b'\nport = 80\ninterval = 0\n", "pool.web.dns.interval")
        self.assertError(
            dns + "name = '_h._tcp.a.b'\nkind = 'SRV'\nport = 80\n", "pool.web.dns.port"
        )

    def test_tcp_listener_keys(self) -> None:
        tcp = '[[listener]]\nname = "t"\nprotocol = "tcp"\nendpoint = "tcp:1"\n'
        self.assertError(tcp, "listener[1].pool", "required key is missing")
        self.assertError(
            tcp + 'pool = "db"\n', "listener[1].pool", "no pool named 'db' (defined: web)"
        )
        self.assertError(tcp + 'pool = "web"\nsend_proxy = "v3"\n', "listener[1].send_proxy")
        self.assertError(tcp + 'pool = "web"\nidle_timeout = -1\n', "listener[1].idle_timeout")
        self.assertError(tcp + 'pool = "web"\naccept_proxy = true\n', "listener[1].trusted_proxies")
        self.assertError(
            tcp + 'pool = "web"\naccept_proxy = true\ntrusted_proxies = []\n',
            "listener[1].trusted_proxies",
        )
        self.assertError(
            tcp + 'pool = "web"\ntrusted_proxies = ["10.0.0.0/8"]\n',
            "listener[1].trusted_proxies",
            "has no effect without accept_proxy = true",
        )
        self.assertError(
            tcp + 'pool = "web"\naccept_proxy = true\ntrusted_proxies = ["10.0.0.0/33"]\n',
            "listener[1].trusted_proxies[0]",
        )

    def test_http_listener_has_no_tcp_keys(self) -> None:
        text = MINIMAL.replace('protocol = "http"', 'protocol = "http"\nsend_proxy = "v1"')
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(error.key, "listener[0].send_proxy")
        self.assertEqual(error.message, "only used with protocol = \"tcp\", not 'http'")

    def test_route_to_tcp_listener(self) -> None:
        tcp = '[[listener]]\nname = "t"\nprotocol = "tcp"\nendpoint = "tcp:1"\npool = "web"\n'
        text = MINIMAL.replace(
            'pool = "web"\n\n[pool.web]', 'pool = "web"\nlisteners = ["t"]\n\n[pool.web]'
        )
        error = self.assertRaises(ConfigError, parse, text + tcp)
        self.assertEqual(
            (error.key, error.message), ("route[0].listeners[0]", "not an http listener named 't'")
        )

    def test_routes_without_http_listener(self) -> None:
        text = MINIMAL.replace('protocol = "http"', 'protocol = "tcp"\npool = "web"')
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(error.key, "route")


HTTPS = """
[[listener]]
name = "secure"
protocol = "https"
endpoint = "tcp:8443:interface=127.0.0.1"
certificates = [
  { cert = "/etc/tls/www.pem", key = "/etc/tls/www.key", chain = "/etc/tls/chain.pem" },
  { cert = "/etc/tls/api.pem", key = "/etc/tls/api.key" },
]
min_version = "TLSv1.3"
max_version = "TLSv1.3"
ciphers = "ECDHE-RSA-AES128-GCM-SHA256"
client_certs = "optional"
client_ca_files = ["/etc/tls/clients-ca.pem"]
hsts = "max-age=31536000; includeSubDomains"
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
address = "https://app.internal:8443"

[[pool.web.backends]]
address = "http://[::1]:8080"
name = "plain"

[[pool.web.backends]]
address = "10.0.0.3:8080"

[pool.web.tls]
verify = true
ca_files = ["/etc/tls/internal-ca.pem"]
server_name = "app.internal"
client_cert = "/etc/tls/proxy-client.pem"
client_key = "/etc/tls/proxy-client.key"
"""

MINIMAL_HTTPS = """
[[listener]]
name = "secure"
protocol = "https"
endpoint = "tcp:8443"
certificates = [{ cert = "c.pem", key = "k.pem" }]

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "127.0.0.1:8081"
"""


class HTTPSConfigTests(SynchronousTestCase):
    """
    C{https} listeners, C{redirect_to_https}, C{https://} backends and C{[pool.NAME.tls]}.
    """

    def test_round_trip(self) -> None:
        config = parse(HTTPS)
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig(
                    "secure",
                    "https",
                    "tcp:8443:interface=127.0.0.1",
                    tls=ListenerTLSConfig(
                        certificates=(
                            CertificateFiles(
                                "/etc/tls/www.pem", "/etc/tls/www.key", "/etc/tls/chain.pem"
                            ),
                            CertificateFiles("/etc/tls/api.pem", "/etc/tls/api.key"),
                        ),
                        min_version="TLSv1.3",
                        max_version="TLSv1.3",
                        ciphers="ECDHE-RSA-AES128-GCM-SHA256",
                        client_certs="optional",
                        client_ca_files=("/etc/tls/clients-ca.pem",),
                        hsts="max-age=31536000; includeSubDomains",
                        reload_interval=0.0,
                    ),
                ),
                ListenerConfig(
                    "plain", "http", "tcp:8080:interface=127.0.0.1", redirect_to_https=8443
                ),
            ),
        )
        web = config.pool("web")
        self.assertEqual(
            web.backends,
            (
                BackendConfig("app.internal:8443", "app.internal", 8443, scheme="https"),
                BackendConfig("plain", "::1", 8080),
                BackendConfig("10.0.0.3:8080", "10.0.0.3", 8080),
            ),
        )
        self.assertEqual(
            web.tls,
            BackendTLSConfig(
                verify=True,
                ca_files=("/etc/tls/internal-ca.pem",),
                server_name="app.internal",
                client_cert="/etc/tls/proxy-client.pem",
                client_key="/etc/tls/proxy-client.key",
            ),
        )

    def test_defaults_are_the_librarys(self) -> None:
        """
        An https listener with only certificates has L{ServerTLS}'s defaults; a pool without a
        tls table has none, and a backend address without a scheme is plain.
        """
        config = parse(MINIMAL_HTTPS)
        tls = config.listeners[0].tls
        assert tls is not None
        self.assertEqual(tls, ListenerTLSConfig((CertificateFiles("c.pem", "k.pem"),)))
        self.assertEqual(
            (tls.min_version, tls.max_version, tls.ciphers, tls.client_certs),
            ("TLSv1.2", None, MOZILLA_INTERMEDIATE_CIPHERS, "none"),
        )
        self.assertEqual((tls.hsts, tls.reload_interval), (None, 5.0))
        self.assertEqual(
            ServerTLS.watch.__defaults__, (tls.reload_interval,), "the library's own default"
        )
        self.assertIsNone(config.pool("web").tls)
        self.assertEqual(config.pool("web").backends[0].scheme, "http")
        self.assertEqual(BackendTLSConfig(), parse(MINIMAL + "[pool.web.tls]\n").pool("web").tls)

    def test_example(self) -> None:
        """
        The offload example terminates HTTPS, redirects plain HTTP, and verifies its TLS
        backends.
        """
        config = load_config(str(REPOSITORY / "examples" / "https.toml"))
        https, http = config.listeners
        assert https.tls is not None
        self.assertEqual((https.protocol, len(https.tls.certificates)), ("https", 2))
        self.assertEqual((http.protocol, http.redirect_to_https), ("http", 443))
        self.assertEqual([b.scheme for b in config.pool("app").backends], ["http"])
        api = config.pool("api")
        self.assertEqual([b.scheme for b in api.backends], ["https", "https"])
        assert api.tls is not None and api.health is not None
        self.assertEqual((api.tls.verify, api.health.kind), (True, "tls"))

    def test_https_listener_routes(self) -> None:
        """
        Routes apply to https listeners as to http ones, and an https listener alone needs
        routes.
        """
        config = parse(
            MINIMAL_HTTPS.replace('pool = "web"\n\n', 'pool = "web"\nlisteners = ["secure"]\n\n')
        )
        self.assertEqual(config.routes[0].listeners, ("secure",))
        error = self.assertRaises(
            ConfigError, parse, MINIMAL_HTTPS.replace('[[route]]\npool = "web"\n', "")
        )
        self.assertEqual(error.key, "route")

    def test_redirect_only(self) -> None:
        """
        A listener that only redirects needs no routes.
        """
        config = parse(
            '[[listener]]\nname = "plain"\nprotocol = "http"\nendpoint = "tcp:80"\n'
            "redirect_to_https = 443\n"
        )
        self.assertEqual(config.listeners[0].redirect_to_https, 443)
        self.assertEqual(config.routes, ())


class HTTPSErrorTests(SynchronousTestCase):
    """
    Each mistake in the HTTPS keys is reported at its exact key path.
    """

    def assertError(self, text: str, key: str, message: str | None = None) -> ConfigError:
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        if message is not None:
            self.assertEqual(error.message, message)
        return error

    def listener(self, extra: str, certificates: str | None = None) -> str:
        """C{MINIMAL_HTTPS} with C{extra} keys in its listener."""
        text = MINIMAL_HTTPS
        if certificates is not None:
            text = text.replace('[{ cert = "c.pem", key = "k.pem" }]', certificates)
        return text.replace('endpoint = "tcp:8443"\n', f'endpoint = "tcp:8443"\n{extra}')

    def test_certificates(self) -> None:
        self.assertError(
            MINIMAL_HTTPS.replace('certificates = [{ cert = "c.pem", key = "k.pem" }]\n', ""),
            "listener[0].certificates",
            'required with protocol = "https"',
        )
        self.assertError(self.listener("", "[]"), "listener[0].certificates")
        self.assertError(self.listener("", '"c.pem"'), "listener[0].certificates")
        self.assertError(
            self.listener("", '[{ cert = "c.pem" }]'),
            "listener[0].certificates[0].key",
            "required key is missing",
        )
        self.assertError(
            self.listener("", '[{ cert = "c.pem", key = "k.pem" }, { key = "k.pem" }]'),
            "listener[0].certificates[1].cert",
        )
        self.assertError(
            self.listener("", '[{ cert = "c.pem", key = "k.pem", chain = "" }]'),
            "listener[0].certificates[0].chain",
        )
        self.assertError(
            self.listener("", '[{ cert = "c.pem", key = "k.pem", ca = "x" }]'),
            "listener[0].certificates[0].ca",
        )

    def test_versions_and_ciphers(self) -> None:
        self.assertError(
            self.listener('min_version = "TLSv1"\n'),
            "listener[0].min_version",
            "expected one of 'TLSv1.2', 'TLSv1.3', got 'TLSv1'",
        )
        self.assertError(self.listener('max_version = "SSLv3"\n'), "listener[0].max_version")
        self.assertError(
            self.listener('min_version = "TLSv1.3"\nmax_version = "TLSv1.2"\n'),
            "listener[0].max_version",
            "TLSv1.2 is below min_version TLSv1.3",
        )
        self.assertError(self.listener('ciphers = "NOT-A-CIPHER"\n'), "listener[0].ciphers")
        self.assertError(self.listener("ciphers = 1\n"), "listener[0].ciphers")

    def test_client_certs(self) -> None:
        self.assertError(self.listener('client_certs = "yes"\n'), "listener[0].client_certs")
        error = self.assertError(
            self.listener('client_certs = "required"\n'), "listener[0].client_ca_files"
        )
        self.assertIn("required with client_certs = 'required'", error.message)
        self.assertError(
            self.listener('client_ca_files = ["ca.pem"]\n'),
            "listener[0].client_ca_files",
            'has no effect with client_certs = "none" (the default)',
        )
        self.assertError(
            self.listener('client_certs = "optional"\nclient_ca_files = ["ca.pem", 2]\n'),
            "listener[0].client_ca_files[1]",
        )

    def test_hsts_and_reload(self) -> None:
        self.assertError(self.listener('hsts = "includeSubDomains"\n'), "listener[0].hsts")
        self.assertError(self.listener('hsts = "max-age=1\\r\\nX: y"\n'), "listener[0].hsts")
        self.assertError(self.listener("hsts = true\n"), "listener[0].hsts")
        self.assertError(
            self.listener("reload_interval = -1\n"),
            "listener[0].reload_interval",
            "expected a number >= 0, got -1",
        )

    def test_keys_of_other_protocols(self) -> None:
        self.assertError(
            self.listener('pool = "web"\n'),
            "listener[0].pool",
            'only used with protocol = "tcp" or "ftp", not \'https\'',
        )
        self.assertError(
            self.listener("redirect_to_https = 443\n"),
            "listener[0].redirect_to_https",
            "only used with protocol = \"http\", not 'https'",
        )
        self.assertError(
            MINIMAL.replace('protocol = "http"', 'protocol = "http"\nhsts = "max-age=1"'),
            "listener[0].hsts",
            "only used with protocol = \"https\", not 'http'",
        )
        self.assertError(
            MINIMAL.replace('protocol = "http"', 'protocol = "http"\ncertificates = []'),
            "listener[0].certificates",
        )
        self.assertError(self.listener("reload = 5\n"), "listener[0].reload")

    def test_redirect_to_https(self) -> None:
        self.assertError(
            MINIMAL.replace('protocol = "http"', 'protocol = "http"\nredirect_to_https = 0'),
            "listener[0].redirect_to_https",
            "expected an integer from 1 to 65535, got 0",
        )
        redirect = (
            '[[listener]]\nname = "plain"\nprotocol = "http"\nendpoint = "tcp:80"\n'
            "redirect_to_https = 443\n"
        )
        named = MINIMAL.replace('pool = "web"\n\n', 'pool = "web"\nlisteners = ["plain"]\n\n')
        error = self.assertError(named + redirect, "route[0].listeners[0]")
        self.assertIn("only redirects to HTTPS", error.message)
        # Routes without a proxying listener to apply to.
        only_redirect = MINIMAL.replace(
            'protocol = "http"', 'protocol = "http"\nredirect_to_https = 443'
        )
        self.assertError(only_redirect, "route")

    def test_backend_addresses(self) -> None:
        backend = '[[pool.web.backends]]\naddress = "{}"\n'
        for address in ("ftp://a:21", "https://a", "https://a:443/path", "https://", "https:a:1"):
            self.assertError(
                MINIMAL + backend.format(address), "pool.web.backends[1].address", None
            )
        self.assertError(
            MINIMAL + backend.format("https://[::1:443"),
            "pool.web.backends[1].address",
        )

    def test_pool_tls(self) -> None:
        tls = "[pool.web.tls]\n"
        self.assertError(
            MINIMAL + tls + 'verify = "no"\n',
            "pool.web.tls.verify",
            "expected true or false, got 'no'",
        )
        self.assertError(MINIMAL + tls + 'ca_files = "ca.pem"\n', "pool.web.tls.ca_files")
        self.assertError(MINIMAL + tls + 'ca_files = [""]\n', "pool.web.tls.ca_files[0]")
        self.assertError(MINIMAL + tls + 'server_name = "a b"\n', "pool.web.tls.server_name")
        self.assertError(
            MINIMAL + tls + 'client_cert = "c.pem"\n',
            "pool.web.tls.client_key",
            "required with client_cert",
        )
        self.assertError(
            MINIMAL + tls + 'client_key = "k.pem"\n',
            "pool.web.tls.client_cert",
            "required with client_key",
        )
        self.assertError(
            MINIMAL + tls + 'verify = false\nca_files = ["ca.pem"]\n',
            "pool.web.tls.ca_files",
            "has no effect with verify = false",
        )
        self.assertError(MINIMAL + tls + "verfy = false\n", "pool.web.tls.verfy")
        self.assertError(MINIMAL.replace("[pool.web]\n", "[pool.web]\ntls = 1\n"), "pool.web.tls")


FTP = """
[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:2121:interface=127.0.0.1"
pool = "ftp"
banner = "Example FTP\\nUploads only"
passive_ports = [50000, 50099]
masquerade_address = "203.0.113.10"
idle_timeout = 600
data_timeout = 30
max_sessions_per_ip = 4
backend_passive = "pasv"
show_backend_features = true

[[listener]]
name = "files-tls"
protocol = "ftp"
endpoint = "tcp:990"
pool = "ftp"
certificates = [{ cert = "ftp.pem", key = "ftp.key" }]
min_version = "TLSv1.3"
reload_interval = 0
implicit = true

[pool.ftp]
[[pool.ftp.backends]]
address = "10.0.0.1:21"

[[pool.ftp.backends]]
address = "10.0.0.2:8000"
ports = { ftp = 2121 }

[pool.ftp.sticky]
kind = "user"
expiry = 7200

[pool.ftp.health]
kind = "ftp"
user = "probe"
password = "secret"

[pool.ftp.ftp]
tls = "explicit"

[pool.ftp.tls]
ca_files = ["internal-ca.pem"]
server_name = "ftp.internal"
"""

MINIMAL_FTP = """
[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:2121"
pool = "ftp"

[pool.ftp]
[[pool.ftp.backends]]
address = "127.0.0.1:21"
"""


class FTPConfigTests(SynchronousTestCase):
    """
    C{ftp} listeners, C{[pool.NAME.ftp]} and C{user} stickiness.
    """

    def test_round_trip(self) -> None:
        config = parse(FTP)
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig(
                    "files",
                    "ftp",
                    "tcp:2121:interface=127.0.0.1",
                    pool="ftp",
                    idle_timeout=600.0,
                    ftp=FTPListenerConfig(
                        banner="Example FTP\nUploads only",
                        passive_ports=(50000, 50099),
                        masquerade_address="203.0.113.10",
                        data_timeout=30.0,
                        max_sessions_per_ip=4,
                        backend_passive="pasv",
                        show_backend_features=True,
                    ),
                ),
                ListenerConfig(
                    "files-tls",
                    "ftp",
                    "tcp:990",
                    pool="ftp",
                    idle_timeout=FTPProxyFactory(
                        MemoryReactorClock(), BackendPool("x", [])
                    ).idle_timeout,
                    tls=ListenerTLSConfig(
                        certificates=(CertificateFiles("ftp.pem", "ftp.key"),),
                        min_version="TLSv1.3",
                        reload_interval=0.0,
                    ),
                    ftp=FTPListenerConfig(implicit=True),
                ),
            ),
        )
        ftp = config.pool("ftp")
        self.assertEqual(ftp.sticky, StickyConfig("user", expiry=7200.0, max_entries=100_000))
        self.assertEqual(ftp.ftp, FTPBackendsConfig(tls="explicit"))
        self.assertEqual(ftp.health, HealthConfig("ftp", user="probe", password="secret"))
        self.assertEqual(ftp.backends[1].ports, (("ftp", 2121),))
        # FTP listeners need no routes.
        self.assertEqual(config.routes, ())

    def test_defaults_are_the_factorys(self) -> None:
        config = parse(MINIMAL_FTP)
        (listener,) = config.listeners
        assert listener.ftp is not None
        factory = FTPProxyFactory(MemoryReactorClock(), BackendPool("x", []))
        ftp = listener.ftp
        self.assertEqual(
            (ftp.banner, ftp.passive_ports, ftp.masquerade_address, ftp.data_timeout),
            (
                factory.banner,
                factory.passive_ports,
                factory.masquerade_address,
                factory.data_timeout,
            ),
        )
        self.assertEqual(
            (ftp.max_sessions_per_ip, ftp.backend_passive, ftp.show_backend_features),
            (factory.max_sessions_per_ip, factory.backend_passive, factory.show_backend_features),
        )
        self.assertEqual(listener.idle_timeout, factory.idle_timeout)
        self.assertEqual((ftp.implicit, ftp.require_tls, listener.tls), (False, False, None))
        self.assertIsNone(config.pool("ftp").ftp)

    def test_explicit_ftps(self) -> None:
        certificates = 'certificates = [{ cert = "c.pem", key = "k.pem" }]\n'
        text = MINIMAL_FTP.replace(
            'pool = "ftp"\n', f'pool = "ftp"\n{certificates}require_tls = true\n', 1
        )
        (listener,) = parse(text).listeners
        assert listener.ftp is not None and listener.tls is not None
        self.assertEqual((listener.ftp.implicit, listener.ftp.require_tls), (False, True))
        self.assertEqual(listener.tls.certificates, (CertificateFiles("c.pem", "k.pem"),))

    def test_user_stickiness_defaults(self) -> None:
        sticky = parse(MINIMAL_FTP + "[pool.ftp.sticky]\nkind = 'user'\n").pool("ftp").sticky
        default = UserStickiness()
        self.assertEqual(
            sticky, StickyConfig("user", expiry=default.expiry, max_entries=default.max_entries)
        )

    def test_backend_tls_modes(self) -> None:
        for mode in ("none", "explicit", "implicit"):
            config = parse(MINIMAL_FTP + f"[pool.ftp.ftp]\ntls = {mode!r}\n")
            self.assertEqual(config.pool("ftp").ftp, FTPBackendsConfig(mode))

    def test_route_to_ftp_listener(self) -> None:
        text = MINIMAL + MINIMAL_FTP.replace('pool = "ftp"', 'pool = "web"').split("[pool.ftp]")[0]
        text = text.replace(
            'pool = "web"\n\n[pool.web]', 'pool = "web"\nlisteners = ["files"]\n\n[pool.web]'
        )
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual(
            (error.key, error.message),
            ("route[0].listeners[0]", "not an http listener named 'files'"),
        )


class FTPErrorTests(SynchronousTestCase):
    """
    Each mistake in the FTP keys is reported at its exact key path.
    """

    def assertError(self, text: str, key: str, message: str | None = None) -> ConfigError:
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        if message is not None:
            self.assertEqual(error.message, message)
        return error

    def listener(self, extra: str) -> str:
        """C{MINIMAL_FTP} with C{extra} keys in its listener."""
        return MINIMAL_FTP.replace('pool = "ftp"\n', f'pool = "ftp"\n{extra}', 1)

    def test_pool(self) -> None:
        self.assertError(
            MINIMAL_FTP.replace('pool = "ftp"\n', "", 1),
            "listener[0].pool",
            "required key is missing",
        )
        self.assertError(
            MINIMAL_FTP.replace('pool = "ftp"\n', 'pool = "web"\n', 1),
            "listener[0].pool",
            "no pool named 'web' (defined: ftp)",
        )

    def test_passive_ports(self) -> None:
        message = "expected [low, high]: two ports from 1024 to 65535, low first, got {}"
        for value, shown in (
            ("[21, 30]", "an array"),
            ("[50000, 70000]", "an array"),
            ("[50010, 50000]", "an array"),
            ("[50000]", "an array"),
            ("[50000, 50001, 50002]", "an array"),
            ("[50000, true]", "an array"),
            ("50000", "50000"),
            ('"50000-50100"', "'50000-50100'"),
        ):
            self.assertError(
                self.listener(f"passive_ports = {value}\n"),
                "listener[0].passive_ports",
                message.format(shown),
            )
        (listener,) = parse(self.listener("passive_ports = [1024, 1024]\n")).listeners
        assert listener.ftp is not None
        self.assertEqual(listener.ftp.passive_ports, (1024, 1024))

    def test_masquerade_address(self) -> None:
        for value in ('"2001:db8::1"', '"ftp.example.com"', '"203.0.113"', "1"):
            self.assertError(
                self.listener(f"masquerade_address = {value}\n"),
                "listener[0].masquerade_address",
            )

    def test_values(self) -> None:
        self.assertError(self.listener('banner = ""\n'), "listener[0].banner")
        self.assertError(
            self.listener('banner = "a\\r\\n227 b"\n'),
            "listener[0].banner",
            "expected text without control characters (lines separated by \\n), got 'a\\r\\n227 b'",
        )
        self.assertError(self.listener("idle_timeout = -1\n"), "listener[0].idle_timeout")
        self.assertError(self.listener("data_timeout = 0\n"), "listener[0].data_timeout")
        self.assertError(
            self.listener("max_sessions_per_ip = -1\n"), "listener[0].max_sessions_per_ip"
        )
        self.assertError(
            self.listener('backend_passive = "port"\n'),
            "listener[0].backend_passive",
            "expected one of 'epsv', 'pasv', got 'port'",
        )
        self.assertError(
            self.listener('show_backend_features = "yes"\n'), "listener[0].show_backend_features"
        )
        self.assertError(
            self.listener("pasive_ports = [50000, 50001]\n"), "listener[0].pasive_ports"
        )

    def test_tls_keys(self) -> None:
        certificates = 'certificates = [{ cert = "c.pem", key = "k.pem" }]\n'
        for key in ("implicit", "require_tls"):
            self.assertError(
                self.listener(f"{key} = true\n"),
                f"listener[0].{key}",
                "needs certificates: the proxy's FTPS certificates",
            )
        self.assertError(
            self.listener(certificates + "implicit = true\nrequire_tls = true\n"),
            "listener[0].require_tls",
            "has no effect with implicit = true: every session is TLS",
        )
        self.assertError(
            self.listener('min_version = "TLSv1.3"\n'),
            "listener[0].min_version",
            "has no effect without certificates (FTPS)",
        )
        self.assertError(
            self.listener(certificates + 'hsts = "max-age=1"\n'),
            "listener[0].hsts",
            "only used with protocol = \"https\", not 'ftp'",
        )
        self.assertError(self.listener("certificates = []\n"), "listener[0].certificates")
        self.assertError(
            self.listener(certificates + 'min_version = "TLSv1"\n'), "listener[0].min_version"
        )

    def test_keys_of_other_protocols(self) -> None:
        self.assertError(
            self.listener('send_proxy = "v1"\n'),
            "listener[0].send_proxy",
            "only used with protocol = \"tcp\", not 'ftp'",
        )
        self.assertError(
            MINIMAL.replace('protocol = "http"', 'protocol = "http"\nbanner = "hi"'),
            "listener[0].banner",
            "only used with protocol = \"ftp\", not 'http'",
        )
        self.assertError(
            MINIMAL.replace('protocol = "http"', 'protocol = "http"\npool = "web"'),
            "listener[0].pool",
            'only used with protocol = "tcp" or "ftp", not \'http\'',
        )

    def test_pool_ftp_table(self) -> None:
        self.assertError(
            MINIMAL_FTP + "[pool.ftp.ftp]\ntls = 'starttls'\n",
            "pool.ftp.ftp.tls",
            "expected one of 'explicit', 'implicit', 'none', got 'starttls'",
        )
        self.assertError(MINIMAL_FTP + "[pool.ftp.ftp]\ntsl = 'none'\n", "pool.ftp.ftp.tsl")
        self.assertError(
            MINIMAL + "[pool.web.ftp]\ntls = 'explicit'\n",
            "pool.web.ftp",
            "has no effect: no protocol = \"ftp\" listener uses pool 'web'",
        )
        # FTPS backends may be probed with a TLS handshake, or with the FTP check, which then
        # speaks FTPS itself (explicit or implicit, as the pool's ftp table says).
        parse(MINIMAL_FTP + "[pool.ftp.ftp]\ntls = 'implicit'\n[pool.ftp.health]\nkind = 'tls'\n")
        config = parse(
            MINIMAL_FTP + "[pool.ftp.ftp]\ntls = 'implicit'\n[pool.ftp.health]\nkind = 'ftp'\n"
        )
        self.assertEqual(config.pool("ftp").health.kind, "ftp")

    def test_ftp_transfer_timeout(self) -> None:
        listener = MINIMAL_FTP.replace('pool = "ftp"', 'pool = "ftp"\ntransfer_timeout = 3600', 1)
        self.assertEqual(parse(listener).listeners[0].ftp.transfer_timeout, 3600.0)
        self.assertError(
            MINIMAL_FTP.replace('pool = "ftp"', 'pool = "ftp"\ntransfer_timeout = -1', 1),
            "listener[0].transfer_timeout",
        )

    def test_user_sticky_keys(self) -> None:
        sticky = MINIMAL_FTP + "[pool.ftp.sticky]\nkind = 'user'\n"
        self.assertError(sticky + "expiry = 0\n", "pool.ftp.sticky.expiry")
        self.assertError(sticky + "max_entries = 0\n", "pool.ftp.sticky.max_entries")
        self.assertError(
            sticky + "cookie = 'x'\n",
            "pool.ftp.sticky.cookie",
            "only used with kind = 'cookie' or 'app_cookie', not 'user'",
        )

    def test_ftps_backends_need_one_name(self) -> None:
        """
        FTPS backends share one client TLS: on several hosts (or from DNS) they need the
        server_name their certificates are verified against, unless not verified.
        """
        two = MINIMAL_FTP + '[[pool.ftp.backends]]\naddress = "127.0.0.2:21"\n'
        ftps = "[pool.ftp.ftp]\ntls = 'explicit'\n"
        error = self.assertError(two + ftps, "pool.ftp.tls.server_name")
        self.assertIn("different hosts", error.message)
        dns = MINIMAL_FTP + "[pool.ftp.dns]\nname = 'ftp.internal'\nport = 21\n"
        self.assertIn(
            "DNS-discovered",
            self.assertError(dns + ftps, "pool.ftp.tls.server_name").message,
        )
        parse(two + ftps + "[pool.ftp.tls]\nserver_name = 'ftp.internal'\n")
        parse(two + ftps + "[pool.ftp.tls]\nverify = false\n")
        parse(MINIMAL_FTP + '[[pool.ftp.backends]]\naddress = "127.0.0.1:2121"\n' + ftps)
        parse(two + "[pool.ftp.ftp]\ntls = 'none'\n")
