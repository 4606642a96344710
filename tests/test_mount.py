"""
Tests for L{twisted_rp.http.mount.ProxyResource}: a pool mounted under C{/legacy} of a real
C{twisted.web} site on loopback, in front of real backends (L{tests.servers.BackendServer}),
with curl and raw TCP clients.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import Data
from zope.interface import implementer

from tests.servers import (
    BackendServer,
    RawClient,
    connect_raw,
    pattern,
    run_curl,
    wait_until,
)
from twisted_rp.http.message import ErrorResponse, Headers
from twisted_rp.http.mount import ProxyResource
from twisted_rp.interfaces import IOutcomeObserver
from twisted_rp.pool import Backend, BackendPool, Outcome
from twisted_rp.pool.sticky import CookieStickiness

MiB = 1 << 20


@implementer(IOutcomeObserver)
class Outcomes:
    """Every lease a pool took back, as C{(backend name, outcome kind)}."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def outcome(self, pool: str, backend: Backend, outcome: Outcome) -> None:
        self.seen.append((backend.name, outcome.kind))


class BrandedResource(ProxyResource):
    """Error pages of the site's own design."""

    def error_response(self, request: Request, status: int, detail: str) -> ErrorResponse:
        body = b"<h1>Sorry (%d)</h1>" % status
        return ErrorResponse(status, body, Headers.of((b"Content-Type", b"text/html")))


class MisreportingResource(ProxyResource):
    """Error pages that would misreport the status, or fail."""

    def error_response(self, request: Request, status: int, detail: str) -> ErrorResponse:
        if status == 503:
            raise RuntimeError("broken page")
        return ErrorResponse(200, b"all fine")


