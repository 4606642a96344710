"""
The one-pass scanners of common heads (L{twisted_rp.http.scan}) against the general parser:
whatever they accept, the general path reads the same way; the rest they leave to it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.forwarding import RequestForwarding
from twisted_rp.http.message import HTTPError
from twisted_rp.http.parser import (
    analyze_request,
    analyze_response,
    parse_request_head,
    parse_response_head,
)
from twisted_rp.http.scan import scan_request, scan_response
from twisted_rp.settings import HeaderPolicy

SPECIAL = RequestForwarding.from_policy(HeaderPolicy()).needs_fields

SIMPLE_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: example.com",
    b"GET /a?b=c HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*",
    b"DELETE /x HTTP/1.1\r\nuser-agent: curl\r\nHOST:10.0.0.1:65535\r\nCookie: a=b",
    b"GET / HTTP/1.1\r\nHost:   www.example.com\t",
    b"PURGE /cache HTTP/1.1\r\nX-Empty:\r\nHost: a.b",
]

# Heads the scanner leaves to the general path, valid or not.
OTHER_REQUESTS = [
    b"GET / HTTP/1.0\r\nHost: example.com",
    b"GET http://example.com/ HTTP/1.1\r\nHost: example.com",
    b"OPTIONS * HTTP/1.1\r\nHost: example.com",
    b"CONNECT /x HTTP/1.1\r\nHost: example.com",
    b"GET / HTTP/1.1",
    b"GET / HTTP/1.1\r\nAccept: */*",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b",
    b"GET / HTTP/1.1\r\nHost: [::1]:8080",
    b"GET / HTTP/1.1\r\nHost: a:65536",
    b"GET / HTTP/1.1\r\nHost: a:",
    b"GET / HTTP/1.1\r\nHost:",
    b"GET / HTTP/1.1\r\nHost: a b",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4",
    b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4",
    b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 other",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: abc",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers",
    b"GET / HTTP/1.1\r\nHost: a\r\nClient-Cert: :AAAA:",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded",
    b"GET / HTTP/1.1\r\nHost : a",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01",
    b"GET / HTTP/1.1\r\nHost: a\nX: b",
    b"GET /\x7f HTTP/1.1\r\nHost: a",
    b"GET  / HTTP/1.1\r\nHost: a",
]

SIMPLE_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5",
    b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 101\r\nConnection: keep-alive",
    b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\nX: y",
    b"HTTP/1.0 200\r\nCONTENT-LENGTH:  7 ",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 12",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 12",
    b"HTTP/1.1 500 \r\nContent-Length: 2",
    b"HTTP/1.1 200 OK\r\nConnection:  Close \t\r\nContent-Length: 000000000000000003",
]

OTHER_RESPONSES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK\r\nServer: x",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 0",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Length: 0",
    b"HTTP/2.0 200 OK\r\nContent-Length: 1",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789",
    b"HTTP/1.1 200 OK\r\nContent-Length: ",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: upgrade",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, x-y",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\nConnection: close",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=5",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTrailer: X",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nUpgrade: h2c",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: \x00",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n X: folded",
    b"HTTP/1.1 200 OK\nContent-Length: 1",
]


class RequestScanTests(SynchronousTestCase):
    def test_simple_requests_read_as_the_parser_reads_them(self) -> None:
        for raw in SIMPLE_REQUESTS:
            scanned = scan_request(raw, SPECIAL, 8192, 100)
            assert scanned is not None, raw
            method, target, fields, lowered, host = scanned
            head = parse_request_head(raw, 8192, 100)
            info = analyze_request(head)
            self.assertEqual((method, target), (head.method, head.target), raw)
            self.assertEqual(head.version, b"HTTP/1.1")
            self.assertEqual(fields, head.headers.raw, raw)
            self.assertEqual(lowered, info.lowered, raw)
            self.assertEqual(host, info.host, raw)
            self.assertEqual(info.framing.kind, "none")
            self.assertEqual(info.connection, [])

    def test_others_are_left_to_the_general_path(self) -> None:
        for raw in OTHER_REQUESTS:
            self.assertIsNone(scan_request(raw, SPECIAL, 8192, 100), raw)

    def test_a_host_vouched_for_is_not_checked_again(self) -> None:
        raw = b"GET / HTTP/1.1\r\nHost: a b"
        self.assertIsNone(scan_request(raw, SPECIAL, 8192, 100))
        self.assertIsNone(scan_request(raw, SPECIAL, 8192, 100, b"a"))
        scanned = scan_request(raw, SPECIAL, 8192, 100, b"a b")
        assert scanned is not None
        self.assertEqual(scanned[4], b"a b")

    def test_a_repeated_field_block_reads_the_same(self) -> None:
        """Given the previous request's reading, every head reads as it does without it."""
        lines = [
            b"GET /other?x=1 HTTP/1.1",
            b"HEAD / HTTP/1.1",
            b"CONNECT /x HTTP/1.1",
            b"GET http://example.com/ HTTP/1.1",
            b"GET / HTTP/1.0",
            b"GET /\x7f HTTP/1.1",
            b"GET / HTTP/1.1\r\nX: 1",
            b"GET / HTTP/1.1\r\n folded",
            b"GET / HTTP/1.1\r\nContent-Length: 3",
            b"GET / HTTP/1.1\r\nHost: other",
            b"GET /" + b"a" * 40 + b" HTTP/1.1",
            b"",
            b"\r\n",
        ]
        for before in SIMPLE_REQUESTS:
            previous = scan_request(before, SPECIAL, 40, 100)
            assert previous is not None
            block = previous[2]
            heads = [line + b"\r\n" + block for line in lines] + [line + block for line in lines]
            for raw in SIMPLE_REQUESTS + OTHER_REQUESTS + heads:
                self.assertEqual(
                    scan_request(raw, SPECIAL, 40, 100, previous=previous),
                    scan_request(raw, SPECIAL, 40, 100),
                    (before, raw),
                )

    def test_limits_are_left_to_the_general_path(self) -> None:
        raw = b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2"
        # The request line is 34 bytes long; there are 3 fields.
        self.assertIsNotNone(scan_request(raw, SPECIAL, 34, 3))
        self.assertIsNone(scan_request(raw, SPECIAL, 33, 3))
        self.assertIsNone(scan_request(raw, SPECIAL, 34, 2))
        for line, fields, status in [(33, 3, 414), (34, 2, 431)]:
            with self.assertRaises(HTTPError) as caught:
                parse_request_head(raw, line, fields)
            self.assertEqual(caught.exception.status, status)

    def test_fields_of_a_lighter_policy_are_plain(self) -> None:
        """Forwarding fields the listener does not add are ordinary fields."""
        special = RequestForwarding.from_policy(
            HeaderPolicy(x_forwarded=False, forwarded=False, via=False, request_id=False)
        ).needs_fields
        raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nVia: 1.1 x"
        self.assertIsNotNone(scan_request(raw, special, 8192, 100))
        self.assertIsNone(scan_request(raw, SPECIAL, 8192, 100))


