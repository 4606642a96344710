"""
Hooks that declare the fields they act on (C{only_with_fields}) are skipped for messages
without them; every other hook runs for every message.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers import ProxyHarness, parse_message
from twisted_rp.config import RouteConfig
from twisted_rp.http.message import ErrorResponse, ProxyRequest, ResponseHead
from twisted_rp.http.routing import Route, hook_triggers
from twisted_rp.interfaces import IAuthenticator, IRequestRewriter, IResponseRewriter
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.service_routes import build_route

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(IAuthenticator, IRequestRewriter, IResponseRewriter)
class Recorder:
    """Counts its calls; marks what it saw so that the client can tell."""

    def __init__(self, *fields: bytes, declare: bool = True) -> None:
        if declare:
            self.only_with_fields = fields
        self.calls: list[str] = []

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | None:
        self.calls.append("authenticate")
        return None

    def rewrite_request(self, request: ProxyRequest) -> None:
        self.calls.append("request")
        request.head.headers.add(b"X-Seen", b"1")

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        self.calls.append("response")
        response.headers.add(b"X-Seen", b"1")


def through(hook: Recorder, request: bytes, response: bytes) -> tuple[bytes, bytes]:
    """What the backend and the client get through a route with C{hook} in every chain."""
    harness = ProxyHarness(
        authenticators=[hook], request_rewriters=[hook], response_rewriters=[hook]
    )
    client, backend = harness.exchange(request, response)
    return backend.received(), client.received()


class TriggerTests(SynchronousTestCase):
    def test_declared_hooks_skip_messages_without_their_fields(self) -> None:
        hook = Recorder(b"x-secret")
        sent, got = through(hook, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.assertEqual(hook.calls, [])
        self.assertIsNone(parse_message(sent).get(b"X-Seen"))
        self.assertEqual(parse_message(got).body, b"ok")

    def test_declared_hooks_run_for_messages_with_their_fields(self) -> None:
        hook = Recorder(b"x-secret")
        sent, got = through(
            hook,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-SECRET: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-secret: 2\r\nContent-Length: 2\r\n\r\nok",
        )
        self.assertEqual(hook.calls, ["authenticate", "request", "response"])
        self.assertEqual(parse_message(sent).get(b"X-Seen"), b"1")
        self.assertEqual(parse_message(got).get(b"X-Seen"), b"1")

    def test_undeclared_hooks_always_run(self) -> None:
        hook = Recorder(declare=False)
        _sent, got = through(hook, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", OK)
        self.assertEqual(hook.calls, ["authenticate", "request", "response"])
        self.assertEqual(parse_message(got).get(b"X-Seen"), b"1")

    def test_one_undeclared_hook_makes_every_hook_run(self) -> None:
        self.assertIsNone(hook_triggers([Recorder(b"a"), Recorder(declare=False)]))
        search = hook_triggers([Recorder(b"a"), Recorder(b"b-c")])
        assert search is not None
        self.assertTrue(search(b"\r\nx: 1\r\nb-c: 2"))
        self.assertFalse(search(b"\r\nx: b-c:"))
        self.assertFalse(search(b"\r\nab: 1"))

    def test_same_head_on_a_connection_two_routes_share(self) -> None:
        """A head one route's hooks ignore is still shown to another route's hooks."""
        hook = Recorder(b"x-secret")
        pool = BackendPool("web", [Backend("b1", "127.0.0.1", 8001)])
        routes = [
            Route(pool, path_prefix="/plain"),
            Route(pool, path_prefix="/hooked", response_rewriters=[hook]),
        ]
        harness = ProxyHarness(routes=routes)
        client = harness.client()
        head = b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nok"
        client.send(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        backend = harness.accept()
        for _ in range(2):
            backend.answer(head)
            self.assertIsNone(parse_message(client.take()).get(b"X-Seen"))
            client.send(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        backend.answer(head)
        client.take()
        client.send(b"GET /hooked HTTP/1.1\r\nHost: a\r\n\r\n")
        backend.answer(head)
        self.assertEqual(parse_message(client.take()).get(b"X-Seen"), b"1")
        self.assertEqual((harness.connect_attempts, hook.calls), (1, ["response"]))

    def test_body_filters_always_run(self) -> None:
        route = Route(BackendPool("p", []), response_body_filters=[object()])  # type: ignore[list-item]
        self.assertIsNone(route.request_triggers)
        self.assertIsNone(route.response_triggers)


class BuiltInRouteTests(SynchronousTestCase):
    def harness(self, **options: object) -> ProxyHarness:
        harness = ProxyHarness()
        route = build_route(RouteConfig(pool="web", **options), harness.pool, {})  # type: ignore[arg-type]
        return ProxyHarness(routes=[route])

    def test_identity_header_from_the_client_is_removed(self) -> None:
        harness = self.harness()
        _client, backend = harness.exchange(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Authenticated-User: admin\r\n\r\n", OK
        )
        sent = parse_message(backend.received())
        self.assertIsNone(sent.get(b"X-Authenticated-User"))
        self.assertEqual(sent.get(b"Host"), b"a")

    def test_redirects_map_to_the_host_the_client_used(self) -> None:
        """Without a request step, and whether or not the backend gets the client's Host."""
        for preserve_host in (True, False):
            harness = self.harness(preserve_host=preserve_host)
            client, backend = harness.exchange(
                b"GET /x HTTP/1.1\r\nHost: www.example.com:8443\r\n\r\n",
                b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:8001/login\r\n"
                b"Set-Cookie: s=1; Domain=127.0.0.1\r\nContent-Length: 0\r\n\r\n",
            )
            sent = parse_message(backend.received())
            self.assertEqual(
                sent.get(b"Host"), b"www.example.com:8443" if preserve_host else b"127.0.0.1:8001"
            )
            got = parse_message(client.received())
            self.assertEqual(got.get(b"Location"), b"http://www.example.com:8443/login")
            self.assertEqual(got.get(b"Set-Cookie"), b"s=1")
