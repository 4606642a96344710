"""
Tests for L{twisted_rp.pool.balancers}.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.interfaces import IBalancer
from twisted_rp.pool.backend import Backend, Outcome, PickContext
from twisted_rp.pool.balancers import (
    BALANCERS,
    HashBalancer,
    LeastConnections,
    LeastTime,
    RandomTwoChoices,
    RoundRobin,
    WeightedRoundRobin,
)

PICKS = 10_000
CONTEXT = PickContext("http", "192.0.2.1")


def backends(*weights: int) -> list[Backend]:
    """Backends named a, b, c, ... with the given weights."""
    return [
        Backend(chr(ord("a") + index), "127.0.0.1", 8000 + index, weight=weight)
        for index, weight in enumerate(weights)
    ]


def picks(balancer: IBalancer, candidates: Sequence[Backend], count: int) -> list[str]:
    """The names of C{count} successive picks, each released before the next."""
    return [balancer.choose(candidates, CONTEXT).name for _ in range(count)]


def simulate_load(
    balancer: IBalancer,
    candidates: Sequence[Backend],
    *,
    duration: int = 30,
    durations: Mapping[str, int] | None = None,
    count: int = PICKS,
) -> Counter[str]:
    """
    Pick C{count} times, one pick per tick, each lease held for C{duration} ticks (or the
    backend's entry in C{durations}) so that requests overlap as under real load.

    @return: picks per backend name.
    """
    durations = durations or {}
    in_flight: list[tuple[int, int, Backend]] = []
    chosen: Counter[str] = Counter()
    for tick in range(count):
        while in_flight and in_flight[0][0] <= tick:
            heapq.heappop(in_flight)[2].active -= 1
        backend = balancer.choose(candidates, CONTEXT)
        backend.active += 1
        chosen[backend.name] += 1
        ends = tick + durations.get(backend.name, duration)
        heapq.heappush(in_flight, (ends, tick, backend))
    for _, _, backend in in_flight:
        backend.active -= 1
    return chosen


class BalancerTestCase(SynchronousTestCase):
    def assertNear(self, actual: float, expected: float, delta: float) -> None:
        """C{actual} is within C{delta} of C{expected} (trial's assertAlmostEqual has no delta)."""
        self.assertLessEqual(
            abs(actual - expected), delta, f"{actual} is not {expected} +- {delta}"
        )

    def assertFollowsWeights(
        self, chosen: Counter[str], candidates: Sequence[Backend], tolerance: float = 0.05
    ) -> None:
        """Each backend got its weight's share of the picks, within C{tolerance} of it."""
        total_weight = sum(backend.weight for backend in candidates)
        total = sum(chosen.values())
        for backend in candidates:
            expected = total * backend.weight / total_weight
            self.assertLessEqual(
                abs(chosen[backend.name] - expected),
                tolerance * expected,
                f"{backend.name}: {chosen[backend.name]} picks, expected {expected:.0f}",
            )


class RoundRobinTests(BalancerTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, RoundRobin()))

    def test_each_in_turn(self) -> None:
        """Every candidate in configuration order, weights notwithstanding."""
        self.assertEqual(picks(RoundRobin(), backends(5, 1, 1), 7), list("abcabca"))

    def test_candidates_shrink(self) -> None:
        """When fewer backends are usable, picking goes on over those that are."""
        balancer = RoundRobin()
        candidates = backends(1, 1, 1)
        self.assertEqual(picks(balancer, candidates, 2), ["a", "b"])
        self.assertEqual(picks(balancer, candidates[:1], 2), ["a", "a"])
        self.assertEqual(picks(balancer, candidates, 3), ["b", "c", "a"])


class WeightedRoundRobinTests(BalancerTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, WeightedRoundRobin()))

    def test_smooth(self) -> None:
        """Weights 5, 1, 1 give nginx's interleaved sequence, not five a's in a row."""
        self.assertEqual(picks(WeightedRoundRobin(), backends(5, 1, 1), 14), list("aabacaa" * 2))

    def test_distribution(self) -> None:
        candidates = backends(5, 3, 2)
        chosen = Counter(picks(WeightedRoundRobin(), candidates, PICKS))
        self.assertFollowsWeights(chosen, candidates, tolerance=0.001)

    def test_effective_weight(self) -> None:
        """A backend in slow start gets the share of its ramped weight."""
        candidates = backends(4, 4)
        candidates[1].effective_weight = 1.0
        chosen = Counter(picks(WeightedRoundRobin(), candidates, 1000))
        self.assertEqual(chosen, Counter(a=800, b=200))

    def test_turn_kept_when_another_leaves(self) -> None:
        """
        When a backend leaves the usable set, the others keep their place: the one whose turn
        was next still gets it, rather than the sequence restarting.
        """
        balancer = WeightedRoundRobin()
        a, b, c = backends(1, 1, 1)
        self.assertEqual(picks(balancer, [a, b, c], 2), ["a", "b"])
        self.assertEqual(picks(balancer, [b, c], 1), ["c"])
        self.assertEqual(Counter(picks(balancer, [b, c], 21)), Counter(b=10, c=11))

    def test_fair_after_churn(self) -> None:
        """After backends leave and rejoin, each again gets its weight's share."""
        balancer = WeightedRoundRobin()
        a, b, c = backends(3, 2, 1)
        picks(balancer, [a, b, c], 4)
        picks(balancer, [a, c], 3)
        picks(balancer, [b], 2)
        chosen = Counter(picks(balancer, [a, b, c], 600))
        for backend in (a, b, c):
            self.assertNear(chosen[backend.name], 100 * backend.weight, delta=2)


