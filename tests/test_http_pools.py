"""
Tests for the HTTP proxy with real backend pools: retries on another backend, sticky sessions,
connection-bound authentication (NTLM, Negotiate) and passive health, as a client and the
backends see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.helpers import (
    FakeBackend,
    FakeClient,
    Message,
    ProxyHarness,
    dechunk,
    get,
    parse_message,
    response,
)
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IBalancer, IStickiness
from twisted_rp.pool import Backend, BackendPool, Lease, Outcome, PassiveHealth, PickContext
from twisted_rp.pool.balancers import RoundRobin
from twisted_rp.pool.sticky import AppCookieStickiness, CookieStickiness, SourceIPStickiness

SECRET = b"a sticky cookie secret of 32 b!!"
OK = response(200, b"hello")


@implementer(IBalancer)
class RecordingBalancer:
    """Round robin that remembers every request it chose a backend for."""

    def __init__(self) -> None:
        self._inner = RoundRobin()
        self.contexts: list[PickContext] = []

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        self.contexts.append(context)
        return self._inner.choose(candidates, context)


class RecordingPool(BackendPool):
    """A L{BackendPool} that remembers how each lease ended, as C{(backend, kind)}."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.outcomes: list[tuple[str, str]] = []

    def release(self, lease: Lease, outcome: Outcome) -> None:
        self.outcomes.append((lease.backend.name, outcome.kind))
        super().release(lease, outcome)


class PoolHarness(ProxyHarness):
    """
    A L{ProxyHarness} whose one route uses a L{RecordingPool} on the harness clock, balanced
    round robin by a L{RecordingBalancer}.

    @param stickiness: makes the pool's stickiness from the clock, if given.
    @ivar recording: the pool (also C{pool}), typed as what it is.
    @ivar servers: the backend connections accepted so far, in order.
    """

    def __init__(
        self,
        backends: int = 2,
        stickiness: Callable[[IReactorTime], IStickiness] | None = None,
        **pool_options: object,
    ) -> None:
        super().__init__(backends=backends)
        self.balancer = RecordingBalancer()
        self.pool = self.recording = RecordingPool(
            "web",
            self.backends,
            self.balancer,
            clock=self.reactor,
            stickiness=stickiness(self.reactor) if stickiness is not None else None,
            **pool_options,
        )
        self.factory = HTTPProxyFactory(self.reactor, Router([Route(self.pool)]))
        self.servers: list[FakeBackend] = []

    def backend(self, name: str) -> Backend:
        found = self.pool.backend(name)
        assert found is not None
        return found

    def name_of(self, server: FakeBackend) -> str:
        """The name of the backend C{server} is a connection to."""
        (name,) = [b.name for b in self.backends if b.port == server.port]
        return name

    def target_names(self) -> list[str]:
        """The backend each connection attempt went to, in order."""
        by_port = {b.port: b.name for b in self.backends}
        return [by_port[port] for _, port in self.connect_targets()]

    def accept_pending(self) -> None:
        """Every connection attempt not yet accepted succeeds."""
        while len(self.servers) < self.connect_attempts:
            self.servers.append(self.accept(len(self.servers)))

    def waiting_server(self) -> FakeBackend:
        """The one backend connection that received bytes it has not answered yet."""
        self.accept_pending()
        waiting = [s for s in self.servers if s.received()]
        assert len(waiting) == 1, f"{len(waiting)} backend connections got a request"
        return waiting[0]

    def serve(self, client: FakeClient, request: bytes, answer: bytes = OK) -> tuple[str, Message]:
        """
        C{client} sends C{request}; whichever backend gets it answers C{answer}.

        @return: that backend's name and the response the client read.
        """
        client.send(request)
        server = self.waiting_server()
        server.take()
        server.answer(answer)
        return self.name_of(server), parse_message(client.take())


def cookie_get(cookie: bytes, target: bytes = b"/") -> bytes:
    return get(target, b"example.com", b"Cookie: " + cookie)