class ResponseScanTests(SynchronousTestCase):
    def test_simple_responses_read_as_the_parser_reads_them(self) -> None:
        for method in (b"GET", b"HEAD"):
            for raw in SIMPLE_RESPONSES:
                simple = scan_response(raw, method, 100)
                assert simple is not None, raw
                expected = parse_response_head(raw, 100)
                head, info = simple.parsed()
                self.assertEqual(
                    (head.version, head.status, head.reason, head.headers.raw),
                    (
                        expected.version,
                        expected.status,
                        expected.reason,
                        expected.headers.raw,
                    ),
                    raw,
                )
                # (Analysing splits the general head's fields.)
                expected_info = analyze_response(method, expected)
                self.assertEqual(
                    (info.framing, info.connection),
                    (expected_info.framing, expected_info.connection),
                    raw,
                )
                body = expected_info.framing.length if expected_info.framing.kind != "none" else 0
                self.assertEqual(simple.length, body, raw)

    def test_others_are_left_to_the_general_path(self) -> None:
        for raw in OTHER_RESPONSES:
            self.assertIsNone(scan_response(raw, b"GET", 100), raw)

    def test_limits_are_left_to_the_general_path(self) -> None:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nA: 1\r\nB: 2"
        self.assertIsNotNone(scan_response(raw, b"GET", 3))
        self.assertIsNone(scan_response(raw, b"GET", 2))
        with self.assertRaises(HTTPError) as caught:
            parse_response_head(raw, 2)
        self.assertEqual(caught.exception.status, 502)

    def test_connection_field_is_cut(self) -> None:
        for raw, kept in [
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0", b"Content-Length: 0"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close", b"Content-Length: 0"),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nContent-Length: 0",
                b"A: 1\r\nContent-Length: 0",
            ),
        ]:
            simple = scan_response(raw, b"GET", 100)
            assert simple is not None
            start, end = simple.cut
            self.assertEqual(simple.fields[:start] + simple.fields[end:], kept)
