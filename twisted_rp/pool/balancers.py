"""
Balancers: how a pool chooses one backend among those it considers usable.

Every balancer is an L{IBalancer}: C{choose(candidates, context)} runs for every request, over a
non-empty sequence of usable backends in configuration order, and reads each backend's
C{effective_weight} (its weight, ramped during slow start) and C{active} lease count.  Balancers
that learn from results also have C{observe(backend, outcome)}, which the pool calls when a
lease is released.  State kept per backend is keyed by backend name, so that a backend leaving
or rejoining the usable set does not disturb the others.

L{BALANCERS} maps the configuration names to factories taking keyword options.
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from hashlib import blake2b
from math import inf
from types import MappingProxyType

from attrs import define, field, frozen
from zope.interface import implementer

from twisted_rp.interfaces import IBalancer
from twisted_rp.pool.backend import Backend, Outcome, PickContext


def _prune(state: dict[str, float], candidates: Sequence[Backend]) -> None:
    """
    Forget the state of backends that left the pool long ago.  Only called when C{state} has
    grown well past the candidate count, so that a backend briefly out of the usable set keeps
    its state while names churned by DNS membership do not accumulate forever.
    """
    if len(state) > 2 * len(candidates) + 16:
        names = {backend.name for backend in candidates}
        for name in [name for name in state if name not in names]:
            del state[name]


def _load(backend: Backend) -> float:
    """Leases per unit of weight; a backend without weight is never less loaded than another."""
    weight = backend.effective_weight
    return backend.active / weight if weight > 0 else inf


@implementer(IBalancer)
@define
class RoundRobin:
    """
    Each usable backend in turn, ignoring weights.
    """

    #: choose() never looks at the request (L{BackendPool.reads_context}).
    reads_context = False

    _next: int = 0

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


@implementer(IBalancer)
@define
class WeightedRoundRobin:
    """
    Smooth weighted round robin, as nginx does it: every pick adds each candidate's weight to
    its current weight, takes the candidate with the highest current weight (the first one on
    a tie) and subtracts the total weight from it.  Weights 5, 1, 1 give C{a a b a c a a}: the
    heavy backend's turns are spread out rather than taken in a burst.
    """

    #: choose() never looks at the request (L{BackendPool.reads_context}).
    reads_context = False

    _current: dict[str, float] = field(factory=dict, init=False)

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        current = self._current
        total = 0.0
        best = candidates[0]
        best_current = -inf
        for backend in candidates:
            weight = backend.effective_weight
            name = backend.name
            value = current.get(name, 0.0) + weight
            current[name] = value
            total += weight
            if value > best_current:
                best = backend
                best_current = value
        current[best.name] = best_current - total
        _prune(current, candidates)
        return best


@implementer(IBalancer)
@define
class LeastConnections:
    """
    The backend with the fewest active leases per unit of weight; ties (common under light
    load, when every backend is idle) are broken by smooth weighted round robin, as nginx
    does, so that weights still hold when there is no load to compare.
    """

    #: choose() never looks at the request (L{BackendPool.reads_context}).
    reads_context = False

    _tie_breaker: dict[str, float] = field(factory=dict, init=False)

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        best = candidates[0]
        best_load = inf
        ties = 0
        for backend in candidates:
            weight = backend.effective_weight
            load = backend.active / weight if weight > 0 else inf
            if load < best_load:
                best, best_load, ties = backend, load, 1
            elif load == best_load:
                ties += 1
        if ties == 1:
            return best
        current = self._tie_breaker
        total = 0.0
        best_current = -inf
        for backend in candidates:
            weight = backend.effective_weight
            if (backend.active / weight if weight > 0 else inf) != best_load:
                continue
            value = current.get(backend.name, 0.0) + weight
            current[backend.name] = value
            total += weight
            if value > best_current:
                best = backend
                best_current = value
        current[best.name] = best_current - total
        _prune(current, candidates)
        return best


def _own_rng(rng: random.Random | None) -> random.Random:
    return random.Random() if rng is None else rng


@implementer(IBalancer)
@define
class RandomTwoChoices:
    """
    The power of two random choices: draw two different candidates at random, in proportion to
    their weights, and take the less loaded (fewer active leases per unit of weight; the first
    drawn on a tie).  Nearly as even as least connections, without herding every new request
    onto the same momentarily idle backend.

    @ivar rng: the source of randomness; a seeded L{random.Random} makes picks reproducible.
    """

    #: choose() never looks at the request (L{BackendPool.reads_context}).
    reads_context = False

    rng: random.Random = field(default=None, converter=_own_rng)

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        rng = self.rng
        total = 0.0
        uniform = True
        some_weight = candidates[0].effective_weight
        for backend in candidates:
            weight = backend.effective_weight
            total += weight
            if weight != some_weight:
                uniform = False
        if uniform or total <= 0:
            first = rng.randrange(count)
            second = rng.randrange(count - 1)
            if second >= first:
                second += 1
        else:
            first = _draw(candidates, rng.random() * total, -1)
            remaining = total - candidates[first].effective_weight
            second = _draw(candidates, rng.random() * remaining, first)
        one, other = candidates[first], candidates[second]
        return other if _load(other) < _load(one) else one


def _draw(candidates: Sequence[Backend], point: float, skip: int) -> int:
    """
    The index of the candidate whose share of the cumulative weight holds C{point}, leaving
    out index C{skip}.
    """
    cumulative = 0.0
    last = -1
    for index, backend in enumerate(candidates):
        if index == skip:
            continue
        cumulative += backend.effective_weight
        last = index
        if point < cumulative:
            return index
    # Rounding can leave point a hair past the last boundary.
    return last


@implementer(IBalancer)
@define
class LeastTime:
    """
    The backend expected to answer soonest: an exponentially weighted moving average of each
    backend's response time, times its active leases plus one, divided by its weight.

    A backend with no observation yet is tried first while it has nothing in flight; while its
    first request is outstanding it is estimated at the average of all observations, so that a
    burst does not pile onto it.  Failures count as at least twice the backend's average, so a
    backend that fails fast does not look fast; requests the client abandoned say nothing of
    the backend and are ignored.

    @ivar decay: the weight of each new observation in the average, in (0, 1]: higher forgets
        the past faster.
    """

    #: choose() never looks at the request (L{BackendPool.reads_context}).
    reads_context = False

    decay: float = 0.3
    _average: dict[str, float] = field(factory=dict, init=False)
    _overall: float = field(default=0.0, init=False)
    _observed: bool = field(default=False, init=False)
    _next: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], not {self.decay!r}")

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        count = len(candidates)
        start = self._next % count
        self._next = start + 1
        average = self._average
        # With nothing observed at all, every estimate is this floor and the choice is by
        # leases per weight alone.
        fallback = max(self._overall, 1e-9)
        best = candidates[start]
        best_cost = inf
        for offset in range(count):
            index = start + offset
            backend = candidates[index - count if index >= count else index]
            estimate = average.get(backend.name)
            if estimate is None:
                if backend.active == 0:
                    return backend
                estimate = fallback
            elif estimate < 1e-9:
                estimate = 1e-9
            weight = backend.effective_weight
            cost = estimate * (backend.active + 1) / weight if weight > 0 else inf
            if cost < best_cost:
                best = backend
                best_cost = cost
        _prune(average, candidates)
        return best

    def observe(self, backend: Backend, outcome: Outcome) -> None:
        """Fold the time C{outcome} took into C{backend}'s average."""
        if outcome.kind == "aborted":
            return
        sample = outcome.elapsed
        previous = self._average.get(backend.name)
        if outcome.failed and previous is not None:
            sample = max(sample, 2 * previous)
        decay = self.decay
        self._average[backend.name] = (
            sample if previous is None else previous + decay * (sample - previous)
        )
        if self._observed:
            self._overall += decay * (sample - self._overall)
        else:
            self._overall = sample
            self._observed = True


