"""
Tests for L{twisted_rp.pool.health}: the checker's schedule and thresholds on a
L{MemoryReactorClock} with a scripted monitor, and each real monitor over loopback.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

import trustme
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import ftp
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_ftp_integration import _Realm
from tests.test_ftps import Certificates as CertificateFiles
from tests.test_ftps import FTPSFactory
from twisted_rp.interfaces import IHealthMonitor
from twisted_rp.pool.backend import Backend
from twisted_rp.pool.health import (
    FTPMonitor,
    HealthChecker,
    HealthCheckFailed,
    HTTPMonitor,
    TCPMonitor,
    TLSMonitor,
)
from twisted_rp.tls import client_tls

HANG = "hang"
OK = "ok"


class FakePool:
    """The two methods of a pool the checker uses; records every health report."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.members = list(backends)
        self.reports: list[tuple[str, bool, str]] = []

    def backends(self) -> Sequence[Backend]:
        return tuple(self.members)

    def set_health(self, backend: Backend, healthy: bool, reason: str) -> None:
        self.reports.append((backend.name, healthy, reason))
        backend.healthy = healthy


@implementer(IHealthMonitor)
class ScriptedMonitor:
    """
    Answers each check from a per-backend script of steps: L{OK}, L{HANG} (never answers
    unless cancelled) or an error message; when a script runs out, C{default}.
    """

    def __init__(
        self, clock: MemoryReactorClock, script: dict[str, list[str]] | None = None, default=OK
    ) -> None:
        self.clock = clock
        self.script = script or {}
        self.default = default
        self.calls: list[tuple[float, str]] = []
        self.cancelled: list[tuple[float, str]] = []
        self.running: dict[str, int] = {}
        self.most_at_once = 0

    def check(self, backend: Backend) -> Deferred[None]:
        name = backend.name
        self.calls.append((self.clock.seconds(), name))
        steps = self.script.get(name)
        step = steps.pop(0) if steps else self.default
        if step == OK:
            return succeed(None)
        if step != HANG:
            return fail(HealthCheckFailed(step))
        self.running[name] = self.running.get(name, 0) + 1
        self.most_at_once = max(self.most_at_once, self.running[name])

        def cancel(d: Deferred[None]) -> None:
            self.cancelled.append((self.clock.seconds(), name))

        def done(result: object) -> object:
            self.running[name] -= 1
            return result

        return Deferred(cancel).addBoth(done)

    def times(self, name: str) -> list[float]:
        return [when for when, called in self.calls if called == name]


def run_until(clock: MemoryReactorClock, end: float) -> None:
    """Advance C{clock} to C{end}, stopping at each delayed call so each runs at its time."""
    while True:
        due = min((call.getTime() for call in clock.getDelayedCalls()), default=end + 1)
        if due > end:
            clock.advance(end - clock.seconds())
            return
        # A hair past the due time, so that float rounding cannot leave the call pending.
        clock.advance(max(due - clock.seconds(), 0.0) + 1e-9)


class HealthCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.b1 = Backend("b1", "127.0.0.1", 8001)
        self.b2 = Backend("b2", "127.0.0.1", 8002)
        self.pool = FakePool([self.b1, self.b2])

    def checker(self, monitor: ScriptedMonitor, **kwargs: object) -> HealthChecker:
        settings: dict[str, object] = {"interval": 5.0, "timeout": 2.0, "jitter": 0.0}
        settings.update(kwargs)
        checker = HealthChecker(self.pool, monitor, self.clock, **settings)  # type: ignore[arg-type]
        checker.startService()
        self.addCleanup(lambda: checker.running and checker.stopService())
        return checker

    def test_probes_every_backend_at_start(self) -> None:
        monitor = ScriptedMonitor(self.clock)
        self.checker(monitor)
        self.assertEqual(monitor.calls, [(0.0, "b1"), (0.0, "b2")])

    def test_probes_every_interval(self) -> None:
        monitor = ScriptedMonitor(self.clock)
        self.checker(monitor, interval=5.0)
        for _ in range(4):
            self.clock.advance(5.0)
        self.assertEqual(monitor.times("b1"), [0.0, 5.0, 10.0, 15.0, 20.0])
        self.assertEqual(self.pool.reports, [])

    def test_marked_down_after_fall_failures(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b1": ["connection refused"] * 10})
        self.checker(monitor, fall=3)
        self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [], "two failures are not enough")
        self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [("b1", False, "3 failed checks: connection refused")])
        self.clock.advance(5.0)
        self.clock.advance(5.0)
        self.assertEqual(len(self.pool.reports), 1, "a backend already down is not re-reported")

    def test_marked_up_after_rise_successes(self) -> None:
        self.b1.healthy = False
        monitor = ScriptedMonitor(self.clock)
        self.checker(monitor, rise=2)
        self.assertEqual(self.pool.reports, [])
        self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [("b1", True, "2 successful checks")])

    def test_down_then_up_again(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b1": ["refused", OK, "refused", OK, OK]})
        self.checker(monitor, fall=1, rise=2)
        for _ in range(4):
            self.clock.advance(5.0)
        self.assertEqual(
            self.pool.reports,
            [("b1", False, "1 failed check: refused"), ("b1", True, "2 successful checks")],
        )

    def test_a_success_resets_the_failure_count(self) -> None:
        script = {"b1": ["refused", "refused", OK, "refused", "refused", OK]}
        monitor = ScriptedMonitor(self.clock, script)
        self.checker(monitor, fall=3)
        for _ in range(5):
            self.clock.advance(5.0)
        self.assertEqual(len(monitor.times("b1")), 6)
        self.assertEqual(self.pool.reports, [])

    def test_a_failure_resets_the_success_count(self) -> None:
        self.b1.healthy = False
        monitor = ScriptedMonitor(self.clock, {"b1": [OK, "refused", OK, "refused"]})
        self.checker(monitor, rise=2)
        for _ in range(3):
            self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [])

    def test_timeout_cancels_the_probe_and_counts_as_failure(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b1": [HANG]})
        self.checker(monitor, timeout=2.0, fall=1)
        self.clock.advance(1.5)
        self.assertEqual(monitor.cancelled, [])
        self.clock.advance(0.5)
        self.assertEqual(monitor.cancelled, [(2.0, "b1")])
        self.assertEqual(self.pool.reports, [("b1", False, "1 failed check: timed out after 2s")])

    def test_a_probe_that_answers_in_time_is_not_cancelled(self) -> None:
        answers: list[Deferred[None]] = []

        @implementer(IHealthMonitor)
        class Manual:
            def check(self, backend: Backend) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                answers.append(d)
                return d

        self.pool.members = [self.b1]
        self.checker(Manual(), timeout=2.0, fall=1)
        self.clock.advance(1.9)
        answers[0].callback(None)
        self.clock.advance(1.0)
        self.assertEqual(self.pool.reports, [])
        self.assertEqual(len(answers), 1)

    def test_no_overlapping_probes_when_probes_outlast_the_interval(self) -> None:
        monitor = ScriptedMonitor(self.clock, default=HANG)
        self.pool.members = [self.b1]
        self.checker(monitor, interval=5.0, timeout=8.0)
        self.clock.advance(5.0)
        self.assertEqual(monitor.times("b1"), [0.0], "the next probe waits for the running one")
        self.clock.advance(3.0)
        self.assertEqual(monitor.cancelled, [(8.0, "b1")])
        self.assertEqual(monitor.times("b1"), [0.0, 8.0], "an overdue probe starts at once")
        run_until(self.clock, 100.0)
        self.assertEqual(monitor.most_at_once, 1)

    def test_jitter_stays_within_bounds(self) -> None:
        monitor = ScriptedMonitor(self.clock)
        self.pool.members = [self.b1]
        self.checker(monitor, interval=10.0, jitter=0.2, rng=random.Random(1234))
        run_until(self.clock, 2000.0)
        times = monitor.times("b1")
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        self.assertGreater(len(gaps), 150)
        self.assertTrue(all(8.0 - 1e-6 <= gap <= 12.0 + 1e-6 for gap in gaps), gaps)
        # The spread is real, not a constant offset.
        self.assertLess(min(gaps), 8.5)
        self.assertGreater(max(gaps), 11.5)

    def test_jitter_is_reproducible_with_a_seeded_rng(self) -> None:
        def schedule(seed: int) -> list[float]:
            clock = MemoryReactorClock()
            monitor = ScriptedMonitor(clock)
            checker = HealthChecker(
                FakePool([Backend("b", "127.0.0.1", 1)]),
                monitor,
                clock,
                interval=10.0,
                jitter=0.3,
                rng=random.Random(seed),
            )
            checker.startService()
            run_until(clock, 200.0)
            checker.stopService()
            return monitor.times("b")

        self.assertEqual(schedule(5), schedule(5))
        self.assertNotEqual(schedule(5), schedule(6))

    def test_picks_up_added_backends(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b3": ["refused"] * 5})
        self.checker(monitor, fall=2)
        b3 = Backend("b3", "127.0.0.1", 8003)
        self.pool.members.append(b3)
        self.clock.advance(5.0)
        self.assertEqual(monitor.times("b3"), [5.0])
        self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [("b3", False, "2 failed checks: refused")])

    def test_stops_probing_removed_backends(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b1": [HANG]})
        self.checker(monitor, timeout=4.0, interval=3.0, fall=1)
        self.pool.members.remove(self.b1)
        self.clock.advance(3.0)
        self.assertEqual(monitor.cancelled, [(3.0, "b1")], "its running probe is cancelled")
        run_until(self.clock, 30.0)
        self.assertEqual(monitor.times("b1"), [0.0])
        self.assertEqual(self.pool.reports, [])

    def test_stop_cancels_probes_and_leaves_no_delayed_calls(self) -> None:
        monitor = ScriptedMonitor(self.clock, {"b1": [HANG]})
        checker = self.checker(monitor, fall=1)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        checker.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(monitor.cancelled, [(0.0, "b1")])
        self.clock.advance(100.0)
        self.assertEqual(len(monitor.calls), 2)
        self.assertEqual(self.pool.reports, [], "a probe cancelled by stopping is no failure")

    def test_restart_probes_again(self) -> None:
        monitor = ScriptedMonitor(self.clock)
        checker = self.checker(monitor)
        checker.stopService()
        self.clock.advance(60.0)
        checker.startService()
        self.assertEqual(monitor.times("b1"), [0.0, 60.0])

    def test_a_monitor_that_raises_counts_as_failure(self) -> None:
        @implementer(IHealthMonitor)
        class Broken:
            def check(self, backend: Backend) -> Deferred[None]:
                raise RuntimeError("probe exploded")

        self.pool.members = [self.b1]
        self.checker(Broken(), fall=2)
        self.clock.advance(5.0)
        self.assertEqual(self.pool.reports, [("b1", False, "2 failed checks: probe exploded")])
        self.assertEqual(len(self.clock.getDelayedCalls()), 2, "next probe and membership refresh")

    def test_a_failing_pool_does_not_stop_the_checks(self) -> None:
        def refuse(backend: Backend, healthy: bool, reason: str) -> None:
            raise RuntimeError("observer broke")

        self.pool.set_health = refuse  # type: ignore[method-assign]
        monitor = ScriptedMonitor(self.clock, default="refused")
        self.checker(monitor, fall=1)
        self.clock.advance(5.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(monitor.times("b1"), [0.0, 5.0])

    def test_rejects_nonsense_settings(self) -> None:
        monitor = ScriptedMonitor(self.clock)
        for bad in ({"rise": 0}, {"fall": 0}, {"interval": 0}, {"timeout": -1}, {"jitter": 1.0}):
            with self.assertRaises(ValueError, msg=str(bad)):
                HealthChecker(self.pool, monitor, self.clock, **bad)  # type: ignore[arg-type]


class Tracked(ProtocolWrapper):
    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.connection_closed()


class TrackingFactory(WrappingFactory):
    """Wraps a server factory to know when every connection it accepted has closed."""

    protocol = Tracked

    def __init__(self, wrapped: Factory) -> None:
        super().__init__(wrapped)
        self._waiting: list[Deferred[None]] = []

    def connection_closed(self) -> None:
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


def serve(test: TestCase, factory: Factory) -> int:
    """Listen with C{factory} on a loopback port until C{test} ends (and its connections close)."""
    tracking = TrackingFactory(factory)
    port = reactor.listenTCP(0, tracking, interface="127.0.0.1")

    def stop() -> Deferred[object]:
        return DeferredList([port.stopListening(), tracking.all_closed()])

    test.addCleanup(stop)
    return port.getHost().port


def refusing_port(test: TestCase) -> int:
    """A loopback port that refuses connections: bound (so nobody takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    test.addCleanup(sock.close)
    return sock.getsockname()[1]


class TCPMonitorTests(TestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHealthMonitor, TCPMonitor(reactor)))

    async def test_listening_port_is_healthy(self) -> None:
        port = serve(self, Factory.forProtocol(Protocol))
        await TCPMonitor(reactor).check(Backend("b", "127.0.0.1", port))

    async def test_refused_connection_is_unhealthy(self) -> None:
        backend = Backend("b", "127.0.0.1", refusing_port(self))
        with self.assertRaises(HealthCheckFailed) as caught:
            await TCPMonitor(reactor).check(backend)
        self.assertEqual(str(caught.exception), "connection refused")

    async def test_probes_the_named_service_port(self) -> None:
        port = serve(self, Factory.forProtocol(Protocol))
        backend = Backend("b", "127.0.0.1", refusing_port(self), ports={"smtp": port})
        await TCPMonitor(reactor, port_protocol="smtp").check(backend)
        with self.assertRaises(HealthCheckFailed):
            await TCPMonitor(reactor).check(backend)


class HealthPage(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        #: Fires when a request for /stall arrives (it is never answered).
        self.stalled: Deferred[None] = Deferred()

    def render(self, request: Request) -> bytes:
        path = request.path
        if path == b"/ok":
            return b"status: all good"
        if path == b"/down":
            request.setResponseCode(503)
            return b"maintenance"
        if path == b"/short":
            return b"x" * 100 + b"MARKER"
        if path == b"/big":
            return b"x" * 200_000 + b"MARKER"
        if path == b"/vhost":
            host = request.getHeader(b"host") or b""
            if host != b"health.example":
                request.setResponseCode(421)
            return b"host was " + host
        if path == b"/stall":
            self.stalled.callback(None)
            return NOT_DONE_YET
        if path == b"/moved":
            request.redirect(b"/ok")
            return b""
        request.setResponseCode(404)
        return b"no such page"


class Certificates:
    """A CA that issued a certificate for 127.0.0.1, and a CA nobody trusts."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("127.0.0.1")
        self.server_options = PrivateCertificate.loadPEM(
            issued.private_key_and_cert_chain_pem.bytes()
        ).options()
        self.trusted = Certificate.loadPEM(self.ca.cert_pem.bytes())
        self.untrusted = Certificate.loadPEM(trustme.CA().cert_pem.bytes())

    def tls(self, factory: Factory) -> Factory:
        return TLSMemoryBIOFactory(self.server_options, False, factory)


class HTTPMonitorTests(TestCase):
    def setUp(self) -> None:
        self.page = HealthPage()
        self.port = serve(self, Site(self.page))
        self.backend = Backend("web", "127.0.0.1", self.port)

    async def assert_fails(self, monitor: HTTPMonitor, message: str) -> None:
        with self.assertRaises(HealthCheckFailed) as caught:
            await monitor.check(self.backend)
        self.assertEqual(str(caught.exception), message)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHealthMonitor, HTTPMonitor(reactor)))

    async def test_expected_status_is_healthy(self) -> None:
        await HTTPMonitor(reactor, path="/ok").check(self.backend)

    async def test_unexpected_status_is_unhealthy(self) -> None:
        await self.assert_fails(
            HTTPMonitor(reactor, path="/down"), "HTTP status 503, expected 200-399"
        )

    async def test_expected_statuses_are_configurable(self) -> None:
        await HTTPMonitor(reactor, path="/down", expect_status=[503]).check(self.backend)
        await self.assert_fails(
            HTTPMonitor(reactor, path="/ok", expect_status=[204, 206]),
            "HTTP status 200, expected 204, 206",
        )

    async def test_redirects_are_not_followed(self) -> None:
        await HTTPMonitor(reactor, path="/moved").check(self.backend)
        await self.assert_fails(
            HTTPMonitor(reactor, path="/moved", expect_status=[200]),
            "HTTP status 302, expected 200",
        )

    async def test_body_regex_match_is_healthy(self) -> None:
        await HTTPMonitor(reactor, path="/ok", body_regex=r"all\s+good").check(self.backend)

    async def test_body_regex_miss_is_unhealthy(self) -> None:
        await self.assert_fails(
            HTTPMonitor(reactor, path="/ok", body_regex="ready"),
            "response body does not match 'ready'",
        )

    async def test_body_is_read_only_up_to_the_limit(self) -> None:
        # The marker is past the limit, so it is never seen; the rest of the body is not read.
        await self.assert_fails(
            HTTPMonitor(reactor, path="/big", body_regex=b"MARKER", body_limit=1024),
            "response body does not match 'MARKER'",
        )
        await HTTPMonitor(reactor, path="/big", body_regex=b"x{1024}", body_limit=1024).check(
            self.backend
        )
        await HTTPMonitor(reactor, path="/big", body_regex=b"MARKER", body_limit=300_000).check(
            self.backend
        )

    async def test_body_limit_is_exact(self) -> None:
        await self.assert_fails(
            HTTPMonitor(reactor, path="/short", body_regex=b"MARKER", body_limit=105),
            "response body does not match 'MARKER'",
        )
        await HTTPMonitor(reactor, path="/short", body_regex=b"MARKER", body_limit=106).check(
            self.backend
        )

    async def test_host_header(self) -> None:
        await HTTPMonitor(reactor, path="/vhost", host="health.example").check(self.backend)
        await self.assert_fails(
            HTTPMonitor(reactor, path="/vhost"), "HTTP status 421, expected 200-399"
        )

    async def test_method(self) -> None:
        await HTTPMonitor(reactor, path="/ok", method="HEAD").check(self.backend)

    async def test_refused_connection_is_unhealthy(self) -> None:
        self.backend = Backend("web", "127.0.0.1", refusing_port(self))
        await self.assert_fails(HTTPMonitor(reactor), "connection refused")

    async def test_cancelling_a_stalled_request(self) -> None:
        check = HTTPMonitor(reactor, path="/stall").check(self.backend)
        await self.page.stalled
        check.cancel()
        with self.assertRaises(CancelledError):
            await check
        # serve()'s cleanup waits for the server to see the connection closed.

    async def test_probes_the_http_service_port(self) -> None:
        backend = Backend("b", "127.0.0.1", refusing_port(self), ports={"http": self.port})
        await HTTPMonitor(reactor, path="/ok").check(backend)

    def test_url(self) -> None:
        monitor = HTTPMonitor(reactor, path="/health", scheme="https")
        self.assertEqual(
            monitor.url_for(Backend("b", "::1", 443, ports={"https": 8443})),
            "https://[::1]:8443/health",
        )

    def test_rejects_bad_settings(self) -> None:
        self.assertRaises(ValueError, HTTPMonitor, reactor, path="health")
        self.assertRaises(ValueError, HTTPMonitor, reactor, scheme="ftp")


class HTTPSMonitorTests(TestCase):
    def setUp(self) -> None:
        self.certificates = Certificates()
        port = serve(self, self.certificates.tls(Site(HealthPage())))
        self.backend = Backend("web", "127.0.0.1", port)

    async def test_https_with_given_tls_options(self) -> None:
        options = optionsForClientTLS("127.0.0.1", trustRoot=self.certificates.trusted)
        monitor = HTTPMonitor(reactor, path="/ok", scheme="https", tls_options=options)
        await monitor.check(self.backend)

    async def test_https_with_an_untrusted_certificate_is_unhealthy(self) -> None:
        options = optionsForClientTLS("127.0.0.1", trustRoot=self.certificates.untrusted)
        monitor = HTTPMonitor(reactor, path="/ok", scheme="https", tls_options=options)
        with self.assertRaises(HealthCheckFailed) as caught:
            await monitor.check(self.backend)
        self.assertIn("certificate verify failed", str(caught.exception))


class TLSMonitorTests(TestCase):
    def setUp(self) -> None:
        self.certificates = Certificates()
        port = serve(self, self.certificates.tls(Factory.forProtocol(Protocol)))
        self.backend = Backend("tls", "127.0.0.1", port)

    async def assert_fails(self, monitor: TLSMonitor, backend: Backend, message: str) -> None:
        with self.assertRaises(HealthCheckFailed) as caught:
            await monitor.check(backend)
        self.assertIn(message, str(caught.exception))

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHealthMonitor, TLSMonitor(reactor)))

    async def test_handshake_with_a_trusted_certificate_is_healthy(self) -> None:
        await TLSMonitor(reactor, trust_root=self.certificates.trusted).check(self.backend)

    async def test_given_tls_options_are_used(self) -> None:
        options = optionsForClientTLS("127.0.0.1", trustRoot=self.certificates.trusted)
        await TLSMonitor(reactor, tls_options=options).check(self.backend)

    async def test_untrusted_certificate_is_unhealthy(self) -> None:
        monitor = TLSMonitor(reactor, trust_root=self.certificates.untrusted)
        await self.assert_fails(
            monitor, self.backend, "TLS handshake failed: certificate verify failed"
        )

    async def test_certificate_for_another_name_is_unhealthy(self) -> None:
        monitor = TLSMonitor(
            reactor, server_name="other.example", trust_root=self.certificates.trusted
        )
        await self.assert_fails(monitor, self.backend, "does not match the server name")

    async def test_server_closing_before_the_handshake_is_unhealthy(self) -> None:
        class Hangup(Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()

        backend = Backend("b", "127.0.0.1", serve(self, Factory.forProtocol(Hangup)))
        await self.assert_fails(
            TLSMonitor(reactor, trust_root=self.certificates.trusted),
            backend,
            "connection closed by the backend before the TLS handshake completed",
        )

    async def test_cancelling_during_the_handshake(self) -> None:
        hello: Deferred[None] = Deferred()

        class Silent(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not hello.called:
                    hello.callback(None)

        backend = Backend("b", "127.0.0.1", serve(self, Factory.forProtocol(Silent)))
        check = TLSMonitor(reactor, trust_root=self.certificates.trusted).check(backend)
        await hello
        check.cancel()
        with self.assertRaises(CancelledError):
            await check
        # serve()'s cleanup waits for the server to see the connection closed.

    async def test_cancelling_while_connecting(self) -> None:
        check = TCPMonitor(reactor).check(self.backend)
        check.cancel()
        with self.assertRaises(CancelledError):
            await check


class FakeFTPServer(LineReceiver):
    """Greets with C{banner}; USER/PASS against C{factory.users}; records commands."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        if not self.factory.banner:
            self.transport.loseConnection()
        for line in self.factory.banner:
            self.sendLine(line)

    def lineReceived(self, line: bytes) -> None:
        self.factory.commands.append(line.decode())
        command, _, argument = line.decode().partition(" ")
        if command == "USER":
            self.user = argument
            if argument == "guest":
                self.sendLine(b"230 Welcome, guest")
            else:
                self.sendLine(b"331 Password required")
        elif command == "PASS":
            if self.factory.users.get(self.user) == argument:
                self.sendLine(b"230 Logged in")
            else:
                self.sendLine(b"530 Login incorrect")
        elif command == "QUIT":
            self.sendLine(b"221 Bye")
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.closed.callback(None)


class FakeFTPFactory(ServerFactory):
    protocol = FakeFTPServer

    def __init__(self, banner: list[bytes]) -> None:
        self.banner = banner
        self.users = {"alice": "secret"}
        self.commands: list[str] = []
        #: Fires when the (one) connection closes, so that C{commands} is complete.
        self.closed: Deferred[None] = Deferred()


class FTPMonitorTests(TestCase):
    def ftp(self, *banner: bytes) -> tuple[Backend, FakeFTPFactory]:
        factory = FakeFTPFactory(list(banner))
        return Backend("ftp", "127.0.0.1", serve(self, factory)), factory

    async def assert_fails(self, monitor: FTPMonitor, backend: Backend, message: str) -> None:
        with self.assertRaises(HealthCheckFailed) as caught:
            await monitor.check(backend)
        self.assertEqual(str(caught.exception), message)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IHealthMonitor, FTPMonitor(reactor)))

    async def test_banner_is_healthy(self) -> None:
        backend, server = self.ftp(b"220 FTP ready")
        await FTPMonitor(reactor).check(backend)
        await server.closed
        self.assertEqual(server.commands, ["QUIT"])

    async def test_multiline_banner_is_healthy(self) -> None:
        backend, _ = self.ftp(b"220-Welcome", b"   to the archive", b"220 ready")
        await FTPMonitor(reactor).check(backend)

    async def test_other_banner_is_unhealthy(self) -> None:
        backend, _ = self.ftp(b"421 Too many connections")
        await self.assert_fails(
            FTPMonitor(reactor), backend, "FTP banner was '421 Too many connections', not 220"
        )

    async def test_not_ftp_is_unhealthy(self) -> None:
        backend, _ = self.ftp(b"SSH-2.0-OpenSSH_9.6")
        await self.assert_fails(
            FTPMonitor(reactor), backend, "not an FTP reply: 'SSH-2.0-OpenSSH_9.6'"
        )

    async def test_closing_without_banner_is_unhealthy(self) -> None:
        backend, _ = self.ftp()
        await self.assert_fails(
            FTPMonitor(reactor),
            backend,
            "connection closed by the backend before the 220 banner",
        )

    async def test_login(self) -> None:
        backend, server = self.ftp(b"220 FTP ready")
        await FTPMonitor(reactor, user="alice", password="secret").check(backend)
        await server.closed
        self.assertEqual(server.commands, ["USER alice", "PASS secret", "QUIT"])

    async def test_login_without_password_prompt(self) -> None:
        backend, server = self.ftp(b"220 FTP ready")
        await FTPMonitor(reactor, user="guest").check(backend)
        await server.closed
        self.assertEqual(server.commands, ["USER guest", "QUIT"])

    async def test_refused_login_is_unhealthy(self) -> None:
        backend, _ = self.ftp(b"220 FTP ready")
        await self.assert_fails(
            FTPMonitor(reactor, user="alice", password="wrong"),
            backend,
            "FTP login failed: '530 Login incorrect'",
        )

    async def test_probes_the_ftp_service_port(self) -> None:
        backend, _ = self.ftp(b"220 FTP ready")
        shared = Backend("s", "127.0.0.1", refusing_port(self), ports={"ftp": backend.port})
        await FTPMonitor(reactor).check(shared)


class FTPSMonitorTests(TestCase):
    """
    L{FTPMonitor} over FTPS, against Twisted's FTP server made FTPS like vsftpd (no login in
    the clear) by L{tests.test_ftps}.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ftps-health-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.certificates = CertificateFiles(self.directory)
        self.trusting = client_tls("127.0.0.1", ca_files=[self.certificates.ca_file])

    def ftps(self, implicit: bool = False, tls: bool = True) -> tuple[Backend, Any]:
        """An FTPS backend (plain FTP without C{tls}), and its factory."""
        users = InMemoryUsernamePasswordDatabaseDontUse()
        users.addUser("alice", "alice-pw")  # type: ignore[arg-type]
        portal = Portal(_Realm(self.directory), [users])
        factory: Any
        if not tls:
            factory = ftp.FTPFactory(portal)
            return Backend("ftp", "127.0.0.1", serve(self, factory)), factory
        factory = FTPSFactory(portal, self.certificates.server_tls(), implicit)
        listened: Any = factory
        if implicit:
            listened = TLSMemoryBIOFactory(factory.control_tls, False, factory)
        return Backend("ftp", "127.0.0.1", serve(self, listened)), factory

    async def assert_fails(self, monitor: FTPMonitor, backend: Backend, message: str) -> None:
        with self.assertRaises(HealthCheckFailed) as caught:
            await monitor.check(backend)
        self.assertEqual(str(caught.exception), message)

    async def test_explicit_login_over_tls(self) -> None:
        """AUTH TLS after the banner; USER and PASS only through TLS."""
        backend, server = self.ftps()
        monitor = FTPMonitor(
            reactor, user="alice", password="alice-pw", tls="explicit", tls_creator=self.trusting
        )
        await monitor.check(backend)
        self.assertEqual(server.heard[:3], [("AUTH", False), ("USER", True), ("PASS", True)])

    async def test_explicit_without_login(self) -> None:
        """Without a user the check ends once the TLS handshake is through."""
        backend, server = self.ftps()
        await FTPMonitor(reactor, tls="explicit", tls_creator=self.trusting).check(backend)
        self.assertEqual(server.heard[:1], [("AUTH", False)])
        self.assertEqual(len(server.control_tls.connections), 1)

    async def test_plain_login_refused_by_an_ftps_server(self) -> None:
        """The same server refuses a login in the clear: what tls="explicit" is for."""
        backend, _ = self.ftps()
        await self.assert_fails(
            FTPMonitor(reactor, user="alice", password="alice-pw"),
            backend,
            "FTP USER was refused: '530 Non-anonymous sessions must use encryption.'",
        )

    async def test_implicit_login(self) -> None:
        """TLS from the first byte: the banner and the login come through it."""
        backend, server = self.ftps(implicit=True)
        monitor = FTPMonitor(
            reactor, user="alice", password="alice-pw", tls="implicit", tls_creator=self.trusting
        )
        await monitor.check(backend)
        self.assertEqual(server.heard[:2], [("USER", True), ("PASS", True)])

    async def test_implicit_untrusted_certificate(self) -> None:
        backend, server = self.ftps(implicit=True)
        other_ca = client_tls("127.0.0.1", ca_files=[self.other_ca()])
        await self.assert_fails(
            FTPMonitor(reactor, user="alice", password="pw", tls="implicit", tls_creator=other_ca),
            backend,
            "TLS handshake failed: certificate verify failed",
        )
        self.assertEqual(server.heard, [])

    async def test_explicit_untrusted_certificate(self) -> None:
        """A certificate that does not verify: unhealthy, and the login is never sent."""
        backend, server = self.ftps()
        other_ca = client_tls("127.0.0.1", ca_files=[self.other_ca()])
        await self.assert_fails(
            FTPMonitor(reactor, user="alice", password="pw", tls="explicit", tls_creator=other_ca),
            backend,
            "TLS handshake failed: certificate verify failed",
        )
        self.assertEqual([verb for verb, _ in server.heard], ["AUTH"])

    async def test_explicit_untrusted_certificate_without_login(self) -> None:
        """Without a login too the handshake must succeed: a 234 alone is not healthy."""
        backend, _ = self.ftps()
        other_ca = client_tls("127.0.0.1", ca_files=[self.other_ca()])
        await self.assert_fails(
            FTPMonitor(reactor, tls="explicit", tls_creator=other_ca),
            backend,
            "TLS handshake failed: certificate verify failed",
        )

    async def test_auth_refused(self) -> None:
        """A server without FTPS answers AUTH TLS with an error: unhealthy."""
        backend, _ = self.ftps(tls=False)
        with self.assertRaises(HealthCheckFailed) as caught:
            await FTPMonitor(reactor, tls="explicit", tls_creator=self.trusting).check(backend)
        self.assertTrue(str(caught.exception).startswith("FTP AUTH TLS was refused: '5"))

    def test_unknown_mode_refused(self) -> None:
        with self.assertRaises(ValueError):
            FTPMonitor(reactor, tls="sometimes")

    def other_ca(self) -> str:
        path = os.path.join(self.directory, "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(path)
        return path
