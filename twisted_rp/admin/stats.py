"""
Traffic statistics: what the pools, HTTP listeners, FTP sessions and TLS handshakes report,
counted cheaply as it happens and read as plain snapshots.

Every observer method runs on the hot path, so it only bumps a few counters and one histogram
bucket.  L{ProxyStats.snapshot} returns nested dicts of numbers (JSON as it is) that
L{merge_snapshots} adds up, so that the snapshots of several processes make one.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from zope.interface import implementer

from twisted_rp.interfaces import (
    IFTPObserver,
    IOutcomeObserver,
    IPoolObserver,
    IRequestObserver,
    ITLSObserver,
)
from twisted_rp.pool import BackendPool
from twisted_rp.pool.backend import FAILED_KINDS, Backend, Outcome

#: Upper bounds (seconds) of the latency buckets; one more bucket holds everything slower.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: Outcomes whose elapsed time is a response time (a failed connect took no request time).
_TIMED_OUTCOMES = frozenset({"ok", "server_error", "bad_response", "timeout", "aborted"})
#: Outcomes the backend is to blame for (L{Outcome.failed}).

Snapshot = dict[str, Any]


class Histogram:
    """
    Counts of values per bucket of L{LATENCY_BUCKETS}, and their sum.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def snapshot(self) -> Snapshot:
        return {"counts": list(self.counts), "sum": self.total}


def quantile(histogram: Mapping[str, Any], q: float) -> float | None:
    """
    The C{q} quantile (0 to 1) of a histogram snapshot, interpolated linearly inside its
    bucket as Prometheus's C{histogram_quantile} does; L{None} without observations.  Values
    in the last, unbounded bucket are reported as its lower bound.
    """
    counts: list[int] = histogram["counts"]
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            low = LATENCY_BUCKETS[index - 1] if index else 0.0
            high = LATENCY_BUCKETS[index]
            return low + (high - low) * max(rank - seen, 0.0) / count
        seen += count
    return LATENCY_BUCKETS[-1]


def latency_summary(histogram: Mapping[str, Any]) -> dict[str, float | None]:
    """The median, 90th and 99th percentiles and the mean of a histogram snapshot."""
    count = sum(histogram["counts"])
    return {
        "p50": quantile(histogram, 0.5),
        "p90": quantile(histogram, 0.9),
        "p99": quantile(histogram, 0.99),
        "mean": histogram["sum"] / count if count else None,
    }


def merge_snapshots(*snapshots: Mapping[str, Any]) -> Snapshot:
    """
    The sum of C{snapshots}: numbers are added, lists added item by item, dicts merged key by
    key, recursively.
    """
    merged: Snapshot = {}
    for snapshot in snapshots:
        _add_into(merged, snapshot)
    return merged


def _add_into(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping):
            _add_into(target.setdefault(key, {}), value)
        elif isinstance(value, list):
            current = target.get(key)
            if current is None:
                target[key] = list(value)
            else:
                target[key] = [a + b for a, b in zip(current, value, strict=True)]
        else:
            target[key] = target.get(key, 0) + value


