"""
Tests for L{twisted_rp.tap} and the C{twistd reverseproxy} plugin.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp import tap
from twisted_rp.demo import DemoService

REPOSITORY = Path(__file__).resolve().parent.parent

GOOD = """
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

# The backend's port is out of range: the error names the file and the key.
BAD = GOOD.replace("127.0.0.1:8081", "127.0.0.1:80810")
BAD_KEY = "pool.web.backends[0].address"


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def twistd_command() -> list[str]:
    """The twistd of the Python running the tests."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(*argv: str) -> subprocess.CompletedProcess[str]:
    """
    Run twistd from the repository, so it finds the plugin in C{twisted/plugins}.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY), *filter(None, [environment.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [*twistd_command(), *argv],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ConfigFileMixin:
    """Writes configuration files into a fresh directory."""

    def write(self: SynchronousTestCase, text: str, name: str = "proxy.toml") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class OptionsTests(ConfigFileMixin, SynchronousTestCase):
    """
    Parsing the command line of C{twistd reverseproxy}.
    """

    def assertUsageError(self, *argv: str) -> str:
        error = self.assertRaises(UsageError, parse, *argv)
        return str(error)

    def test_config(self) -> None:
        for argv in (["--config", "proxy.toml"], ["-c", "proxy.toml"], ["--config=proxy.toml"]):
            options = parse(*argv)
            self.assertEqual(options["config"], "proxy.toml")
            self.assertIsNone(options.quick)

    def test_quick_mode(self) -> None:
        """
        C{--listen} and C{--backend} repeat; quick mode becomes a configuration at once.
        """
        options = parse(
            "--listen",
            "tcp:8080",
            "--listen=127.0.0.1:9090",
            "--backend",
            "10.0.0.1:8000",
            "--backend",
            "[::1]:8001",
            "--balance",
            "round_robin",
        )
        self.assertEqual(options["listen"], ["tcp:8080", "127.0.0.1:9090"])
        self.assertEqual(options["backend"], ["10.0.0.1:8000", "[::1]:8001"])
        config = options.quick
        assert config is not None
        self.assertEqual(
            [listener.endpoint for listener in config.listeners],
            ["tcp:8080", "tcp:9090:interface=127.0.0.1"],
        )
        (pool,) = config.pools
        self.assertEqual(
            [(b.host, b.port) for b in pool.backends], [("10.0.0.1", 8000), ("::1", 8001)]
        )
        self.assertEqual(pool.balance, "round_robin")

    def test_listen_defaults_to_8080(self) -> None:
        config = parse("--backend", "10.0.0.1:8000").quick
        assert config is not None
        self.assertEqual([listener.endpoint for listener in config.listeners], ["tcp:8080"])

    def test_demo(self) -> None:
        options = parse("--demo")
        self.assertTrue(options["demo"])
        self.assertIsNone(options.quick)

    def test_nothing_given(self) -> None:
        message = self.assertUsageError()
        self.assertIn("--config FILE", message)
        self.assertIn("--backend HOST:PORT", message)
        self.assertIn("--demo", message)

    def test_config_and_quick_mode(self) -> None:
        for extra in (["--backend", "10.0.0.1:80"], ["--listen", "tcp:80"], ["--balance", "x"]):
            message = self.assertUsageError("--config", "proxy.toml", *extra)
            self.assertIn("put listeners and backends in the file", message)

    def test_demo_alone(self) -> None:
        for extra in (["--config", "proxy.toml"], ["--backend", "10.0.0.1:80"], ["--check-config"]):
            message = self.assertUsageError("--demo", *extra)
            self.assertIn("--demo takes no other option", message)

    def test_listen_without_backend(self) -> None:
        message = self.assertUsageError("--listen", "tcp:8080")
        self.assertIn("at least one --backend", message)

    def test_check_config_needs_config(self) -> None:
        message = self.assertUsageError("--check-config")
        self.assertIn("add --config FILE", message)
        message = self.assertUsageError("--check-config", "--backend", "10.0.0.1:80")
        self.assertIn("add --config FILE", message)

    def test_bad_backend(self) -> None:
        message = self.assertUsageError("--backend", "10.0.0.1")
        self.assertIn("--backend", message)
        self.assertIn("'10.0.0.1'", message)

    def test_bad_listen(self) -> None:
        message = self.assertUsageError("--listen", "tcp:notaport", "--backend", "10.0.0.1:80")
        self.assertIn("--listen", message)
        self.assertIn("'tcp:notaport'", message)

    def test_bad_balance(self) -> None:
        message = self.assertUsageError("--balance", "fastest", "--backend", "10.0.0.1:80")
        self.assertIn("--balance", message)
        self.assertIn("round_robin", message)

    def test_every_balancer_in_quick_mode(self) -> None:
        for name in ("round_robin", "least_connections", "random", "least_time"):
            self.assertEqual(parse("--balance", name, "--backend", "10.0.0.1:80")["balance"], name)


class CheckConfigTests(ConfigFileMixin, SynchronousTestCase):
    """
    C{--check-config} validates the file while parsing options, and ends the process.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_good(self) -> None:
        path = self.write(GOOD)
        exit = self.assertRaises(SystemExit, parse, "--check-config", "--config", path)
        self.assertEqual(exit.code, 0)
        self.assertEqual(self.stdout.getvalue(), f"OK: {path}\n")

    def test_bad(self) -> None:
        path = self.write(BAD)
        exit = self.assertRaises(SystemExit, parse, "--check-config", "--config", path)
        self.assertEqual(exit.code, 1)
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertTrue(self.stderr.getvalue().startswith(f"{path}: {BAD_KEY}: "))
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)


class MakeServiceTests(ConfigFileMixin, SynchronousTestCase):
    """
    L{tap.makeService} builds what the options ask for.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_config_file(self) -> None:
        service = tap.makeService(parse("--config", self.write(GOOD)))
        self.assertIsInstance(service.getServiceNamed("web"), StreamServerEndpointService)

    def test_quick_mode(self) -> None:
        service = tap.makeService(parse("--listen", "tcp:0", "--backend", "127.0.0.1:1"))
        assert isinstance(service, MultiService)
        self.assertIsInstance(service.getServiceNamed("http-1"), StreamServerEndpointService)

    def test_bad_config_file(self) -> None:
        """
        An invalid file ends the process with status 1 and a one-line message naming the file
        and the key.
        """
        path = self.write(BAD)
        exit = self.assertRaises(SystemExit, tap.makeService, parse("--config", path))
        self.assertEqual(exit.code, 1)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)
        self.assertTrue(self.stderr.getvalue().startswith(f"{path}: {BAD_KEY}: "))

    def test_demo(self) -> None:
        service = tap.makeService(parse("--demo"))
        self.assertIsInstance(service, DemoService)
        self.assertIn("curl -X POST http://127.0.0.1:8082/toggle", self.stdout.getvalue())


class PluginTests(SynchronousTestCase):
    """
    The plugin twistd finds in C{twisted/plugins}.
    """

    def test_found(self) -> None:
        import twisted.plugins

        makers = [
            m for m in getPlugins(IServiceMaker, twisted.plugins) if m.tapname == "reverseproxy"
        ]
        self.assertEqual(len(makers), 1)
        (maker,) = makers
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(verifyObject(IPlugin, maker))
        self.assertIsInstance(maker.options(), tap.Options)

    def test_no_package_init(self) -> None:
        """
        C{twisted/plugins} must stay a plain directory: an C{__init__.py} there would hide
        Twisted's own plugins.
        """
        self.assertTrue((REPOSITORY / "twisted" / "plugins" / "twisted_rp_plugin.py").exists())
        self.assertFalse((REPOSITORY / "twisted" / "plugins" / "__init__.py").exists())
        self.assertFalse((REPOSITORY / "twisted" / "__init__.py").exists())


class TwistdTests(ConfigFileMixin, SynchronousTestCase):
    """
    C{twistd reverseproxy} as a user runs it, in a separate process.
    """

    def test_help_lists_every_option(self) -> None:
        result = twistd("reverseproxy", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in (
            "--config=",
            "--listen=",
            "--backend=",
            "--balance=",
            "--check-config",
            "--demo",
        ):
            self.assertIn(option, result.stdout)

    def test_check_config_good(self) -> None:
        path = self.write(GOOD)
        result = twistd("reverseproxy", "--check-config", "--config", path)
        self.assertEqual((result.returncode, result.stdout), (0, f"OK: {path}\n"))

    def test_check_config_bad(self) -> None:
        path = self.write(BAD)
        result = twistd("reverseproxy", "--check-config", "--config", path)
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith(f"{path}: {BAD_KEY}: "), result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_bad_config_no_traceback(self) -> None:
        """
        Starting with an invalid file fails with status 1 and one line naming the file and
        the key, not a traceback.
        """
        path = self.write(BAD)
        result = twistd("--nodaemon", "--pidfile=", "reverseproxy", "--config", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(), [result.stderr.strip()])
        self.assertTrue(result.stderr.startswith(f"{path}: {BAD_KEY}: "), result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_missing_certificate_at_start_no_traceback(self) -> None:
        """
        A file that parses but names a certificate that is not there fails at start-up as a bad
        file does: status 1, one line with the file and the key, no traceback.
        """
        path = self.write(
            """
[[listener]]
name = "secure"
protocol = "https"
endpoint = "tcp:0:interface=127.0.0.1"
certificates = [{ cert = "/nonexistent/www.pem", key = "/nonexistent/www.key" }]

[[route]]
pool = "app"

[[pool.app.backends]]
address = "127.0.0.1:9"
"""
        )
        result = twistd("--nodaemon", "--pidfile=", "reverseproxy", "--config", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(), [result.stderr.strip()])
        self.assertTrue(
            result.stderr.startswith(f"{path}: listener[0].certificates[0].cert: "), result.stderr
        )
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_missing_config_file(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "missing.toml")
        result = twistd("--nodaemon", "--pidfile=", "reverseproxy", "--config", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{path}: cannot read the file", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_usage_error(self) -> None:
        result = twistd("--nodaemon", "--pidfile=", "reverseproxy")
        self.assertEqual(result.returncode, 1)
        self.assertIn("nothing to run", result.stdout)
