"""
Failover end to end: a backend dies hard (its port closed and every connection aborted,
mid-request ones included) behind the HTTP proxy, on the real reactor, and comes back on the
same port.  Users must not notice: idempotent requests are retried on a live backend, the
active health checker takes the dead one out of service quickly and puts it back after it
returns, and sticky clients are re-pinned to a live backend.

Built with the library API: three L{tests.servers.BackendServer} backends, a L{BackendPool}
with L{PassiveHealth}, a L{HealthChecker} with an L{HTTPMonitor}, and the proxy listening on
127.0.0.1.  Every wait is bounded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeAlias

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.servers import BackendServer, wait_until
from tests.test_integration import RunningProxy
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IPoolObserver, IStickiness
from twisted_rp.pool import Backend, BackendPool, PassiveHealth
from twisted_rp.pool.health import HealthChecker, HTTPMonitor
from twisted_rp.pool.sticky import CookieStickiness, SourceIPStickiness, parse_set_cookie
from twisted_rp.settings import ProxySettings

CHECK_INTERVAL = 0.5
CHECK_TIMEOUT = 0.5
FALL = 2
RISE = 2
#: Reactor scheduling slack allowed on top of the health checker's own delays.
SLACK = 0.5
#: The longest a dead backend may stay in service: C{fall} probes, one of which may time out.
#: The checker's default jitter (10% of the interval) fits within the slack.
DOWN_WITHIN = FALL * CHECK_INTERVAL + CHECK_TIMEOUT + SLACK
#: The same for a restarted backend to be healthy again.
UP_WITHIN = RISE * CHECK_INTERVAL + CHECK_TIMEOUT + SLACK

LOAD_SECONDS = 20.0
KILL_AT = 5.0
RESTART_AT = 12.0
CLIENTS = 8
REQUEST_TIMEOUT = 5.0
COOKIE = "TRP_STICKY"

_Headers: TypeAlias = dict[bytes | str, bytes | str]


class _RestartableBackend(BackendServer):
    """A test backend that can be killed hard and restarted on the port it had."""

    def __init__(self, reactor: Any, name: str) -> None:
        super().__init__(reactor, name)
        self.fixed_port = 0

    def start(self) -> int:
        self.fixed_port = super().start()
        return self.fixed_port

    async def kill(self) -> None:
        """
        Stop listening and abort every open connection in the same reactor turn, so that
        requests in flight die unanswered; return once everything is closed.
        """
        port, self._port = self._port, None
        assert port is not None
        stopped = port.stopListening()
        connections = list(self.open_connections)
        closed = [connection.when_closed() for connection in connections]
        for connection in connections:
            connection.transport.abortConnection()
        if stopped is not None:
            await stopped.addTimeout(10, self.reactor)
        await gatherResults(closed).addTimeout(10, self.reactor)

    def restart(self) -> None:
        """Listen again on the same port."""
        assert self._port is None
        self._port = self.reactor.listenTCP(self.fixed_port, self, interface="127.0.0.1")


@frozen
class _Change:
    """One backend change an observer saw."""

    at: float
    backend: str
    healthy: bool
    reason: str


@implementer(IPoolObserver)
@define
class _ChangeRecorder:
    """Remembers every backend change of a pool, with the reactor time it happened."""

    clock: Any
    changes: list[_Change] = field(factory=list)

    def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
        self.changes.append(_Change(self.clock.seconds(), backend.name, backend.healthy, reason))

    def first(self, backend: str, healthy: bool, after: float) -> _Change | None:
        """The first change to C{healthy} of C{backend} at or after C{after}."""
        for change in self.changes:
            if change.backend == backend and change.healthy is healthy and change.at >= after:
                return change
        return None


@frozen
class _Answer:
    """
    A response the client received: when, its status, the backend named and its cookie, and
    when that backend answered (responses already on their way when it is killed still
    arrive).
    """

    at: float
    status: int
    backend: str | None
    set_cookie: str | None
    answered_at: float | None = None


class FailoverTests(TestCase):
    """Three backends behind the proxy, with passive and active health checks."""

    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor

    def setup_farm(
        self, stickiness: IStickiness | None = None
    ) -> tuple[list[_RestartableBackend], BackendPool, _ChangeRecorder, RunningProxy]:
        """Start three backends, their pool and health checker, and the proxy in front."""
        servers = []
        for index in range(3):
            server = _RestartableBackend(self.reactor, f"backend-{index}")
            server.start()
            self.addCleanup(server.stop)
            servers.append(server)
        pool = BackendPool(
            "failover",
            [Backend(s.name, "127.0.0.1", s.port) for s in servers],
            clock=self.reactor,
            stickiness=stickiness,
            passive=PassiveHealth(),
        )
        recorder = _ChangeRecorder(self.reactor)
        verifyObject(IPoolObserver, recorder)
        pool.add_observer(recorder)
        checker = HealthChecker(
            pool,
            HTTPMonitor(self.reactor, path="/health"),
            self.reactor,
            interval=CHECK_INTERVAL,
            timeout=CHECK_TIMEOUT,
            fall=FALL,
            rise=RISE,
        )
        checker.startService()
        self.addCleanup(checker.stopService)
        proxy = RunningProxy(self.reactor, Router([Route(pool)]), ProxySettings())
        self.addCleanup(proxy.stop)
        return servers, pool, recorder, proxy

    def client(self, persistent: bool) -> HTTPClient:
        """A treq client; its connections are closed before the proxy stops."""
        connections = HTTPConnectionPool(self.reactor, persistent=persistent)
        connections.maxPersistentPerHost = CLIENTS
        # Connections the proxy or the client closed must not stay around between tests.
        self.addCleanup(connections.closeCachedConnections)
        return HTTPClient(Agent(self.reactor, pool=connections))

    async def get(self, client: HTTPClient, url: str, headers: _Headers | None = None) -> _Answer:
        """GET C{url}; the answer names the backend when the body is a backend's echo."""
        response = await client.get(url, headers=headers, timeout=REQUEST_TIMEOUT)
        body = await response.content()
        backend = answered_at = None
        if response.code == 200:
            echo = json.loads(body)
            backend, answered_at = echo["backend"], echo["answered_at"]
        cookies = response.headers.getRawHeaders("set-cookie", [])
        set_cookie = None
        for value in cookies:
            parsed = parse_set_cookie(value)
            if parsed is not None and parsed.name == COOKIE:
                set_cookie = parsed.value
        return _Answer(self.reactor.seconds(), response.code, backend, set_cookie, answered_at)

    async def test_killed_backend_under_load(self) -> None:
        """
        Under a steady load of GETs, a backend killed hard costs no client a failed request;
        it is marked down within C{fall} check intervals and serves again after a restart
        on the same port.
        """
        servers, pool, recorder, proxy = self.setup_farm()
        victim = servers[1]
        client = self.client(persistent=True)
        start = self.reactor.seconds()
        end = start + LOAD_SECONDS
        answers: list[_Answer] = []
        failures: list[str] = []

        async def load(worker: int) -> None:
            sequence = 0
            # Bounded by the end time, each request by its timeout.
            while self.reactor.seconds() < end:
                sequence += 1
                # A short delay on the backend keeps requests in flight when the kill comes.
                url = proxy.url(f"/slow?delay=0.01&worker={worker}&n={sequence}")
                try:
                    answer = await self.get(client, url)
                except Exception as error:
                    failures.append(f"{self.reactor.seconds() - start:.2f}s: {error!r}")
                    continue
                if answer.status != 200:
                    failures.append(f"{answer.at - start:.2f}s: status {answer.status}")
                answers.append(answer)

        timeline: dict[str, float] = {}

        async def chaos() -> None:
            await deferLater(self.reactor, KILL_AT)
            timeline["kill"] = self.reactor.seconds()
            await victim.kill()
            timeline["killed"] = self.reactor.seconds()
            await deferLater(self.reactor, start + RESTART_AT - self.reactor.seconds())
            victim.restart()
            timeline["restart"] = self.reactor.seconds()

        await gatherResults(
            [Deferred.fromCoroutine(load(worker)) for worker in range(CLIENTS)]
            + [Deferred.fromCoroutine(chaos())]
        )

        self.assertEqual(failures, [], f"{len(failures)} of {len(answers)} requests failed")
        self.assertGreater(len(answers), 1000)
        live = {s.name for s in servers}
        self.assertEqual({a.backend for a in answers} - live, set())
        # Once its connections were aborted, the dead backend cannot have answered anyone
        # (what it had sent before may still arrive).
        from_the_dead = [
            a
            for a in answers
            if a.backend == victim.name
            and a.answered_at is not None
            and timeline["kill"] <= a.answered_at < timeline["restart"]
        ]
        self.assertEqual(from_the_dead, [])

        down = recorder.first(victim.name, False, timeline["kill"])
        assert down is not None, f"{victim.name} never marked down: {recorder.changes}"
        detection = down.at - timeline["kill"]
        self.assertLessEqual(detection, DOWN_WITHIN, down)
        up = recorder.first(victim.name, True, timeline["restart"])
        assert up is not None, f"{victim.name} never marked up: {recorder.changes}"
        self.assertLessEqual(up.at - timeline["restart"], UP_WITHIN, up)
        backend = pool.backend(victim.name)
        assert backend is not None
        self.assertIs(backend.healthy, True)
        restarted_requests = [a for a in answers if a.backend == victim.name and a.at > up.at]
        self.assertTrue(
            restarted_requests,
            f"{victim.name} served no client after it was back up at "
            f"{up.at - start:.2f}s; pool changes: {recorder.changes}",
        )
        print(
            f"\n{len(answers)} requests, 0 failed; down-detection {detection:.3f}s "
            f"(limit {DOWN_WITHIN:g}s), back up {up.at - timeline['restart']:.3f}s after the "
            f"restart; {len(restarted_requests)} requests served by {victim.name} afterwards"
        )

    async def repinning(
        self,
        stickiness: IStickiness,
        headers_for: Callable[[str | None], _Headers],
        pin_of: Callable[[_Answer, str | None], str | None],
    ) -> list[_Answer]:
        """
        Pin a client to a backend, kill that backend, and check that the client moves to
        another one and stays there.

        @param headers_for: the request headers for the client's current pin.
        @param pin_of: the client's pin after an answer, given the previous one.
        @return: every answer after the kill.
        """
        verifyObject(IStickiness, stickiness)
        servers, _pool, recorder, proxy = self.setup_farm(stickiness)
        by_name = {s.name: s for s in servers}
        client = self.client(persistent=False)
        url = proxy.url("/session")

        first = await self.get(client, url, headers_for(None))
        self.assertEqual(first.status, 200)
        assert first.backend is not None
        pin = pin_of(first, None)
        pinned_to = first.backend
        for _ in range(5):
            answer = await self.get(client, url, headers_for(pin))
            self.assertEqual((answer.status, answer.backend), (200, pinned_to))
            pin = pin_of(answer, pin)

        killed_at = self.reactor.seconds()
        await by_name[pinned_to].kill()
        after: list[_Answer] = []
        # Straight after the kill (the health checker has not noticed yet), then once the
        # checker has marked the backend down.
        moved = await self.get(client, url, headers_for(pin))
        after.append(moved)
        self.assertEqual(moved.status, 200)
        assert moved.backend is not None
        self.assertNotEqual(moved.backend, pinned_to)
        pin = pin_of(moved, pin)
        for _ in range(5):
            answer = await self.get(client, url, headers_for(pin))
            after.append(answer)
            pin = pin_of(answer, pin)
        await wait_until(
            self.reactor,
            lambda: recorder.first(pinned_to, False, killed_at) is not None,
            DOWN_WITHIN + 2,
            f"{pinned_to} to be marked down",
        )
        for _ in range(5):
            answer = await self.get(client, url, headers_for(pin))
            after.append(answer)
            pin = pin_of(answer, pin)
        self.assertEqual([(a.status, a.backend) for a in after], [(200, moved.backend)] * 11)
        return after

    async def test_sticky_users_repinned(self) -> None:
        """
        A client pinned by cookie to a backend that dies is answered by another backend, gets
        a cookie naming that one, and stays on it.
        """
        stickiness = CookieStickiness(b"failover test secret, 32 bytes!")

        def headers_for(cookie: str | None) -> _Headers:
            return {} if cookie is None else {"Cookie": f"{COOKIE}={cookie}"}

        def pin_of(answer: _Answer, cookie: str | None) -> str | None:
            return cookie if answer.set_cookie is None else answer.set_cookie

        after = await self.repinning(stickiness, headers_for, pin_of)
        moved = after[0]
        assert moved.set_cookie is not None, "no new cookie after the move"
        self.assertEqual(stickiness.unseal(moved.set_cookie), moved.backend)
        # Once re-pinned, the cookie the client sends already names the backend: no new one.
        self.assertEqual([a.set_cookie for a in after[1:]], [None] * 10)

    async def test_source_ip_sticky_repinned(self) -> None:
        """
        A client pinned by address to a backend that dies is answered by another backend and
        stays on it.
        """
        stickiness = SourceIPStickiness(clock=self.reactor)
        await self.repinning(stickiness, lambda pin: {}, lambda answer, pin: None)
        self.assertEqual(len(stickiness), 1)
