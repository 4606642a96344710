"""
Tests for L{twisted_rp.http.parser}: the strict head parser and the framing rules.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.message import Headers, HTTPError, RequestHead, ResponseHead
from twisted_rp.http.parser import (
    Framing,
    parse_request_head,
    parse_response_head,
    request_framing,
    request_host,
    response_framing,
    split_absolute_target,
)

MAX_LINE = 8192
MAX_HEADERS = 100


def head(*lines: bytes) -> bytes:
    """A head as the caller hands it over: lines joined by CRLF, no final empty line."""
    return b"\r\n".join(lines)


def parse(
    data: bytes, max_request_line: int = MAX_LINE, max_headers: int = MAX_HEADERS
) -> RequestHead:
    return parse_request_head(data, max_request_line, max_headers)


def request_with(*fields: bytes, version: bytes = b"HTTP/1.1") -> RequestHead:
    return RequestHead(b"POST", b"/", version, Headers.of(*(_split(f) for f in fields)))


def response_with(*fields: bytes, status: int = 200, version: bytes = b"HTTP/1.1") -> ResponseHead:
    return ResponseHead(version, status, b"OK", Headers.of(*(_split(f) for f in fields)))


def _split(field: bytes) -> tuple[bytes, bytes]:
    name, _, value = field.partition(b":")
    return name, value.strip()


class RequestRejectionMixin(SynchronousTestCase):
    def assertRejected(self, data: bytes, status: int = 400, **limits: int) -> HTTPError:
        error = self.assertRaises(HTTPError, parse, data, **limits)
        self.assertEqual(error.status, status, error.detail)
        return error


class RequestLineTests(RequestRejectionMixin):
    def test_simple_get(self) -> None:
        parsed = parse(head(b"GET /index.html?q=1 HTTP/1.1", b"Host: example.com"))
        self.assertEqual(parsed.method, b"GET")
        self.assertEqual(parsed.target, b"/index.html?q=1")
        self.assertEqual(parsed.version, b"HTTP/1.1")
        self.assertEqual(list(parsed.headers), [(b"Host", b"example.com")])

    def test_http10_without_headers(self) -> None:
        parsed = parse(b"GET / HTTP/1.0")
        self.assertEqual(parsed.version, b"HTTP/1.0")
        self.assertEqual(len(parsed.headers), 0)

    def test_leading_empty_lines_ignored(self) -> None:
        parsed = parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a")
        self.assertEqual((parsed.method, parsed.headers.get(b"host")), (b"GET", b"a"))

    def test_extension_method_accepted(self) -> None:
        self.assertEqual(parse(b"PURGE /x HTTP/1.1\r\nHost: a").method, b"PURGE")

    def test_request_line_at_limit_accepted(self) -> None:
        line = b"GET /" + b"a" * 10 + b" HTTP/1.1"
        self.assertEqual(parse(line, max_request_line=len(line)).target, b"/" + b"a" * 10)

    def test_request_line_too_long(self) -> None:
        line = b"GET /" + b"a" * 10 + b" HTTP/1.1"
        self.assertRejected(line, 414, max_request_line=len(line) - 1)

    def test_empty_request_line_rejected(self) -> None:
        self.assertRejected(b"")

    def test_double_space_rejected(self) -> None:
        self.assertRejected(b"GET  / HTTP/1.1\r\nHost: a")

    def test_tab_separator_rejected(self) -> None:
        self.assertRejected(b"GET\t/ HTTP/1.1\r\nHost: a")

    def test_trailing_space_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1 \r\nHost: a")

    def test_missing_version_rejected(self) -> None:
        self.assertRejected(b"GET /\r\nHost: a")

    def test_http09_request_rejected(self) -> None:
        self.assertRejected(b"GET")

    def test_method_not_a_token_rejected(self) -> None:
        self.assertRejected(b"GE(T / HTTP/1.1\r\nHost: a")

    def test_space_in_target_rejected(self) -> None:
        self.assertRejected(b"GET /a b HTTP/1.1\r\nHost: a")

    def test_control_character_in_target_rejected(self) -> None:
        self.assertRejected(b"GET /a\x01b HTTP/1.1\r\nHost: a")

    def test_del_in_target_rejected(self) -> None:
        self.assertRejected(b"GET /a\x7fb HTTP/1.1\r\nHost: a")

    def test_obs_text_in_target_rejected(self) -> None:
        self.assertRejected(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a")

    def test_relative_target_rejected(self) -> None:
        self.assertRejected(b"GET index.html HTTP/1.1\r\nHost: a")

    def test_version_with_trailing_garbage_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1x\r\nHost: a")

    def test_lowercase_version_rejected(self) -> None:
        self.assertRejected(b"GET / http/1.1\r\nHost: a")

    def test_multi_digit_version_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/11.1\r\nHost: a")

    def test_http2_version_not_supported(self) -> None:
        self.assertRejected(b"GET / HTTP/2.0\r\nHost: a", 505)

    def test_http12_version_not_supported(self) -> None:
        self.assertRejected(b"GET / HTTP/1.2\r\nHost: a", 505)

    def test_http09_version_not_supported(self) -> None:
        self.assertRejected(b"GET / HTTP/0.9", 505)

    def test_bare_lf_after_request_line_rejected(self) -> None:
        error = self.assertRejected(b"GET / HTTP/1.1\nHost: a")
        self.assertIn("LF", error.detail)

    def test_bare_cr_in_request_line_rejected(self) -> None:
        self.assertRejected(b"GET /\r HTTP/1.1\r\nHost: a")

    def test_bare_lf_in_overlong_request_line_is_a_bad_request(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1\nHost: " + b"a" * 100, max_request_line=20)

    def test_connect_not_supported(self) -> None:
        error = self.assertRejected(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443", 405
        )
        self.assertEqual(error.detail, "CONNECT is not supported")

    def test_options_asterisk_accepted(self) -> None:
        self.assertEqual(parse(b"OPTIONS * HTTP/1.1\r\nHost: a").target, b"*")

    def test_asterisk_for_other_methods_rejected(self) -> None:
        self.assertRejected(b"GET * HTTP/1.1\r\nHost: a")

    def test_absolute_form_accepted(self) -> None:
        parsed = parse(b"GET http://example.com:8080/p?q HTTP/1.1\r\nHost: example.com:8080")
        self.assertEqual(parsed.target, b"http://example.com:8080/p?q")

    def test_absolute_form_with_other_scheme_rejected(self) -> None:
        self.assertRejected(b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com")


class HeaderFieldTests(RequestRejectionMixin):
    def test_repeated_headers_kept_in_order_with_original_case(self) -> None:
        parsed = parse(
            head(
                b"GET / HTTP/1.1", b"Host: a", b"X-Tag: one", b"content-TYPE: text/x", b"x-tag: two"
            )
        )
        self.assertEqual(
            parsed.headers.fields,
            [
                [b"host", b"Host", b"a"],
                [b"x-tag", b"X-Tag", b"one"],
                [b"content-type", b"content-TYPE", b"text/x"],
                [b"x-tag", b"x-tag", b"two"],
            ],
        )
        self.assertEqual(parsed.headers.get_all(b"X-TAG"), [b"one", b"two"])

    def test_surrounding_whitespace_stripped_from_values(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: \t  spaced  out \t "))
        self.assertEqual(parsed.headers.get(b"x-a"), b"spaced  out")

    def test_tabs_inside_values_kept(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", b"X-A:a\tb"))
        self.assertEqual(parsed.headers.get(b"x-a"), b"a\tb")

    def test_empty_values_accepted(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", b"X-Empty:", b"X-Blank:   "))
        self.assertEqual(
            parsed.headers.get_all(b"x-empty") + parsed.headers.get_all(b"x-blank"), [b"", b""]
        )

    def test_obs_text_in_value_accepted(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", b"X-Name: caf\xc3\xa9 \xff"))
        self.assertEqual(parsed.headers.get(b"x-name"), b"caf\xc3\xa9 \xff")

    def test_colon_in_value_kept(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a:80", b"X-Time: 12:30:00"))
        self.assertEqual(parsed.headers.get(b"x-time"), b"12:30:00")

    def test_all_tchars_accepted_in_names(self) -> None:
        name = b"!#$%&'*+-.^_`|~09azAZ"
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", name + b": v"))
        self.assertEqual(parsed.headers.get(name), b"v")

    def test_header_count_at_limit_accepted(self) -> None:
        parsed = parse(head(b"GET / HTTP/1.1", b"Host: a", b"A: 1", b"B: 2"), max_headers=3)
        self.assertEqual(len(parsed.headers), 3)

    def test_too_many_headers_rejected(self) -> None:
        self.assertRejected(
            head(b"GET / HTTP/1.1", b"Host: a", b"A: 1", b"B: 2"), 431, max_headers=2
        )

    def test_obs_fold_rejected(self) -> None:
        error = self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: one", b" two"))
        self.assertIn("folding", error.detail)

    def test_obs_fold_with_tab_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: one", b"\ttwo"))

    def test_space_before_colon_rejected(self) -> None:
        error = self.assertRejected(head(b"GET / HTTP/1.1", b"Host : a"))
        self.assertIn("whitespace", error.detail)

    def test_tab_before_colon_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host\t: a"))

    def test_header_without_colon_rejected(self) -> None:
        error = self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"NoColonHere"))
        self.assertIn("colon", error.detail)

    def test_empty_field_name_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b": value"))

    def test_field_name_not_a_token_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X(A): value"))

    def test_obs_text_in_name_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-\xe9: value"))

    def test_nul_in_value_rejected(self) -> None:
        error = self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: a\x00b"))
        self.assertIn("0x00", error.detail)

    def test_control_character_in_value_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: a\x1bb"))

    def test_del_in_value_rejected(self) -> None:
        self.assertRejected(head(b"GET / HTTP/1.1", b"Host: a", b"X-A: a\x7fb"))

    def test_bare_lf_between_headers_rejected(self) -> None:
        error = self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\nX-A: b")
        self.assertIn("LF", error.detail)

    def test_bare_cr_in_value_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\rX-A: b")

    def test_trailing_bare_cr_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r")

    def test_empty_line_inside_head_rejected(self) -> None:
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX-A: b")


class ResponseHeadTests(SynchronousTestCase):
    def assertRejected(self, data: bytes, max_headers: int = MAX_HEADERS) -> None:
        error = self.assertRaises(HTTPError, parse_response_head, data, max_headers)
        self.assertEqual(error.status, 502, error.detail)

    def test_status_line_and_headers(self) -> None:
        parsed = parse_response_head(head(b"HTTP/1.1 404 Not Found", b"Content-Length: 3"), 10)
        self.assertEqual(
            (parsed.version, parsed.status, parsed.reason), (b"HTTP/1.1", 404, b"Not Found")
        )
        self.assertEqual(list(parsed.headers), [(b"Content-Length", b"3")])

    def test_http10_response(self) -> None:
        self.assertEqual(parse_response_head(b"HTTP/1.0 200 OK", 10).version, b"HTTP/1.0")

    def test_empty_reason(self) -> None:
        self.assertEqual(parse_response_head(b"HTTP/1.1 204 ", 10).reason, b"")

    def test_missing_reason_separator_tolerated(self) -> None:
        parsed = parse_response_head(b"HTTP/1.1 200\r\nX-A: b", 10)
        self.assertEqual(
            (parsed.status, parsed.reason, parsed.headers.get(b"x-a")), (200, b"", b"b")
        )

    def test_reason_with_spaces_and_obs_text(self) -> None:
        self.assertEqual(
            parse_response_head(b"HTTP/1.1 200 Tout va tr\xe8s bien", 10).reason,
            b"Tout va tr\xe8s bien",
        )

    def test_two_digit_status_rejected(self) -> None:
        self.assertRejected(b"HTTP/1.1 20 OK")

    def test_status_below_100_rejected(self) -> None:
        self.assertRejected(b"HTTP/1.1 099 Weird")

    def test_status_above_599_rejected(self) -> None:
        self.assertRejected(b"HTTP/1.1 600 Weird")

    def test_http2_status_line_rejected(self) -> None:
        self.assertRejected(b"HTTP/2.0 200 OK")

    def test_garbage_status_line_rejected(self) -> None:
        self.assertRejected(b"ICY 200 OK")

    def test_control_character_in_reason_rejected(self) -> None:
        self.assertRejected(b"HTTP/1.1 200 O\x00K")

    def test_bare_lf_in_response_rejected(self) -> None:
        self.assertRejected(b"HTTP/1.1 200 OK\nContent-Length: 0")

    def test_obs_fold_in_response_rejected(self) -> None:
        self.assertRejected(head(b"HTTP/1.1 200 OK", b"X-A: one", b" two"))

    def test_space_before_colon_in_response_rejected(self) -> None:
        self.assertRejected(head(b"HTTP/1.1 200 OK", b"Content-Length : 0"))

    def test_too_many_response_headers_rejected(self) -> None:
        self.assertRejected(head(b"HTTP/1.1 200 OK", b"A: 1", b"B: 2"), max_headers=1)


class RequestFramingTests(SynchronousTestCase):
    def assertRejected(self, request: RequestHead, status: int = 400) -> HTTPError:
        error = self.assertRaises(HTTPError, request_framing, request)
        self.assertEqual(error.status, status, error.detail)
        return error

    def test_no_body(self) -> None:
        self.assertEqual(request_framing(request_with(b"Host: a")), Framing("none"))

    def test_content_length(self) -> None:
        self.assertEqual(
            request_framing(request_with(b"Content-Length: 42")), Framing("length", 42)
        )

    def test_zero_content_length_means_no_body(self) -> None:
        self.assertEqual(request_framing(request_with(b"Content-Length: 0")), Framing("none"))

    def test_leading_zeros_accepted(self) -> None:
        self.assertEqual(request_framing(request_with(b"Content-Length: 007")).length, 7)

    def test_duplicate_equal_content_length_collapses(self) -> None:
        framing = request_framing(request_with(b"Content-Length: 5", b"Content-Length: 5"))
        self.assertEqual(framing, Framing("length", 5))

    def test_equal_content_length_list_collapses(self) -> None:
        self.assertEqual(request_framing(request_with(b"Content-Length: 5, 5,5")).length, 5)

    def test_duplicate_differing_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: 5", b"Content-Length: 6"))

    def test_differing_content_length_list_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: 5, 6"))

    def test_negative_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: -1"))

    def test_plus_signed_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: +5"))

    def test_space_inside_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: 1 2"))

    def test_hex_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: 0x10"))

    def test_empty_content_length_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length:"))

    def test_empty_content_length_element_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: 5,,5"))

    def test_content_length_of_18_digits_accepted(self) -> None:
        self.assertEqual(
            request_framing(request_with(b"Content-Length: " + b"9" * 18)).length, 10**18 - 1
        )

    def test_content_length_of_19_digits_rejected(self) -> None:
        self.assertRejected(request_with(b"Content-Length: " + b"1" * 19))

    def test_chunked(self) -> None:
        self.assertEqual(
            request_framing(request_with(b"Transfer-Encoding: chunked")), Framing("chunked")
        )

    def test_chunked_case_insensitive_with_whitespace(self) -> None:
        framing = request_framing(request_with(b"Transfer-Encoding: \t ChUnKeD \t"))
        self.assertEqual(framing.kind, "chunked")

    def test_te_and_cl_rejected(self) -> None:
        error = self.assertRejected(
            request_with(b"Transfer-Encoding: chunked", b"Content-Length: 5")
        )
        self.assertEqual(error.detail, "both Transfer-Encoding and Content-Length")

    def test_te_in_http10_rejected(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: chunked", version=b"HTTP/1.0"))

    def test_chunked_not_last_rejected(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: chunked, gzip"))

    def test_chunked_twice_rejected(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: chunked, chunked"))

    def test_chunked_twice_in_separate_fields_rejected(self) -> None:
        self.assertRejected(
            request_with(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
        )

    def test_empty_transfer_encoding_rejected(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: "))

    def test_gzip_then_chunked_not_implemented(self) -> None:
        error = self.assertRejected(request_with(b"Transfer-Encoding: gzip, chunked"), 501)
        self.assertEqual(error.detail, "unsupported transfer coding")

    def test_gzip_not_implemented(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: gzip"), 501)

    def test_identity_not_implemented(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: identity"), 501)

    def test_unknown_coding_not_implemented(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: x"), 501)

    def test_chunked_with_parameter_not_implemented(self) -> None:
        self.assertRejected(request_with(b"Transfer-Encoding: chunked;q=1"), 501)


class ResponseFramingTests(SynchronousTestCase):
    def assertRejected(self, response: ResponseHead, method: bytes = b"GET") -> None:
        error = self.assertRaises(HTTPError, response_framing, method, response)
        self.assertEqual(error.status, 502, error.detail)

    def test_content_length(self) -> None:
        framing = response_framing(b"GET", response_with(b"Content-Length: 10"))
        self.assertEqual(framing, Framing("length", 10))
        self.assertTrue(framing.reusable)

    def test_zero_content_length(self) -> None:
        self.assertEqual(
            response_framing(b"GET", response_with(b"Content-Length: 0")), Framing("none")
        )

    def test_chunked(self) -> None:
        framing = response_framing(b"GET", response_with(b"Transfer-Encoding: chunked"))
        self.assertEqual((framing.kind, framing.reusable), ("chunked", True))

    def test_gzip_then_chunked_is_chunked(self) -> None:
        framing = response_framing(b"GET", response_with(b"Transfer-Encoding: gzip, chunked"))
        self.assertEqual(framing.kind, "chunked")

    def test_te_without_final_chunked_reads_until_close(self) -> None:
        framing = response_framing(b"GET", response_with(b"Transfer-Encoding: gzip"))
        self.assertEqual((framing.kind, framing.reusable), ("close", False))

    def test_chunked_not_last_reads_until_close(self) -> None:
        framing = response_framing(b"GET", response_with(b"Transfer-Encoding: chunked, gzip"))
        self.assertEqual(framing.kind, "close")

    def test_chunked_twice_rejected(self) -> None:
        self.assertRejected(response_with(b"Transfer-Encoding: chunked, chunked"))

    def test_te_and_cl_chunked_wins_but_not_reusable(self) -> None:
        framing = response_framing(
            b"GET", response_with(b"Content-Length: 10", b"Transfer-Encoding: chunked")
        )
        self.assertEqual((framing.kind, framing.reusable), ("chunked", False))

    def test_te_and_invalid_cl_chunked_wins(self) -> None:
        framing = response_framing(
            b"GET", response_with(b"Content-Length: x", b"Transfer-Encoding: chunked")
        )
        self.assertEqual(framing.kind, "chunked")

    def test_te_in_http10_response_not_reusable(self) -> None:
        framing = response_framing(
            b"GET", response_with(b"Transfer-Encoding: chunked", version=b"HTTP/1.0")
        )
        self.assertEqual((framing.kind, framing.reusable), ("chunked", False))

    def test_neither_reads_until_close(self) -> None:
        framing = response_framing(b"GET", response_with(b"X-A: b"))
        self.assertEqual((framing.kind, framing.reusable), ("close", False))

    def test_head_request_has_no_body(self) -> None:
        for fields in ([b"Content-Length: 10"], [b"Transfer-Encoding: chunked"], []):
            with self.subTest(fields=fields):
                self.assertEqual(response_framing(b"HEAD", response_with(*fields)), Framing("none"))

    def test_bodiless_statuses_have_no_body(self) -> None:
        for status in (100, 101, 103, 204, 304):
            with self.subTest(status=status):
                response = response_with(
                    b"Content-Length: 10", b"Transfer-Encoding: chunked", status=status
                )
                self.assertEqual(response_framing(b"GET", response), Framing("none"))

    def test_bodiless_status_ignores_invalid_content_length(self) -> None:
        response = response_with(b"Content-Length: bogus", status=304)
        self.assertEqual(response_framing(b"GET", response), Framing("none"))

    def test_invalid_content_length_rejected(self) -> None:
        self.assertRejected(response_with(b"Content-Length: -5"))

    def test_differing_content_length_rejected(self) -> None:
        self.assertRejected(response_with(b"Content-Length: 5", b"Content-Length: 7"))

    def test_equal_content_lengths_collapse(self) -> None:
        framing = response_framing(b"GET", response_with(b"Content-Length: 7, 7"))
        self.assertEqual(framing, Framing("length", 7))


class HostTests(SynchronousTestCase):
    def host_of(
        self, target: bytes, *fields: bytes, version: bytes = b"HTTP/1.1", method: bytes = b"GET"
    ) -> bytes | None:
        request = RequestHead(method, target, version, Headers.of(*(_split(f) for f in fields)))
        return request_host(request)

    def assertRejected(self, target: bytes, *fields: bytes, status: int = 400, **kw: bytes) -> None:
        error = self.assertRaises(HTTPError, self.host_of, target, *fields, **kw)
        self.assertEqual(error.status, status, error.detail)

    def test_host_header(self) -> None:
        self.assertEqual(self.host_of(b"/", b"Host: Example.com:8080"), b"Example.com:8080")

    def test_ipv4_host(self) -> None:
        self.assertEqual(self.host_of(b"/", b"Host: 192.0.2.1"), b"192.0.2.1")

    def test_ipv6_host(self) -> None:
        self.assertEqual(self.host_of(b"/", b"Host: [2001:db8::1]:443"), b"[2001:db8::1]:443")

    def test_missing_host_in_http11_rejected(self) -> None:
        self.assertRejected(b"/")

    def test_two_host_headers_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a", b"Host: a")

    def test_two_host_headers_in_http10_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a", b"Host: b", version=b"HTTP/1.0")

    def test_http10_without_host(self) -> None:
        self.assertIsNone(self.host_of(b"/", version=b"HTTP/1.0"))

    def test_http10_with_host(self) -> None:
        self.assertEqual(self.host_of(b"/", b"Host: a", version=b"HTTP/1.0"), b"a")

    def test_empty_host_means_no_host(self) -> None:
        self.assertIsNone(self.host_of(b"/", b"Host:"))

    def test_host_with_space_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a b")

    def test_host_with_path_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a/b")

    def test_host_with_userinfo_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: user@a")

    def test_host_port_not_numeric_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a:http")

    def test_host_port_out_of_range_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a:65536")

    def test_host_empty_port_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: a:")

    def test_invalid_ipv6_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: [2001:db8::zz]")

    def test_unbracketed_ipv6_rejected(self) -> None:
        self.assertRejected(b"/", b"Host: 2001:db8::1")

    def test_absolute_form_authority_wins_over_host(self) -> None:
        self.assertEqual(
            self.host_of(b"http://b.example:81/x", b"Host: a.example"), b"b.example:81"
        )

    def test_absolute_form_still_needs_host_in_http11(self) -> None:
        self.assertRejected(b"http://b.example/x")

    def test_absolute_form_in_http10_without_host(self) -> None:
        self.assertEqual(self.host_of(b"http://b.example/x", version=b"HTTP/1.0"), b"b.example")

    def test_options_asterisk(self) -> None:
        self.assertEqual(self.host_of(b"*", b"Host: a", method=b"OPTIONS"), b"a")

    def test_asterisk_for_get_rejected(self) -> None:
        self.assertRejected(b"*", b"Host: a")

    def test_connect_not_supported(self) -> None:
        self.assertRejected(b"a:443", b"Host: a:443", method=b"CONNECT", status=405)


class SplitAbsoluteTargetTests(SynchronousTestCase):
    def test_origin_form_unchanged(self) -> None:
        self.assertEqual(split_absolute_target(b"/a?b"), (None, b"/a?b"))

    def test_asterisk_unchanged(self) -> None:
        self.assertEqual(split_absolute_target(b"*"), (None, b"*"))

    def test_absolute_form(self) -> None:
        self.assertEqual(split_absolute_target(b"http://h:8080/p/q?x=1"), (b"h:8080", b"/p/q?x=1"))

    def test_https_scheme_any_case(self) -> None:
        self.assertEqual(split_absolute_target(b"HTTPS://h/"), (b"h", b"/"))

    def test_no_path_becomes_slash(self) -> None:
        self.assertEqual(split_absolute_target(b"http://h"), (b"h", b"/"))

    def test_query_without_path(self) -> None:
        self.assertEqual(split_absolute_target(b"http://h?x"), (b"h", b"/?x"))

    def test_ipv6_authority(self) -> None:
        self.assertEqual(split_absolute_target(b"http://[::1]:80/x"), (b"[::1]:80", b"/x"))

    def test_rejections(self) -> None:
        for target in (
            b"ftp://h/",
            b"http://user:pw@h/",
            b"http:///x",
            b"http://h:99999/",
            b"h/x",
            b"example.com:443",
        ):
            with self.subTest(target=target):
                error = self.assertRaises(HTTPError, split_absolute_target, target)
                self.assertEqual(error.status, 400)