class _BackendCounters:
    """Outcomes by kind and a latency histogram; requests and failures are derived."""

    __slots__ = ("latency", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.latency = Histogram()

    def snapshot(self) -> Snapshot:
        outcomes = dict(self.outcomes)
        return {
            "requests": sum(outcomes.values()),
            "failures": sum(n for kind, n in outcomes.items() if kind in FAILED_KINDS),
            "outcomes": outcomes,
            "latency": self.latency.snapshot(),
        }


class _RouteCounters:
    """Responses by backend and status class, and a latency histogram, of one route."""

    __slots__ = ("latency", "responses")

    def __init__(self) -> None:
        self.responses: dict[tuple[str, int], int] = {}
        self.latency = Histogram()


@implementer(IOutcomeObserver, IPoolObserver, IRequestObserver, IFTPObserver, ITLSObserver)
class ProxyStats:
    """
    The statistics of one proxy process.  Subscribe it with L{watch_pool} and by adding it to
    the C{observers} or C{request_observers} of listener factories and L{ServerTLS} objects
    (L{twisted_rp.admin.wiring.observe_listeners} does that for a built service).
    """

    def __init__(self) -> None:
        self._backends: dict[tuple[str, str], _BackendCounters] = {}
        # The same counters by backend object, found without building a key on the hot path.
        self._by_backend: dict[Backend, _BackendCounters] = {}
        self._ejected: set[tuple[str, str]] = set()
        self._ejections: dict[tuple[str, str], int] = {}
        self._routes: dict[tuple[str, str], _RouteCounters] = {}
        self._ftp = {
            "sessions": 0,
            "sessions_active": 0,
            "transfers": 0,
            "bytes_to_client": 0,
            "bytes_to_backend": 0,
        }
        self._handshakes: dict[tuple[str, bool], int] = {}
        self._handshake_failures = 0
        self._pools: weakref.WeakSet[BackendPool] = weakref.WeakSet()

    # Subscribing

    def watch_pool(self, pool: BackendPool) -> None:
        """Count C{pool}'s outcomes and ejections from now on; a pool watched already is skipped."""
        if pool in self._pools:
            return
        self._pools.add(pool)
        pool.add_outcome_observer(self)
        pool.add_observer(self)

    def watch_pools(self, pools: Iterable[BackendPool]) -> None:
        """L{watch_pool} each of C{pools}."""
        for pool in pools:
            self.watch_pool(pool)

    # Observers

    def outcome(self, pool: str, backend: Backend, outcome: Outcome) -> None:
        counters = self._by_backend.get(backend)
        if counters is None:
            counters = self._backend_counters(pool, backend)
        kind = outcome.kind
        outcomes = counters.outcomes
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if kind in _TIMED_OUTCOMES:
            elapsed = outcome.elapsed
            latency = counters.latency
            latency.counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            latency.total += elapsed

    def _backend_counters(self, pool: str, backend: Backend) -> _BackendCounters:
        key = (pool, backend.name)
        counters = self._backends.get(key)
        if counters is None:
            counters = self._backends[key] = _BackendCounters()
        # A backend removed and added again (a new object) goes on with the same counters.
        self._by_backend[backend] = counters
        return counters

    def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
        key = (pool, backend.name)
        if backend.ejected_until:
            if key not in self._ejected:
                self._ejected.add(key)
                self._ejections[key] = self._ejections.get(key, 0) + 1
        else:
            self._ejected.discard(key)

    def request_done(
        self, route: str, pool: str, backend: str, status: int, duration: float
    ) -> None:
        counters = self._routes.get((route, pool))
        if counters is None:
            counters = self._routes[(route, pool)] = _RouteCounters()
        responses = counters.responses
        key = (backend, status // 100)
        responses[key] = responses.get(key, 0) + 1
        latency = counters.latency
        latency.counts[bisect_left(LATENCY_BUCKETS, duration)] += 1
        latency.total += duration

    def session_opened(self) -> None:
        self._ftp["sessions"] += 1
        self._ftp["sessions_active"] += 1

    def session_closed(self) -> None:
        self._ftp["sessions_active"] -= 1

    def data_done(self, to_client: int, to_backend: int) -> None:
        ftp = self._ftp
        ftp["transfers"] += 1
        ftp["bytes_to_client"] += to_client
        ftp["bytes_to_backend"] += to_backend

    def handshake_done(self, version: str, resumed: bool) -> None:
        key = (version, resumed)
        self._handshakes[key] = self._handshakes.get(key, 0) + 1

    def handshake_failed(self) -> None:
        self._handshake_failures += 1

    # Reading

    def snapshot(self) -> Snapshot:
        """
        Everything counted so far, as nested dicts::

            {"backends": {POOL: {BACKEND: {"requests", "failures", "ejections",
                                           "outcomes": {KIND: n}, "latency": HISTOGRAM}}},
             "http": {"requests": {ROUTE: {POOL: {BACKEND: {"2xx": n, ...}}}},
                      "latency": {ROUTE: {POOL: HISTOGRAM}}},
             "ftp": {"sessions", "sessions_active", "transfers", "bytes_to_client",
                     "bytes_to_backend"},
             "tls": {"handshakes": {VERSION: {"new": n, "resumed": n}}, "failed": n}}

        where a C{HISTOGRAM} is C{{"counts": [n per bucket of LATENCY_BUCKETS, then the
        rest], "sum": seconds}}.  The C{""} route, pool and backend stand for requests the
        proxy answered itself.
        """
        backends: Snapshot = {}
        for (pool, name), counters in self._backends.items():
            entry = counters.snapshot()
            entry["ejections"] = self._ejections.get((pool, name), 0)
            backends.setdefault(pool, {})[name] = entry
        for (pool, name), count in self._ejections.items():
            if (pool, name) not in self._backends:
                entry = _BackendCounters().snapshot()
                entry["ejections"] = count
                backends.setdefault(pool, {})[name] = entry
        requests: Snapshot = {}
        latency: Snapshot = {}
        for (route, pool), route_counters in self._routes.items():
            by_backend = requests.setdefault(route, {}).setdefault(pool, {})
            for (backend, status_class), count in route_counters.responses.items():
                by_backend.setdefault(backend, {})[f"{status_class}xx"] = count
            latency.setdefault(route, {})[pool] = route_counters.latency.snapshot()
        handshakes: Snapshot = {}
        for (version, resumed), count in self._handshakes.items():
            handshakes.setdefault(version, {})["resumed" if resumed else "new"] = count
        return {
            "backends": backends,
            "http": {"requests": requests, "latency": latency},
            "ftp": dict(self._ftp),
            "tls": {"handshakes": handshakes, "failed": self._handshake_failures},
        }