class LeastConnectionsTests(BalancerTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, LeastConnections()))

    def test_fewest_active(self) -> None:
        candidates = backends(1, 1, 1)
        candidates[0].active = 3
        candidates[1].active = 1
        candidates[2].active = 2
        self.assertEqual(LeastConnections().choose(candidates, CONTEXT).name, "b")

    def test_per_weight(self) -> None:
        """Active leases count per unit of weight: 3 on weight 4 is less than 1 on weight 1."""
        candidates = backends(4, 1)
        candidates[0].active = 3
        candidates[1].active = 1
        self.assertEqual(LeastConnections().choose(candidates, CONTEXT).name, "a")

    def test_ties_round_robin(self) -> None:
        """Idle backends of equal weight take turns."""
        self.assertEqual(picks(LeastConnections(), backends(1, 1, 1), 6), list("abcabc"))

    def test_idle_follows_weights(self) -> None:
        """Without concurrent load to compare, picks still follow the weights."""
        candidates = backends(5, 3, 2)
        chosen = Counter(picks(LeastConnections(), candidates, PICKS))
        self.assertFollowsWeights(chosen, candidates)

    def test_distribution_under_load(self) -> None:
        candidates = backends(5, 3, 2)
        chosen = simulate_load(LeastConnections(), candidates)
        self.assertFollowsWeights(chosen, candidates)

    def test_slow_backend_gets_less(self) -> None:
        """A backend whose requests last four times as long gets a quarter of the new ones."""
        candidates = backends(1, 1)
        chosen = simulate_load(LeastConnections(), candidates, durations={"a": 40, "b": 10})
        self.assertNear(chosen["a"] / chosen["b"], 0.25, delta=0.02)


class RandomTwoChoicesTests(BalancerTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, RandomTwoChoices()))
        self.assertTrue(verifyObject(IBalancer, RandomTwoChoices(random.Random(1))))

    def test_reproducible(self) -> None:
        """The same seed gives the same picks."""
        candidates = backends(1, 2, 3, 4)
        first = picks(RandomTwoChoices(random.Random(7)), candidates, 200)
        second = picks(RandomTwoChoices(random.Random(7)), candidates, 200)
        self.assertEqual(first, second)
        self.assertEqual(set(first), {"a", "b", "c", "d"})

    def test_single(self) -> None:
        self.assertEqual(picks(RandomTwoChoices(), backends(3), 3), ["a"] * 3)

    def test_idle_follows_weights(self) -> None:
        candidates = backends(5, 3, 2)
        chosen = Counter(picks(RandomTwoChoices(random.Random(2024)), candidates, PICKS))
        self.assertFollowsWeights(chosen, candidates)

    def test_distribution_under_load(self) -> None:
        candidates = backends(5, 3, 2)
        chosen = simulate_load(RandomTwoChoices(random.Random(2024)), candidates)
        self.assertFollowsWeights(chosen, candidates)

    def test_equal_weights_even(self) -> None:
        candidates = backends(1, 1, 1, 1)
        chosen = simulate_load(RandomTwoChoices(random.Random(99)), candidates)
        self.assertFollowsWeights(chosen, candidates)

    def test_avoids_the_busiest(self) -> None:
        """The more loaded of two draws loses, so the most loaded backend is never picked."""
        candidates = backends(1, 1, 1)
        candidates[1].active = 50
        chosen = Counter(picks(RandomTwoChoices(random.Random(5)), candidates, 1000))
        self.assertEqual(chosen["b"], 0)
        self.assertNear(chosen["a"], 500, delta=50)


