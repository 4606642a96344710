"""
C{/metrics} on the admin listener, scraped over loopback after real traffic: HTTP through the
proxy, a dead backend, FTP through the FTP proxy, TLS handshakes from curl.
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import treq
import trustme
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from tests.servers import run_curl, wait_until
from tests.test_admin_api import AdminHarness
from tests.test_ftp_integration import FTPBackend
from twisted_rp.admin import observe_tls
from twisted_rp.admin.wiring import observe_factory
from twisted_rp.auth.ipfilter import ClientFilterFactory, IPFilter
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.tls import CertificateFiles, ServerTLS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample, by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        known = sorted({n for n, _ in samples})
        raise AssertionError(f"no sample {key}; names: {known}")
    return samples[key]


def matching(samples: Samples, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for (sample_name, labels), sample_value in samples.items():
        if sample_name == name:
            yield dict(labels), sample_value


class MetricsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.admin = AdminHarness(self)
        self.reactor = self.admin.reactor

    async def scrape(self, accept: str | None = None) -> tuple[str, str]:
        headers = {} if accept is None else {"Accept": [accept]}
        response = await treq.get(
            self.admin.admin_url + "/metrics", headers=headers, persistent=False
        )
        self.assertEqual(response.code, 200)
        content_type = response.headers.getRawHeaders("content-type")[0]
        return await response.text(), content_type

    async def samples(self) -> Samples:
        text, content_type = await self.scrape()
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        return parse_metrics(text)

    async def test_http_requests_and_backend_state(self) -> None:
        for _ in range(4):
            self.assertEqual((await self.admin.proxy_get("/")).status, 200)
        await self.admin.proxy_get("/", headers={"Host": ["bad host"]})
        samples = await self.samples()
        for backend in ("b1", "b2"):
            labels = {"route": "route[0]", "pool": "app", "backend": backend, "code": "2xx"}
            self.assertEqual(value(samples, "twisted_rp_http_requests_total", **labels), 2)
            self.assertEqual(
                value(samples, "twisted_rp_backend_healthy", pool="app", backend=backend), 1
            )
            self.assertEqual(
                value(
                    samples,
                    "twisted_rp_backend_requests_total",
                    pool="app",
                    backend=backend,
                    outcome="ok",
                ),
                2,
            )
            self.assertEqual(
                value(
                    samples,
                    "twisted_rp_backend_state",
                    pool="app",
                    backend=backend,
                    state="enabled",
                ),
                1,
            )
        refused = {"route": "", "pool": "", "backend": "", "code": "4xx"}
        self.assertEqual(value(samples, "twisted_rp_http_requests_total", **refused), 1)
        self.assertEqual(
            value(
                samples,
                "twisted_rp_http_request_duration_seconds_count",
                route="route[0]",
                pool="app",
            ),
            4,
        )
        self.assertEqual(
            value(
                samples,
                "twisted_rp_http_request_duration_seconds_bucket",
                route="route[0]",
                pool="app",
                le="+Inf",
            ),
            4,
        )

    async def test_dead_backend_retries_and_draining(self) -> None:
        pool = self.admin.state.pools["app"]
        await self.admin.servers[0].stop()
        for _ in range(4):
            answer = await self.admin.proxy_get("/")
            self.assertEqual(answer.status, 200)
        pool.set_health(pool.backends()[0], False, "test: stopped")
        pool.set_admin_state("b2", "draining")
        samples = await self.samples()
        self.assertGreaterEqual(value(samples, "twisted_rp_pool_retries_total", pool="app"), 1)
        failed = value(
            samples,
            "twisted_rp_backend_requests_total",
            pool="app",
            backend="b1",
            outcome="connect_failed",
        )
        self.assertGreaterEqual(failed, 1)
        self.assertEqual(value(samples, "twisted_rp_backend_healthy", pool="app", backend="b1"), 0)
        draining = {"pool": "app", "backend": "b2", "state": "draining"}
        self.assertEqual(value(samples, "twisted_rp_backend_state", **draining), 1)
        enabled = {"pool": "app", "backend": "b2", "state": "enabled"}
        self.assertEqual(value(samples, "twisted_rp_backend_state", **enabled), 0)

    async def test_active_connections(self) -> None:
        pool = self.admin.state.pools["app"]
        lease: Any = pool.pick(_context())
        samples = await self.samples()
        active = value(
            samples,
            "twisted_rp_backend_active_connections",
            pool="app",
            backend=lease.backend.name,
        )
        self.assertEqual(active, 1)
        lease.release(_outcome())

    async def test_openmetrics(self) -> None:
        text, content_type = await self.scrape("application/openmetrics-text; version=1.0.0")
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(text.endswith("# EOF\n"))

    async def test_ftp_sessions_and_bytes(self) -> None:
        root = tempfile.mkdtemp(prefix="ftp-metrics-")
        self.addCleanup(shutil.rmtree, root, True)
        payload = os.urandom(300_000)
        Path(root, "file.bin").write_bytes(payload)
        backend = FTPBackend("ftp1", root)
        backend.start()
        self.addCleanup(backend.stop)
        pool = BackendPool("files", [Backend("ftp1", "127.0.0.1", backend.number)])
        self.admin.stats.watch_pool(pool)
        factory = FTPProxyFactory(self.reactor, pool)
        observe_factory(self.admin.stats, factory)
        listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port

        def session() -> bytes:
            client = ftplib.FTP(timeout=20)
            client.connect("127.0.0.1", port)
            client.login("anonymous", "x@example.com")
            data = io.BytesIO()
            client.retrbinary("RETR file.bin", data.write)
            client.quit()
            return data.getvalue()

        self.assertEqual(await deferToThread(session), payload)
        await wait_until(self.reactor, lambda: not factory.sessions, 10, "the session to end")
        samples = await self.samples()
        self.assertEqual(value(samples, "twisted_rp_ftp_sessions_total"), 1)
        self.assertEqual(value(samples, "twisted_rp_ftp_sessions_active"), 0)
        self.assertEqual(
            value(samples, "twisted_rp_ftp_data_bytes_total", direction="to_client"), len(payload)
        )
        self.assertEqual(
            value(
                samples,
                "twisted_rp_backend_requests_total",
                pool="files",
                backend="ftp1",
                outcome="ok",
            ),
            1,
        )

    def test_ftp_listener_behind_an_address_filter(self) -> None:
        """An FTP listener with allow/deny lists is observed through its filter."""
        pool = BackendPool("files", [Backend("ftp1", "127.0.0.1", 21)])
        factory = FTPProxyFactory(self.reactor, pool)
        observe_factory(self.admin.stats, ClientFilterFactory(IPFilter(["127.0.0.1"]), factory))
        self.assertIn(self.admin.stats, factory.observers)

    async def test_tls_handshakes(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        cert, key = directory / "leaf.pem", directory / "leaf.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        server_tls = ServerTLS([CertificateFiles(str(cert), str(key))], clock=self.reactor)
        observe_tls(self.admin.stats, [server_tls])
        router = self.admin.state.routers["web"]
        factory = HTTPProxyFactory(self.reactor, router, scheme="https")
        self.addCleanup(factory.connections.close_idle)
        observe_factory(self.admin.stats, TLSMemoryBIOFactory(server_tls, False, factory))
        listening = self.reactor.listenTCP(
            0, TLSMemoryBIOFactory(server_tls, False, factory), interface="127.0.0.1"
        )
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        url = f"https://127.0.0.1:{port}/"
        # Two connections (the first closed by the proxy): the second resumes the session.
        result = await run_curl(
            self.reactor, "-k", "--tlsv1.3", "-H", "Connection: close", url, url
        )
        self.assertEqual(result.code, 0, result.err)
        # A client speaking plain HTTP to the TLS port: the handshake fails.
        await deferToThread(_plain_http_to, port)
        await wait_until(
            self.reactor,
            lambda: self.admin.stats.snapshot()["tls"]["failed"] >= 1,
            10,
            "the failed handshake to be counted",
        )
        samples = await self.samples()
        self.assertEqual(
            value(samples, "twisted_rp_tls_handshakes_total", version="TLSv1.3", resumed="false"),
            1,
        )
        self.assertEqual(
            value(samples, "twisted_rp_tls_handshakes_total", version="TLSv1.3", resumed="true"),
            1,
        )
        self.assertEqual(value(samples, "twisted_rp_tls_handshake_failures_total"), 1)
        # The HTTPS requests were counted with the others.
        https = [v for labels, v in matching(samples, "twisted_rp_http_requests_total")]
        self.assertEqual(sum(https), 2)


def _plain_http_to(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while client.recv(4096):
            pass


def _context() -> Any:
    from twisted_rp.pool.backend import PickContext

    return PickContext("http", "192.0.2.1")


def _outcome() -> Any:
    from twisted_rp.pool.backend import Outcome

    return Outcome()
