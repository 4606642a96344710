"""
Tests for L{twisted_rp.pool.pool.BackendPool}: which backend a pick gets in every backend state,
stickiness, the wait queue, slow start, observers, passive ejection and changing membership.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.interfaces import IBackendPool, IBalancer, IPoolObserver, IStickiness
from twisted_rp.pool import (
    Backend,
    BackendPool,
    Lease,
    NoBackendAvailable,
    Outcome,
    PassiveHealth,
    PickContext,
    RoundRobin,
    StickyResponse,
)
from twisted_rp.pool.balancers import HashBalancer

CLIENT = PickContext("http", "10.0.0.1")
OTHER_CLIENT = PickContext("http", "10.0.0.2")
FAILED = Outcome("connect_failed")


@implementer(IStickiness)
class FakeStickiness:
    """Pins clients by IP address to backend names, in a plain dict."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.pins: dict[str, str] = {}

    def pinned(self, context: PickContext) -> str | None:
        return self.pins.get(context.client_ip)

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        self.pins[context.client_ip] = backend.name


@implementer(IPoolObserver)
class RecordingObserver:
    """Writes down every change it is told of."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
        self.changes.append((pool, backend.name, reason))


@implementer(IBalancer)
class RecordingBalancer:
    """Round robin that also remembers what it was offered and told."""

    def __init__(self) -> None:
        self.round_robin = RoundRobin()
        self.offered: list[list[str]] = []
        self.observed: list[tuple[str, str]] = []

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        self.offered.append([b.name for b in candidates])
        return self.round_robin.choose(candidates, context)

    def observe(self, backend: Backend, outcome: Outcome) -> None:
        self.observed.append((backend.name, outcome.kind))


class PoolTestCase(SynchronousTestCase):
    """Helpers for tests of one pool on a L{MemoryReactorClock}."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def make_pool(self, *backends: Backend, **kwargs: Any) -> BackendPool:
        if not backends:
            backends = tuple(Backend(name, "127.0.0.1", 8000 + i) for i, name in enumerate("abc"))
        return BackendPool("web", backends, clock=self.clock, **kwargs)

    def lease(self, pool: BackendPool, context: PickContext = CLIENT) -> Lease:
        """Pick, expecting a lease at once."""
        lease = pool.pick(context)
        assert isinstance(lease, Lease), lease
        return lease

    def names(self, pool: BackendPool, count: int, context: PickContext = CLIENT) -> list[str]:
        """The backends of C{count} picks, each released at once."""
        names = []
        for _ in range(count):
            lease = self.lease(pool, context)
            names.append(lease.backend.name)
            lease.release(Outcome())
        return names

    def queued(self, pool: BackendPool, context: PickContext = CLIENT) -> Deferred[Lease]:
        """Pick, expecting to wait."""
        waiting = pool.pick(context)
        assert isinstance(waiting, Deferred), waiting
        self.assertNoResult(waiting)
        return waiting

    def fail_backend(
        self, pool: BackendPool, name: str, times: int, kind: str = "connect_failed"
    ) -> None:
        """Release C{times} leases on backend C{name} with a failure."""
        backend = pool.backend(name)
        assert backend is not None
        for _ in range(times):
            backend.active += 1
            Lease(backend, pool).release(Outcome(kind))


class WeightZeroTests(PoolTestCase):
    """
    A backend of weight 0 gets no new requests whatever the balancer (as in HAProxy).
    """

    def test_round_robin_skips_weight_zero(self) -> None:
        pool = self.make_pool(
            Backend("a", "127.0.0.1", 8000), Backend("b", "127.0.0.1", 8001, weight=0)
        )
        self.assertEqual(self.names(pool, 4), ["a"] * 4)

    def test_setting_weight_zero_and_back(self) -> None:
        pool = self.make_pool()
        pool.set_weight("b", 0)
        self.assertNotIn("b", self.names(pool, 6))
        pool.set_weight("b", 2)
        self.assertIn("b", self.names(pool, 6))


