"""
Tests for the override points of L{HTTPProxyFactory}: L{HTTPProxyFactory.route_for},
L{HTTPProxyFactory.rewrite_request}, L{HTTPProxyFactory.pick_backend} and
L{HTTPProxyFactory.error_response}, on the in-memory harness.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.helpers import ProxyHarness, get, parse_message, response
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.http.parser import parse_request_head
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IRequestRewriter
from twisted_rp.pool import Backend, BackendPool, Lease, NoBackendAvailable, PickContext


def harness_for(factory_class: type[HTTPProxyFactory], *args: Any, **kwargs: Any) -> ProxyHarness:
    """A L{ProxyHarness} whose factory is an instance of C{factory_class}."""
    harness = ProxyHarness(*args, **kwargs)
    original = harness.factory
    harness.factory = factory_class(harness.reactor, original.router, original.settings)
    return harness


class CanaryRouting(HTTPProxyFactory):
    """Requests with C{X-Canary: 1} go to the canary pool; C{/nowhere} has no route."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.canary = Route(BackendPool("canary", [Backend("c1", "127.0.0.1", 9001)]))
        self.seen: list[tuple[str, bytes, object]] = []

    def route_for(self, request: ProxyRequest) -> Route | None:
        self.seen.append((request.host, request.head.target, request.route))
        if request.head.target.startswith(b"/nowhere"):
            return None
        if request.head.headers.get(b"x-canary") == b"1":
            return self.canary
        return super().route_for(request)


class RouteForTests(TestCase):
    """
    L{HTTPProxyFactory.route_for} chooses the route, hence the pool.
    """

    def test_default_is_the_router(self) -> None:
        """
        By default the router's choice, by host and path without the query.
        """
        harness = ProxyHarness(2)
        api = Route(harness.pool, path_prefix="/api", name="api")
        site = Route(harness.pool, name="site")
        harness.factory.router = Router([site, api])
        request = ProxyRequest(
            head=parse_request_head(b"GET /api/x?y=1 HTTP/1.1\r\nHost: a", 8192, 100),
            client_ip="10.0.0.1",
            client_port=1,
            scheme="http",
            host="a",
        )
        self.assertIs(harness.factory.route_for(request), api)
        request.head.target = b"/apix"
        self.assertIs(harness.factory.route_for(request), site)

    def test_override_chooses_the_pool(self) -> None:
        """
        The route an override returns is the one used: its pool's backend gets the request,
        and the request's C{route} is it.
        """
        harness = harness_for(CanaryRouting)
        factory = harness.factory
        assert isinstance(factory, CanaryRouting)
        client = harness.client()
        client.send(get(b"http://Example.COM:80/a?b", b"ignored", b"X-Canary: 1"))
        self.assertEqual(harness.connect_targets(), [("127.0.0.1", 9001)])
        # The absolute-form target was split into Host and path before the call.
        self.assertEqual(factory.seen, [("example.com", b"/a?b", None)])
        backend = harness.accept()
        self.assertTrue(backend.received().startswith(b"GET /a?b HTTP/1.1\r\n"))
        backend.answer(response(200, b"canary"))
        self.assertTrue(client.take().endswith(b"canary"))
        client.send(get(b"/a"))
        self.assertEqual(harness.connect_targets()[-1], ("127.0.0.1", 8001))

    def test_none_is_404(self) -> None:
        """
        L{None} answers 404 without touching any backend.
        """
        harness = harness_for(CanaryRouting)
        client = harness.client()
        client.send(get(b"/nowhere"))
        self.assertEqual(parse_message(client.received()).status, 404)
        self.assertEqual(harness.connect_attempts, 0)


@implementer(IRequestRewriter)
class TagRewriter:
    """A route's rewriter, to show the factory's rewriting comes after it."""

    def rewrite_request(self, request: ProxyRequest) -> None:
        request.head.headers.set(b"X-Route-Tag", b"route")


