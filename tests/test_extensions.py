"""
Tests for L{twisted_rp.extensions}: middlewares and balancers named in the configuration,
built in, by dotted name, or found as Twisted plugins (the example plugins under
C{examples/plugins}, run through C{twistd} as a user would).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.servers import BackendServer, run_curl
from tests.test_tap import REPOSITORY, twistd, twistd_command
from twisted_rp.auth.identity import RemoveIdentityHeader, SetIdentityHeader
from twisted_rp.auth.ipfilter import IPFilter
from twisted_rp.builtin_extensions import builtin_extensions
from twisted_rp.config import ConfigError, parse_config
from twisted_rp.extensions import Extension, find_extension
from twisted_rp.interfaces import (
    IBalancer,
    IExtension,
    IHealthMonitor,
    IRequestRewriter,
    IResponseRewriter,
    IStickiness,
)
from twisted_rp.pool import Backend, PickContext
from twisted_rp.rewrite import HeaderRules, RedirectRewriter
from twisted_rp.service import build_monitor, build_pools
from twisted_rp.service_routes import build_middlewares, build_routes

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

PLUGINS = REPOSITORY / "examples" / "plugins"


@implementer(IBalancer)
class FirstBalancer:
    """Always the first candidate (used by dotted name below)."""

    def __init__(self, note: str = "") -> None:
        self.note = note

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        return candidates[0]


class NotABalancer:
    pass


@implementer(IHealthMonitor)
class AlwaysHealthy:
    """A health check extension taking the reactor."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def check(self, backend: Backend) -> Deferred[None]:
        return succeed(None)


@implementer(IStickiness)
class HeaderSticky:
    """Pins by a request header naming the backend."""

    strict = False

    def __init__(self, header: str) -> None:
        self.header = header

    def pinned(self, context: PickContext) -> str | None:
        return context.header(self.header)

    def pin(self, context: PickContext, backend: Backend, response: Any) -> None:
        pass


@implementer(IRequestRewriter, IResponseRewriter)
class Tagger:
    """A middleware taking a required option."""

    def __init__(self, tag: str, reactor: Any = None) -> None:
        self.tag = tag
        self.reactor = reactor

    def rewrite_request(self, request: Any) -> None:
        request.head.headers.set(b"X-Tag", self.tag.encode())

    def rewrite_response(self, request: Any, response: Any) -> None:
        response.headers.set(b"X-Tag", self.tag.encode())


BASE = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080"