class BasicTests(PoolTestCase):
    """
    Picking and releasing with every backend up.
    """

    def test_interface(self) -> None:
        """
        L{BackendPool} provides L{IBackendPool}.
        """
        self.assertTrue(verifyObject(IBackendPool, self.make_pool()))

    def test_positional_construction(self) -> None:
        """
        A pool made with a name and backends alone round-robins over them.
        """
        pool = BackendPool("web", [Backend("a", "h", 1), Backend("b", "h", 2)])
        self.assertEqual(pool.name, "web")
        self.assertIsInstance(pool.balancer, RoundRobin)
        self.assertEqual(self.names(pool, 4), ["a", "b", "a", "b"])

    def test_backends(self) -> None:
        """
        C{backends} lists every backend in configuration order; C{backend} finds one by name.
        """
        pool = self.make_pool()
        self.assertEqual([b.name for b in pool.backends()], ["a", "b", "c"])
        b = pool.backend("b")
        assert b is not None
        self.assertEqual(b.port, 8001)
        self.assertIsNone(pool.backend("z"))

    def test_duplicate_names(self) -> None:
        """
        Two backends of one name are refused.
        """
        self.assertRaises(ValueError, self.make_pool, Backend("a", "h", 1), Backend("a", "h", 2))

    def test_active_counts_leases(self) -> None:
        """
        A lease counts as active on its backend until released, once.
        """
        pool = self.make_pool()
        lease = self.lease(pool)
        self.assertEqual(lease.backend.active, 1)
        lease.release(Outcome())
        lease.release(Outcome())
        self.assertEqual(lease.backend.active, 0)

    def test_balancer_sees_candidates_in_order(self) -> None:
        """
        The balancer is offered the usable backends in configuration order, and told every
        outcome.
        """
        balancer = RecordingBalancer()
        pool = self.make_pool(balancer=balancer)
        pool.set_admin_state("b", "disabled")
        lease = self.lease(pool)
        lease.release(Outcome("server_error", 1.5))
        self.assertEqual(balancer.offered, [["a", "c"]])
        self.assertEqual(balancer.observed, [("a", "server_error")])

    def test_retry_avoids_failed(self) -> None:
        """
        A retry goes to a backend that has not failed it yet, or to a failed one when there is
        no other.
        """
        pool = self.make_pool()
        retry = PickContext("tcp", "10.0.0.1", avoid=frozenset({"a", "b"}))
        self.assertEqual(self.names(pool, 3, retry), ["c", "c", "c"])
        pool.set_admin_state("c", "disabled")
        self.assertEqual(set(self.names(pool, 4, retry)), {"a", "b"})

    def test_invalid_settings(self) -> None:
        """
        Nonsensical settings are refused when the pool is made.
        """
        invalid: list[dict[str, Any]] = [
            {"slow_start": -1.0},
            {"queue_size": -1},
            {"queue_size": 1, "queue_timeout": 0.0},
            {"retries": -1},
        ]
        for kwargs in invalid:
            self.assertRaises(ValueError, self.make_pool, **kwargs)

    def test_settings_readable(self) -> None:
        """
        Protocols read C{retries} (and the other settings) from the pool.
        """
        pool = self.make_pool(retries=4, queue_size=3, slow_start=5.0)
        self.assertEqual((pool.retries, pool.queue_size, pool.slow_start), (4, 3, 5.0))
        self.assertEqual(self.make_pool().retries, 2)


class StateTests(PoolTestCase):
    """
    Only enabled, healthy, not ejected backends below C{max_connections} get new requests.
    """

    def test_disabled(self) -> None:
        pool = self.make_pool()
        pool.set_admin_state("b", "disabled")
        self.assertEqual(set(self.names(pool, 6)), {"a", "c"})
        pool.set_admin_state("b", "enabled")
        self.assertIn("b", self.names(pool, 3))

    def test_draining(self) -> None:
        """
        A draining backend gets no new clients.
        """
        pool = self.make_pool()
        pool.set_admin_state("a", "draining")
        self.assertEqual(set(self.names(pool, 6)), {"b", "c"})
        self.assertEqual([b.name for b in pool.usable()], ["b", "c"])

    def test_unhealthy(self) -> None:
        pool = self.make_pool()
        a = pool.backend("a")
        assert a is not None
        pool.set_health(a, False, "2 failed checks")
        self.assertEqual(set(self.names(pool, 6)), {"b", "c"})
        pool.set_health(a, True, "2 good checks")
        self.assertIn("a", self.names(pool, 3))

    def test_ejected(self) -> None:
        pool = self.make_pool(passive=PassiveHealth(consecutive_failures=1))
        self.fail_backend(pool, "c", 1)
        self.assertEqual(set(self.names(pool, 6)), {"a", "b"})

    def test_max_connections(self) -> None:
        """
        A backend at C{max_connections} is skipped until a lease on it is released.
        """
        pool = self.make_pool(Backend("a", "h", 1, max_connections=1), Backend("b", "h", 2))
        held = self.lease(pool)
        self.assertEqual(held.backend.name, "a")
        self.assertEqual([self.lease(pool).backend.name for _ in range(3)], ["b", "b", "b"])
        held.release(Outcome())
        self.assertIn("a", self.names(pool, 2))

    def test_nothing_usable(self) -> None:
        """
        With every backend down, a pick fails saying so.
        """
        pool = self.make_pool()
        for name in "abc":
            pool.set_admin_state(name, "disabled")
        error = self.assertRaises(NoBackendAvailable, pool.pick, CLIENT)
        self.assertIn("no usable backend", str(error))
        self.assertEqual(pool.usable(), [])

    def test_all_full_without_queue(self) -> None:
        """
        With every backend full and no queue, a pick fails at once.
        """
        pool = self.make_pool(Backend("a", "h", 1, max_connections=1))
        self.lease(pool)
        error = self.assertRaises(NoBackendAvailable, pool.pick, CLIENT)
        self.assertIn("max_connections", str(error))

    def test_invalid_admin_state(self) -> None:
        pool = self.make_pool()
        self.assertRaises(ValueError, pool.set_admin_state, "a", "asleep")
        self.assertRaises(KeyError, pool.set_admin_state, "z", "enabled")

    def test_set_weight(self) -> None:
        """
        A new weight is the backend's effective weight at once.
        """
        pool = self.make_pool()
        pool.set_weight("a", 5)
        a = pool.backend("a")
        assert a is not None
        self.assertEqual((a.weight, a.effective_weight), (5, 5.0))
        self.assertRaises(ValueError, pool.set_weight, "a", -1)
        self.assertRaises(KeyError, pool.set_weight, "z", 1)


