"""
Tests for L{twisted_rp.rewrite.paths}: request target rewriting.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.http.message import Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IRequestRewriter
from twisted_rp.rewrite import PathRewriter


def rewritten(rewriter: PathRewriter, target: bytes) -> bytes:
    head = RequestHead(b"GET", target, b"HTTP/1.1", Headers.of((b"Host", b"a.example")))
    request = ProxyRequest(head, "192.0.2.1", 50000, "http", "a.example")
    rewriter.rewrite_request(request)
    return request.head.target


class InterfaceTests(SynchronousTestCase):
    def test_provides_the_request_rewriter_interface(self) -> None:
        self.assertTrue(verifyObject(IRequestRewriter, PathRewriter(strip_prefix="/api")))


class StripPrefixTests(SynchronousTestCase):
    def test_strips_on_a_segment_boundary(self) -> None:
        rewriter = PathRewriter(strip_prefix="/api/")
        self.assertEqual(rewritten(rewriter, b"/api/users?page=2"), b"/users?page=2")
        self.assertEqual(rewritten(rewriter, b"/api"), b"/")
        self.assertEqual(rewritten(rewriter, b"/api?x=1"), b"/?x=1")
        self.assertEqual(rewritten(rewriter, b"/apis/x"), b"/apis/x")
        self.assertEqual(rewritten(rewriter, b"/other"), b"/other")

    def test_query_string_kept_verbatim(self) -> None:
        rewriter = PathRewriter(strip_prefix=b"/api")
        self.assertEqual(rewritten(rewriter, b"/api/s?q=/api/x&r=%2F?"), b"/s?q=/api/x&r=%2F?")


class AddPrefixTests(SynchronousTestCase):
    def test_adds(self) -> None:
        rewriter = PathRewriter(add_prefix="/v2")
        self.assertEqual(rewritten(rewriter, b"/users?x=1"), b"/v2/users?x=1")
        self.assertEqual(rewritten(rewriter, b"/"), b"/v2/")

    def test_strip_then_add(self) -> None:
        rewriter = PathRewriter(strip_prefix="/old", add_prefix="/new/")
        self.assertEqual(rewritten(rewriter, b"/old/a"), b"/new/a")
        self.assertEqual(rewritten(rewriter, b"/b"), b"/new/b")


class RegexTests(SynchronousTestCase):
    def test_groups(self) -> None:
        rewriter = PathRewriter(pattern=rb"^/users/(\d+)$", replacement=rb"/people/\1/profile")
        self.assertEqual(rewritten(rewriter, b"/users/42?full=1"), b"/people/42/profile?full=1")
        self.assertEqual(rewritten(rewriter, b"/users/bob"), b"/users/bob")

    def test_every_match(self) -> None:
        rewriter = PathRewriter(pattern=rb"\.php", replacement=b"")
        self.assertEqual(rewritten(rewriter, b"/a.php/b.php?c.php"), b"/a/b?c.php")

    def test_result_always_a_path(self) -> None:
        rewriter = PathRewriter(pattern=rb"^/", replacement=b"")
        self.assertEqual(rewritten(rewriter, b"/x"), b"/x")

    def test_steps_order(self) -> None:
        rewriter = PathRewriter(
            strip_prefix="/api", pattern=rb"^/v1/", replacement=b"/", add_prefix="/internal"
        )
        self.assertEqual(rewritten(rewriter, b"/api/v1/items"), b"/internal/items")


class EdgeTests(SynchronousTestCase):
    def test_asterisk_target_untouched(self) -> None:
        self.assertEqual(rewritten(PathRewriter(add_prefix="/v2"), b"*"), b"*")

    def test_invalid_arguments(self) -> None:
        for kwargs in (
            {"strip_prefix": "api"},
            {"strip_prefix": "/"},
            {"add_prefix": "/a b"},
            {"add_prefix": "/a?b"},
            {"pattern": b"(", "replacement": b""},
            {"pattern": b"a", "replacement": b"/x y"},
            {"pattern": b"a", "replacement": b"/x\r\n"},
        ):
            self.assertRaises(ValueError, PathRewriter, **kwargs)
