"""
Tests for L{twisted_rp.rewrite.redirects}: backend URLs in Location, Content-Location and
Refresh become public ones.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.http.message import Headers, ProxyRequest, RequestHead, ResponseHead
from twisted_rp.http.routing import Route
from twisted_rp.interfaces import IRequestRewriter, IResponseRewriter
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.rewrite import RedirectRewriter
from twisted_rp.rewrite.redirects import Authority, parse_authority


def backends() -> list[Backend]:
    return [
        Backend("app1", "10.0.0.5", 8080),
        Backend("app2", "app2.internal", 8081),
        Backend("app3", "fd00::7", 8080),
    ]


def through_proxy(
    fields: list[tuple[bytes, bytes]],
    *,
    host: bytes = b"www.example.com",
    scheme: str = "http",
    target: bytes = b"/",
    prefix: str = "/",
    strip: bool = False,
    preserve_host: bool = True,
    answering: int = 0,
    rewriter: RedirectRewriter | None = None,
    as_request_rewriter: bool = True,
) -> Headers:
    """
    Take a request through the steps the proxy takes around its rewriters and return the
    response fields the client would get, for a backend that answered with C{fields}.
    """
    pool = BackendPool("app", backends())
    route = Route(pool, path_prefix=prefix, strip_prefix=strip, preserve_host=preserve_host)
    rewriter = rewriter if rewriter is not None else RedirectRewriter()
    head = RequestHead(
        b"GET", target, b"HTTP/1.1", Headers.of((b"Host", host)) if host else Headers()
    )
    name = host.decode().rsplit(":", 1)[0].lower() if host else ""
    request = ProxyRequest(head, "192.0.2.1", 50000, scheme, name, route=route)
    if strip:
        head.target = route.backend_path(head.target)
    if as_request_rewriter:
        rewriter.rewrite_request(request)
    backend = pool.backends()[answering]
    request.backend = backend
    if not preserve_host:
        head.headers.set(b"Host", backend.address.encode())
    block = b"\r\n".join(name + b": " + value for name, value in fields)
    response = ResponseHead(b"HTTP/1.1", 302, b"Found", Headers.from_block(block))
    rewriter.rewrite_response(request, response)
    return response.headers


def location(value: bytes, **kwargs: object) -> bytes | None:
    return through_proxy([(b"Location", value)], **kwargs).get(b"location")  # type: ignore[arg-type]


class InterfaceTests(SynchronousTestCase):
    def test_provides_both_rewriter_interfaces(self) -> None:
        rewriter = RedirectRewriter()
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))


class BackendAddressTests(SynchronousTestCase):
    def test_answering_backend_ip_and_port(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/login?next=%2F"),
            b"http://www.example.com/login?next=%2F",
        )

    def test_answering_backend_host_name(self) -> None:
        self.assertEqual(
            location(b"http://app2.internal:8081/a", answering=1), b"http://www.example.com/a"
        )

    def test_host_name_case_and_final_dot(self) -> None:
        self.assertEqual(
            location(b"http://App2.Internal.:8081/a", answering=1), b"http://www.example.com/a"
        )

    def test_backend_name_without_port(self) -> None:
        # A backend that thinks it listens on port 80 leaves the port out.
        self.assertEqual(location(b"http://app1/home"), b"http://www.example.com/home")

    def test_explicit_default_port(self) -> None:
        self.assertEqual(location(b"http://app1:80/home"), b"http://www.example.com/home")

    def test_another_backend_of_the_pool(self) -> None:
        self.assertEqual(
            location(b"http://app2.internal:8081/a", answering=0), b"http://www.example.com/a"
        )

    def test_ipv6_backend(self) -> None:
        self.assertEqual(location(b"http://[FD00::7]:8080/v6"), b"http://www.example.com/v6")

    def test_backend_over_tls(self) -> None:
        self.assertEqual(location(b"https://10.0.0.5:8080/s"), b"http://www.example.com/s")

    def test_empty_path_becomes_root(self) -> None:
        self.assertEqual(location(b"http://10.0.0.5:8080"), b"http://www.example.com/")
        self.assertEqual(location(b"http://10.0.0.5:8080?x=1"), b"http://www.example.com/?x=1")

    def test_scheme_relative(self) -> None:
        self.assertEqual(location(b"//10.0.0.5:8080/x"), b"//www.example.com/x")

    def test_host_the_proxy_sent_upstream(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/x", preserve_host=False), b"http://www.example.com/x"
        )

    def test_alias(self) -> None:
        rewriter = RedirectRewriter(aliases=[b"legacy.internal:9000"])
        self.assertEqual(
            location(b"http://legacy.internal:9000/old", rewriter=rewriter),
            b"http://www.example.com/old",
        )

    def test_invalid_alias(self) -> None:
        self.assertRaises(ValueError, RedirectRewriter, aliases=[b"host:port"])


class PublicSideTests(SynchronousTestCase):
    def test_tls_offload_turns_http_into_https(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/x", scheme="https"), b"https://www.example.com/x"
        )

    def test_public_host_with_the_wrong_scheme(self) -> None:
        # The backend got the client's Host but sees plain HTTP behind TLS offload.
        self.assertEqual(
            location(b"http://www.example.com/x", scheme="https"), b"https://www.example.com/x"
        )

    def test_non_default_client_port_is_kept(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/x", scheme="https", host=b"www.example.com:8443"),
            b"https://www.example.com:8443/x",
        )

    def test_client_port_is_kept_when_the_host_is_not_preserved(self) -> None:
        self.assertEqual(
            location(
                b"http://10.0.0.5:8080/x",
                host=b"www.example.com:8000",
                preserve_host=False,
            ),
            b"http://www.example.com:8000/x",
        )

    def test_default_client_port_is_dropped(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/x", scheme="https", host=b"www.example.com:443"),
            b"https://www.example.com/x",
        )

    def test_without_a_client_host_nothing_changes(self) -> None:
        self.assertEqual(location(b"http://10.0.0.5:8080/x", host=b""), b"http://10.0.0.5:8080/x")


class PrefixTests(SynchronousTestCase):
    def test_stripped_prefix_is_put_back(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/login", prefix="/app", strip=True, target=b"/app/x"),
            b"http://www.example.com/app/login",
        )

    def test_prefix_with_trailing_slash(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/", prefix="/app/", strip=True, target=b"/app/"),
            b"http://www.example.com/app/",
        )

    def test_root_of_the_backend(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080", prefix="/app", strip=True, target=b"/app"),
            b"http://www.example.com/app/",
        )

    def test_prefix_not_added_when_the_route_keeps_it(self) -> None:
        self.assertEqual(
            location(b"http://10.0.0.5:8080/app/login", prefix="/app", target=b"/app/x"),
            b"http://www.example.com/app/login",
        )

    def test_prefix_with_https_offload_and_port(self) -> None:
        self.assertEqual(
            location(
                b"http://app1:8080/a?b=c",
                prefix="/shop",
                strip=True,
                target=b"/shop/",
                scheme="https",
                host=b"Shop.Example.com:4443",
            ),
            b"https://shop.example.com:4443/shop/a?b=c",
        )

    def test_relative_locations_untouched_by_default(self) -> None:
        for value in (b"/login", b"login", b"../up", b"?page=2"):
            self.assertEqual(location(value, prefix="/app", strip=True, target=b"/app/"), value)

    def test_prefix_relative_option(self) -> None:
        rewriter = RedirectRewriter(prefix_relative=True)
        self.assertEqual(
            location(b"/login", prefix="/app", strip=True, target=b"/app/", rewriter=rewriter),
            b"/app/login",
        )
        self.assertEqual(location(b"login", prefix="/app", strip=True, rewriter=rewriter), b"login")


class UntouchedTests(SynchronousTestCase):
    def test_foreign_host(self) -> None:
        for value in (
            b"https://accounts.example.org/oauth?client=1",
            b"http://10.0.0.6:8080/x",
            b"http://app2.internal.evil.example/x",
        ):
            self.assertEqual(location(value), value)

    def test_backend_host_on_another_port(self) -> None:
        self.assertEqual(location(b"http://10.0.0.5:9999/x"), b"http://10.0.0.5:9999/x")

    def test_other_schemes(self) -> None:
        for value in (b"ftp://10.0.0.5:8080/f", b"mailto:ops@10.0.0.5"):
            self.assertEqual(location(value), value)

    def test_unparseable_authority(self) -> None:
        self.assertEqual(location(b"http://10.0.0.5:80a/x"), b"http://10.0.0.5:80a/x")

    def test_other_fields_untouched(self) -> None:
        fields = through_proxy(
            [(b"Link", b"<http://10.0.0.5:8080/s.css>; rel=preload"), (b"Location", b"/x")]
        )
        self.assertEqual(fields.get(b"link"), b"<http://10.0.0.5:8080/s.css>; rel=preload")

    def test_response_without_redirect_fields_stays_unsplit(self) -> None:
        pool = BackendPool("app", backends())
        request = ProxyRequest(
            RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"a.example"))),
            "192.0.2.1",
            50000,
            "http",
            "a.example",
            route=Route(pool),
        )
        block = b"Content-Type: text/plain\r\nContent-Length: 3"
        response = ResponseHead(b"HTTP/1.1", 200, b"OK", Headers.from_block(block))
        RedirectRewriter().rewrite_response(request, response)
        self.assertEqual(response.headers.raw, block)


class OtherFieldTests(SynchronousTestCase):
    def test_content_location(self) -> None:
        fields = through_proxy(
            [(b"Content-Location", b"http://10.0.0.5:8080/doc.en")], prefix="/d", strip=True
        )
        self.assertEqual(fields.get(b"content-location"), b"http://www.example.com/d/doc.en")

    def test_refresh(self) -> None:
        fields = through_proxy(
            [(b"Refresh", b"5; url=http://10.0.0.5:8080/next")],
            scheme="https",
            prefix="/app",
            strip=True,
        )
        self.assertEqual(fields.get(b"refresh"), b"5; url=https://www.example.com/app/next")

    def test_refresh_variants(self) -> None:
        cases = {
            b"0;URL='http://app1/x'": b"0;URL='http://www.example.com/x'",
            b'3 , url = "http://app1/x"': b'3 , url = "http://www.example.com/x"',
            b"1; http://app1/x": b"1; http://www.example.com/x",
        }
        for value, expected in cases.items():
            self.assertEqual(through_proxy([(b"Refresh", value)]).get(b"refresh"), expected)

    def test_refresh_untouched(self) -> None:
        for value in (b"5", b"5; url=/relative", b"5; url=http://elsewhere.example/"):
            self.assertEqual(through_proxy([(b"Refresh", value)]).get(b"refresh"), value)

    def test_every_field_and_order_kept(self) -> None:
        fields = through_proxy(
            [
                (b"Location", b"http://10.0.0.5:8080/a"),
                (b"Set-Cookie", b"a=1"),
                (b"Refresh", b"0; url=http://10.0.0.5:8080/b"),
            ]
        )
        self.assertEqual(
            list(fields),
            [
                (b"Location", b"http://www.example.com/a"),
                (b"Set-Cookie", b"a=1"),
                (b"Refresh", b"0; url=http://www.example.com/b"),
            ],
        )


class ParseAuthorityTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_authority(b"Host.Example."), Authority(b"host.example", None))
        self.assertEqual(parse_authority(b"h:8080"), Authority(b"h", 8080))
        self.assertEqual(parse_authority(b"[::1]:80"), Authority(b"::1", 80))
        self.assertEqual(parse_authority(b"u:p@h"), Authority(b"h", None, b"u:p@"))
        self.assertEqual(parse_authority(b"h:"), Authority(b"h", None))

    def test_invalid(self) -> None:
        for value in (b"", b":80", b"h:x", b"[::1", b"[::1]x", b"a:b:c"):
            self.assertIsNone(parse_authority(value), value)
