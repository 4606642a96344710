"""
Integration tests: the HTTP proxy on the real reactor over loopback, between real clients
(curl, treq, raw TCP) and real backends (L{tests.servers}).

Everything listens on 127.0.0.1 on a port the system picks; every wait is bounded.  The proxy
runs in this process, except for the memory test, which measures a child process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.proxyproc import ProxyProcess
from tests.servers import (
    GREETING,
    BackendServer,
    RawClient,
    RawResponse,
    connect_raw,
    parse_response,
    pattern,
    run_curl,
    wait_until,
)
from twisted_rp.http.backend import BackendConnection, BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory, HTTPProxyProtocol
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.settings import Limits, ProxySettings, Timeouts

MiB = 1 << 20


class _TrackedConnections(BackendConnections):
    """The proxy's backend connections, remembered until they close."""

    def __init__(self, reactor: Any, settings: ProxySettings) -> None:
        super().__init__(reactor, reactor, settings.timeouts, settings.limits)
        self.open: set[BackendConnection] = set()

    def connect(self, backend: Backend) -> Deferred[BackendConnection]:
        d = super().connect(backend)

        def opened(connection: BackendConnection) -> BackendConnection:
            self.open.add(connection)
            return connection

        return d.addCallback(opened)

    def forget(self, connection: BackendConnection) -> None:
        super().forget(connection)
        self.open.discard(connection)


class _TrackedProxyProtocol(HTTPProxyProtocol):
    def __init__(self, factory: _TrackingProxyFactory) -> None:
        super().__init__(factory)
        self.tracker = factory

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.tracker.open_clients.discard(self)