class LeastTimeTests(BalancerTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, LeastTime()))

    def test_decay_checked(self) -> None:
        self.assertRaises(ValueError, LeastTime, decay=0)
        self.assertRaises(ValueError, LeastTime, decay=1.5)

    def observe(self, balancer: LeastTime, backend: Backend, *elapsed: float) -> None:
        for seconds in elapsed:
            balancer.observe(backend, Outcome("ok", seconds))

    def test_untried_first(self) -> None:
        """A backend never observed gets the next request, however fast the others are."""
        balancer = LeastTime()
        a, b, c = backends(1, 1, 1)
        self.observe(balancer, a, 0.01, 0.01)
        self.observe(balancer, b, 0.02)
        self.assertEqual(balancer.choose([a, b, c], CONTEXT), c)

    def test_untried_not_flooded(self) -> None:
        """
        While an untried backend's first request is outstanding, it counts as average rather
        than as best, so a burst does not pile onto it.
        """
        balancer = LeastTime()
        a, b, c = backends(1, 1, 1)
        self.observe(balancer, a, 0.1)
        self.observe(balancer, b, 0.1)
        self.assertEqual(balancer.choose([a, b, c], CONTEXT), c)
        c.active = 1
        for _ in range(4):
            balancer.choose([a, b, c], CONTEXT).active += 1
        self.assertEqual((a.active, b.active, c.active), (2, 2, 1))

    def test_each_untried_tried(self) -> None:
        """Concurrent first requests go to different backends until each has been tried."""
        balancer = LeastTime()
        candidates = backends(1, 1, 1)
        tried = []
        for _ in range(3):
            backend = balancer.choose(candidates, CONTEXT)
            backend.active += 1
            tried.append(backend.name)
        self.assertEqual(sorted(tried), ["a", "b", "c"])

    def test_prefers_faster(self) -> None:
        balancer = LeastTime()
        a, b, c = backends(1, 1, 1)
        self.observe(balancer, a, 0.3, 0.3)
        self.observe(balancer, b, 0.05, 0.05)
        self.observe(balancer, c, 0.2)
        self.assertEqual(picks(balancer, [a, b, c], 10), ["b"] * 10)

    def test_load_spills_over(self) -> None:
        """A backend three times faster carries about three times the concurrent requests."""
        balancer = LeastTime()
        a, b = backends(1, 1)
        self.observe(balancer, a, 0.1)
        self.observe(balancer, b, 0.3)
        for _ in range(40):
            balancer.choose([a, b], CONTEXT).active += 1
        self.assertEqual((a.active, b.active), (30, 10))

    def test_weight_aware(self) -> None:
        balancer = LeastTime()
        a, b = backends(3, 1)
        self.observe(balancer, a, 0.1)
        self.observe(balancer, b, 0.1)
        for _ in range(40):
            balancer.choose([a, b], CONTEXT).active += 1
        self.assertEqual((a.active, b.active), (30, 10))

    def test_adapts(self) -> None:
        """When the fast backend slows down, traffic moves to the other."""
        balancer = LeastTime()
        a, b = backends(1, 1)
        self.observe(balancer, a, 0.05)
        self.observe(balancer, b, 0.2)
        self.assertEqual(balancer.choose([a, b], CONTEXT), a)
        self.observe(balancer, a, 1.0, 1.0, 1.0)
        self.assertEqual(balancer.choose([a, b], CONTEXT), b)

    def test_fast_failures_are_not_fast(self) -> None:
        """A backend failing quickly does not attract traffic with its short times."""
        balancer = LeastTime()
        a, b = backends(1, 1)
        self.observe(balancer, a, 0.1)
        self.observe(balancer, b, 0.15)
        for _ in range(3):
            balancer.observe(a, Outcome("connect_failed", 0.001))
        self.assertEqual(balancer.choose([a, b], CONTEXT), b)

    def test_aborted_ignored(self) -> None:
        """A request the client abandoned early says nothing about the backend's speed."""
        balancer = LeastTime()
        a, b = backends(1, 1)
        self.observe(balancer, a, 0.5)
        self.observe(balancer, b, 0.2)
        for _ in range(5):
            balancer.observe(a, Outcome("aborted", 0.001))
        self.assertEqual(balancer.choose([a, b], CONTEXT), b)