class BackupTests(PoolTestCase):
    """
    Backups get traffic only while no primary is usable.
    """

    def make_backup_pool(self, **kwargs: Any) -> BackendPool:
        return self.make_pool(
            Backend("a", "h", 1, max_connections=1),
            Backend("b", "h", 2, max_connections=1),
            Backend("spare", "h", 3, backup=True),
            Backend("spare2", "h", 4, backup=True),
            **kwargs,
        )

    def test_not_while_primaries_usable(self) -> None:
        pool = self.make_backup_pool()
        self.assertEqual(self.names(pool, 4), ["a", "b", "a", "b"])
        pool.set_admin_state("a", "disabled")
        self.assertEqual(self.names(pool, 3), ["b", "b", "b"])
        self.assertEqual([b.name for b in pool.usable()], ["b"])

    def test_when_primaries_down(self) -> None:
        """
        Backups share the traffic when every primary is down, and stop when one recovers.
        """
        pool = self.make_backup_pool()
        a, b = pool.backend("a"), pool.backend("b")
        assert a is not None and b is not None
        pool.set_health(a, False, "down")
        pool.set_admin_state("b", "draining")
        self.assertEqual(set(self.names(pool, 4)), {"spare", "spare2"})
        self.assertEqual([x.name for x in pool.usable()], ["spare", "spare2"])
        pool.set_health(a, True, "up")
        self.assertEqual(self.names(pool, 2), ["a", "a"])

    def test_when_primaries_full(self) -> None:
        """
        Full primaries are not usable: the next request goes to a backup rather than waiting.
        """
        pool = self.make_backup_pool(queue_size=5)
        self.lease(pool)
        self.lease(pool)
        self.assertTrue(self.lease(pool).backend.backup)

    def test_not_when_backups_down_too(self) -> None:
        pool = self.make_backup_pool()
        for name in ("a", "b", "spare", "spare2"):
            pool.set_admin_state(name, "disabled")
        self.assertRaises(NoBackendAvailable, pool.pick, CLIENT)


