"""
Tests for L{twisted_rp.rewrite.cookies}: Set-Cookie Domain and Path rewriting.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.http.message import Headers, ProxyRequest, RequestHead, ResponseHead
from twisted_rp.http.routing import Route
from twisted_rp.interfaces import IResponseRewriter
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.rewrite import CookieRewriter


def set_cookies(
    values: list[bytes],
    rewriter: CookieRewriter | None = None,
    *,
    prefix: str = "/",
    strip: bool = False,
    preserve_host: bool = True,
    host: str = "www.example.com",
) -> list[bytes]:
    """The C{Set-Cookie} values a client gets when the backend sent C{values}."""
    pool = BackendPool(
        "app", [Backend("app1", "10.0.0.5", 8080), Backend("app2", "app2.internal", 8080)]
    )
    route = Route(pool, path_prefix=prefix, strip_prefix=strip, preserve_host=preserve_host)
    upstream = host.encode() if preserve_host else b"10.0.0.5:8080"
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", upstream)))
    request = ProxyRequest(head, "192.0.2.1", 50000, "https", host, route=route)
    request.backend = pool.backends()[0]
    block = b"\r\n".join([b"Content-Type: text/html", *(b"Set-Cookie: " + v for v in values)])
    response = ResponseHead(b"HTTP/1.1", 200, b"OK", Headers.from_block(block))
    (rewriter or CookieRewriter()).rewrite_response(request, response)
    return response.headers.get_all(b"set-cookie")


class InterfaceTests(SynchronousTestCase):
    def test_provides_the_response_rewriter_interface(self) -> None:
        self.assertTrue(verifyObject(IResponseRewriter, CookieRewriter()))


class DomainTests(SynchronousTestCase):
    def test_mapped_domain(self) -> None:
        rewriter = CookieRewriter(domain_map={b"corp.internal": b"example.com"})
        self.assertEqual(
            set_cookies([b"sid=1; Domain=.Corp.Internal; Path=/; HttpOnly"], rewriter),
            [b"sid=1; Domain=example.com; Path=/; HttpOnly"],
        )

    def test_map_to_nothing_removes_the_attribute(self) -> None:
        rewriter = CookieRewriter(domain_map={b"corp.internal": b""})
        self.assertEqual(
            set_cookies([b"sid=1; domain=corp.internal; Secure"], rewriter), [b"sid=1; Secure"]
        )

    def test_backend_address_removed_automatically(self) -> None:
        self.assertEqual(
            set_cookies([b"a=1; Domain=10.0.0.5; Path=/", b"b=2; Domain=app2.internal"]),
            [b"a=1; Path=/", b"b=2"],
        )

    def test_backend_name_removed_automatically(self) -> None:
        self.assertEqual(set_cookies([b"a=1; Domain=APP1"]), [b"a=1"])

    def test_public_domain_left_alone(self) -> None:
        # The backend was sent the public Host: its Domain is already right.
        values = [b"a=1; Domain=www.example.com", b"b=2; Domain=.example.com"]
        self.assertEqual(set_cookies(values), values)

    def test_foreign_domain_left_alone(self) -> None:
        values = [b"a=1; Domain=other.internal"]
        self.assertEqual(set_cookies(values), values)

    def test_automatic_off(self) -> None:
        values = [b"a=1; Domain=10.0.0.5"]
        self.assertEqual(set_cookies(values, CookieRewriter(automatic=False)), values)

    def test_map_wins_over_automatic(self) -> None:
        rewriter = CookieRewriter(domain_map={b"app2.internal": b"example.com"})
        self.assertEqual(
            set_cookies([b"a=1; Domain=app2.internal"], rewriter), [b"a=1; Domain=example.com"]
        )

    def test_invalid_public_domain(self) -> None:
        self.assertRaises(ValueError, CookieRewriter, domain_map={b"a": b"b; Secure"})


class PathTests(SynchronousTestCase):
    def test_route_prefix_put_back(self) -> None:
        self.assertEqual(
            set_cookies(
                [b"a=1; Path=/", b"b=2; Path=/cart; Secure", b"c=3; path=/x/"],
                prefix="/shop/",
                strip=True,
            ),
            [b"a=1; Path=/shop", b"b=2; Path=/shop/cart; Secure", b"c=3; path=/shop/x/"],
        )

    def test_route_that_keeps_its_prefix(self) -> None:
        values = [b"a=1; Path=/shop"]
        self.assertEqual(set_cookies(values, prefix="/shop"), values)

    def test_cookie_without_path_left_alone(self) -> None:
        values = [b"a=1; HttpOnly"]
        self.assertEqual(set_cookies(values, prefix="/shop", strip=True), values)

    def test_invalid_path_left_alone(self) -> None:
        values = [b"a=1; Path=relative"]
        self.assertEqual(set_cookies(values, prefix="/shop", strip=True), values)

    def test_explicit_prefix(self) -> None:
        self.assertEqual(
            set_cookies([b"a=1; Path=/"], CookieRewriter(path_prefix="/legacy")),
            [b"a=1; Path=/legacy"],
        )

    def test_explicit_empty_prefix_turns_it_off(self) -> None:
        values = [b"a=1; Path=/"]
        self.assertEqual(
            set_cookies(values, CookieRewriter(path_prefix=""), prefix="/shop", strip=True),
            values,
        )

    def test_invalid_prefix(self) -> None:
        self.assertRaises(ValueError, CookieRewriter, path_prefix="shop")

    def test_domain_and_path_together_with_expires(self) -> None:
        self.assertEqual(
            set_cookies(
                [b"s=v; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Domain=10.0.0.5; Path=/a"],
                prefix="/p",
                strip=True,
                preserve_host=False,
            ),
            [b"s=v; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/p/a"],
        )

    def test_value_with_equals_signs_kept(self) -> None:
        self.assertEqual(
            set_cookies([b"t=a=b==; Path=/"], prefix="/p", strip=True), [b"t=a=b==; Path=/p"]
        )


class UnsplitTests(SynchronousTestCase):
    def test_response_without_cookies_stays_unsplit(self) -> None:
        pool = BackendPool("app", [Backend("app1", "10.0.0.5", 8080)])
        head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"a.example")))
        request = ProxyRequest(head, "192.0.2.1", 1, "http", "a.example", route=Route(pool))
        block = b"Content-Type: text/plain"
        response = ResponseHead(b"HTTP/1.1", 200, b"OK", Headers.from_block(block))
        CookieRewriter().rewrite_response(request, response)
        self.assertEqual(response.headers.raw, block)