def client(number: int) -> PickContext:
    return PickContext("http", f"10.{number // 65536}.{number // 256 % 256}.{number % 256}")


KEYS = [client(number) for number in range(PICKS)]


class HashBalancerTests(BalancerTestCase):
    def mapping(self, balancer: HashBalancer, candidates: Sequence[Backend]) -> list[str]:
        return [balancer.choose(candidates, context).name for context in KEYS]

    def test_interface(self) -> None:
        for balancer in (
            HashBalancer.source_ip(),
            HashBalancer.header("X-User"),
            HashBalancer.cookie("session"),
            HashBalancer.uri(),
            HashBalancer(lambda context: context.user),
        ):
            self.assertTrue(verifyObject(IBalancer, balancer))

    def test_same_key_same_backend(self) -> None:
        balancer = HashBalancer.source_ip()
        candidates = backends(1, 1, 1, 1, 1)
        first = self.mapping(balancer, candidates)
        self.assertEqual(self.mapping(balancer, candidates), first)
        self.assertEqual(self.mapping(HashBalancer.source_ip(), candidates), first)
        self.assertEqual(set(first), {"a", "b", "c", "d", "e"})

    def test_remove_one(self) -> None:
        """Removing one of 5 backends moves only its own keys, about a fifth of them."""
        balancer = HashBalancer.source_ip()
        candidates = backends(1, 1, 1, 1, 1)
        before = self.mapping(balancer, candidates)
        after = self.mapping(balancer, candidates[:2] + candidates[3:])
        moved = [old for old, new in zip(before, after, strict=True) if old != new]
        self.assertEqual(set(moved), {"c"})
        self.assertEqual(len(moved), before.count("c"))
        self.assertTrue(0.5 / 5 <= len(moved) / PICKS <= 1.5 / 5, len(moved))

    def test_add_one(self) -> None:
        """Adding a sixth backend moves about a fifth of the keys at most, all to it."""
        balancer = HashBalancer.source_ip()
        candidates = backends(1, 1, 1, 1, 1, 1)
        before = self.mapping(balancer, candidates[:5])
        after = self.mapping(balancer, candidates)
        moved = [new for old, new in zip(before, after, strict=True) if old != new]
        self.assertEqual(set(moved), {"f"})
        self.assertTrue(0.5 / 5 <= len(moved) / PICKS <= 1.5 / 5, len(moved))

    def test_weights(self) -> None:
        candidates = backends(1, 2, 3, 4)
        chosen = Counter(self.mapping(HashBalancer.source_ip(), candidates))
        self.assertFollowsWeights(chosen, candidates)

    def test_weight_change(self) -> None:
        """A changed weight takes effect on the next pick."""
        balancer = HashBalancer.source_ip()
        candidates = backends(1, 1)
        self.assertNear(self.mapping(balancer, candidates).count("a"), 5000, delta=750)
        candidates[0].weight = 3
        self.assertNear(self.mapping(balancer, candidates).count("a"), 7500, delta=750)

    def test_slow_start_keeps_keys(self) -> None:
        """A ramping effective weight does not move keys to and fro."""
        balancer = HashBalancer.source_ip()
        candidates = backends(1, 1, 1)
        before = self.mapping(balancer, candidates)
        candidates[1].effective_weight = 0.1
        self.assertEqual(self.mapping(balancer, candidates), before)

    def test_header(self) -> None:
        """The header's value decides, not the client address; a missing header round-robins."""
        balancer = HashBalancer.header("X-Tenant")
        candidates = backends(1, 1, 1)

        def request(client_ip: str, tenant: str | None) -> PickContext:
            headers = {} if tenant is None else {"x-tenant": tenant}
            return PickContext("http", client_ip, header=lambda name: headers.get(name.lower()))

        tenants = [f"tenant-{number}" for number in range(300)]
        first = [balancer.choose(candidates, request("192.0.2.1", t)).name for t in tenants]
        second = [balancer.choose(candidates, request("192.0.2.9", t)).name for t in tenants]
        self.assertEqual(first, second)
        self.assertEqual(set(first), {"a", "b", "c"})
        untagged = [balancer.choose(candidates, request("192.0.2.1", None)).name for _ in "xyz"]
        self.assertEqual(sorted(untagged), ["a", "b", "c"])

    def test_cookie(self) -> None:
        balancer = HashBalancer.cookie("sid")
        candidates = backends(1, 1, 1)
        cookies = {"sid": "abc123"}
        contexts = [
            PickContext("http", f"192.0.2.{number}", cookie=cookies.get) for number in range(20)
        ]
        self.assertEqual(len({balancer.choose(candidates, c).name for c in contexts}), 1)

    def test_uri(self) -> None:
        balancer = HashBalancer.uri()
        candidates = backends(1, 1, 1)
        paths = [f"/item/{number}" for number in range(300)]
        first = [
            balancer.choose(candidates, PickContext("http", "192.0.2.1", path=p)) for p in paths
        ]
        again = [
            balancer.choose(candidates, PickContext("http", "192.0.2.7", path=p)) for p in paths
        ]
        self.assertEqual(first, again)
        self.assertEqual(len(set(map(id, first))), 3)

    def test_missing_key_falls_back(self) -> None:
        """Requests without the key (or with an empty one) are spread round-robin."""
        candidates = backends(1, 1, 1)
        balancer = HashBalancer.cookie("sid")
        self.assertEqual(picks(balancer, candidates, 6), list("abcabc"))
        empty = PickContext("http", "192.0.2.1", cookie=lambda name: "")
        chosen = [balancer.choose(candidates, empty).name for _ in range(3)]
        self.assertEqual(chosen, list("abc"))

    def test_from_spec(self) -> None:
        candidates = backends(1, 1, 1)
        for spec, expected in [
            ("source_ip", HashBalancer.source_ip()),
            ("uri", HashBalancer.uri()),
            ("header:X-User", HashBalancer.header("x-user")),
            ("cookie:sid", HashBalancer.cookie("sid")),
        ]:
            balancer = HashBalancer.from_spec(spec, replicas=40)
            self.assertEqual(balancer.replicas, 40)
            context = PickContext(
                "http",
                "192.0.2.44",
                path="/x/y",
                header=lambda name: "alice" if name.lower() == "x-user" else None,
                cookie=lambda name: "s-9" if name == "sid" else None,
            )
            self.assertIs(
                balancer.choose(candidates, context),
                HashBalancer(expected.key, 40).choose(candidates, context),
            )
        for bad in ("", "header", "header:", "uri:x", "ip"):
            self.assertRaises(ValueError, HashBalancer.from_spec, bad)

    def test_replicas_checked(self) -> None:
        self.assertRaises(ValueError, HashBalancer.source_ip, replicas=0)


class RegistryTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(
            set(BALANCERS),
            {
                "round_robin",
                "weighted_round_robin",
                "least_connections",
                "random",
                "least_time",
                "hash",
            },
        )

    def test_each_is_a_balancer(self) -> None:
        candidates = backends(1, 2)
        for name, factory in BALANCERS.items():
            balancer = factory()
            self.assertTrue(verifyObject(IBalancer, balancer), name)
            self.assertIn(balancer.choose(candidates, CONTEXT), candidates)

    def test_options(self) -> None:
        least_time = BALANCERS["least_time"](decay=0.5)
        assert isinstance(least_time, LeastTime)
        self.assertEqual(least_time.decay, 0.5)
        hashing = BALANCERS["hash"](key="header:X-User", replicas=10)
        self.assertIsInstance(hashing, HashBalancer)

    def test_fresh_instances(self) -> None:
        """Each pool gets its own balancer state."""
        for factory in BALANCERS.values():
            self.assertIsNot(factory(), factory())

    def test_read_only(self) -> None:
        with self.assertRaises(TypeError):
            BALANCERS["mine"] = RoundRobin  # type: ignore[index]
