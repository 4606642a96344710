"""
The C{[admin]} table: defaults, authentication settings, and the refusal to expose an
unauthenticated admin listener beyond this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from twisted_rp.admin import build_admin_service
from twisted_rp.config import ConfigError, parse_config
from twisted_rp.config_admin import DEFAULT_ADMIN_ENDPOINT, AdminConfig, loopback_only
from twisted_rp.service import build_service

BASE: dict[str, Any] = {
    "listener": [{"name": "web", "protocol": "http", "endpoint": "tcp:8080"}],
    "route": [{"pool": "app"}],
    "pool": {"app": {"backends": [{"address": "127.0.0.1:8001"}]}},
}


def parse(admin: Any) -> Any:
    return parse_config({**BASE, "admin": admin}, "proxy.toml")


class AdminConfigTests(TestCase):
    def test_absent_means_no_admin_listener(self) -> None:
        self.assertIsNone(parse_config(BASE, "proxy.toml").admin)

    def test_defaults(self) -> None:
        admin = parse({}).admin
        self.assertEqual(admin, AdminConfig())
        self.assertEqual(admin.endpoint, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(DEFAULT_ADMIN_ENDPOINT, admin.endpoint)
        self.assertFalse(admin.authenticated)

    def test_disabled(self) -> None:
        self.assertIsNone(parse({"enabled": False, "endpoint": "tcp:9000"}).admin)

    def test_public_endpoint_needs_authentication(self) -> None:
        for endpoint in ("tcp:9000", "tcp:9000:interface=0.0.0.0", "tcp6:9000"):
            with self.assertRaises(ConfigError) as caught:
                parse({"endpoint": endpoint})
            self.assertEqual(caught.exception.key, "admin.endpoint")
            self.assertIn("admin.token", str(caught.exception))
            self.assertTrue(str(caught.exception).startswith("proxy.toml: admin.endpoint:"))

    def test_public_endpoint_with_token(self) -> None:
        admin = parse({"endpoint": "tcp:9000", "token": "t0ken"}).admin
        self.assertEqual((admin.endpoint, admin.token), ("tcp:9000", "t0ken"))
        self.assertTrue(admin.authenticated)

    def test_token_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("from-a-file\n")
        admin = parse({"endpoint": "tcp:9000", "token_file": str(path)}).admin
        self.assertEqual(admin.token, "from-a-file")
        with self.assertRaises(ConfigError) as caught:
            parse({"token_file": str(path) + ".missing"})
        self.assertEqual(caught.exception.key, "admin.token_file")
        with self.assertRaises(ConfigError) as caught:
            parse({"token": "a", "token_file": str(path)})
        self.assertEqual(caught.exception.key, "admin.token_file")

    def test_users_file_must_exist(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse({"endpoint": "tcp:9000", "users": "/nonexistent/admins"})
        self.assertEqual(caught.exception.key, "admin.users")

    def test_bad_keys(self) -> None:
        for table, key in (
            ({"endpoint": "carrier-pigeon:1"}, "admin.endpoint"),
            ({"tokn": "x"}, "admin.tokn"),
            ({"enabled": "yes"}, "admin.enabled"),
            ({"token": ""}, "admin.token"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse(table)
            self.assertEqual(caught.exception.key, key, table)

    def test_loopback_only(self) -> None:
        for endpoint in (
            "tcp:9000:interface=127.0.0.1",
            "tcp:9000:interface=127.0.0.2",
            r"tcp6:9000:interface=\:\:1",
            "tcp:9000:interface=localhost",
            "unix:/run/twisted_rp/admin.sock",
        ):
            self.assertTrue(loopback_only(endpoint), endpoint)
        for endpoint in ("tcp:9000", "tcp:9000:interface=192.0.2.1", "tcp6:9000", "nonsense"):
            self.assertFalse(loopback_only(endpoint), endpoint)

    def test_service_refuses_public_endpoint_without_authentication(self) -> None:
        """Built by hand, bypassing the file, the service still refuses."""
        config = parse_config(BASE, "proxy.toml")

        class State:
            pools: dict[str, Any] = {}
            routers: dict[str, Any] = {}

            async def reload(self, config: Any = None) -> None:
                pass

        state: Any = State()
        state.config = config
        with self.assertRaises(ConfigError) as caught:
            build_admin_service(state, AdminConfig(endpoint="tcp:9000"), MemoryReactorClock())
        self.assertEqual(caught.exception.key, "admin.endpoint")
        service = build_admin_service(
            state, AdminConfig(endpoint="tcp:9000", token="x"), MemoryReactorClock()
        )
        self.assertEqual(service.name, "admin")


class BuildServiceTests(TestCase):
    """C{build_service} adds the admin listener when the configuration has one."""

    def test_admin_service_added(self) -> None:
        config = parse({"endpoint": "tcp:9123:interface=127.0.0.1"})
        top = build_service(config, MemoryReactorClock())
        admin = top.getServiceNamed("admin")
        self.assertEqual(admin.endpoint._port, 9123)  # type: ignore[attr-defined]
        self.assertEqual(admin.endpoint._interface, "127.0.0.1")  # type: ignore[attr-defined]

    def test_no_admin_service_without_the_table(self) -> None:
        top = build_service(parse_config(BASE, "proxy.toml"), MemoryReactorClock())
        self.assertNotIn("admin", [service.name for service in top])
