"""
Tests for L{twisted_rp.config}.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.config import (
    BackendConfig,
    Config,
    ConfigError,
    ListenerConfig,
    PoolConfig,
    RouteConfig,
    load_config,
    parse_config,
    quick_config,
)
from twisted_rp.settings import HeaderPolicy, Limits, LogSettings, ProxySettings, Timeouts

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
        self.assertIn("basic.toml", [path.name for path in examples])
        self.assertIn("multi-site.toml", [path.name for path in examples])
        for path in examples:
            config = load_config(str(path))
            self.assertTrue(config.listeners, path)

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
        error = self.assertError(self.replace('"http"', '"ftp"'), "listener[0].protocol")
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
            self.replace("[pool.web]", "[pool.web]\nbalance = 'random'"), "pool.web.balance"
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
        self.assertError("--balance", ["tcp:8080"], ["h:1"], "random")

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