def sticky_cookie(message: Message, name: bytes = b"TRP_STICKY") -> bytes:
    """The C{name=value} pair of the proxy's sticky cookie in C{message}."""
    (value,) = [v for v in message.get_all(b"set-cookie") if v.startswith(name + b"=")]
    return value.split(b";")[0]


def post(body: bytes) -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


class HarnessTests(SynchronousTestCase):
    def test_balancer_interface(self) -> None:
        self.assertTrue(verifyObject(IBalancer, RecordingBalancer()))


class RetryTests(SynchronousTestCase):
    """
    A request the backend never started answering is tried on another backend when resending
    it is safe; never on the same one, and never more often than the pool allows.
    """

    def test_get_retried_on_another_backend(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        client.send(get(b"/page"))
        first = harness.accept()
        self.assertTrue(first.received().startswith(b"GET /page "))
        first.reset()
        self.assertEqual(harness.connect_attempts, 2)
        second = harness.accept()
        self.assertNotEqual(second.port, first.port)
        self.assertTrue(second.received().startswith(b"GET /page "))
        second.answer(response(200, b"from the second"))
        message = parse_message(client.received())
        self.assertEqual(message.status, 200)
        self.assertEqual(message.body, b"from the second")
        failed = harness.name_of(first)
        # The balancer sees the request's path and query (for hash_key = "uri").
        self.assertEqual(harness.balancer.contexts[0].path, "/page")
        self.assertEqual(harness.balancer.contexts[0].avoid, frozenset())
        self.assertEqual(harness.balancer.contexts[1].avoid, frozenset({failed}))
        self.assertEqual(
            harness.recording.outcomes, [(failed, "bad_response"), (harness.name_of(second), "ok")]
        )

    def test_post_with_body_not_retried(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        client.send(post(b"payload"))
        backend = harness.accept()
        self.assertTrue(backend.received().endswith(b"payload"))
        backend.reset()
        self.assertEqual(parse_message(client.received()).status, 502)
        self.assertEqual(harness.connect_attempts, 1)

    def test_partial_response_head_not_retried(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        client.send(get())
        backend = harness.accept()
        backend.answer(b"HTTP/1.1 200 OK\r\nContent-Le")
        backend.reset()
        self.assertEqual(parse_message(client.received()).status, 502)
        self.assertEqual(harness.connect_attempts, 1)

    def test_retries_stop_at_pool_retries(self) -> None:
        """With C{retries=1}, two backends are tried and the third is left alone."""
        harness = PoolHarness(backends=3, retries=1)
        client = harness.client()
        client.send(get())
        harness.accept().reset()
        harness.accept().reset()
        self.assertEqual(harness.connect_attempts, 2)
        self.assertEqual(len(set(harness.target_names())), 2)
        self.assertEqual(parse_message(client.received()).status, 502)

    def test_connect_retries_stop_at_pool_retries(self) -> None:
        harness = PoolHarness(backends=3, retries=1)
        client = harness.client()
        client.send(get())
        harness.refuse()
        harness.refuse()
        self.assertEqual(harness.connect_attempts, 2)
        self.assertEqual(parse_message(client.received()).status, 502)

    def test_lone_backend_not_retried(self) -> None:
        harness = PoolHarness(backends=1)
        client = harness.client()
        client.send(get())
        harness.accept().reset()
        self.assertEqual(harness.connect_attempts, 1)
        self.assertEqual(parse_message(client.received()).status, 502)

    def test_connect_refused_served_by_another(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        client.send(get())
        self.assertEqual(harness.target_names(), ["b1"])
        harness.refuse()
        self.assertEqual(harness.target_names(), ["b1", "b2"])
        harness.accept().answer(response(200, b"b2 here"))
        message = parse_message(client.received())
        self.assertEqual((message.status, message.body), (200, b"b2 here"))
        self.assertEqual(harness.backend("b1").active, 0)
        self.assertEqual(harness.backend("b2").active, 0)
        self.assertEqual(harness.recording.outcomes, [("b1", "connect_failed"), ("b2", "ok")])


class CookieStickinessTests(SynchronousTestCase):
    """
    The proxy's own sticky cookie keeps a client on one backend.
    """

    def harness(self, **options: object) -> tuple[PoolHarness, CookieStickiness]:
        stickiness = CookieStickiness(SECRET, **options)  # type: ignore[arg-type]
        return PoolHarness(backends=2, stickiness=lambda clock: stickiness), stickiness

    def test_first_response_sets_cookie(self) -> None:
        harness, stickiness = self.harness(max_age=600, secure=True, same_site="Strict")
        name, message = harness.serve(harness.client(), get())
        self.assertEqual(
            message.get_all(b"set-cookie"), [stickiness.set_cookie_value(name).encode()]
        )
        attributes = message.get(b"set-cookie") or b""
        self.assertTrue(attributes.startswith(b"TRP_STICKY="))
        for attribute in (b"Path=/", b"Max-Age=600", b"HttpOnly", b"Secure", b"SameSite=Strict"):
            self.assertIn(attribute, attributes.split(b"; "))

    def test_cookie_keeps_backend_under_round_robin(self) -> None:
        harness, _ = self.harness()
        client = harness.client()
        pinned, message = harness.serve(client, get())
        cookie = sticky_cookie(message)
        others = harness.client(port=6000)
        for _ in range(6):
            name, message = harness.serve(client, cookie_get(cookie))
            self.assertEqual(name, pinned)
            self.assertEqual(message.get_all(b"set-cookie"), [])
            # Without the cookie the balancer still takes turns.
            harness.serve(others, get())
        self.assertEqual({harness.name_of(s) for s in harness.servers}, {"b1", "b2"})

    def test_cookie_on_new_connections(self) -> None:
        harness, _ = self.harness()
        pinned, message = harness.serve(harness.client(), get())
        cookie = sticky_cookie(message)
        for port in range(6001, 6007):
            name, _ = harness.serve(harness.client(port=port), cookie_get(b"a=1; " + cookie))
            self.assertEqual(name, pinned)

    def test_tampered_cookie_ignored(self) -> None:
        harness, stickiness = self.harness()
        client = harness.client()
        first, message = harness.serve(client, get())
        cookie = sticky_cookie(message)
        name, value = cookie.split(b"=", 1)
        tampered = name + b"=" + (b"B" if value[:1] != b"B" else b"C") + value[1:]
        second, message = harness.serve(client, cookie_get(tampered))
        self.assertNotEqual(second, first)
        self.assertEqual(
            message.get_all(b"set-cookie"), [stickiness.set_cookie_value(second).encode()]
        )

    def test_disabled_backend_repins(self) -> None:
        harness, stickiness = self.harness()
        client = harness.client()
        pinned, message = harness.serve(client, get())
        cookie = sticky_cookie(message)
        harness.pool.set_admin_state(pinned, "disabled")
        name, message = harness.serve(client, cookie_get(cookie))
        self.assertNotEqual(name, pinned)
        self.assertEqual(
            message.get_all(b"set-cookie"), [stickiness.set_cookie_value(name).encode()]
        )

    def test_strict_refuses_when_pinned_backend_disabled(self) -> None:
        harness, _ = self.harness(strict=True)
        client = harness.client()
        pinned, message = harness.serve(client, get())
        cookie = sticky_cookie(message)
        attempts = harness.connect_attempts
        harness.pool.set_admin_state(pinned, "disabled")
        client.send(cookie_get(cookie))
        self.assertEqual(parse_message(client.take()).status, 503)
        self.assertEqual(harness.connect_attempts, attempts)

    def test_draining_backend_keeps_sticky_clients_only(self) -> None:
        harness, _ = self.harness()
        client = harness.client()
        pinned, message = harness.serve(client, get())
        cookie = sticky_cookie(message)
        harness.pool.set_admin_state(pinned, "draining")
        for port in range(6001, 6005):
            name, _ = harness.serve(client, cookie_get(cookie))
            self.assertEqual(name, pinned)
            newcomer, message = harness.serve(harness.client(port=port), get())
            self.assertNotEqual(newcomer, pinned)
            self.assertNotEqual(message.get_all(b"set-cookie"), [])

    def assertHeadersKept(self, message: Message, extra: Iterable[bytes]) -> None:
        """The backend's own fields came through, and the sticky cookie was added once."""
        self.assertEqual(message.get(b"x-one"), b"1")
        self.assertEqual(message.get(b"cache-control"), b"private")
        self.assertEqual(message.get_all(b"x-two"), [b"a", b"b"])
        cookies = message.get_all(b"set-cookie")
        self.assertEqual(cookies[0], b"app=1; Path=/")
        self.assertEqual(len([c for c in cookies if c.startswith(b"TRP_STICKY=")]), 1)
        self.assertEqual(len(cookies), 2)
        for name in extra:
            self.assertEqual(len(message.get_all(name)), 1, name)

    def test_set_cookie_once_on_length_response(self) -> None:
        harness, _ = self.harness()
        _, message = harness.serve(
            harness.client(),
            get(),
            response(
                200,
                b"body!",
                [
                    b"X-One: 1",
                    b"Set-Cookie: app=1; Path=/",
                    b"Cache-Control: private",
                    b"X-Two: a",
                    b"X-Two: b",
                ],
            ),
        )
        self.assertHeadersKept(message, [b"content-length"])
        self.assertEqual(message.get(b"content-length"), b"5")
        self.assertEqual(message.body, b"body!")

    def test_set_cookie_once_on_chunked_response(self) -> None:
        harness, _ = self.harness()
        _, message = harness.serve(
            harness.client(),
            get(),
            b"HTTP/1.1 200 OK\r\nX-One: 1\r\nSet-Cookie: app=1; Path=/\r\n"
            b"Cache-Control: private\r\nX-Two: a\r\nX-Two: b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nbody!\r\n0\r\n\r\n",
        )
        self.assertHeadersKept(message, [b"transfer-encoding"])
        self.assertEqual(dechunk(message.body), (b"body!", b""))


class AppCookieStickinessTests(SynchronousTestCase):
    def test_session_cookie_pins(self) -> None:
        harness = PoolHarness(
            backends=2, stickiness=lambda clock: AppCookieStickiness("JSESSIONID", clock=clock)
        )
        client = harness.client()
        owner, message = harness.serve(
            client, get(b"/login"), response(200, b"", [b"Set-Cookie: JSESSIONID=abc; Path=/"])
        )
        self.assertEqual(message.get_all(b"set-cookie"), [b"JSESSIONID=abc; Path=/"])
        for port in range(6001, 6007):
            name, message = harness.serve(harness.client(port=port), cookie_get(b"JSESSIONID=abc"))
            self.assertEqual(name, owner)
            self.assertEqual(message.get_all(b"set-cookie"), [])
        # Another session is balanced as usual.
        names = {harness.serve(client, cookie_get(b"JSESSIONID=xyz"))[0] for _ in range(2)}
        self.assertEqual(names, {"b1", "b2"})


class SourceIPStickinessTests(SynchronousTestCase):
    def test_client_address_pins(self) -> None:
        harness = PoolHarness(backends=2, stickiness=lambda clock: SourceIPStickiness(clock=clock))
        first, _ = harness.serve(harness.client("192.0.2.1", 7001), get())
        # Round robin alone would alternate between the backends.
        for port in range(7002, 7008):
            self.assertEqual(harness.serve(harness.client("192.0.2.1", port), get())[0], first)
        other, _ = harness.serve(harness.client("192.0.2.2", 7001), get())
        self.assertNotEqual(other, first)
        for port in range(7002, 7008):
            self.assertEqual(harness.serve(harness.client("192.0.2.2", port), get())[0], other)


class ConnectionAuthenticationTests(SynchronousTestCase):
    """
    NTLM and Negotiate authenticate a connection: after their 401 the client connection keeps
    its backend connection to itself.
    """

    def challenge(self, harness: PoolHarness, client: FakeClient, scheme: bytes) -> FakeBackend:
        client.send(get(b"/private"))
        server = harness.waiting_server()
        server.take()
        server.answer(response(401, b"", [b"WWW-Authenticate: " + scheme], reason=b"Unauthorized"))
        self.assertEqual(parse_message(client.take()).status, 401)
        return server

    def test_ntlm_binds_client_connection(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        bound = self.challenge(harness, client, b"NTLM")
        picks = len(harness.balancer.contexts)
        for token in (b"TlRMTVNTUAABAAAA", b"TlRMTVNTUAADAAAA"):
            client.send(get(b"/private", b"example.com", b"Authorization: NTLM " + token))
            self.assertEqual(harness.connect_attempts, 1)
            self.assertEqual(len(harness.balancer.contexts), picks)
            self.assertIn(b"Authorization: NTLM " + token, bound.take())
            bound.answer(response(200, b"secret"))
            self.assertEqual(parse_message(client.take()).body, b"secret")
        self.assertFalse(bound.closed)
        client.go_away()
        harness.settle()
        self.assertTrue(bound.aborted)
        self.assertEqual(harness.backend(harness.name_of(bound)).active, 0)

    def test_negotiate_binds(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        bound = self.challenge(harness, client, b"Negotiate")
        client.send(get(b"/private", b"example.com", b"Authorization: Negotiate YIIG"))
        self.assertEqual(harness.connect_attempts, 1)
        self.assertIn(b"Negotiate YIIG", bound.take())

    def test_basic_does_not_bind(self) -> None:
        harness = PoolHarness(backends=2)
        client = harness.client()
        first = self.challenge(harness, client, b'Basic realm="x"')
        name, _ = harness.serve(
            client, get(b"/private", b"example.com", b"Authorization: Basic eDp5")
        )
        self.assertNotEqual(name, harness.name_of(first))
        self.assertEqual(harness.connect_attempts, 2)
        self.assertEqual(len(harness.balancer.contexts), 2)
        client.go_away()
        harness.settle()
        self.assertFalse(first.closed)

    def test_other_client_not_bound(self) -> None:
        """Another client connection neither uses nor disturbs the bound backend connection."""
        harness = PoolHarness(backends=1)
        client = harness.client()
        bound = self.challenge(harness, client, b"NTLM")
        other = harness.client(port=6001)
        other.send(get(b"/elsewhere"))
        self.assertEqual(harness.connect_attempts, 2)
        self.assertEqual(bound.received(), b"")
        fresh = harness.waiting_server()
        self.assertIsNot(fresh, bound)
        fresh.take()
        fresh.answer(response(200, b"other"))
        self.assertEqual(parse_message(other.take()).body, b"other")
        other.go_away()
        harness.settle()
        self.assertFalse(bound.closed)
        client.send(get(b"/private", b"example.com", b"Authorization: NTLM TlRM"))
        self.assertIn(b"NTLM TlRM", bound.take())
        self.assertEqual(fresh.received(), b"")


class PassiveHealthTests(SynchronousTestCase):
    def test_invalid_responses_eject(self) -> None:
        harness = PoolHarness(backends=2, passive=PassiveHealth(consecutive_failures=5))
        failures = 0
        while failures < 5:
            client = harness.client()
            client.send(get())
            server = harness.waiting_server()
            server.take()
            if harness.name_of(server) == "b1":
                server.answer(b"NOT HTTP AT ALL\r\n\r\n")
                self.assertEqual(parse_message(client.take()).status, 502)
                failures += 1
            else:
                server.answer(OK)
                self.assertEqual(parse_message(client.take()).status, 200)
            harness.settle()
        self.assertTrue(harness.backend("b1").ejected_until)
        for port in range(6001, 6007):
            name, message = harness.serve(harness.client(port=port), get())
            self.assertEqual((name, message.status), ("b2", 200))
