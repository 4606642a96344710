"""
Tests for L{twisted_rp.rewrite.headers}: header rules on requests and responses.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.http.message import Headers, ProxyRequest, RequestHead, ResponseHead
from twisted_rp.interfaces import IRequestRewriter, IResponseRewriter
from twisted_rp.rewrite import (
    BACKEND_IDENTITY_HEADERS,
    HIDE_BACKEND,
    Add,
    HeaderRules,
    Remove,
    Replace,
    Set,
)


def request_with(*pairs: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of(*pairs))
    return ProxyRequest(head, "192.0.2.1", 50000, "http", "www.example.com")


def response_with(headers: Headers) -> ResponseHead:
    return ResponseHead(b"HTTP/1.1", 200, b"OK", headers)


class InterfaceTests(SynchronousTestCase):
    def test_provides_both_rewriter_interfaces(self) -> None:
        rules = HeaderRules(request=[Set(b"X-A", b"1")], response=[Remove(b"Server")])
        self.assertTrue(verifyObject(IRequestRewriter, rules))
        self.assertTrue(verifyObject(IResponseRewriter, rules))


class RequestRuleTests(SynchronousTestCase):
    def test_add_keeps_existing_fields(self) -> None:
        request = request_with((b"Accept", b"text/html"))
        HeaderRules(request=[Add(b"Accept", b"application/json")]).rewrite_request(request)
        self.assertEqual(
            request.head.headers.get_all(b"accept"), [b"text/html", b"application/json"]
        )

    def test_set_replaces_every_field_in_place(self) -> None:
        request = request_with((b"X-Team", b"a"), (b"Accept", b"*/*"), (b"x-team", b"b"))
        HeaderRules(request=[Set(b"X-Team", b"blue")]).rewrite_request(request)
        self.assertEqual(list(request.head.headers), [(b"X-Team", b"blue"), (b"Accept", b"*/*")])

    def test_set_appends_a_missing_field(self) -> None:
        request = request_with((b"Accept", b"*/*"))
        HeaderRules(request=[Set(b"X-Env", b"prod")]).rewrite_request(request)
        self.assertEqual(request.head.headers.get(b"x-env"), b"prod")

    def test_remove_matches_any_case(self) -> None:
        request = request_with((b"X-DEBUG", b"1"), (b"x-debug", b"2"), (b"Accept", b"*/*"))
        HeaderRules(request=[Remove(b"X-Debug")]).rewrite_request(request)
        self.assertEqual(list(request.head.headers), [(b"Accept", b"*/*")])

    def test_replace_substitutes_in_every_value(self) -> None:
        request = request_with(
            (b"Referer", b"https://www.example.com/a"),
            (b"Referer", b"https://www.example.com/b"),
        )
        rule = Replace(b"Referer", rb"^https://www\.example\.com", b"http://app.internal")
        HeaderRules(request=[rule]).rewrite_request(request)
        self.assertEqual(
            request.head.headers.get_all(b"referer"),
            [b"http://app.internal/a", b"http://app.internal/b"],
        )

    def test_replace_with_groups(self) -> None:
        request = request_with((b"X-User", b"alice@corp.example"))
        rule = Replace(b"X-User", rb"^([^@]+)@.*$", rb"\1")
        HeaderRules(request=[rule]).rewrite_request(request)
        self.assertEqual(request.head.headers.get(b"x-user"), b"alice")

    def test_replace_leaves_a_missing_field_missing(self) -> None:
        request = request_with((b"Accept", b"*/*"))
        HeaderRules(request=[Replace(b"X-User", rb".*", b"x")]).rewrite_request(request)
        self.assertNotIn(b"x-user", request.head.headers)

    def test_request_rules_do_not_touch_responses(self) -> None:
        response = response_with(Headers.of((b"X-Team", b"a")))
        HeaderRules(request=[Remove(b"X-Team")]).rewrite_response(request_with(), response)
        self.assertEqual(response.headers.get(b"x-team"), b"a")


class OrderTests(SynchronousTestCase):
    def test_rules_run_in_the_order_given(self) -> None:
        request = request_with()
        HeaderRules(
            request=[
                Set(b"X-A", b"one"),
                Replace(b"X-A", b"one", b"two"),
                Add(b"X-A", b"three"),
                Remove(b"X-B"),
            ]
        ).rewrite_request(request)
        self.assertEqual(request.head.headers.get_all(b"x-a"), [b"two", b"three"])

    def test_a_later_rule_sees_what_an_earlier_one_did(self) -> None:
        response = response_with(Headers.of((b"Server", b"nginx")))
        HeaderRules(response=[Remove(b"Server"), Set(b"Server", b"proxy")]).rewrite_response(
            request_with(), response
        )
        self.assertEqual(list(response.headers), [(b"Server", b"proxy")])

    def test_removal_before_set_is_not_reordered(self) -> None:
        # Removals in a row are merged, but never moved past another rule.
        response = response_with(Headers.of((b"X-A", b"backend")))
        HeaderRules(
            response=[Set(b"X-A", b"proxy"), Remove(b"X-B"), Remove(b"X-A"), Add(b"X-A", b"end")]
        ).rewrite_response(request_with(), response)
        self.assertEqual(list(response.headers), [(b"X-A", b"end")])


class HideBackendTests(SynchronousTestCase):
    def test_removes_identity_headers_from_a_wire_block(self) -> None:
        block = (
            b"Content-Type: text/html\r\nServer: Apache/2.4.1 (Unix)\r\n"
            b"x-powered-by: PHP/8.1\r\nX-AspNet-Version: 4.0.30319\r\n"
            b"X-AspNetMvc-Version: 5.2\r\nX-Runtime: 0.01\r\nX-Generator: Drupal 10\r\n"
            b"Content-Length: 5"
        )
        response = response_with(Headers.from_block(block))
        HeaderRules(response=HIDE_BACKEND).rewrite_response(request_with(), response)
        self.assertEqual(
            list(response.headers), [(b"Content-Type", b"text/html"), (b"Content-Length", b"5")]
        )

    def test_a_response_without_them_is_left_unsplit(self) -> None:
        block = b"Content-Type: text/html\r\nContent-Length: 5"
        response = response_with(Headers.from_block(block))
        HeaderRules(response=HIDE_BACKEND).rewrite_response(request_with(), response)
        self.assertEqual(response.headers.raw, block)

    def test_a_name_merely_containing_an_identity_name_stays(self) -> None:
        block = b"X-My-Server: keep\r\nServer-Timing: db;dur=53"
        response = response_with(Headers.from_block(block))
        HeaderRules(response=HIDE_BACKEND).rewrite_response(request_with(), response)
        self.assertEqual(
            list(response.headers), [(b"X-My-Server", b"keep"), (b"Server-Timing", b"db;dur=53")]
        )

    def test_the_documented_list(self) -> None:
        for name in (b"Server", b"X-Powered-By", b"X-AspNet-Version", b"X-AspNetMvc-Version"):
            self.assertIn(name, BACKEND_IDENTITY_HEADERS)
        self.assertEqual([rule.name for rule in HIDE_BACKEND], list(BACKEND_IDENTITY_HEADERS))


class ValidationTests(SynchronousTestCase):
    def test_header_injection_is_refused(self) -> None:
        self.assertRaises(ValueError, Set, b"X-A", b"ok\r\nX-Evil: 1")
        self.assertRaises(ValueError, Add, b"X-A", b"a\nb")
        self.assertRaises(ValueError, Replace, b"X-A", b"a", b"\r\n")

    def test_invalid_names_are_refused(self) -> None:
        self.assertRaises(ValueError, Set, b"X A", b"1")
        self.assertRaises(ValueError, Remove, b"")
        self.assertRaises(ValueError, Add, "X-A", b"1")

    def test_framing_headers_are_refused(self) -> None:
        for name in (b"Content-Length", b"transfer-encoding", b"Connection", b"Upgrade"):
            self.assertRaises(ValueError, Remove, name)

    def test_a_bad_pattern_is_a_value_error(self) -> None:
        self.assertRaises(ValueError, Replace, b"X-A", b"(", b"")

    def test_a_compiled_pattern_is_accepted(self) -> None:
        rule = Replace(b"X-A", re.compile(rb"a+"), b"b")
        response = response_with(Headers.of((b"X-A", b"caaat")))
        HeaderRules(response=[rule]).rewrite_response(request_with(), response)
        self.assertEqual(response.headers.get(b"x-a"), b"cbt")

    def test_non_rules_are_refused(self) -> None:
        self.assertRaises(TypeError, HeaderRules, request=[object()])
