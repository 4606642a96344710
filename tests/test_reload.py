"""
Tests for reloading the configuration of a running L{ReverseProxyService}: in memory, then a
real proxy process reloaded by SIGHUP while a client keeps sending requests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.helpers import FakeBackend, FakeClient, get, parse_message, response
from tests.proxyproc import TwistdProcess
from tests.servers import GREETING, BackendServer, connect_raw, wait_until
from twisted_rp.config import ConfigError, load_config
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.pool import Backend, Outcome, PickContext
from twisted_rp.pool.health import HealthChecker
from twisted_rp.proxyservice import ReverseProxyService, SignalService
from twisted_rp.service import build_service

BASE = """
[[listener]]
name = "public"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "10.0.0.1:8000"
name = "web-1"

[[pool.web.backends]]
address = "10.0.0.2:8000"
name = "web-2"

[pool.web.sticky]
kind = "source_ip"

[pool.web.health]
kind = "tcp"
"""

#: web-2 removed, web-1 re-weighted, web-3 added; /api goes to a new pool; a new listener.
CHANGED = """
[[listener]]
name = "public"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[listener]]
name = "extra"
protocol = "http"
endpoint = "tcp:8081:interface=127.0.0.1"

[[route]]
path_prefix = "/api"
pool = "api"

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "10.0.0.1:8000"
name = "web-1"
weight = 5

[[pool.web.backends]]
address = "10.0.0.3:8000"
name = "web-3"

[pool.web.sticky]
kind = "source_ip"

[pool.web.health]
kind = "tcp"