class StickinessTests(PoolTestCase):
    """
    A client pinned to a backend goes back to it while it serves.
    """

    def setUp(self) -> None:
        super().setUp()
        self.sticky = FakeStickiness()
        self.pool = self.make_pool(stickiness=self.sticky)

    def test_pinned_first(self) -> None:
        """
        A pinned client always gets its backend; others are balanced as usual.
        """
        self.sticky.pins[CLIENT.client_ip] = "b"
        self.assertEqual(self.names(self.pool, 3), ["b", "b", "b"])
        self.assertEqual(self.names(self.pool, 3, OTHER_CLIENT), ["a", "b", "c"])

    def test_response_pins(self) -> None:
        """
        C{sticky_response_done} forwards to the stickiness, which pins the client.
        """
        lease = self.lease(self.pool, OTHER_CLIENT)
        self.pool.sticky_response_done(OTHER_CLIENT, lease.backend, StickyResponse())
        lease.release(Outcome())
        self.assertEqual(self.sticky.pins, {OTHER_CLIENT.client_ip: "a"})
        self.assertEqual(self.names(self.pool, 2, OTHER_CLIENT), ["a", "a"])

    def test_draining_keeps_sticky_users(self) -> None:
        """
        A draining backend keeps its pinned clients but gets no new ones.
        """
        self.sticky.pins[CLIENT.client_ip] = "a"
        self.pool.set_admin_state("a", "draining")
        self.assertEqual(self.names(self.pool, 2), ["a", "a"])
        self.assertNotIn("a", self.names(self.pool, 6, OTHER_CLIENT))

    def test_unusable_pin_rebalanced(self) -> None:
        """
        A client pinned to a disabled, unhealthy or unknown backend is balanced (and the
        protocol re-pins it after the response).
        """
        b = self.pool.backend("b")
        assert b is not None
        self.sticky.pins[CLIENT.client_ip] = "b"
        self.pool.set_admin_state("b", "disabled")
        self.assertNotIn("b", self.names(self.pool, 4))
        self.pool.set_admin_state("b", "enabled")
        self.pool.set_health(b, False, "down")
        self.assertNotIn("b", self.names(self.pool, 4))
        self.sticky.pins[CLIENT.client_ip] = "gone"
        self.assertEqual(len(self.names(self.pool, 2)), 2)

    def test_strict_refuses(self) -> None:
        """
        Strict stickiness refuses a client whose backend cannot serve it.
        """
        self.sticky.strict = True
        self.sticky.pins[CLIENT.client_ip] = "b"
        self.pool.set_admin_state("b", "disabled")
        error = self.assertRaises(NoBackendAvailable, self.pool.pick, CLIENT)
        self.assertIn("sticky backend unavailable", str(error))
        self.sticky.pins[CLIENT.client_ip] = "gone"
        self.assertRaises(NoBackendAvailable, self.pool.pick, CLIENT)
        self.assertEqual(len(self.names(self.pool, 2, OTHER_CLIENT)), 2)

    def test_retry_leaves_pin(self) -> None:
        """
        A retry after the pinned backend failed goes elsewhere, unless stickiness is strict.
        """
        self.sticky.pins[CLIENT.client_ip] = "b"
        retry = PickContext("http", CLIENT.client_ip, avoid=frozenset({"b"}))
        self.assertEqual(self.names(self.pool, 2, retry), ["a", "c"])
        self.sticky.strict = True
        self.assertRaises(NoBackendAvailable, self.pool.pick, retry)

    def test_strict_keeps_draining(self) -> None:
        self.sticky.strict = True
        self.sticky.pins[CLIENT.client_ip] = "c"
        self.pool.set_admin_state("c", "draining")
        self.assertEqual(self.names(self.pool, 2), ["c", "c"])

    def test_pinned_full(self) -> None:
        """
        A client whose backend is full goes elsewhere, unless stickiness is strict.
        """
        pool = self.make_pool(
            Backend("a", "h", 1, max_connections=1), Backend("b", "h", 2), stickiness=self.sticky
        )
        self.sticky.pins[CLIENT.client_ip] = "a"
        self.lease(pool)
        self.assertEqual(self.lease(pool).backend.name, "b")
        self.sticky.strict = True
        error = self.assertRaises(NoBackendAvailable, pool.pick, CLIENT)
        self.assertIn("max_connections", str(error))

    def test_strict_pinned_full_waits(self) -> None:
        """
        With a queue, a strictly pinned client waits for its own backend.
        """
        pool = self.make_pool(
            Backend("a", "h", 1, max_connections=1),
            Backend("b", "h", 2),
            stickiness=FakeStickiness(strict=True),
            queue_size=2,
        )
        assert isinstance(pool.stickiness, FakeStickiness)
        pool.stickiness.pins[CLIENT.client_ip] = "a"
        held = self.lease(pool)
        waiting = self.queued(pool)
        held.release(Outcome())
        self.assertEqual(self.successResultOf(waiting).backend.name, "a")

    def test_no_pin_for_removed_backend(self) -> None:
        """
        A response from a backend that has left the pool pins nobody.
        """
        lease = self.lease(self.pool)
        self.pool.remove_backend(lease.backend.name)
        self.pool.sticky_response_done(CLIENT, lease.backend, StickyResponse())
        self.assertEqual(self.sticky.pins, {})


