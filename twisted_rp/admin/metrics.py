"""
Prometheus metrics at C{/metrics}: a collector reading the proxy's statistics and pool state
when scraped, in a registry of its own.

prometheus_client's C{MetricsResource} collects in the reactor's thread pool (of the global
reactor); the pools' state belongs to the reactor thread, so L{MetricsPage} collects there
instead, which takes a few hundred microseconds for a few dozen backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request

from twisted_rp.admin.stats import LATENCY_BUCKETS
from twisted_rp.pool import BackendPool
from twisted_rp.pool.backend import ADMIN_STATES

PREFIX = "twisted_rp"


def _buckets(histogram: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Cumulative C{(le, count)} pairs of a histogram snapshot, ending with C{+Inf}."""
    counts: list[int] = histogram["counts"]
    buckets = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return buckets


class ProxyCollector(Collector):
    """
    Turns a statistics snapshot (L{twisted_rp.admin.stats.ProxyStats.snapshot}, or several
    merged) and the pools' current state into metric families.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        pools: Callable[[], Mapping[str, BackendPool]],
    ) -> None:
        self._snapshot = snapshot
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield from self._pool_state(self._pools())
        yield from self._backend_traffic(snapshot["backends"])
        yield from self._http(snapshot["http"])
        yield from self._ftp(snapshot["ftp"])
        yield from self._tls(snapshot["tls"])

    def _pool_state(self, pools: Mapping[str, BackendPool]) -> Iterator[Metric]:
        labels = ["pool", "backend"]
        up = GaugeMetricFamily(
            f"{PREFIX}_backend_healthy",
            "1 when the active health checks find the backend healthy.",
            labels=labels,
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_backend_state",
            "1 for the backend's admin state (enabled, draining or disabled).",
            labels=[*labels, "state"],
        )
        ejected = GaugeMetricFamily(
            f"{PREFIX}_backend_ejected",
            "1 while passive health keeps the backend out of rotation.",
            labels=labels,
        )
        active = GaugeMetricFamily(
            f"{PREFIX}_backend_active_connections",
            "Requests or sessions in progress on the backend.",
            labels=labels,
        )
        weight = GaugeMetricFamily(
            f"{PREFIX}_backend_weight", "The backend's configured weight.", labels=labels
        )
        retried = CounterMetricFamily(
            f"{PREFIX}_pool_retries",
            "Backends leased to retry a request or session that failed on another one.",
            labels=["pool"],
        )
        for pool in pools.values():
            now = pool.clock.seconds()
            for backend in pool.backends():
                values = [pool.name, backend.name]
                up.add_metric(values, 1.0 if backend.healthy else 0.0)
                for name in ADMIN_STATES:
                    state.add_metric([*values, name], 1.0 if backend.admin_state == name else 0.0)
                ejected.add_metric(values, 1.0 if backend.ejected_until > now else 0.0)
                active.add_metric(values, backend.active)
                weight.add_metric(values, backend.weight)
            retried.add_metric([pool.name], pool.retried)
        yield from (up, state, ejected, active, weight, retried)

    def _backend_traffic(self, backends: Mapping[str, Any]) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            f"{PREFIX}_backend_requests",
            "Requests and sessions a backend handled, by outcome (ok, server_error, "
            "connect_failed, timeout, bad_response, aborted).",
            labels=["pool", "backend", "outcome"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_backend_response_seconds",
            "Time from sending to a backend to the end of its response.",
            labels=["pool", "backend"],
        )
        ejections = CounterMetricFamily(
            f"{PREFIX}_backend_ejections",
            "Times passive health took the backend out of rotation.",
            labels=["pool", "backend"],
        )
        for pool, by_backend in backends.items():
            for backend, counters in by_backend.items():
                for kind, count in counters["outcomes"].items():
                    outcomes.add_metric([pool, backend, kind], count)
                histogram = counters["latency"]
                latency.add_metric([pool, backend], _buckets(histogram), histogram["sum"])
                ejections.add_metric([pool, backend], counters["ejections"])
        yield from (outcomes, latency, ejections)

    def _http(self, http: Mapping[str, Any]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_http_requests",
            'HTTP requests answered, by route, pool, backend and status class ("2xx"); '
            "empty labels for requests the proxy answered itself (no route).",
            labels=["route", "pool", "backend", "code"],
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            labels=["route", "pool"],
        )
        for route, by_pool in http["requests"].items():
            for pool, by_backend in by_pool.items():
                for backend, by_class in by_backend.items():
                    for status_class, count in by_class.items():
                        requests.add_metric([route, pool, backend, status_class], count)
        for route, by_pool in http["latency"].items():
            for pool, histogram in by_pool.items():
                duration.add_metric([route, pool], _buckets(histogram), histogram["sum"])
        yield from (requests, duration)

    def _ftp(self, ftp: Mapping[str, Any]) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{PREFIX}_ftp_sessions", "FTP control sessions accepted.", value=ftp["sessions"]
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_ftp_sessions_active",
            "FTP control sessions open now.",
            value=ftp["sessions_active"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_ftp_data_connections",
            "FTP data channels closed.",
            value=ftp["transfers"],
        )
        transferred = CounterMetricFamily(
            f"{PREFIX}_ftp_data_bytes",
            "Bytes relayed over FTP data connections, by direction.",
            labels=["direction"],
        )
        transferred.add_metric(["to_client"], ftp["bytes_to_client"])
        transferred.add_metric(["to_backend"], ftp["bytes_to_backend"])
        yield transferred

    def _tls(self, tls: Mapping[str, Any]) -> Iterator[Metric]:
        handshakes = CounterMetricFamily(
            f"{PREFIX}_tls_handshakes",
            "TLS handshakes completed with clients, by version and session resumption.",
            labels=["version", "resumed"],
        )
        for version, by_kind in tls["handshakes"].items():
            for kind, count in by_kind.items():
                handshakes.add_metric([version, "true" if kind == "resumed" else "false"], count)
        yield handshakes
        yield CounterMetricFamily(
            f"{PREFIX}_tls_handshake_failures",
            "TLS handshakes with clients that failed (an alert, or a client not speaking TLS).",
            value=tls["failed"],
        )


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding C{collector}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class MetricsPage(Resource):
    """
    C{/metrics}: the registry in the text format Prometheus asks for (OpenMetrics or 0.0.4).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader("content-type", content_type)
        request.setHeader("cache-control", "no-store")
        return encoder(self.registry)