class Rewriting(HTTPProxyFactory):
    """
    C{/old/...} becomes C{/new/...}; a tenant header comes from a lookup table;
    C{/gone} is answered with a redirect; C{/broken} makes the hook raise.
    """

    tenants = {"shop.example": b"42"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[bytes] = []

    def rewrite_request(self, request: ProxyRequest) -> ErrorResponse | None:
        head = request.head
        self.seen.append(head.headers.serialize())
        if head.target == b"/broken":
            raise RuntimeError("a bug in the hook")
        if head.target.startswith(b"/gone"):
            return ErrorResponse(301, b"", Headers.of((b"Location", b"https://elsewhere/")))
        if head.target.startswith(b"/old/"):
            head.target = b"/new/" + head.target[len(b"/old/") :]
        tenant = self.tenants.get(request.host)
        if tenant is not None:
            head.headers.set(b"X-Tenant", tenant)
        return None


class RewriteRequestTests(TestCase):
    """
    L{HTTPProxyFactory.rewrite_request} changes the head the backend gets, or answers.
    """

    def harness(self) -> ProxyHarness:
        return harness_for(
            Rewriting,
            path_prefix="/app",
            strip_prefix=True,
            request_rewriters=[TagRewriter()],
        )

    def test_rewrites_after_the_route(self) -> None:
        """
        The hook sees the head as it will be sent (prefix stripped, forwarding fields and
        the route's rewriting done), and the backend gets what it made of it.
        """
        harness = self.harness()
        client = harness.client()
        client.send(get(b"/app/old/page?q=1", b"shop.example"))
        sent = parse_message(harness.accept().received())
        self.assertEqual(sent.start, b"GET /new/page?q=1 HTTP/1.1")
        self.assertEqual(sent.get(b"x-tenant"), b"42")
        self.assertEqual(sent.get(b"x-route-tag"), b"route")
        factory = harness.factory
        assert isinstance(factory, Rewriting)
        [seen] = factory.seen
        self.assertIn(b"X-Route-Tag: route\r\n", seen)
        self.assertIn(b"X-Forwarded-For: 10.0.0.9\r\n", seen)

    def test_other_hosts_untouched(self) -> None:
        harness = self.harness()
        harness.client().send(get(b"/app/page", b"other.example"))
        sent = parse_message(harness.accept().received())
        self.assertEqual(sent.start, b"GET /page HTTP/1.1")
        self.assertIsNone(sent.get(b"x-tenant"))

    def test_answer(self) -> None:
        """
        An L{ErrorResponse} returned is the client's answer; no backend is asked, and the
        connection stays usable.
        """
        harness = self.harness()
        client = harness.client()
        client.send(get(b"/app/gone"))
        answer = parse_message(client.take())
        self.assertEqual(answer.status, 301)
        self.assertEqual(answer.get(b"location"), b"https://elsewhere/")
        self.assertEqual(harness.connect_attempts, 0)
        self.assertFalse(client.closed)
        client.send(get(b"/app/x"))
        self.assertEqual(harness.connect_attempts, 1)

    def test_raising(self) -> None:
        """
        An exception from the hook, as one from a route's rewriter, is logged and answered
        with a 500 that reveals nothing; no backend is asked.
        """
        harness = self.harness()
        client = harness.client()
        client.send(get(b"/app/broken"))
        answer = parse_message(client.take())
        self.assertEqual(answer.status, 500)
        self.assertNotIn(b"RuntimeError", client.take() + answer.body)
        self.assertEqual(harness.connect_attempts, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PreferredBackend(HTTPProxyFactory):
    """
    C{X-Backend: NAME} prefers that backend (others are used when it fails);
    C{X-Backend: none} leaves no backend.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts: list[PickContext] = []

    def pick_backend(self, request: ProxyRequest, context: PickContext) -> Lease | Deferred[Lease]:
        self.contexts.append(context)
        wanted = request.head.headers.get(b"x-backend")
        if wanted == b"none":
            raise NoBackendAvailable("nobody home")
        if wanted is not None and wanted.decode() not in context.avoid:
            # Once it failed this request, let the pool choose among the others.
            others = {b.name for b in request.route.pool.backends()} - {wanted.decode()}
            context = attrs.evolve(context, avoid=context.avoid | others)
        return super().pick_backend(request, context)


class RealClientAddress:
    """A route's rewriter that takes the client's address from a trusted header."""

    def rewrite_request(self, request: ProxyRequest) -> None:
        real = request.head.headers.get(b"x-real-ip")
        if real is not None:
            request.client_ip = real.decode("ascii")


class PickBackendTests(TestCase):
    """
    L{HTTPProxyFactory.pick_backend} leases the backend, for the first try and each retry.
    """

    def test_preferred(self) -> None:
        harness = harness_for(PreferredBackend, 3)
        for _ in range(3):
            harness.client().send(get(b"/", b"example.com", b"X-Backend: b2"))
        self.assertEqual(harness.connect_targets(), [("127.0.0.1", 8002)] * 3)

    def test_retry(self) -> None:
        """
        After a failed connection the hook is asked again, with the failed backend avoided;
        since the preferred one failed, another one serves.
        """
        harness = harness_for(PreferredBackend, 2)
        factory = harness.factory
        assert isinstance(factory, PreferredBackend)
        client = harness.client()
        client.send(get(b"/x?y", b"example.com", b"X-Backend: b2"))
        harness.refuse()
        self.assertEqual(harness.connect_targets(), [("127.0.0.1", 8002), ("127.0.0.1", 8001)])
        first, second = factory.contexts
        self.assertEqual((first.path, first.avoid), ("/x?y", frozenset()))
        self.assertEqual(second.avoid, frozenset({"b2"}))

    def test_context_has_the_requests_client_address(self) -> None:
        """
        A hook that changes C{request.client_ip} changes what the pool is told (source
        hashing, for one, follows it).
        """
        harness = harness_for(PreferredBackend, request_rewriters=[RealClientAddress()])
        factory = harness.factory
        assert isinstance(factory, PreferredBackend)
        harness.client().send(get(b"/", b"example.com", b"X-Real-IP: 203.0.113.9"))
        harness.client().send(get(b"/", b"example.com"))
        self.assertEqual([c.client_ip for c in factory.contexts], ["203.0.113.9", "10.0.0.9"])

    def test_none_is_503(self) -> None:
        harness = harness_for(PreferredBackend)
        client = harness.client()
        client.send(get(b"/", b"example.com", b"X-Backend: none"))
        self.assertEqual(parse_message(client.received()).status, 503)


class Branded(HTTPProxyFactory):
    """HTML error pages; C{/teapot} makes one with the wrong status, C{/crash} raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[ProxyRequest | None, int, str]] = []

    def error_response(
        self, request: ProxyRequest | None, status: int, detail: str
    ) -> ErrorResponse:
        self.calls.append((request, status, detail))
        target = request.head.target if request is not None else b""
        if target == b"/teapot":
            return ErrorResponse(418, b"I am a teapot")
        if target == b"/crash":
            raise ValueError("no page today")
        body = b"<html><h1>Example Corp</h1><p>Error %d</p></html>" % status
        return ErrorResponse(status, body, Headers.of((b"Content-Type", b"text/html")))


class ErrorResponseTests(TestCase):
    """
    L{HTTPProxyFactory.error_response} makes the proxy's own error pages.
    """

    def assertBranded(self, data: bytes, status: int) -> None:
        message = parse_message(data)
        self.assertEqual(message.status, status)
        self.assertEqual(message.get(b"content-type"), b"text/html")
        self.assertEqual(message.get(b"content-length"), b"%d" % len(message.body))
        self.assertIn(b"<p>Error %d</p>" % status, message.body)

    def test_backend_errors(self) -> None:
        """
        502 (refused), 503 (no backend) and 504 (no answer in time) get the branded page,
        with the request and the reason passed to the hook.
        """
        harness = harness_for(Branded)
        factory = harness.factory
        assert isinstance(factory, Branded)
        client = harness.client()
        client.send(get(b"/a"))
        for _ in range(3):
            harness.refuse()
        self.assertBranded(client.received(), 502)
        [(request, status, detail)] = factory.calls
        assert request is not None
        self.assertEqual((request.head.target, status, detail), (b"/a", 502, "backend unavailable"))
        harness.pool.set_admin_state("b1", "disabled")
        client = harness.client()
        client.send(get(b"/b"))
        self.assertBranded(client.received(), 503)
        harness.pool.set_admin_state("b1", "enabled")
        client = harness.client()
        client.send(get(b"/c"))
        harness.accept()
        harness.reactor.advance(factory.settings.timeouts.backend_first_byte)
        self.assertBranded(client.received(), 504)

    def test_client_errors(self) -> None:
        """
        Errors found before a request exists (an unreadable head) pass L{None}; those after
        it (no route), the request.
        """
        harness = harness_for(Branded, routes=[])
        factory = harness.factory
        assert isinstance(factory, Branded)
        client = harness.client()
        client.send(get(b"/nothing-here"))
        self.assertBranded(client.take(), 404)
        client = harness.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        self.assertBranded(client.take(), 400)
        self.assertEqual([(r is None, s) for r, s, _ in factory.calls], [(False, 404), (True, 400)])

    def test_wrong_status_or_raising(self) -> None:
        """
        A page with another status, or a hook that raises, gives way to the default page.
        """
        harness = harness_for(Branded, routes=[])
        for target in (b"/teapot", b"/crash"):
            client = harness.client()
            client.send(get(target))
            message = parse_message(client.received())
            self.assertEqual(message.status, 404)
            self.assertEqual(message.get(b"content-type"), b"text/plain; charset=utf-8")
            self.assertTrue(message.body.startswith(b"404 Not Found\n"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_default_hides_server_error_details(self) -> None:
        """
        The default page shows the detail of a 4xx, never of a 5xx.
        """
        factory = ProxyHarness().factory
        self.assertEqual(
            factory.error_response(None, 502, "backend 10.0.0.1:80 said no").body,
            b"502 Bad Gateway\n",
        )
        self.assertEqual(
            factory.error_response(None, 404, "no route").body, b"404 Not Found\nno route\n"
        )