class QueueTests(PoolTestCase):
    """
    When every usable backend is full, callers wait in a bounded FIFO queue.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = self.make_pool(
            Backend("a", "h", 1, max_connections=1),
            Backend("b", "h", 2, max_connections=1),
            queue_size=2,
            queue_timeout=5.0,
        )
        self.held = [self.lease(self.pool), self.lease(self.pool)]

    def wait(self, context: PickContext = CLIENT) -> Deferred[Lease]:
        return self.queued(self.pool, context)

    def test_waits_for_release(self) -> None:
        """
        A caller waits until a lease is released, then gets its backend.
        """
        waiting = self.wait()
        self.held[1].release(Outcome())
        lease = self.successResultOf(waiting)
        self.assertEqual(lease.backend.name, "b")
        self.assertEqual(lease.backend.active, 1)

    def test_fifo(self) -> None:
        first = self.wait()
        second = self.wait(OTHER_CLIENT)
        self.held[0].release(Outcome())
        self.assertEqual(self.successResultOf(first).backend.name, "a")
        self.assertNoResult(second)
        self.held[1].release(Outcome())
        self.assertEqual(self.successResultOf(second).backend.name, "b")

    def test_overflow(self) -> None:
        """
        A caller finding the queue full is refused at once.
        """
        self.wait()
        self.wait()
        error = self.assertRaises(NoBackendAvailable, self.pool.pick, CLIENT)
        self.assertIn("queue is full", str(error))

    def test_timeout(self) -> None:
        """
        A caller still waiting after C{queue_timeout} fails, and leaves the queue.
        """
        waiting = self.wait()
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        error = self.failureResultOf(waiting, NoBackendAvailable)
        self.assertIn("queue timeout", error.getErrorMessage())
        later = self.wait()
        self.wait()
        self.held[0].release(Outcome())
        self.assertEqual(self.successResultOf(later).backend.name, "a")

    def test_released_lease_cancels_timeout(self) -> None:
        waiting = self.wait()
        self.held[0].release(Outcome())
        self.successResultOf(waiting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        A cancelled wait leaves the queue.
        """
        waiting = self.wait()
        behind = self.wait()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.held[0].release(Outcome())
        self.assertEqual(self.successResultOf(behind).backend.name, "a")

    def test_fails_when_everything_goes_down(self) -> None:
        """
        Waiting callers fail at once when no backend is left to wait for.
        """
        waiting = self.wait()
        self.pool.set_admin_state("a", "disabled")
        self.assertNoResult(waiting)
        self.pool.set_admin_state("b", "disabled")
        error = self.failureResultOf(waiting, NoBackendAvailable)
        self.assertIn("no usable backend", error.getErrorMessage())

    def test_served_by_new_capacity(self) -> None:
        """
        A backend that is added or enabled serves waiting callers.
        """
        self.pool.set_admin_state("b", "draining")
        first = self.wait()
        second = self.wait()
        self.pool.add_backend(Backend("c", "h", 3, max_connections=1))
        self.assertEqual(self.successResultOf(first).backend.name, "c")
        self.assertNoResult(second)
        self.held[1].release(Outcome())
        self.assertNoResult(second)
        self.pool.set_admin_state("b", "enabled")
        self.assertEqual(self.successResultOf(second).backend.name, "b")

    def test_release_from_callback(self) -> None:
        """
        A caller that gives its lease back as soon as it gets it passes it to the next one.
        """
        first = self.wait()
        first.addCallback(lambda lease: lease.release(Outcome("aborted")))
        second = self.wait()
        self.held[0].release(Outcome())
        self.assertEqual(self.successResultOf(second).backend.name, "a")

    def test_ejection_end_serves_queue(self) -> None:
        """
        A backend back from ejection serves waiting callers as soon as its time is up.
        """
        pool = self.make_pool(
            Backend("a", "h", 1, max_connections=1),
            Backend("b", "h", 2, max_connections=1),
            Backend("c", "h", 3, max_connections=1),
            queue_size=2,
            queue_timeout=30.0,
            passive=PassiveHealth(
                consecutive_failures=1, base_ejection=10.0, max_ejected_share=1.0
            ),
        )
        self.fail_backend(pool, "b", 1)
        self.clock.advance(5.0)
        self.fail_backend(pool, "c", 1)
        self.lease(pool)
        waiting = [self.queued(pool), self.queued(pool, OTHER_CLIENT)]
        self.clock.advance(4.9)
        self.assertNoResult(waiting[0])
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(waiting[0]).backend.name, "b")
        self.assertNoResult(waiting[1])
        self.clock.advance(5.0)
        self.assertEqual(self.successResultOf(waiting[1]).backend.name, "c")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ejection_while_waiting(self) -> None:
        """
        A backend ejected while callers wait serves them as soon as its ejection is over.
        """
        pool = self.make_pool(
            Backend("a", "h", 1, max_connections=1),
            Backend("b", "h", 2, max_connections=1),
            queue_size=1,
            queue_timeout=30.0,
            passive=PassiveHealth(consecutive_failures=1, base_ejection=10.0),
        )
        held = [self.lease(pool), self.lease(pool)]
        waiting = self.queued(pool)
        held[1].release(FAILED)
        self.clock.advance(9.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(waiting).backend.name, "b")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SlowStartTests(PoolTestCase):
    """
    A backend that becomes usable again ramps its effective weight up over C{slow_start}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = self.make_pool(
            Backend("a", "h", 1, weight=10),
            Backend("b", "h", 2, weight=10),
            slow_start=20.0,
            passive=PassiveHealth(consecutive_failures=1, base_ejection=5.0),
        )
        a = self.pool.backend("a")
        assert a is not None
        self.a = a

    def weight_over_time(self) -> list[float]:
        """C{a}'s effective weight now, and after 5, 10, 19 and 20 seconds."""
        weights = []
        for step in (0.0, 5.0, 5.0, 9.0, 1.0):
            self.clock.advance(step)
            self.pool.usable()
            weights.append(round(self.a.effective_weight, 6))
        return weights

    def test_not_at_start(self) -> None:
        self.assertEqual(self.a.effective_weight, 10.0)

    def test_after_health_recovers(self) -> None:
        self.pool.set_health(self.a, False, "down")
        self.clock.advance(100.0)
        self.pool.set_health(self.a, True, "up")
        self.assertEqual(self.weight_over_time(), [1.0, 3.25, 5.5, 9.55, 10.0])
        self.clock.advance(1.0)
        self.pool.usable()
        self.assertEqual(self.a.effective_weight, 10.0)

    def test_after_reenable(self) -> None:
        self.pool.set_admin_state("a", "disabled")
        self.pool.set_admin_state("a", "enabled")
        self.assertEqual(self.weight_over_time(), [1.0, 3.25, 5.5, 9.55, 10.0])

    def test_after_ejection(self) -> None:
        """
        The ramp starts when the ejection ends.
        """
        self.fail_backend(self.pool, "a", 1)
        self.clock.advance(5.0)
        self.assertEqual(self.weight_over_time(), [1.0, 3.25, 5.5, 9.55, 10.0])

    def test_updated_at_pick(self) -> None:
        """
        Balancers see the ramped weight: a pick brings it up to date.
        """
        self.pool.set_admin_state("a", "draining")
        self.pool.set_admin_state("a", "enabled")
        self.clock.advance(10.0)
        self.lease(self.pool)
        self.assertEqual(self.a.effective_weight, 5.5)

    def test_small_weight_floor(self) -> None:
        """
        A ramp never starts below a small floor, so the backend still gets some traffic.
        """
        pool = self.make_pool(Backend("x", "h", 1, weight=0), Backend("y", "h", 2), slow_start=1.0)
        y = pool.backend("y")
        assert y is not None
        pool.set_admin_state("y", "disabled")
        pool.set_admin_state("y", "enabled")
        self.assertEqual(y.effective_weight, 0.1)
        x = pool.backend("x")
        assert x is not None
        pool.set_admin_state("x", "disabled")
        pool.set_admin_state("x", "enabled")
        self.assertEqual(x.effective_weight, 0.0)

    def test_new_backend(self) -> None:
        """
        A backend added beside serving ones slow-starts; the first of an empty pool does not.
        """
        self.pool.add_backend(Backend("c", "h", 3, weight=10))
        c = self.pool.backend("c")
        assert c is not None
        self.assertEqual(c.effective_weight, 1.0)
        empty = self.make_pool(Backend("x", "h", 1), slow_start=20.0)
        empty.remove_backend("x")
        empty.add_backend(Backend("first", "h", 1, weight=10))
        first = empty.backend("first")
        assert first is not None
        self.assertEqual(first.effective_weight, 10.0)

    def test_weight_change_during_ramp(self) -> None:
        """
        A ramp in progress heads for the new weight.
        """
        self.pool.set_admin_state("a", "disabled")
        self.pool.set_admin_state("a", "enabled")
        self.clock.advance(10.0)
        self.pool.set_weight("a", 20)
        self.assertEqual(self.a.effective_weight, 11.0)
        self.clock.advance(10.0)
        self.pool.usable()
        self.assertEqual(self.a.effective_weight, 20.0)

    def test_down_during_ramp_restarts(self) -> None:
        self.pool.set_admin_state("a", "disabled")
        self.pool.set_admin_state("a", "enabled")
        self.clock.advance(10.0)
        self.pool.set_health(self.a, False, "down")
        self.clock.advance(10.0)
        self.pool.set_health(self.a, True, "up")
        self.assertEqual(self.weight_over_time(), [1.0, 3.25, 5.5, 9.55, 10.0])


