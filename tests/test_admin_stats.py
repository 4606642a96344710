"""
The statistics the admin side keeps: what the pool, the HTTP proxy, FTP and TLS report, the
histogram estimates, and adding snapshots of several processes together.
"""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.admin.stats import (
    LATENCY_BUCKETS,
    Histogram,
    ProxyStats,
    latency_summary,
    merge_snapshots,
    quantile,
)
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.interfaces import (
    IFTPObserver,
    IOutcomeObserver,
    IPoolObserver,
    IRequestObserver,
    ITLSObserver,
)
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.pool.backend import Outcome, PickContext
from twisted_rp.pool.passive import PassiveHealth

CONTEXT = PickContext("http", "192.0.2.1")


class HistogramTests(SynchronousTestCase):
    def test_buckets_and_sum(self) -> None:
        histogram = Histogram()
        for value in (0.0005, 0.001, 0.003, 100.0):
            histogram.observe(value)
        snapshot = histogram.snapshot()
        self.assertEqual(snapshot["counts"][:3], [2, 0, 1])
        self.assertEqual(snapshot["counts"][-1], 1)
        self.assertEqual(len(snapshot["counts"]), len(LATENCY_BUCKETS) + 1)
        self.assertAlmostEqual(snapshot["sum"], 100.0045)

    def test_quantiles_interpolate_within_a_bucket(self) -> None:
        histogram = Histogram()
        for _ in range(100):
            histogram.observe(0.07)  # the 0.05-0.1 bucket
        snapshot = histogram.snapshot()
        self.assertAlmostEqual(quantile(snapshot, 0.5) or 0, 0.075)
        self.assertAlmostEqual(quantile(snapshot, 1.0) or 0, 0.1)
        summary = latency_summary(snapshot)
        self.assertAlmostEqual(summary["mean"] or 0, 0.07)

    def test_quantiles_of_a_spread(self) -> None:
        histogram = Histogram()
        for _ in range(99):
            histogram.observe(0.002)
        histogram.observe(4.0)
        summary = latency_summary(histogram.snapshot())
        self.assertLessEqual(summary["p50"] or 0, 0.0025)
        self.assertGreater(summary["p99"] or 0, 0.001)
        self.assertLessEqual(summary["p99"] or 0, 0.0025)
        self.assertGreater(quantile(histogram.snapshot(), 0.999) or 0, 2.5)

    def test_empty(self) -> None:
        self.assertIsNone(quantile(Histogram().snapshot(), 0.5))
        self.assertEqual(
            latency_summary(Histogram().snapshot()),
            {"p50": None, "p90": None, "p99": None, "mean": None},
        )

    def test_slowest_bucket_reports_its_lower_bound(self) -> None:
        histogram = Histogram()
        histogram.observe(1000.0)
        self.assertEqual(quantile(histogram.snapshot(), 0.5), LATENCY_BUCKETS[-1])


class ProxyStatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.backends = [Backend("a", "127.0.0.1", 1), Backend("b", "127.0.0.1", 2)]
        self.pool = BackendPool(
            "web",
            self.backends,
            clock=self.clock,
            passive=PassiveHealth(consecutive_failures=2, max_ejected_share=1.0),
        )
        self.stats = ProxyStats()
        self.stats.watch_pool(self.pool)

    def use(self, outcome: Outcome) -> str:
        lease = self.pool.pick(CONTEXT)
        assert not hasattr(lease, "addCallback")
        name = lease.backend.name
        lease.release(outcome)
        return name

    def test_interfaces(self) -> None:
        for interface in (
            IOutcomeObserver,
            IPoolObserver,
            IRequestObserver,
            IFTPObserver,
            ITLSObserver,
        ):
            self.assertTrue(verifyObject(interface, self.stats))

    def test_outcomes_per_backend(self) -> None:
        self.use(Outcome("ok", 0.02))
        self.use(Outcome("server_error", 0.2))
        self.use(Outcome("connect_failed"))
        backends = self.stats.snapshot()["backends"]["web"]
        self.assertEqual(backends["a"]["requests"], 2)
        self.assertEqual(backends["a"]["outcomes"], {"ok": 1, "connect_failed": 1})
        self.assertEqual(backends["a"]["failures"], 1)
        self.assertEqual(backends["b"]["outcomes"], {"server_error": 1})
        # A failed connect took no response time.
        self.assertEqual(sum(backends["a"]["latency"]["counts"]), 1)
        self.assertAlmostEqual(backends["a"]["latency"]["sum"], 0.02)

    def test_watching_twice_counts_once(self) -> None:
        self.stats.watch_pools([self.pool, self.pool])
        self.use(Outcome())
        self.assertEqual(self.stats.snapshot()["backends"]["web"]["a"]["requests"], 1)

    def test_ejections_counted_once_each(self) -> None:
        for _ in range(4):
            self.use(Outcome("connect_failed"))
        backends = self.stats.snapshot()["backends"]["web"]
        self.assertEqual((backends["a"]["ejections"], backends["b"]["ejections"]), (1, 1))
        self.clock.advance(3600)
        self.pool.usable()
        for _ in range(4):
            self.use(Outcome("connect_failed"))
        self.assertEqual(self.stats.snapshot()["backends"]["web"]["a"]["ejections"], 2)

    def test_retries_counted_by_the_pool(self) -> None:
        lease = self.pool.pick(PickContext("http", "192.0.2.1", avoid=frozenset({"a"})))
        lease.release(Outcome())  # type: ignore[union-attr]
        self.use(Outcome())
        self.assertEqual(self.pool.retried, 1)

    def test_http_requests(self) -> None:
        self.stats.request_done("route[0]", "web", "a", 200, 0.01)
        self.stats.request_done("route[0]", "web", "a", 204, 0.01)
        self.stats.request_done("route[0]", "web", "b", 502, 0.3)
        self.stats.request_done("", "", "", 404, 0.0)
        http = self.stats.snapshot()["http"]
        self.assertEqual(
            http["requests"],
            {
                "route[0]": {"web": {"a": {"2xx": 2}, "b": {"5xx": 1}}},
                "": {"": {"": {"4xx": 1}}},
            },
        )
        self.assertEqual(sum(http["latency"]["route[0]"]["web"]["counts"]), 3)

    def test_ftp_and_tls(self) -> None:
        self.stats.session_opened()
        self.stats.session_opened()
        self.stats.session_closed()
        self.stats.data_done(1000, 10)
        self.stats.handshake_done("TLSv1.3", False)
        self.stats.handshake_done("TLSv1.3", True)
        self.stats.handshake_failed()
        snapshot = self.stats.snapshot()
        self.assertEqual(
            snapshot["ftp"],
            {
                "sessions": 2,
                "sessions_active": 1,
                "transfers": 1,
                "bytes_to_client": 1000,
                "bytes_to_backend": 10,
            },
        )
        self.assertEqual(
            snapshot["tls"], {"handshakes": {"TLSv1.3": {"new": 1, "resumed": 1}}, "failed": 1}
        )

    def test_snapshot_is_json(self) -> None:
        self.use(Outcome())
        self.stats.request_done("route[0]", "web", "a", 200, 0.01)
        snapshot = self.stats.snapshot()
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)

    def test_ftp_factory_reports_sessions(self) -> None:
        factory = FTPProxyFactory(self.clock, self.pool)
        factory.observers.append(self.stats)
        self.assertTrue(factory.session_opened("192.0.2.1"))
        factory.session_closed("192.0.2.1")
        ftp = self.stats.snapshot()["ftp"]
        self.assertEqual((ftp["sessions"], ftp["sessions_active"]), (1, 0))


class MergeTests(SynchronousTestCase):
    def test_two_processes_add_up(self) -> None:
        first, second = ProxyStats(), ProxyStats()
        first.request_done("route[0]", "web", "a", 200, 0.001)
        second.request_done("route[0]", "web", "a", 200, 0.5)
        second.request_done("route[0]", "web", "b", 500, 0.5)
        first.session_opened()
        second.session_opened()
        second.handshake_done("TLSv1.2", False)
        merged = merge_snapshots(first.snapshot(), second.snapshot())
        self.assertEqual(
            merged["http"]["requests"]["route[0]"]["web"], {"a": {"2xx": 2}, "b": {"5xx": 1}}
        )
        latency = merged["http"]["latency"]["route[0]"]["web"]
        self.assertEqual(sum(latency["counts"]), 3)
        self.assertAlmostEqual(latency["sum"], 1.001)
        self.assertEqual(merged["ftp"]["sessions"], 2)
        self.assertEqual(merged["tls"]["handshakes"], {"TLSv1.2": {"new": 1}})

    def test_merging_leaves_the_inputs_alone(self) -> None:
        stats = ProxyStats()
        stats.request_done("r", "p", "b", 200, 0.1)
        snapshot = stats.snapshot()
        copy = json.loads(json.dumps(snapshot))
        merge_snapshots(snapshot, snapshot)
        self.assertEqual(snapshot, copy)
        self.assertEqual(merge_snapshots(), {})