[pool.app]
backends = [{ address = "127.0.0.1:8001" }, { address = "127.0.0.1:8002" }]
"""


def config_of(text: str) -> Any:
    return parse_config(tomllib.loads(BASE + text), "proxy.toml")


class FindTests(SynchronousTestCase):
    """
    Where a C{type} or C{balance} name is looked up.
    """

    def test_builtins_provide_the_interface(self) -> None:
        for name, extension in builtin_extensions("middleware").items():
            self.assertTrue(verifyObject(IExtension, extension), name)
            self.assertEqual((extension.name, extension.kind), (name, "middleware"))
        basic = builtin_extensions("middleware")["basic"]
        self.assertEqual(find_extension("middleware", "basic"), basic)

    def test_extension_is_a_plugin(self) -> None:
        extension = Extension("first", "balancer", FirstBalancer)
        self.assertTrue(verifyObject(IExtension, extension))
        self.assertTrue(IPlugin.providedBy(extension))

    def test_unknown_kind(self) -> None:
        self.assertRaises(ValueError, Extension, "x", "health", FirstBalancer)

    def test_dotted_class(self) -> None:
        extension = find_extension("balancer", f"{__name__}.FirstBalancer")
        built = extension.build(extension.parse(_options({"note": "hi"})), reactor)
        self.assertIsInstance(built, FirstBalancer)
        self.assertEqual(built.note, "hi")

    def test_dotted_class_of_another_kind(self) -> None:
        with self.assertRaises(LookupError) as caught:
            find_extension("balancer", f"{__name__}.NotABalancer")
        self.assertIn("NotABalancer", str(caught.exception))

    def test_unknown_name_lists_what_there_is(self) -> None:
        with self.assertRaises(LookupError) as caught:
            find_extension("middleware", "basik")
        message = str(caught.exception)
        self.assertIn("'basik'", message)
        self.assertIn("basic", message)
        self.assertIn("jwt", message)


def _options(values: dict[str, object]) -> Any:
    from twisted_rp.config_readers import _Section
    from twisted_rp.extensions import ExtensionOptions

    return ExtensionOptions(_Section("proxy.toml", "x", values))


class ConfigTests(SynchronousTestCase):
    """
    Mistakes in C{[middleware.NAME]} tables and extension references are configuration errors
    naming the exact key.
    """

    def assertConfigError(self, text: str, key: str, fragment: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config_of(text)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(fragment, caught.exception.message)

    def test_unknown_type(self) -> None:
        self.assertConfigError(
            '[middleware.m]\ntype = "bassic"\n[[route]]\npool = "app"\n',
            "middleware.m.type",
            "unknown middleware 'bassic'",
        )

    def test_unknown_option_suggests(self) -> None:
        self.assertConfigError(
            '[middleware.m]\ntype = "basic"\nhtpasswd = "x"\nrealmm = "R"\n'
            '[[route]]\npool = "app"\n',
            "middleware.m.realmm",
            "did you mean 'realm'?",
        )

    def test_missing_option(self) -> None:
        self.assertConfigError(
            '[middleware.m]\ntype = "basic"\n[[route]]\npool = "app"\n',
            "middleware.m.htpasswd",
            "required",
        )

    def test_bad_option_value(self) -> None:
        self.assertConfigError(
            '[middleware.m]\ntype = "forward"\nurl = "ftp://auth"\n[[route]]\npool = "app"\n',
            "middleware.m.url",
            "http://",
        )
        self.assertConfigError(
            '[middleware.m]\ntype = "forward"\nurl = "http://auth"\nfailure_status = 600\n'
            '[[route]]\npool = "app"\n',
            "middleware.m.failure_status",
            "expected an integer from 500 to 599, got 600",
        )
        self.assertConfigError(
            '[middleware.m]\ntype = "ip_filter"\ndeny = ["10.0.0.300/8"]\n'
            '[[route]]\npool = "app"\n',
            "middleware.m.deny",
            "not an IP network",
        )
        self.assertConfigError(
            '[middleware.m]\ntype = "headers"\nresponse = [{ set = "X-A" }]\n'
            '[[route]]\npool = "app"\n',
            "middleware.m.response[0].value",
            "required",
        )

    def test_body_filter_keys(self) -> None:
        self.assertConfigError(
            '[[route]]\npool = "app"\nsubstitute_types = ["text/html"]\n',
            "route[0].substitute_types",
            "no effect",
        )
        self.assertConfigError(
            '[[route]]\npool = "app"\ncompress_level = 5\n',
            "route[0].compress_level",
            "no effect",
        )
        self.assertConfigError(
            '[[route]]\npool = "app"\nsubstitute = [{ search = "" , replace = "x" }]\n',
            "route[0].substitute[0].search",
            "non-empty",
        )
        self.assertConfigError(
            '[[route]]\npool = "app"\nsubstitute = [{ search = "a", replace = "b" }]\n'
            'substitute_types = ["html"]\n',
            "route[0].substitute_types",
            "not a media type",
        )

    def test_rule_values_must_be_strings(self) -> None:
        for rule in ('{ replace = "X-A", pattern = "a", value = 1 }', '{ set = "X-A", value = 1 }'):
            self.assertConfigError(
                f'[middleware.m]\ntype = "headers"\nresponse = [{rule}]\n[[route]]\npool = "app"\n',
                "middleware.m.response[0].value",
                "expected a string, got 1",
            )

    def test_route_names_unknown_middleware(self) -> None:
        self.assertConfigError(
            '[[route]]\npool = "app"\nmiddlewares = ["sso"]\n',
            "route[0].middlewares[0]",
            "no middleware named 'sso'",
        )

    def test_dotted_middleware_options(self) -> None:
        self.assertConfigError(
            f'[middleware.m]\ntype = "{__name__}.Tagger"\n[[route]]\npool = "app"\n',
            "middleware.m.tag",
            "required",
        )
        self.assertConfigError(
            f'[middleware.m]\ntype = "{__name__}.Tagger"\ntag = "a"\ncolour = 1\n'
            '[[route]]\npool = "app"\n',
            "middleware.m.colour",
            "unknown key",
        )

    def test_balancer_by_dotted_name(self) -> None:
        config = parse_config(
            tomllib.loads(
                BASE.replace("[pool.app]", f'[pool.app]\nbalance = "{__name__}.FirstBalancer"')
                + '[pool.app.balance_options]\nnote = "n"\n[[route]]\npool = "app"\n'
            ),
            "proxy.toml",
        )
        pool = build_pools(config, reactor)["app"]
        picks = {pool.pick(PickContext("http", "10.0.0.1")).backend.port for _ in range(4)}  # type: ignore[union-attr]
        self.assertEqual(picks, {8001})

    def test_balancer_unknown(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(
                tomllib.loads(
                    BASE.replace("[pool.app]", '[pool.app]\nbalance = "zone_aware"')
                    + '[[route]]\npool = "app"\n'
                ),
                "proxy.toml",
            )
        self.assertEqual(caught.exception.key, "pool.app.balance")
        self.assertIn(
            "not a built-in one (hash, least_connections, least_time, random, round_robin, "
            "weighted_round_robin) nor a plugin",
            caught.exception.message,
        )

    def test_health_check_and_stickiness_by_dotted_name(self) -> None:
        """
        A C{kind} that is not built in names a health check or stickiness extension; the
        checker's own keys stay the proxy's, the others are the extension's options.
        """
        config = config_of(
            f'[pool.app.health]\nkind = "{__name__}.AlwaysHealthy"\ninterval = 7\n'
            f'[pool.app.sticky]\nkind = "{__name__}.HeaderSticky"\nheader = "X-Node"\n'
            '[[route]]\npool = "app"\n'
        )
        pool_config = config.pool("app")
        assert pool_config.health is not None
        self.assertEqual(pool_config.health.interval, 7)
        monitor = build_monitor(pool_config.health, reactor, pool_config)
        self.assertIsInstance(monitor, AlwaysHealthy)
        self.assertIs(monitor.reactor, reactor)  # type: ignore[attr-defined]
        pool = build_pools(config, reactor)["app"]
        self.assertIsInstance(pool.stickiness, HeaderSticky)
        self.assertEqual(pool.stickiness.header, "X-Node")  # type: ignore[union-attr]

    def test_unknown_health_kind(self) -> None:
        self.assertConfigError(
            '[pool.app.health]\nkind = "htttp"\n[[route]]\npool = "app"\n',
            "pool.app.health.kind",
            "not a built-in one (ftp, http, tcp, tls) nor a plugin",
        )
        self.assertConfigError(
            f'[pool.app.sticky]\nkind = "{__name__}.HeaderSticky"\n[[route]]\npool = "app"\n',
            "pool.app.sticky.header",
            "required",
        )

    def test_options_for_a_builtin_balancer(self) -> None:
        self.assertConfigError(
            '[pool.app.balance_options]\nx = 1\n[[route]]\npool = "app"\n',
            "pool.app.balance_options",
            "takes none",
        )

    def test_build_failure_names_the_table(self) -> None:
        config = config_of(
            '[middleware.staff]\ntype = "basic"\nhtpasswd = "/nonexistent/staff.htpasswd"\n'
            '[[route]]\npool = "app"\nmiddlewares = ["staff"]\n'
        )
        with self.assertRaises(ConfigError) as caught:
            build_middlewares(config, reactor)
        self.assertEqual(caught.exception.key, "middleware.staff")
        self.assertIn("/nonexistent/staff.htpasswd", caught.exception.message)


class ChainTests(SynchronousTestCase):
    """
    The order in which a route runs what the configuration gives it.
    """

    def test_order(self) -> None:
        config = config_of(
            f'[middleware.tag]\ntype = "{__name__}.Tagger"\ntag = "t"\n'
            '[middleware.quiet]\ntype = "hide_backend"\n'
            '[middleware.lan]\ntype = "ip_filter"\nallow = ["10.0.0.0/8"]\n'
            '[[route]]\npool = "app"\nmiddlewares = ["lan", "tag", "quiet"]\n'
            'deny = ["10.6.6.0/24"]\n'
        )
        middlewares = build_middlewares(config, reactor)
        self.assertIs(middlewares["tag"].reactor, reactor)  # type: ignore[attr-defined]
        [route] = build_routes(
            config, config.listeners[0], build_pools(config, reactor), middlewares
        )
        kinds = [type(a) for a in route.authenticators]
        self.assertEqual(kinds, [RemoveIdentityHeader, IPFilter, IPFilter, SetIdentityHeader])
        self.assertIs(route.authenticators[2], middlewares["lan"])
        # Redirect mapping needs nothing of the request (ProxyRequest.authority has the Host).
        self.assertEqual(route.request_rewriters, (middlewares["tag"], middlewares["quiet"]))
        self.assertIsInstance(route.response_rewriters[0], RedirectRewriter)
        self.assertEqual(route.response_rewriters[2:], (middlewares["tag"], middlewares["quiet"]))
        self.assertIsInstance(middlewares["quiet"], HeaderRules)

    def test_switches_off(self) -> None:
        config = config_of(
            '[[route]]\npool = "app"\nrewrite_redirects = false\nrewrite_cookies = false\n'
        )
        [route] = build_routes(config, config.listeners[0], build_pools(config, reactor))
        self.assertEqual((route.request_rewriters, route.response_rewriters), ((), ()))


class _Output(ProcessProtocol):
    """Collects a child's output; fires C{port} when it logs the port it listens on."""

    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = re.search(rb"HTTPProxyFactory starting on (\d+)", self.output)
        if found and not self.port.called:
            self.port.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            self.port.errback(AssertionError(self.output.decode("utf-8", "replace")))
        if reason.check(ProcessDone, ProcessTerminated):
            self.ended.callback(None)
        else:
            self.ended.errback(reason)


