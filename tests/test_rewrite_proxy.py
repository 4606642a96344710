"""
The built-in rewriters installed on a route of a real L{HTTPProxyFactory} (in memory): what the
backend receives and what the client gets.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import ProxyHarness, parse_message, response
from twisted_rp.rewrite import (
    HIDE_BACKEND,
    CookieRewriter,
    HeaderRules,
    PathRewriter,
    RedirectRewriter,
    Remove,
    Set,
)


def harness(preserve_host: bool) -> ProxyHarness:
    redirects = RedirectRewriter()
    headers = HeaderRules(
        request=[Remove(b"X-Debug"), Set(b"X-Env", b"prod")],
        response=[*HIDE_BACKEND, Set(b"X-Frame-Options", b"DENY")],
    )
    return ProxyHarness(
        scheme="https",
        path_prefix="/app",
        strip_prefix=True,
        preserve_host=preserve_host,
        request_rewriters=[redirects, PathRewriter(add_prefix="/v2"), headers],
        response_rewriters=[headers, redirects, CookieRewriter()],
    )


class ThroughTheProxyTests(SynchronousTestCase):
    def exchange(self, preserve_host: bool, answer: bytes) -> tuple[bytes, bytes]:
        proxy = harness(preserve_host)
        client, backend = proxy.exchange(
            b"GET /app/users/7?full=1 HTTP/1.1\r\nHost: www.example.com:8443\r\nX-Debug: 1\r\n\r\n",
            answer,
        )
        return backend.received(), client.received()

    def test_redirect_from_backend_address_comes_out_public(self) -> None:
        sent, got = self.exchange(
            False,
            response(
                302,
                headers=[
                    b"Location: http://127.0.0.1:8001/login?next=%2Fusers",
                    b"Server: Werkzeug/3.0.1 Python/3.12",
                    b"X-Powered-By: Flask",
                    b"Set-Cookie: sid=abc; Domain=127.0.0.1; Path=/; HttpOnly",
                ],
            ),
        )
        upstream = parse_message(sent)
        self.assertEqual(upstream.start, b"GET /v2/users/7?full=1 HTTP/1.1")
        self.assertEqual(upstream.get(b"host"), b"127.0.0.1:8001")
        self.assertIsNone(upstream.get(b"x-debug"))
        self.assertEqual(upstream.get(b"x-env"), b"prod")
        answer = parse_message(got)
        self.assertEqual(answer.status, 302)
        self.assertEqual(
            answer.get(b"location"), b"https://www.example.com:8443/app/login?next=%2Fusers"
        )
        self.assertIsNone(answer.get(b"server"))
        self.assertIsNone(answer.get(b"x-powered-by"))
        self.assertEqual(answer.get(b"x-frame-options"), b"DENY")
        self.assertEqual(answer.get(b"set-cookie"), b"sid=abc; Path=/app; HttpOnly")

    def test_redirect_to_the_public_host_gets_the_public_scheme(self) -> None:
        _, got = self.exchange(
            True, response(301, headers=[b"Location: http://www.example.com:8443/moved"])
        )
        self.assertEqual(
            parse_message(got).get(b"location"), b"https://www.example.com:8443/app/moved"
        )

    def test_plain_response_passes_through(self) -> None:
        _, got = self.exchange(True, response(200, b"hello", [b"Content-Type: text/plain"]))
        answer = parse_message(got)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"hello")
        self.assertEqual(answer.get(b"content-type"), b"text/plain")
        self.assertEqual(answer.get(b"x-frame-options"), b"DENY")