[pool.api]
[[pool.api.backends]]
address = "10.0.1.1:9000"
name = "api-1"
"""


def write(directory: str, text: str) -> str:
    path = os.path.abspath(os.path.join(directory, "proxy.toml"))
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return path


def reload(service: ReverseProxyService, config: Any = None) -> Deferred[None]:
    return Deferred.fromCoroutine(service.reload(config))


def http_factory(service: ReverseProxyService, name: str) -> HTTPProxyFactory:
    listening = service.getServiceNamed(name)
    assert isinstance(listening, StreamServerEndpointService)
    factory = listening.factory
    assert isinstance(factory, HTTPProxyFactory)
    return factory


class ReloadTests(SynchronousTestCase):
    """
    L{ReverseProxyService.reload} validates first, then changes pools, routes and listeners
    in place.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = write(self.directory, BASE)
        self.reactor = MemoryReactorClock()
        self.service = build_service(load_config(self.path), self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_duck_type(self) -> None:
        """The attributes the admin API relies on."""
        service = self.service
        self.assertIsInstance(service, ReverseProxyService)
        self.assertEqual(service.config.source, self.path)
        self.assertEqual(sorted(service.pools), ["web"])
        self.assertIs(service.routers["public"], http_factory(service, "public").router)

    def test_invalid_config_rejected(self) -> None:
        """
        An invalid file is rejected with the reason, logged with the file and key, and the
        configuration in use keeps running.
        """
        write(self.directory, BASE.replace('address = "10.0.0.2:8000"', 'address = "nope"'))
        old_config, old_router = self.service.config, self.service.routers["public"]
        with capturedLogs() as events:
            error = self.failureResultOf(reload(self.service), ConfigError).value
        self.assertEqual(error.key, "pool.web.backends[1].address")
        messages = [e["error"] for e in events if "reload rejected" in e.get("log_format", "")]
        self.assertEqual(messages, [str(error)])
        self.assertTrue(str(error).startswith(f"{self.path}: pool.web.backends[1].address: "))
        self.assertIs(self.service.config, old_config)
        self.assertIs(self.service.routers["public"], old_router)
        self.assertEqual(len(self.service.pools["web"].backends()), 2)

    def test_middleware_options_changed(self) -> None:
        """
        Middlewares are built anew when their options changed (not only their type), and
        kept when the file did not change them, even while others change.
        """
        tables = (
            '\n[middleware.env]\ntype = "headers"\n'
            'request = [{{ set = "X-Env", value = "{env}" }}]\n'
            '\n[middleware.quiet]\ntype = "hide_backend"\n'
        )
        text = BASE.replace('pool = "web"\n', 'pool = "web"\nmiddlewares = ["env", "quiet"]\n', 1)

        def env() -> Any:
            return self.service.routers["public"].routes[0].request_rewriters[0]

        def quiet() -> Any:
            return self.service.routers["public"].routes[0].request_rewriters[1]

        write(self.directory, text + tables.format(env="a"))
        self.successResultOf(reload(self.service))
        first, quiet_first = env(), quiet()
        self.assertEqual(first.request[0].value, b"a")
        self.successResultOf(reload(self.service))
        self.assertIs(env(), first)
        write(self.directory, text + tables.format(env="b"))
        self.successResultOf(reload(self.service))
        self.assertEqual(env().request[0].value, b"b")
        self.assertIs(quiet(), quiet_first)

    def test_unusable_access_log_rejected(self) -> None:
        """A file that can be parsed but not set up is rejected just the same."""
        missing = os.path.join(self.directory, "no", "such", "access.log")
        text = BASE + f'\n[log]\naccess = "json"\naccess_file = "{missing}"\n'
        write(self.directory, text)
        error = self.failureResultOf(reload(self.service), ConfigError).value
        self.assertEqual(error.key, "log.access_file")
        self.assertIsNone(http_factory(self.service, "public").access_log)

    def test_pools_keep_backend_state(self) -> None:
        """
        A backend whose settings did not change keeps its object, health, leases and sticky
        clients; a removed one takes no new requests but finishes its lease; an added one is
        used.
        """
        pool = self.service.pools["web"]
        web1, web2 = pool.backends()
        stickiness = pool.stickiness
        pool.set_health(web2, False, "test")
        lease = pool.pick(PickContext("http", "192.0.2.1"))
        assert not isinstance(lease, Deferred)
        self.assertIs(lease.backend, web1)
        write(self.directory, CHANGED)
        self.successResultOf(reload(self.service))
        self.assertIs(self.service.pools["web"], pool)
        self.assertIs(pool.stickiness, stickiness)
        self.assertEqual([b.name for b in pool.backends()], ["web-1", "web-3"])
        self.assertIs(pool.backend("web-1"), web1)
        self.assertEqual((web1.weight, web1.active), (5, 1))
        lease.release(Outcome("ok"))
        self.assertEqual(web1.active, 0)
        picked = {pool.pick(PickContext("http", f"192.0.2.{i}")).backend.name for i in range(9)}  # type: ignore[union-attr]
        self.assertEqual(picked, {"web-1", "web-3"})
        self.assertIsNone(pool.backend("web-2"))

    def test_unhealthy_backend_stays_unhealthy(self) -> None:
        """A kept backend's health verdict survives the reload: it gets no traffic."""
        pool = self.service.pools["web"]
        web1 = pool.backend("web-1")
        assert web1 is not None
        pool.set_health(web1, False, "down")
        write(self.directory, CHANGED)
        self.successResultOf(reload(self.service))
        self.assertFalse(web1.healthy)
        self.assertEqual([b.name for b in pool.usable()], ["web-3"])

    def test_runtime_changes(self) -> None:
        """
        A backend drained at run time stays drained through a reload that leaves it as it
        was; one added at run time is removed, as the file does not name it.
        """
        pool = self.service.pools["web"]
        pool.set_admin_state("web-1", "draining")
        pool.add_backend(Backend("extra", "10.0.0.9", 8000))
        self.successResultOf(reload(self.service))
        web1 = pool.backend("web-1")
        assert web1 is not None
        self.assertEqual(web1.admin_state, "draining")
        self.assertEqual([b.name for b in pool.backends()], ["web-1", "web-2"])
        self.assertEqual([b.name for b in pool.usable()], ["web-2"])

    def test_routes_swapped(self) -> None:
        """
        New requests take the new routes on the same factory; an exchange already in flight
        finishes on the route it started with.
        """
        factory = http_factory(self.service, "public")
        client = FakeClient(factory, self.reactor, IPv4Address("TCP", "192.0.2.7", 5000))
        client.send(get(b"/api/old"))
        host, port, backend_factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("10.0.0.1", 8000))
        backend = FakeBackend(self.reactor, host, port, backend_factory)
        write(self.directory, CHANGED)
        self.successResultOf(reload(self.service))
        self.assertIs(http_factory(self.service, "public"), factory)
        self.assertIs(factory.router, self.service.routers["public"])
        backend.answer(response(200, b"old"))
        self.assertEqual(parse_message(client.take()).status, 200)
        client.send(get(b"/api/new"))
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("10.0.1.1", 9000))

    def test_listener_added_and_removed(self) -> None:
        """A new listener listens at once; a removed one stops listening."""
        write(self.directory, CHANGED)
        self.successResultOf(reload(self.service))
        ports = [(port, factory) for port, factory, _, _ in self.reactor.tcpServers]
        self.assertEqual([port for port, _ in ports], [8080, 8081])
        self.assertIs(ports[1][1], http_factory(self.service, "extra"))
        write(self.directory, BASE)
        with capturedLogs() as events:
            self.successResultOf(reload(self.service))
        self.assertRaises(KeyError, self.service.getServiceNamed, "extra")
        self.assertEqual(sorted(self.service.pools), ["web"])
        summary = [e["summary"] for e in events if "summary" in e]
        self.assertEqual(
            summary, ["listeners +0 -1 ~0, routes +0 -1 ~0, pools +0 -1 ~1, backends +1 -1 ~1"]
        )

    def test_listener_settings_changed(self) -> None:
        """
        Changed settings give the listener a new factory; connections open on the old one
        keep it, and take the new routes.
        """
        old = http_factory(self.service, "public")
        write(self.directory, CHANGED + "\n[timeouts]\nbackend_connect = 3\n")
        self.successResultOf(reload(self.service))
        new = http_factory(self.service, "public")
        self.assertIsNot(new, old)
        self.assertEqual(new.settings.timeouts.backend_connect, 3.0)
        self.assertIs(old.router, new.router)
        # The memory reactor's ports cannot change factory: the listener listened again.
        self.assertIs(self.reactor.tcpServers[-1][1], new)

    def test_cannot_listen_rejected(self) -> None:
        """
        An endpoint that cannot be listened on rejects the reload, naming it; listeners
        opened meanwhile are closed again and nothing else changed.
        """
        reactor = MemoryReactorClock()

        def endpoint_for(listener: Any) -> Any:
            if listener.name == "extra":
                return FailingEndpoint()
            from twisted.internet.endpoints import serverFromString

            return serverFromString(reactor, listener.endpoint)

        service = ReverseProxyService(
            load_config(self.path), reactor, endpoint_for=endpoint_for, signals=False
        )
        service.startService()
        self.addCleanup(service.stopService)
        write(self.directory, CHANGED)
        error = self.failureResultOf(reload(service), ConfigError).value
        self.assertEqual(error.key, "listener[1].endpoint")
        self.assertIn("cannot listen", error.message)
        self.assertEqual(sorted(service.pools), ["web"])
        self.assertEqual(len(service.pools["web"].backends()), 2)

    def test_health_checker_kept_or_replaced(self) -> None:
        """
        The health checker of a pool whose health settings did not change keeps running;
        changed settings replace it.
        """
        checker = self.service.getServiceNamed("health:web")
        write(self.directory, CHANGED)
        self.successResultOf(reload(self.service))
        self.assertIs(self.service.getServiceNamed("health:web"), checker)
        write(self.directory, CHANGED.replace('kind = "tcp"', 'kind = "tcp"\ninterval = 9'))
        self.successResultOf(reload(self.service))
        new = self.service.getServiceNamed("health:web")
        assert isinstance(new, HealthChecker)
        self.assertIsNot(new, checker)
        self.assertFalse(checker.running)
        self.assertTrue(new.running)
        self.assertEqual(new._interval, 9.0)

    def test_sticky_settings_changed(self) -> None:
        """Changed stickiness settings get a new sticky table; other settings follow."""
        pool = self.service.pools["web"]
        before = pool.stickiness
        text = CHANGED.replace('kind = "source_ip"', 'kind = "source_ip"\nexpiry = 60')
        write(self.directory, text.replace("[pool.web]\n", "[pool.web]\nretries = 0\n"))
        self.successResultOf(reload(self.service))
        self.assertIsNot(pool.stickiness, before)
        self.assertEqual(pool.retries, 0)

    def test_sighup_reloads(self) -> None:
        """
        SIGHUP reloads the file through the reactor, and the handler in place before is
        called too.
        """
        calls: list[str] = []

        class Immediate:
            def callFromThread(self, f: Callable[..., object], *args: object) -> None:
                f(*args)

        previous = signal.signal(signal.SIGHUP, lambda *args: calls.append("previous"))
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        handlers = SignalService(Immediate(), {signal.SIGHUP: lambda: calls.append("reload")})
        handlers.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        handlers.stopService()
        self.assertEqual(calls, ["reload", "previous"])
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, ["reload", "previous", "previous"])
        # Stopped out of order, a service's handler stays chained but does nothing more.
        del calls[:]
        first = SignalService(Immediate(), {signal.SIGHUP: lambda: calls.append("first")})
        second = SignalService(Immediate(), {signal.SIGHUP: lambda: calls.append("second")})
        first.startService()
        second.startService()
        first.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        second.stopService()
        self.assertEqual(calls, ["second", "previous"])