class PluginTests(TestCase):
    """
    The example plugins of C{examples/plugins} and C{examples/plugins.toml}, through twistd.
    """

    def environment(self, with_plugins: bool = True) -> dict[str, str]:
        paths = [str(REPOSITORY)]
        if with_plugins:
            paths.append(str(PLUGINS))
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def test_check_config(self) -> None:
        """
        With C{examples/plugins} on the path the example configuration is valid; without it
        the balancer is unknown, and the error names the key.
        """
        example = str(PLUGINS / "proxy.toml")
        result = twistd_in(
            self.environment(), "reverseproxy", "--check-config", "--config", example
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        bare = twistd("reverseproxy", "--check-config", "--config", example)
        self.assertEqual(bare.returncode, 1)
        self.assertIn(f"{example}: pool.app.balance: unknown balancer 'zone_aware'", bare.stderr)
        self.assertNotIn("Traceback", bare.stderr)

    def test_plugins_serve(self) -> Deferred[None]:
        """
        The plugin balancer keeps requests on the C{eu-} backends while they are up; the
        dotted-name authenticator lets only a known API key through, naming its client to the
        backend without passing the key on.
        """

        async def run() -> None:
            servers = {name: BackendServer(reactor, name) for name in ("eu-1", "eu-2", "us-1")}
            ports = {name: server.start() for name, server in servers.items()}
            for server in servers.values():
                self.addCleanup(server.stop)
            text = (PLUGINS / "proxy.toml").read_text()
            text = text.replace("tcp:8080:", "tcp:0:")
            for name, old in (("eu-1", 8001), ("eu-2", 8002), ("us-1", 8003)):
                text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{ports[name]}")
            directory = Path(self.mktemp()).absolute()
            directory.mkdir(parents=True)
            config = directory / "plugins.toml"
            config.write_text(text)
            output = _Output()
            process = reactor.spawnProcess(
                output,
                sys.executable,
                [
                    sys.executable,
                    *twistd_command()[1:],
                    "--nodaemon",
                    "--pidfile=",
                    "--logfile=-",
                    "reverseproxy",
                    "--config",
                    str(config),
                ],
                env=self.environment(),
                path=str(PLUGINS),
            )

            def stop() -> Deferred[None]:
                if process.pid is not None:
                    process.signalProcess("TERM")
                return output.ended

            self.addCleanup(stop)
            port = await output.port.addTimeout(30, reactor)
            for _ in range(6):
                result = await run_curl(reactor, f"http://127.0.0.1:{port}/page")
                self.assertEqual(result.code, 0, result.err)
            self.assertEqual(len(servers["us-1"].requests), 0)
            self.assertEqual(len(servers["eu-1"].requests), 3)
            self.assertEqual(len(servers["eu-2"].requests), 3)

            refused = await run_curl(
                reactor,
                "--write-out",
                "%{http_code}",
                "--output",
                "/dev/null",
                f"http://127.0.0.1:{port}/api/report",
            )
            self.assertEqual(refused.out, b"401")
            allowed = await run_curl(
                reactor,
                "-H",
                "X-API-Key: 3f6c1d2e9a8b7c6d5e4f",
                f"http://127.0.0.1:{port}/api/report",
            )
            self.assertEqual(allowed.code, 0, allowed.err)
            seen = [r for s in servers.values() for r in s.requests if r.target == "/api/report"]
            self.assertEqual(len(seen), 1)
            self.assertEqual(seen[0].header("x-authenticated-user"), ["reporting"])
            self.assertEqual(seen[0].header("x-api-key"), [])

        return Deferred.fromCoroutine(run())


def twistd_in(environment: dict[str, str], *argv: str) -> Any:
    import subprocess

    return subprocess.run(
        [*twistd_command(), *argv],
        cwd=PLUGINS,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