def _hash64(data: str) -> int:
    return int.from_bytes(
        blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


@frozen
class _Ring:
    """
    A sorted ring of virtual-node hashes and, at the same positions, the index of the
    candidate owning each.
    """

    points: list[int]
    owners: list[int]


def _build_ring(members: Sequence[tuple[str, int]], replicas: int) -> _Ring:
    """
    Place C{replicas} x weight virtual nodes for each member.  A member's node positions
    depend on its name alone, so a ring over some members is the ring over all of them with
    the others' nodes skipped: that is what keeps most keys in place when membership changes.
    """
    nodes: list[tuple[int, int]] = []
    for index, (name, weight) in enumerate(members):
        wanted = max(0, round(replicas * weight))
        block = 0
        while wanted > 0:
            digest = blake2b(f"{name}#{block}".encode(), digest_size=32).digest()
            for point in struct.unpack(">4Q", digest)[:wanted]:
                nodes.append((point, index))
            wanted -= 4
            block += 1
    nodes.sort()
    return _Ring([point for point, _ in nodes], [owner for _, owner in nodes])


#: How many rings (one per distinct usable set) a hash balancer keeps; a pool flapping between
#: a few sets (a backend at its connection limit, a failing one) reuses them.
_RING_CACHE_SIZE = 16


def _source_ip(context: PickContext) -> str | None:
    return context.client_ip


def _uri(context: PickContext) -> str | None:
    return context.path


@implementer(IBalancer)
@define
class HashBalancer:
    """
    Consistent hashing of a key taken from each request: the key's hash is looked up on a ring
    of virtual nodes (C{replicas} per unit of weight per backend, placed by hashing backend
    names) and goes to the first usable backend clockwise.  The same key keeps going to the
    same backend; when one of N backends leaves or joins, only about 1/N of keys move.
    Requests without a key (or with an empty one) are spread round-robin.

    The ring uses the configured C{weight}, not the slow-start C{effective_weight}: ramping
    would move keys to and fro and rebuild the ring on every pick while it lasts.

    @ivar key: extracts the key from a L{PickContext}, L{None} when the request has none.
    """

    key: Callable[[PickContext], str | None]
    replicas: int = 160
    _rings: dict[tuple[tuple[str, int], ...], _Ring] = field(factory=dict, init=False)
    _fallback: RoundRobin = field(factory=RoundRobin, init=False)

    def __attrs_post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas!r}")

    @classmethod
    def source_ip(cls, replicas: int = 160) -> HashBalancer:
        """Hash on the client's address."""
        return cls(_source_ip, replicas)

    @classmethod
    def header(cls, name: str, replicas: int = 160) -> HashBalancer:
        """Hash on the value of request header C{name}."""

        def header_value(context: PickContext) -> str | None:
            return context.header(name)

        return cls(header_value, replicas)

    @classmethod
    def cookie(cls, name: str, replicas: int = 160) -> HashBalancer:
        """Hash on the value of request cookie C{name}."""

        def cookie_value(context: PickContext) -> str | None:
            return context.cookie(name)

        return cls(cookie_value, replicas)

    @classmethod
    def uri(cls, replicas: int = 160) -> HashBalancer:
        """Hash on the request path (as the protocol gives it, query included if present)."""
        return cls(_uri, replicas)

    @classmethod
    def from_spec(cls, key: str = "source_ip", replicas: int = 160) -> HashBalancer:
        """
        Build from a configuration string: C{"source_ip"}, C{"uri"}, C{"header:NAME"} or
        C{"cookie:NAME"}.

        @raise ValueError: for any other C{key}.
        """
        kind, _, name = key.partition(":")
        kind = kind.strip().lower()
        name = name.strip()
        if kind == "source_ip" and not name:
            return cls.source_ip(replicas)
        if kind == "uri" and not name:
            return cls.uri(replicas)
        if kind == "header" and name:
            return cls.header(name, replicas)
        if kind == "cookie" and name:
            return cls.cookie(name, replicas)
        raise ValueError(
            f"hash key must be source_ip, uri, header:NAME or cookie:NAME, not {key!r}"
        )

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        value = self.key(context)
        if not value:
            return self._fallback.choose(candidates, context)
        members = tuple([(backend.name, backend.weight) for backend in candidates])
        ring = self._rings.get(members)
        if ring is None:
            ring = self._ring_for(members)
        points = ring.points
        if not points:
            return self._fallback.choose(candidates, context)
        position = bisect_right(points, _hash64(value))
        return candidates[ring.owners[position if position < len(points) else 0]]

    def _ring_for(self, members: tuple[tuple[str, int], ...]) -> _Ring:
        rings = self._rings
        if len(rings) >= _RING_CACHE_SIZE:
            del rings[next(iter(rings))]
        ring = rings[members] = _build_ring(members, self.replicas)
        return ring


#: The balancers a pool's configuration may name, each a factory taking keyword options
#: (C{hash} takes C{key="source_ip" | "uri" | "header:NAME" | "cookie:NAME"} and C{replicas}).
BALANCERS: Mapping[str, Callable[..., IBalancer]] = MappingProxyType(
    {
        "round_robin": RoundRobin,
        "weighted_round_robin": WeightedRoundRobin,
        "least_connections": LeastConnections,
        "random": RandomTwoChoices,
        "least_time": LeastTime,
        "hash": HashBalancer.from_spec,
    }
)