class ObserverTests(PoolTestCase):
    """
    Observers (and the log) hear of every health and admin change, with a reason.
    """

    def setUp(self) -> None:
        super().setUp()
        self.observer = RecordingObserver()
        self.pool = self.make_pool(passive=PassiveHealth(consecutive_failures=2))
        self.pool.add_observer(self.observer)

    def test_health(self) -> None:
        """
        The health checker's reason is passed on; an unchanged verdict is not news.
        """
        a = self.pool.backend("a")
        assert a is not None
        self.pool.set_health(a, True, "still fine")
        self.pool.set_health(a, False, "3 failed checks: connection refused")
        self.pool.set_health(a, False, "4 failed checks: connection refused")
        self.pool.set_health(a, True, "2 good checks")
        self.assertEqual(
            self.observer.changes,
            [
                ("web", "a", "3 failed checks: connection refused"),
                ("web", "a", "2 good checks"),
            ],
        )
        self.assertTrue(a.healthy)

    def test_admin(self) -> None:
        self.pool.set_admin_state("b", "draining")
        self.pool.set_admin_state("b", "draining")
        self.pool.set_admin_state("b", "disabled")
        self.pool.set_weight("b", 3)
        self.assertEqual(
            self.observer.changes,
            [
                ("web", "b", "admin state enabled -> draining"),
                ("web", "b", "admin state draining -> disabled"),
                ("web", "b", "weight 1 -> 3"),
            ],
        )

    def test_membership(self) -> None:
        self.pool.add_backend(Backend("d", "h", 4))
        self.pool.remove_backend("a")
        self.assertEqual(
            self.observer.changes,
            [("web", "d", "added to pool"), ("web", "a", "removed from pool")],
        )

    def test_ejection(self) -> None:
        self.fail_backend(self.pool, "c", 2, "server_error")
        self.clock.advance(30.0)
        self.pool.usable()
        self.assertEqual(
            self.observer.changes,
            [
                ("web", "c", "ejected for 30s after 2 failures in a row (server_error)"),
                ("web", "c", "ejection over"),
            ],
        )

    def test_logged(self) -> None:
        """
        Changes are logged in the pool's own namespace.
        """
        with capturedLogs() as events:
            self.pool.set_admin_state("a", "disabled")
        [event] = events
        self.assertEqual(event["log_namespace"], "twisted_rp.pool.web")
        self.assertEqual(event["reason"], "admin state enabled -> disabled")

    def test_losing_a_backend_is_a_warning(self) -> None:
        a = self.pool.backend("a")
        assert a is not None
        with capturedLogs() as events:
            self.pool.set_health(a, False, "down")
            self.pool.set_health(a, True, "up")
        self.assertEqual([e["log_level"].name for e in events], ["warn", "info"])

    def test_remove_observer(self) -> None:
        self.pool.remove_observer(self.observer)
        self.pool.set_admin_state("a", "disabled")
        self.assertEqual(self.observer.changes, [])

    def test_failing_observer(self) -> None:
        """
        An observer that raises is logged and does not stop the others or the change.
        """

        @implementer(IPoolObserver)
        class Broken:
            def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
                raise RuntimeError("broken observer")

        pool = self.make_pool()
        pool.add_observer(Broken())
        pool.add_observer(self.observer)
        pool.set_admin_state("a", "disabled")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.observer.changes, [("web", "a", "admin state enabled -> disabled")])
        self.assertEqual(set(self.names(pool, 4)), {"b", "c"})