class CookieSetter(Resource):
    """A backend answering its name, with a cookie of its own."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.encode()

    def render_GET(self, request: Request) -> bytes:
        request.addCookie(b"app", self.name)
        return self.name


class MountTests(TestCase):
    """
    A site with its own page at C{/} and a pool under C{/legacy}.
    """

    def setUp(self) -> None:
        self.outcomes = Outcomes()

    async def backend(self, name: str = "backend") -> BackendServer:
        server = BackendServer(reactor, name)
        server.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        return server

    async def dead_port(self) -> int:
        """A port on 127.0.0.1 where nothing listens."""
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number: int = port.getHost().port
        await port.stopListening()
        return number

    async def site(
        self, backends: list[Backend], resource_class: type = ProxyResource, **options: Any
    ) -> tuple[int, BackendPool, ProxyResource]:
        pool = BackendPool("legacy", backends)
        pool.add_outcome_observer(self.outcomes)
        root = Resource()
        root.putChild(b"", Data(b"the site's own home page\n", "text/plain"))
        resource = resource_class(pool, reactor, **options)
        root.putChild(b"legacy", resource)
        # Cleanups run last first: stop listening, then close the idle backend connections.
        self.addCleanup(resource.close)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, pool, resource

    async def one_backend(self, **options: Any) -> tuple[int, BackendServer, BackendPool]:
        server = await self.backend()
        port, pool, _ = await self.site([Backend("b1", "127.0.0.1", server.port)], **options)
        return port, server, pool

    async def raw_client(self, port: int, **options: Any) -> RawClient:
        """A raw connection to the site, aborted (if still open) when the test ends."""
        client = await connect_raw(reactor, port, **options)

        async def close() -> None:
            client.transport.abortConnection()
            await wait_until(reactor, lambda: client.closed, what="the client closed")

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return client

    async def curl(self, *args: str) -> tuple[int, bytes, bytes]:
        result = await run_curl(reactor, *args)
        return result.code, result.out, result.err

    def test_forwarded_path_and_headers(self) -> Deferred[None]:
        """
        The backend gets the path below C{/legacy}, the client's C{Host}, X-Forwarded-*
        fields describing the client (replacing the ones it sent), and no hop-by-hop fields;
        the site's own pages are still served.
        """

        async def run() -> None:
            port, _, _ = await self.one_backend()
            code, out, err = await self.curl(
                "--path-as-is",
                "-H",
                "Host: shop.example:8443",
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "Connection: keep-alive, X-Private",
                "-H",
                "X-Private: secret",
                "-H",
                "Keep-Alive: timeout=5",
                "-H",
                "X-Kept: yes",
                f"http://127.0.0.1:{port}/legacy/a/b%2Fc?x=1&y=2",
            )
            self.assertEqual(code, 0, err)
            seen = json.loads(out)
            self.assertEqual(seen["target"], "/a/b%2Fc?x=1&y=2")
            headers = {name.lower(): value for name, value in seen["headers"]}
            self.assertEqual(headers["host"], "shop.example:8443")
            self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
            self.assertEqual(headers["x-forwarded-proto"], "http")
            self.assertEqual(headers["x-forwarded-host"], "shop.example:8443")
            self.assertEqual(headers["x-forwarded-port"], str(port))
            self.assertEqual(headers["x-forwarded-prefix"], "/legacy")
            self.assertEqual(headers["x-kept"], "yes")
            for hop in ("x-private", "keep-alive", "connection"):
                self.assertNotIn(hop, headers)
            code, out, err = await self.curl(f"http://127.0.0.1:{port}/")
            self.assertEqual((code, out), (0, b"the site's own home page\n"), err)
            code, out, err = await self.curl(f"http://127.0.0.1:{port}/legacy")
            self.assertEqual(json.loads(out)["target"], "/")

        return Deferred.fromCoroutine(run())

    def test_sticky(self) -> Deferred[None]:
        """
        The pool's stickiness adds its cookie to the backend's own, and a client sending it
        back stays on its backend.
        """

        async def run() -> None:
            backends = []
            for name in ("one", "two"):
                listening = reactor.listenTCP(0, Site(CookieSetter(name)), interface="127.0.0.1")
                self.addCleanup(listening.stopListening)
                backends.append(Backend(name, "127.0.0.1", listening.getHost().port))
            port, pool, _ = await self.site(backends)
            pool.stickiness = CookieStickiness(b"0123456789abcdef0123456789abcdef", "STICK")
            url = f"http://127.0.0.1:{port}/legacy/"
            code, out, err = await self.curl("-i", url)
            self.assertEqual(code, 0, err)
            head, _, body = out.partition(b"\r\n\r\n")
            cookies = [
                line.split(b":", 1)[1].strip().split(b";")[0]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"set-cookie:")
            ]
            self.assertEqual(len(cookies), 2, head)
            self.assertEqual(cookies[0], b"app=" + body)
            self.assertTrue(cookies[1].startswith(b"STICK="), cookies)
            for _ in range(3):
                _, out, _ = await self.curl("-H", f"Cookie: {cookies[1].decode()}", url)
                self.assertEqual(out, body)

        return Deferred.fromCoroutine(run())

    def test_prefix_kept(self) -> Deferred[None]:
        """
        With C{strip_prefix=False} the backend gets the path as the client sent it; with
        C{preserve_host=False}, its own address as C{Host}.
        """

        async def run() -> None:
            port, server, _ = await self.one_backend(strip_prefix=False, preserve_host=False)
            code, out, err = await self.curl(f"http://127.0.0.1:{port}/legacy/a?x=1")
            self.assertEqual(code, 0, err)
            seen = json.loads(out)
            self.assertEqual(seen["target"], "/legacy/a?x=1")
            headers = {name.lower(): value for name, value in seen["headers"]}
            self.assertEqual(headers["host"], f"127.0.0.1:{server.port}")
            self.assertNotIn("x-forwarded-prefix", headers)

        return Deferred.fromCoroutine(run())

    def test_trusted_proxy(self) -> Deferred[None]:
        """
        From a trusted proxy, X-Forwarded-For is appended to and X-Forwarded-Proto kept.
        """

        async def run() -> None:
            port, _, _ = await self.one_backend(trusted_proxies=["127.0.0.0/8"])
            _, out, _ = await self.curl(
                "-H",
                "X-Forwarded-For: 203.0.113.7",
                "-H",
                "X-Forwarded-Proto: https",
                f"http://127.0.0.1:{port}/legacy/",
            )
            headers = {name.lower(): value for name, value in json.loads(out)["headers"]}
            self.assertEqual(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1")
            self.assertEqual(headers["x-forwarded-proto"], "https")

        return Deferred.fromCoroutine(run())

    def test_upload(self) -> Deferred[None]:
        """
        A request body reaches the backend whole, with its length.
        """

        async def run() -> None:
            port, _, _ = await self.one_backend()
            body = pattern(3 * MiB + 17)
            path = self.mktemp()
            with open(path, "wb") as file:
                file.write(body)
            code, out, err = await self.curl(
                "--data-binary", f"@{path}", f"http://127.0.0.1:{port}/legacy/upload"
            )
            self.assertEqual(code, 0, err)
            seen = json.loads(out)
            self.assertEqual(seen["method"], "POST")
            self.assertEqual(seen["framing"], "length")
            self.assertEqual(seen["body_length"], len(body))
            self.assertEqual(seen["body_sha256"], hashlib.sha256(body).hexdigest())
            code, out, err = await self.curl(
                "-X", "POST", "--data-binary", "", f"http://127.0.0.1:{port}/legacy/empty"
            )
            self.assertEqual(code, 0, err)
            seen = json.loads(out)
            self.assertEqual((seen["method"], seen["body_length"]), ("POST", 0))

        return Deferred.fromCoroutine(run())

    def test_large_download(self) -> Deferred[None]:
        """
        A large response arrives complete, with its Content-Length, or chunked when the
        backend sent it chunked; a HEAD request gets the head only.
        """

        async def run() -> None:
            port, _, _ = await self.one_backend()
            size = 48 * MiB + 5
            expected = hashlib.sha256(pattern(size)).hexdigest()
            for query, framing in (("", "content-length"), ("&chunked=1", "transfer-encoding")):
                path = self.mktemp()
                code, out, err = await self.curl(
                    "-D",
                    "-",
                    "-o",
                    path,
                    f"http://127.0.0.1:{port}/legacy/stream?bytes={size}{query}",
                )
                self.assertEqual(code, 0, err)
                self.assertIn(framing.encode(), out.lower())
                with open(path, "rb") as file:
                    self.assertEqual(hashlib.sha256(file.read()).hexdigest(), expected)
            code, out, err = await self.curl(
                "-I", f"http://127.0.0.1:{port}/legacy/stream?bytes=1000"
            )
            self.assertEqual(code, 0, err)
            self.assertIn(b"content-length: 1000\r\n", out.lower())
            self.assertEqual(self.outcomes.seen, [("b1", "ok")] * 3)

        return Deferred.fromCoroutine(run())

    def test_slow_client_then_gone(self) -> Deferred[None]:
        """
        While the client does not read, the backend is not read either (the response is not
        piled up in memory); when the client goes away, the backend connection is closed and
        the lease is released as aborted.
        """

        async def run() -> None:
            port, server, pool = await self.one_backend()
            client = await self.raw_client(port, keep=0, pause_every=MiB, pause_for=60)
            client.transport.write(
                b"GET /legacy/stream?bytes=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (1024 * MiB)
            )
            await wait_until(reactor, lambda: client.total >= MiB, what="the first MiB")
            await wait_until(
                reactor, lambda: server.connections[-1].last_stream is not None, what="stream"
            )
            stream = server.connections[-1].last_stream
            assert stream is not None
            # Let the buffers on the way fill up; then the backend must stand still.
            previous = -1
            for _ in range(100):
                if stream.sent == previous:
                    break
                previous = stream.sent
                await deferLater(reactor, 0.3)
            self.assertEqual(stream.sent, previous, "the backend never stopped sending")
            self.assertLess(stream.sent, 128 * MiB)
            self.assertEqual(pool.backend("b1").active, 1)  # type: ignore[union-attr]
            client.transport.abortConnection()
            await wait_until(reactor, lambda: not server.open_connections, what="backend closed")
            await wait_until(reactor, lambda: bool(self.outcomes.seen), what="the lease")
            self.assertEqual(self.outcomes.seen, [("b1", "aborted")])
            self.assertEqual(pool.backend("b1").active, 0)  # type: ignore[union-attr]

        return Deferred.fromCoroutine(run())

    def test_client_gone_before_response(self) -> Deferred[None]:
        """
        A client that leaves while the backend has not answered cancels the backend request.
        """

        async def run() -> None:
            port, server, _ = await self.one_backend()
            client = await self.raw_client(port)
            client.transport.write(b"GET /legacy/hang HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_until(reactor, lambda: bool(server.requests), what="the request")
            client.transport.abortConnection()
            await wait_until(reactor, lambda: not server.open_connections, what="backend closed")
            await wait_until(reactor, lambda: bool(self.outcomes.seen), what="the lease")
            self.assertEqual(self.outcomes.seen, [("b1", "aborted")])

        return Deferred.fromCoroutine(run())

    def test_failover(self) -> Deferred[None]:
        """
        A backend that refuses connections is skipped: every request is answered by the
        other one.
        """

        async def run() -> None:
            server = await self.backend("live")
            dead = await self.dead_port()
            port, _, _ = await self.site(
                [Backend("dead", "127.0.0.1", dead), Backend("live", "127.0.0.1", server.port)]
            )
            for _ in range(4):
                code, out, err = await self.curl(f"http://127.0.0.1:{port}/legacy/")
                self.assertEqual(code, 0, err)
                self.assertEqual(json.loads(out)["backend"], "live")
            self.assertIn(("dead", "connect_failed"), self.outcomes.seen)
            self.assertEqual(self.outcomes.seen.count(("live", "ok")), 4)

        return Deferred.fromCoroutine(run())

    def test_502_503(self) -> Deferred[None]:
        """
        503 when the pool offers no backend, 502 when the only backend cannot be reached;
        neither page says more than the status.
        """

        async def run() -> None:
            dead = await self.dead_port()
            port, pool, _ = await self.site([Backend("dead", "127.0.0.1", dead)])
            code, out, err = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/")
            self.assertEqual(code, 0, err)
            self.assertTrue(out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out)
            self.assertTrue(out.endswith(b"\r\n\r\n502 Bad Gateway\n"), out)
            self.assertNotIn(str(dead).encode(), out)
            pool.set_admin_state("dead", "disabled")
            code, out, err = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/")
            self.assertTrue(out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out)
            self.assertTrue(out.endswith(b"\r\n\r\n503 Service Unavailable\n"), out)

        return Deferred.fromCoroutine(run())

    def test_custom_error_page(self) -> Deferred[None]:
        """
        A subclass's L{ProxyResource.error_response} makes the error pages.
        """

        async def run() -> None:
            dead = await self.dead_port()
            port, _, _ = await self.site(
                [Backend("dead", "127.0.0.1", dead)], resource_class=BrandedResource
            )
            _, out, _ = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/")
            self.assertTrue(out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out)
            self.assertIn(b"content-type: text/html\r\n", out.lower())
            self.assertTrue(out.endswith(b"\r\n\r\n<h1>Sorry (502)</h1>"), out)

        return Deferred.fromCoroutine(run())

    def test_broken_error_page(self) -> Deferred[None]:
        """
        An error page that raises or answers another status is replaced by the default one.
        """

        async def run() -> None:
            dead = await self.dead_port()
            port, pool, _ = await self.site(
                [Backend("dead", "127.0.0.1", dead)], resource_class=MisreportingResource
            )
            _, out, _ = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/")
            self.assertTrue(out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out)
            self.assertTrue(out.endswith(b"\r\n\r\n502 Bad Gateway\n"), out)
            pool.set_admin_state("dead", "disabled")
            _, out, _ = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/")
            self.assertTrue(out.endswith(b"\r\n\r\n503 Service Unavailable\n"), out)
            self.flushLoggedErrors(RuntimeError, ValueError)

        return Deferred.fromCoroutine(run())

    def test_timeout_and_truncation(self) -> Deferred[None]:
        """
        A backend that does not answer in time gets 504; one that dies in the middle of a
        response cuts the client's connection, so the client knows the body is incomplete.
        """

        async def run() -> None:
            port, _, _ = await self.one_backend(response_timeout=0.5)
            code, out, err = await self.curl("-i", f"http://127.0.0.1:{port}/legacy/hang")
            self.assertTrue(out.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), out)
            self.assertEqual(self.outcomes.seen, [("b1", "timeout")])
            for chunked in ("", "&chunked=1"):
                code, out, err = await self.curl(
                    "-o",
                    "/dev/null",
                    f"http://127.0.0.1:{port}/legacy/die?bytes=100000&send=1000&how=close{chunked}",
                )
                # 18: partial file; 56: failure receiving (a chunked body cut short).
                self.assertIn(code, (18, 56), err)
            self.assertEqual(self.outcomes.seen[1:], [("b1", "bad_response")] * 2)

        return Deferred.fromCoroutine(run())