class _TrackingProxyFactory(HTTPProxyFactory):
    """The proxy factory, remembering its client connections until they close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_clients: set[HTTPProxyProtocol] = set()

    def buildProtocol(self, addr: Any) -> HTTPProxyProtocol:
        protocol = _TrackedProxyProtocol(self)
        self.open_clients.add(protocol)
        return protocol


class RunningProxy:
    """The proxy listening on 127.0.0.1, in this process."""

    def __init__(self, reactor: Any, router: Router, settings: ProxySettings) -> None:
        self.reactor = reactor
        self.connections = _TrackedConnections(reactor, settings)
        self.factory = _TrackingProxyFactory(
            reactor, router, settings, connections=self.connections
        )
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port: int = self.listening.getHost().port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        """Stop listening; close what clients left open, then the backend connections."""
        clients = self.factory.open_clients
        try:
            await wait_until(self.reactor, lambda: not clients, 5, "clients to disconnect")
        finally:
            for client in list(clients):
                client.transport.abortConnection()
            await wait_until(self.reactor, lambda: not clients, 5, "client connections to close")
            # Stopping the factory closes the idle pooled connections.
            await self.listening.stopListening().addTimeout(10, self.reactor)
            for connection in list(self.connections.open):
                connection.abort()
            await wait_until(
                self.reactor,
                lambda: not self.connections.open,
                5,
                "backend connections to close",
            )


class _EmptyPool(BackendPool):
    """A pool whose every backend is out of service."""

    def usable(self) -> list[Backend]:
        return []


def _pool(*servers: BackendServer) -> BackendPool:
    backends: list[Any] = [Backend(s.name, "127.0.0.1", s.port) for s in servers]
    return BackendPool("test", backends)


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was just freed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class IntegrationTestCase(TestCase):
    """Starts backends and a proxy for a test, and stops them (in reverse order) after it."""

    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor

    def backend(self, name: str = "backend") -> BackendServer:
        server = BackendServer(self.reactor, name)
        server.start()
        self.addCleanup(server.stop)
        return server

    def proxy(
        self,
        pool: BackendPool,
        settings: ProxySettings = ProxySettings(),
        hosts: Sequence[str] = (),
    ) -> RunningProxy:
        proxy = RunningProxy(self.reactor, Router([Route(pool, hosts=tuple(hosts))]), settings)
        self.addCleanup(proxy.stop)
        return proxy

    async def curl(self, *args: str, timeout: float = 30) -> tuple[bytes, int]:
        """Run curl; return its output and exit code."""
        result = await run_curl(self.reactor, *args, timeout=timeout)
        return result.out, result.code

    async def curl_status(self, url: str) -> tuple[int, bytes]:
        """GET C{url} with curl; return the status and body."""
        out, code = await self.curl("-w", "\n%{http_code}", url)
        self.assertEqual(code, 0, out)
        body, _, status = out.rpartition(b"\n")
        return int(status), body

    async def raw(self, port: int, **options: Any) -> RawClient:
        client = await connect_raw(self.reactor, port, **options)
        self.addCleanup(self._close_raw, client)
        return client

    async def _close_raw(self, client: RawClient) -> None:
        if not client.closed:
            client.transport.loseConnection()
            await wait_until(self.reactor, lambda: client.closed, 5, "the raw client to close")

    async def response_of(self, client: RawClient, timeout: float = 10) -> RawResponse:
        await wait_until(self.reactor, lambda: client.response() is not None, timeout, "a response")
        response = client.response()
        assert response is not None
        return response

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds)


class ForwardingTests(IntegrationTestCase):
    """Requests and responses as curl and treq see them, and as the backend sees them."""

    async def test_curl_download_arrives_intact(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(proxy.url("/stream?bytes=3000000"))
        self.assertEqual(code, 0)
        self.assertEqual(out, pattern(3000000))

    async def test_curl_chunked_download_arrives_intact(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(proxy.url("/stream?bytes=3000000&chunked=1"))
        self.assertEqual(code, 0)
        self.assertEqual(out, pattern(3000000))

    async def test_backend_sees_forwarding_headers_and_original_host(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(
            "-H",
            "Host: shop.example.test",
            # From an untrusted client these are replaced, not believed.
            "-H",
            "X-Forwarded-For: 203.0.113.66",
            "-H",
            "Forwarded: for=203.0.113.66",
            proxy.url("/where?x=1"),
        )
        self.assertEqual(code, 0, out)
        seen = backend.requests[0]
        self.assertEqual(seen.target, "/where?x=1")
        self.assertEqual(seen.version, "HTTP/1.1")
        self.assertEqual(seen.header("Host"), ["shop.example.test"])
        self.assertEqual(seen.header("X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(seen.header("X-Forwarded-Proto"), ["http"])
        self.assertEqual(seen.header("X-Forwarded-Host"), ["shop.example.test"])
        self.assertEqual(seen.header("X-Forwarded-Port"), [str(proxy.port)])
        self.assertEqual(
            seen.header("Forwarded"), ["for=127.0.0.1;proto=http;host=shop.example.test"]
        )
        self.assertEqual(seen.header("Via"), ["1.1 twisted_rp"])
        [request_id] = seen.header("X-Request-ID")
        self.assertRegex(request_id, "^[0-9a-f]{32}$")
        # What the backend answered reaches curl unchanged.
        self.assertEqual(json.loads(out)["headers"], [list(h) for h in seen.headers])

    async def test_valid_client_request_id_is_kept(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        _, code = await self.curl("-H", "X-Request-ID: trace-42.abc", proxy.url("/"))
        self.assertEqual(code, 0)
        self.assertEqual(backend.requests[0].header("X-Request-ID"), ["trace-42.abc"])

    async def test_round_robin_alternates_between_two_backends(self) -> None:
        first, second = self.backend("b1"), self.backend("b2")
        proxy = self.proxy(_pool(first, second))
        urls = [proxy.url(f"/n{i}") for i in range(4)]
        out, code = await self.curl("-w", "\n", *urls)
        self.assertEqual(code, 0)
        answered_by = [json.loads(line)["backend"] for line in out.splitlines()]
        self.assertEqual(answered_by, ["b1", "b2", "b1", "b2"])
        self.assertEqual([r.target for r in first.requests], ["/n0", "/n2"])
        self.assertEqual([r.target for r in second.requests], ["/n1", "/n3"])

    async def test_keepalive_reuses_client_and_backend_connections(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(
            "-w", "\nconnects=%{num_connects}\n", proxy.url("/one"), proxy.url("/two")
        )
        self.assertEqual(code, 0, out)
        lines = out.splitlines()
        # curl opened one connection to the proxy and reused it for the second URL.
        self.assertEqual([lines[1], lines[3]], [b"connects=1", b"connects=0"])
        self.assertEqual(backend.accepted, 1)
        carried_by = [(r.target, r.connection_number) for r in backend.requests]
        self.assertEqual(carried_by, [("/one", 1), ("/two", 1)])

    async def test_treq_post_with_content_length_reaches_backend_exactly(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        body = os.urandom(3 * MiB + 17)
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(self.reactor, pool=pool))
        response = await client.post(proxy.url("/upload"), data=body).addTimeout(30, self.reactor)
        answer = await response.json().addTimeout(30, self.reactor)
        self.assertEqual(response.code, 200)
        self.assertEqual(answer["framing"], "length")
        self.assertEqual(backend.requests[0].header("Content-Length"), [str(len(body))])
        self.assertEqual(answer["body_length"], len(body))
        self.assertEqual(answer["body_sha256"], hashlib.sha256(body).hexdigest())

    async def test_curl_chunked_upload_reaches_backend_exactly(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        body = os.urandom(2 * MiB + 12345)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        out, code = await self.curl(
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{path}",
            proxy.url("/upload"),
        )
        self.assertEqual(code, 0, out)
        answer = json.loads(out)
        self.assertEqual(answer["framing"], "chunked")
        self.assertEqual(answer["body_length"], len(body))
        self.assertEqual(answer["body_sha256"], hashlib.sha256(body).hexdigest())

    async def test_websocket_upgrade_relays_bytes_both_ways(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        client = await self.raw(proxy.port)
        client.transport.write(
            b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await wait_until(
            self.reactor, lambda: client.received.endswith(GREETING), 10, "the greeting"
        )
        response = parse_response(client.received)
        assert response is not None
        self.assertEqual(response.status, 101)
        self.assertEqual([v.lower() for v in response.header(b"Upgrade")], [b"websocket"])
        self.assertIn(b"upgrade", b",".join(response.header(b"Connection")).lower())
        self.assertEqual(response.body, GREETING)
        seen = backend.requests[0]
        self.assertEqual(seen.header("Upgrade"), ["websocket"])
        self.assertIn("upgrade", ",".join(seen.header("Connection")).lower())
        # Raw bytes, not HTTP, flow after the 101: the backend echoes them.
        message = os.urandom(300000)
        before = len(client.received)
        client.transport.write(message)
        await wait_until(
            self.reactor,
            lambda: len(client.received) >= before + len(message),
            10,
            "the echo",
        )
        self.assertEqual(client.received[before:], message)
        client.transport.loseConnection()
        await backend.connections[0].when_closed().addTimeout(10, self.reactor)


class BackendFailureTests(IntegrationTestCase):
    """What curl sees when backends are missing, slow or broken."""

    async def test_bad_gateway_when_backend_port_is_closed(self) -> None:
        port = _closed_port()
        proxy = self.proxy(BackendPool("test", [Backend("gone", "127.0.0.1", port)]))
        status, body = await self.curl_status(proxy.url("/"))
        self.assertEqual(status, 502)
        self.assertTrue(body.startswith(b"502 Bad Gateway"), body)
        # 5xx pages reveal nothing about the backend.
        self.assertNotIn(str(port).encode(), body)
        self.assertNotIn(b"refused", body.lower())

    async def test_refused_backend_is_skipped_for_a_working_one(self) -> None:
        backend = self.backend("alive")
        dead: Any = Backend("dead", "127.0.0.1", _closed_port())
        alive: Any = Backend("alive", "127.0.0.1", backend.port)
        proxy = self.proxy(BackendPool("test", [dead, alive]))
        for _ in range(2):
            status, body = await self.curl_status(proxy.url("/"))
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["backend"], "alive")

    async def test_gateway_timeout_when_backend_never_answers(self) -> None:
        backend = self.backend()
        settings = ProxySettings(timeouts=Timeouts(backend_first_byte=0.5))
        proxy = self.proxy(_pool(backend), settings)
        started = self.reactor.seconds()
        status, body = await self.curl_status(proxy.url("/hang"))
        self.assertEqual(status, 504)
        self.assertTrue(body.startswith(b"504 Gateway Timeout"), body)
        self.assertLess(self.reactor.seconds() - started, 10)
        # The request that timed out is abandoned, not left hanging on the backend.
        await backend.connections[0].when_closed().addTimeout(5, self.reactor)

    async def test_slow_backend_within_the_timeout_is_fine(self) -> None:
        backend = self.backend()
        settings = ProxySettings(timeouts=Timeouts(backend_first_byte=5))
        proxy = self.proxy(_pool(backend), settings)
        status, _ = await self.curl_status(proxy.url("/slow?delay=0.3"))
        self.assertEqual(status, 200)

    async def test_service_unavailable_when_no_backend_is_usable(self) -> None:
        backend = self.backend()
        pool: Any = [Backend("b", "127.0.0.1", backend.port)]
        proxy = self.proxy(_EmptyPool("empty", pool))
        status, body = await self.curl_status(proxy.url("/"))
        self.assertEqual(status, 503)
        self.assertTrue(body.startswith(b"503 Service Unavailable"), body)
        self.assertEqual(backend.accepted, 0)

    async def test_backend_aborting_mid_response_is_an_error_for_curl(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(proxy.url("/die?bytes=2000000&send=500000"))
        # 18: partial file; 56: failure receiving data.  Never a clean 0.
        self.assertIn(code, (18, 56))
        self.assertLess(len(out), 2000000)

    async def test_backend_closing_mid_chunked_response_is_an_error_for_curl(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        out, code = await self.curl(proxy.url("/die?bytes=2000000&send=500000&chunked=1&how=close"))
        self.assertIn(code, (18, 56))
        self.assertLess(len(out), 2000000)


class ClientFailureTests(IntegrationTestCase):
    """Clients that go away or read slowly."""

    async def test_client_disconnecting_mid_upload_closes_backend_connection(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        client = await self.raw(proxy.port)
        client.transport.write(
            b"POST /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100000000\r\n\r\n"
            + b"x" * MiB
        )
        await wait_until(
            self.reactor,
            lambda: bool(backend.requests) and backend.requests[0].body_length == MiB,
            10,
            "the first MiB to reach the backend",
        )
        client.transport.abortConnection()
        await backend.connections[0].when_closed().addTimeout(5, self.reactor)
        self.assertFalse(backend.requests[0].complete)

    async def test_client_disconnecting_mid_download_closes_backend_connection(self) -> None:
        backend = self.backend()
        proxy = self.proxy(_pool(backend))
        client = await self.raw(proxy.port, keep=4096)
        client.transport.write(b"GET /stream?bytes=1000000000 HTTP/1.1\r\nHost: down.test\r\n\r\n")
        await wait_until(self.reactor, lambda: client.total > MiB, 10, "the first MiB")
        client.transport.abortConnection()
        await backend.connections[0].when_closed().addTimeout(5, self.reactor)

    async def test_slow_reading_client_keeps_proxy_memory_bounded(self) -> None:
        backend = self.backend()
        proxy = await ProxyProcess.start(self.reactor, [backend.port])
        self.addCleanup(proxy.stop)
        # Warm up, so that memory the first request allocates once is not counted.
        _, code = await self.curl(f"http://127.0.0.1:{proxy.port}/stream?bytes=4000000")
        self.assertEqual(code, 0)
        before = proxy.memory()
        size = 64 * MiB
        client = await self.raw(proxy.port, keep=4096, pause_every=MiB, pause_for=0.03)
        client.transport.write(b"GET /stream?bytes=%d HTTP/1.1\r\nHost: slow.test\r\n\r\n" % size)
        # Not reading at all for a while: every buffer on the way fills up.
        client.transport.pauseProducing()
        await self.sleep(0.7)
        stream = backend.connections[-1].last_stream
        assert stream is not None
        sent_at_first = stream.sent
        await self.sleep(0.3)
        # The backend is held back too, rather than the proxy buffering its output.
        self.assertEqual(stream.sent, sent_at_first)
        self.assertLess(stream.sent, size // 2)
        client.transport.resumeProducing()
        await wait_until(
            self.reactor,
            lambda: client.response() is not None and client.total >= size,
            40,
            "the slow download",
        )
        response = client.response()
        assert response is not None
        self.assertEqual(response.header(b"Content-Length"), [str(size).encode()])
        head_length = client.received.find(b"\r\n\r\n") + 4
        self.assertEqual(client.total - head_length, size)
        after = proxy.memory()
        growth = after.peak - before.rss
        self.assertLess(
            growth,
            16 * MiB,
            f"proxy peak RSS grew by {growth / MiB:.1f} MiB "
            f"(before {before.rss / MiB:.1f}, peak {after.peak / MiB:.1f} MiB)",
        )


class RejectedBeforeBackendTests(IntegrationTestCase):
    """
    Requests the proxy refuses itself: the client gets the right status, and the backend
    never sees the request (for errors in the head, not even a connection).
    """

    def setUp(self) -> None:
        super().setUp()
        self.server = self.backend()
        settings = ProxySettings(limits=Limits(max_body=1000))
        self.proxy_under_test = self.proxy(_pool(self.server), settings, hosts=["app.test"])

    async def assert_rejected(self, request: bytes, status: int) -> None:
        client = await self.raw(self.proxy_under_test.port)
        client.transport.write(request)
        response = await self.response_of(client)
        self.assertEqual(response.status, status, client.received)
        self.assertEqual(
            client.received.split(b"\r\n", 1)[0].split(b" ", 2)[:2], [b"HTTP/1.1", b"%d" % status]
        )
        self.assertEqual(response.header(b"Content-Type"), [b"text/plain; charset=utf-8"])
        self.assertTrue(response.body.startswith(b"%d " % status), response.body)
        # A request after it on another connection goes through; by the time it arrives, any
        # connection made for the rejected request would have been accepted before it.
        control = await self.raw(self.proxy_under_test.port)
        control.transport.write(b"GET /control HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual((await self.response_of(control)).status, 200)
        self.assertEqual([r.target for r in self.server.requests], ["/control"])
        carrier = self.server.requests[0].connection_number
        others = [c for c in self.server.connections if c.number != carrier]
        self.assertEqual([c.bytes_received for c in others], [0] * len(others))
        self.assertEqual(self.server.accepted, 1, "the backend got a connection")

    async def test_transfer_encoding_with_content_length(self) -> None:
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        )

    async def test_differing_content_lengths(self) -> None:
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
            400,
        )

    async def test_bad_chunk_size(self) -> None:
        # Sent in one write, the body arrives with the head and is checked before connecting.
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n",
            400,
        )

    async def test_obsolete_line_folding(self) -> None:
        await self.assert_rejected(
            b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: one\r\n two\r\n\r\n", 400
        )

    async def test_bare_lf_in_head(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n", 400)

    async def test_space_before_colon(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Bad : v\r\n\r\n", 400)

    async def test_nul_in_header_value(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n", 400)

    async def test_control_character_in_header_value(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x01b\r\n\r\n", 400)

    async def test_missing_host_on_http_11(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)

    async def test_two_host_fields(self) -> None:
        await self.assert_rejected(
            b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n", 400
        )

    async def test_invalid_host(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app test/x\r\n\r\n", 400)

    async def test_request_line_too_long(self) -> None:
        await self.assert_rejected(
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414
        )

    async def test_head_too_large(self) -> None:
        fields = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 4000) for i in range(10))
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\r\n" + fields + b"\r\n", 431)

    async def test_too_many_header_fields(self) -> None:
        fields = b"".join(b"X-F-%d: v\r\n" % i for i in range(150))
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: app.test\r\n" + fields + b"\r\n", 431)

    async def test_unknown_transfer_coding(self) -> None:
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\nabc", 501
        )

    async def test_http_2_version(self) -> None:
        await self.assert_rejected(b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n", 505)

    async def test_http_09_version(self) -> None:
        await self.assert_rejected(b"GET / HTTP/0.9\r\nHost: app.test\r\n\r\n", 505)

    async def test_connect_method(self) -> None:
        await self.assert_rejected(
            b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", 405
        )

    async def test_unsupported_expectation(self) -> None:
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\nabc",
            417,
        )

    async def test_body_over_the_limit(self) -> None:
        await self.assert_rejected(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001,
            413,
        )

    async def test_no_route_for_host(self) -> None:
        await self.assert_rejected(b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n", 404)