class PassiveTests(PoolTestCase):
    """
    Backends failing real traffic are ejected for a growing period, within a share of the pool.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = self.make_pool(
            passive=PassiveHealth(consecutive_failures=3, base_ejection=10.0, max_ejection=25.0)
        )

    def backend(self, name: str) -> Backend:
        backend = self.pool.backend(name)
        assert backend is not None
        return backend

    def test_threshold(self) -> None:
        """
        C{consecutive_failures} failures in a row eject a backend until C{ejected_until}.
        """
        self.fail_backend(self.pool, "a", 2)
        self.assertIn(self.backend("a"), self.pool.usable())
        self.clock.advance(1.0)
        self.fail_backend(self.pool, "a", 1)
        self.assertEqual(self.backend("a").ejected_until, 11.0)
        self.assertEqual(set(self.names(self.pool, 4)), {"b", "c"})

    def test_active_recovery_lifts_ejection(self) -> None:
        """
        A backend ejected by passive health, then seen down and back up by the active checks
        (a restarted server), serves again at once rather than after its ejection.
        """
        backend = self.backend("a")
        self.fail_backend(self.pool, "a", 3)
        self.pool.set_health(backend, False, "2 failed checks")
        self.clock.advance(1.0)
        self.pool.set_health(backend, True, "2 successful checks")
        self.assertEqual(backend.ejected_until, 0.0)
        self.assertIn("a", self.names(self.pool, 3))

    def test_success_resets(self) -> None:
        self.fail_backend(self.pool, "a", 2)
        self.fail_backend(self.pool, "a", 1, "ok")
        self.fail_backend(self.pool, "a", 2)
        self.assertEqual(self.backend("a").ejected_until, 0.0)

    def test_client_aborts_do_not_count(self) -> None:
        self.fail_backend(self.pool, "a", 5, "aborted")
        self.assertEqual(self.backend("a").ejected_until, 0.0)

    def test_recovery(self) -> None:
        """
        An ejected backend is back in service when its time is up.
        """
        self.fail_backend(self.pool, "a", 3)
        self.clock.advance(9.9)
        self.assertNotIn("a", [b.name for b in self.pool.usable()])
        self.clock.advance(0.1)
        self.assertEqual([b.name for b in self.pool.usable()], ["a", "b", "c"])
        self.assertEqual(self.backend("a").ejected_until, 0.0)
        self.assertIn("a", self.names(self.pool, 3))

    def test_growing_backoff(self) -> None:
        """
        Each ejection lasts longer than the one before, up to C{max_ejection}.
        """
        durations = []
        for _ in range(3):
            start = self.clock.seconds()
            self.fail_backend(self.pool, "a", 3)
            durations.append(self.backend("a").ejected_until - start)
            self.clock.advance(durations[-1])
            self.pool.usable()
        self.assertEqual(durations, [10.0, 20.0, 25.0])

    def test_failures_while_ejected_ignored(self) -> None:
        """
        Leases taken before the ejection and failing after it do not lengthen it.
        """
        self.fail_backend(self.pool, "a", 3)
        self.clock.advance(1.0)
        self.fail_backend(self.pool, "a", 6)
        self.assertEqual(self.backend("a").ejected_until, 10.0)
        self.clock.advance(9.0)
        self.fail_backend(self.pool, "a", 2)
        self.assertEqual(self.backend("a").ejected_until, 0.0)

    def test_max_ejected_share(self) -> None:
        """
        No more than the allowed share of the pool is ejected at once: of three backends
        at half, one.
        """
        self.fail_backend(self.pool, "a", 3)
        self.fail_backend(self.pool, "b", 5)
        self.assertEqual(self.backend("b").ejected_until, 0.0)
        self.assertEqual(set(self.names(self.pool, 4)), {"b", "c"})
        self.clock.advance(10.0)
        self.fail_backend(self.pool, "b", 3)
        self.assertEqual(self.backend("b").ejected_until, 20.0)

    def test_share_limit_logged_once(self) -> None:
        """
        A backend kept in service by the share limit is reported once per run of failures.
        """
        self.fail_backend(self.pool, "a", 3)
        with capturedLogs() as events:
            self.fail_backend(self.pool, "b", 6)
        [event] = events
        self.assertIn("stays", event["log_format"])
        self.assertEqual(event["backend"], "b")

    def test_share_counts_members(self) -> None:
        """
        In a pool of four at half, two may be ejected.
        """
        self.pool.add_backend(Backend("d", "h", 4))
        for name in "abc":
            self.fail_backend(self.pool, name, 3)
        self.assertEqual([b.name for b in self.pool.usable()], ["c", "d"])

    def test_single_backend_never_ejected(self) -> None:
        pool = self.make_pool(Backend("only", "h", 1), passive=PassiveHealth())
        self.fail_backend(pool, "only", 20)
        self.assertEqual(self.names(pool, 1), ["only"])

    def test_backup_ejected(self) -> None:
        """
        Backups are ejected like primaries.
        """
        pool = self.make_pool(
            Backend("a", "h", 1),
            Backend("spare", "h", 2, backup=True),
            passive=PassiveHealth(consecutive_failures=1),
        )
        pool.set_admin_state("a", "disabled")
        self.fail_backend(pool, "spare", 1)
        self.assertRaises(NoBackendAvailable, pool.pick, CLIENT)

    def test_no_passive(self) -> None:
        """
        Without passive health, failures eject nothing.
        """
        pool = self.make_pool()
        self.fail_backend(pool, "a", 50)
        self.assertIn("a", self.names(pool, 3))


class MembershipTests(PoolTestCase):
    """
    Backends join and leave a running pool; leases already out finish normally.
    """

    def test_add(self) -> None:
        pool = self.make_pool()
        pool.add_backend(Backend("d", "h", 4))
        self.assertEqual([b.name for b in pool.backends()], ["a", "b", "c", "d"])
        self.assertEqual(self.names(pool, 4), ["a", "b", "c", "d"])
        self.assertRaises(ValueError, pool.add_backend, Backend("a", "h", 9))

    def test_remove_with_lease_out(self) -> None:
        """
        A removed backend gets nothing new, sticky or not; its lease still releases.
        """
        balancer = RecordingBalancer()
        sticky = FakeStickiness()
        pool = self.make_pool(balancer=balancer, stickiness=sticky)
        lease = self.lease(pool)
        sticky.pins[CLIENT.client_ip] = "a"
        pool.remove_backend("a")
        self.assertEqual([b.name for b in pool.backends()], ["b", "c"])
        self.assertIsNone(pool.backend("a"))
        self.assertEqual(set(self.names(pool, 4)), {"b", "c"})
        lease.release(Outcome())
        self.assertEqual(lease.backend.active, 0)
        self.assertNotIn(("a", "ok"), balancer.observed)
        self.assertRaises(KeyError, pool.remove_backend, "a")

    def test_removed_failures_not_counted(self) -> None:
        """
        Failures on a removed backend eject nothing (and do not count against the share).
        """
        pool = self.make_pool(passive=PassiveHealth(consecutive_failures=1))
        leases = [self.lease(pool) for _ in range(3)]
        pool.remove_backend("a")
        leases[0].release(FAILED)
        self.assertEqual(leases[0].backend.ejected_until, 0.0)
        leases[1].release(FAILED)
        self.assertEqual([b.name for b in pool.usable()], ["c"])

    def test_readd_same_name(self) -> None:
        """
        A backend re-added under the name of a removed one with a lease out is a new backend:
        the old lease's release does not touch it.
        """
        pool = self.make_pool()
        lease = self.lease(pool)
        pool.remove_backend("a")
        pool.add_backend(Backend("a", "h", 10))
        fresh = self.lease(pool, OTHER_CLIENT)
        lease.release(Outcome())
        self.assertEqual(lease.backend.active, 0)
        self.assertEqual(fresh.backend.active, 1)
        self.assertIsNot(fresh.backend, lease.backend)

    def test_health_of_removed_ignored(self) -> None:
        """
        A health verdict arriving after removal changes nothing and tells nobody.
        """
        pool = self.make_pool()
        observer = RecordingObserver()
        a = pool.backend("a")
        assert a is not None
        pool.remove_backend("a")
        pool.add_observer(observer)
        pool.set_health(a, False, "late probe")
        self.assertTrue(a.healthy)
        self.assertEqual(observer.changes, [])

    def test_remove_ejected(self) -> None:
        """
        Removing an ejected backend frees its place in the ejected share.
        """
        pool = self.make_pool(passive=PassiveHealth(consecutive_failures=1))
        self.fail_backend(pool, "a", 1)
        pool.remove_backend("a")
        pool.add_backend(Backend("d", "h", 4))
        self.fail_backend(pool, "b", 1)
        self.assertEqual([b.name for b in pool.usable()], ["c", "d"])


class ReadsContextTests(SynchronousTestCase):
    def test_built_in_balancers(self) -> None:
        self.assertFalse(BackendPool("p", []).reads_context)
        self.assertTrue(BackendPool("p", [], balancer=HashBalancer(lambda c: c.path)).reads_context)

    def test_unknown_balancer_reads_it(self) -> None:
        class Mine:
            def choose(self, candidates: Any, context: PickContext) -> Any:
                return candidates[0]

        self.assertTrue(BackendPool("p", [], balancer=Mine()).reads_context)

    def test_subclass_picking_its_own_way_reads_it(self) -> None:
        class Mine(BackendPool):
            def pick(self, context: PickContext) -> Lease:
                return super().pick(context)  # type: ignore[return-value]

        self.assertTrue(Mine("p", []).reads_context)
