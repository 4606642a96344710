"""
Tests for L{twisted_rp.auth.forward}, against a real auth service on loopback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface.verify import verifyObject

from twisted_rp.auth.forward import BODY_LIMIT, ForwardAuthenticator
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IAuthenticator


def make_request(*headers: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(
        b"POST",
        b"/app/orders?id=7",
        b"HTTP/1.1",
        Headers.of((b"Host", b"shop.example:8443"), *headers),
    )
    return ProxyRequest(
        head=head, client_ip="198.51.100.23", client_port=40000, scheme="https", host="shop.example"
    )


class AuthService(Resource):
    """
    Allows the session cookie C{good}, redirects C{expired} to a login page, asks for
    credentials otherwise; C{/big} refuses with a body over the limit, C{/hang} never answers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Request] = []
        self.hanging: Deferred[None] = Deferred()

    def render_GET(self, request: Request) -> bytes | int:
        self.seen.append(request)
        cookie = request.getHeader(b"cookie") or b""
        if request.path == b"/hang":
            self.hanging.callback(None)
            return NOT_DONE_YET
        if request.path == b"/big":
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/html")
            return b"x" * (BODY_LIMIT + 1)
        if b"session=good" in cookie:
            request.setHeader(b"X-Auth-User", b"alice")
            request.responseHeaders.addRawHeader(b"X-Auth-Groups", b"staff")
            request.responseHeaders.addRawHeader(b"X-Auth-Groups", b"buyers")
            request.setHeader(b"X-Internal", b"not copied")
            return b"ok"
        if b"session=expired" in cookie:
            request.setResponseCode(302)
            request.setHeader(b"Location", b"https://sso.example/login?next=/app")
            request.setHeader(b"Set-Cookie", b"next=/app; Secure")
            return b""
        request.setResponseCode(401)
        request.setHeader(b"WWW-Authenticate", b'Basic realm="sso"')
        request.setHeader(b"Content-Type", b"text/plain")
        return b"please log in\n"


class ForwardAuthenticatorTests(TestCase):
    def setUp(self) -> None:
        self.service = AuthService()
        self.port = reactor.listenTCP(0, Site(self.service), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    def make(self, path: str = "/verify", **kwargs: Any) -> ForwardAuthenticator:
        kwargs.setdefault("copy_headers", ("X-Auth-User", "X-Auth-Groups"))
        return ForwardAuthenticator(self.base + path, agent=self.agent, **kwargs)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthenticator, self.make()))

    async def test_allow_copies_headers(self) -> None:
        request = make_request(
            (b"Cookie", b"session=good"),
            (b"X-Auth-User", b"admin"),
            (b"x-auth-groups", b"root"),
        )
        self.assertIsNone(await self.make(identity_from="X-Auth-User").authenticate(request))
        headers = request.head.headers
        self.assertEqual(headers.get_all(b"x-auth-user"), [b"alice"])
        self.assertEqual(headers.get_all(b"x-auth-groups"), [b"staff", b"buyers"])
        self.assertNotIn(b"X-Internal", headers)
        self.assertEqual(request.identity, "alice")

    async def test_spoofed_copy_header_removed_when_service_sends_none(self) -> None:
        request = make_request((b"Cookie", b"session=good"), (b"X-Auth-Role", b"admin"))
        self.assertIsNone(await self.make(copy_headers=("X-Auth-Role",)).authenticate(request))
        self.assertNotIn(b"X-Auth-Role", request.head.headers)

    async def test_sub_request_headers(self) -> None:
        request = make_request(
            (b"Cookie", b"session=good"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-Uri", b"/admin"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"hop"),
            (b"Content-Length", b"5"),
            (b"Accept-Language", b"fr"),
        )
        await self.make().authenticate(request)
        (seen,) = self.service.seen
        self.assertEqual(seen.method, b"GET")
        self.assertEqual(seen.uri, b"/verify")
        headers = seen.requestHeaders
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-method"), [b"POST"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-host"), [b"shop.example:8443"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-uri"), [b"/app/orders?id=7"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-for"), [b"198.51.100.23"])
        self.assertEqual(headers.getRawHeaders(b"cookie"), [b"session=good"])
        self.assertEqual(headers.getRawHeaders(b"accept-language"), [b"fr"])
        self.assertIsNone(headers.getRawHeaders(b"x-secret"))
        self.assertIsNone(headers.getRawHeaders(b"content-length"))
        self.assertEqual(
            headers.getRawHeaders(b"host"), [b"127.0.0.1:%d" % self.port.getHost().port]
        )

    async def test_only_chosen_request_headers(self) -> None:
        request = make_request((b"Cookie", b"session=good"), (b"Accept-Language", b"fr"))
        await self.make(request_headers=["cookie"]).authenticate(request)
        (seen,) = self.service.seen
        self.assertEqual(seen.requestHeaders.getRawHeaders(b"cookie"), [b"session=good"])
        self.assertIsNone(seen.requestHeaders.getRawHeaders(b"accept-language"))
        self.assertEqual(seen.requestHeaders.getRawHeaders(b"x-forwarded-method"), [b"POST"])

    async def test_deny_passed_through(self) -> None:
        request = make_request((b"X-Auth-User", b"admin"))
        verdict = await self.make().authenticate(request)
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 401)
        self.assertEqual(verdict.headers.get(b"www-authenticate"), b'Basic realm="sso"')
        self.assertEqual(verdict.headers.get(b"content-type"), b"text/plain")
        self.assertNotIn(b"Content-Length", verdict.headers)
        self.assertEqual(verdict.body, b"please log in\n")
        self.assertIsNone(request.identity)

    async def test_redirect_passed_through(self) -> None:
        verdict = await self.make().authenticate(make_request((b"Cookie", b"session=expired")))
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 302)
        self.assertEqual(verdict.headers.get(b"location"), b"https://sso.example/login?next=/app")
        self.assertEqual(verdict.headers.get(b"set-cookie"), b"next=/app; Secure")

    async def test_big_body_dropped(self) -> None:
        verdict = await self.make("/big").authenticate(make_request())
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual((verdict.status, verdict.body), (403, b""))
        self.assertNotIn(b"Content-Type", verdict.headers)

    async def test_unreachable_service(self) -> None:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port.getHost().port}/verify"
        await port.stopListening()
        verdict = await ForwardAuthenticator(url, agent=self.agent).authenticate(make_request())
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 503)
        failing = ForwardAuthenticator(url, agent=self.agent, failure_status=500)
        verdict = await failing.authenticate(make_request())
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 500)

    async def test_timeout(self) -> None:
        clock = Clock()
        auth = self.make("/hang", reactor=clock, timeout=5)
        verdict: list[Any] = []
        deciding = auth.authenticate(make_request())
        deciding.addCallback(verdict.append)
        # Wait until the service holds the request, then let the proxy's clock run out.
        await self.service.hanging
        self.assertEqual(verdict, [])
        clock.advance(5)
        await deciding
        (response,) = verdict
        self.assertEqual(response.status, 503)

    async def test_default_agent(self) -> None:
        auth = ForwardAuthenticator(self.base + "/verify")
        self.addCleanup(auth.close)
        self.assertIsNone(await auth.authenticate(make_request((b"Cookie", b"session=good"))))

    def test_bad_configuration(self) -> None:
        self.assertRaises(ValueError, ForwardAuthenticator, "ftp://auth/", agent=self.agent)
        self.assertRaises(
            ValueError, ForwardAuthenticator, self.base, agent=self.agent, failure_status=403
        )