class FailingEndpoint:
    """A server endpoint whose address is always in use."""

    def listen(self, factory: object) -> Deferred[object]:
        return fail(CannotListenError("127.0.0.1", 8081, OSError(98, "Address already in use")))


LOAD_CONFIG = """
{extra}

[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:{port}:interface=127.0.0.1"

[[route]]
pool = "{pool}"

[pool.one]
[[pool.one.backends]]
address = "127.0.0.1:{one}"
name = "one"

[pool.two]
[[pool.two.backends]]
address = "127.0.0.1:{two}"
name = "two"
"""


class ReloadUnderLoadTests(TestCase):
    """
    A real proxy process reloaded by SIGHUP while a client sends requests back to back.
    """

    async def run_client(self, port: int, until: Callable[[], bool], seen: list[str]) -> int:
        """Requests until C{until()}, each on a new connection; how many failed."""
        errors = 0
        for _ in range(2000):
            if until():
                break
            client = await connect_raw(global_reactor, port)
            # Answered after a while, so that some are always in flight when the reload comes.
            client.transport.write(
                b"GET /slow?delay=0.02 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            await wait_until(global_reactor, partial(getattr, client, "closed"), what="the answer")
            answer = client.response()
            if answer is None or answer.status != 200:
                errors += 1
            else:
                seen.append(answer.body.decode("latin-1"))
        return errors

    async def run_keepalive_client(
        self, port: int, until: Callable[[], bool], seen: list[str]
    ) -> int:
        """Requests until C{until()} on one persistent connection (treq); how many failed."""
        pool = HTTPConnectionPool(global_reactor, persistent=True)
        client = HTTPClient(Agent(global_reactor, pool=pool))
        errors = 0
        try:
            for _ in range(2000):
                if until():
                    break
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/keepalive")
                    body = await answer.content()
                except Exception:
                    errors += 1
                    continue
                if answer.code != 200:
                    errors += 1
                else:
                    seen.append(body.decode("latin-1"))
        finally:
            await pool.closeCachedConnections()
        return errors

    def test_sighup_under_load(self) -> Deferred[None]:
        """
        SIGHUP with an invalid file, then with one switching the route to another pool (and
        the listener to a new factory), while clients send requests back to back, three a
        connection per request, one over a kept-alive connection, and a WebSocket-style
        tunnel is open: no request fails, the tunnel goes on, the invalid file is rejected and
        the new pool answers afterwards.
        """

        async def run() -> None:
            one, two = BackendServer(global_reactor, "one"), BackendServer(global_reactor, "two")
            one.start(), two.start()
            self.addCleanup(one.stop)
            self.addCleanup(two.stop)
            directory = self.mktemp()
            os.makedirs(directory)
            port = TwistdProcess.free_port()
            fields = {"port": port, "one": one.port, "two": two.port}
            path = write(directory, LOAD_CONFIG.format(pool="one", extra="", **fields))
            proxy = await TwistdProcess.launch(global_reactor, path, port)
            self.addCleanup(proxy.stop)
            seen: list[str] = []
            kept: list[str] = []
            reloaded = False

            def done(answers: list[str]) -> Callable[[], bool]:
                return lambda: reloaded and sum('"two"' in body for body in answers) >= 20

            clients = [
                Deferred.fromCoroutine(self.run_client(port, done(seen), seen)) for _ in range(3)
            ]
            keepalive = Deferred.fromCoroutine(self.run_keepalive_client(port, done(kept), kept))
            tunnel = await connect_raw(global_reactor, port)
            tunnel.transport.write(
                b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n"
            )
            await wait_until(global_reactor, lambda: GREETING in tunnel.received, what="101")
            await wait_until(
                global_reactor, lambda: min(len(seen), len(kept)) >= 20, what="requests before"
            )
            write(directory, LOAD_CONFIG.format(pool="nowhere", extra="", **fields))
            os.kill(proxy.pid, signal.SIGHUP)
            await wait_until(global_reactor, lambda: "reload rejected" in proxy.log)
            self.assertIn(f"reload rejected: {path}: route[0].pool: no pool named", proxy.log)
            # Other timeouts too: the listener gets a new factory on the same socket.
            timeouts = "[timeouts]\nbackend_connect = 3"
            write(directory, LOAD_CONFIG.format(pool="two", extra=timeouts, **fields))
            os.kill(proxy.pid, signal.SIGHUP)
            reloaded = True
            errors = [await client for client in clients]
            self.assertEqual((errors, await keepalive), ([0, 0, 0], 0))
            self.assertTrue(done(seen)() and done(kept)(), (seen[-1:], kept[-1:]))
            self.assertIn("listeners +0 -0 ~1, routes +1 -1 ~0", proxy.log)
            self.assertGreater(len(one.requests), 0)
            self.assertGreaterEqual(len(two.requests), 20)
            tunnel.transport.write(b"still there?")
            await wait_until(
                global_reactor, lambda: tunnel.received.endswith(b"still there?"), what="echo"
            )
            self.assertFalse(tunnel.closed)
            tunnel.transport.loseConnection()

        return Deferred.fromCoroutine(run())
