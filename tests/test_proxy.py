"""
Tests for L{twisted_rp.http.proxy} and L{twisted_rp.http.exchange}: the HTTP reverse proxy end
to end, in memory, as a client and a backend see it.
"""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.helpers import (
    CLIENT_IP,
    FakeBackend,
    FakeClient,
    Message,
    ProxyHarness,
    dechunk,
    get,
    parse_message,
    response,
    split_responses,
)
from twisted_rp.http.flow import Deadline
from twisted_rp.http.message import AccessRecord, ErrorResponse, Headers, ProxyRequest, ResponseHead
from twisted_rp.http.routing import Route
from twisted_rp.interfaces import IAccessLog, IAuthenticator, IRequestRewriter, IResponseRewriter
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.settings import HeaderPolicy, Limits, ProxySettings, Timeouts

REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

HEX_ID = re.compile(rb"[0-9a-f]{32}")


def request(*lines: bytes, body: bytes = b"") -> bytes:
    """A request made of C{lines} (the request line first), then C{body}."""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(body: bytes, target: bytes = b"/upload", *fields: bytes) -> bytes:
    return request(
        b"POST " + target + b" HTTP/1.1",
        b"Host: example.com",
        b"Content-Length: %d" % len(body),
        *fields,
        body=body,
    )


CHUNKED_HEAD = request(
    b"POST /upload HTTP/1.1", b"Host: example.com", b"Transfer-Encoding: chunked"
)


class ProxyTestCase(SynchronousTestCase):
    def assertErrorPage(self, data: bytes, status: int) -> Message:
        """
        C{data} is the proxy's own error page for C{status}: a standard status line, a plain
        text body that starts with the status, and a matching Content-Length.
        """
        message = parse_message(data)
        self.assertEqual(message.start, b"HTTP/1.1 %d %s" % (status, REASONS[status]))
        self.assertEqual(message.get(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(message.get(b"content-length"), b"%d" % len(message.body))
        self.assertTrue(message.body.startswith(b"%d %s" % (status, REASONS[status])), message.body)
        return message

    def forwarded(self, backend: FakeBackend) -> Message:
        """The request the backend received."""
        return parse_message(backend.received())


class RejectedRequestTests(ProxyTestCase):
    """
    Malformed or unsupported requests are answered by the proxy and never reach a backend.
    """

    def assertRejected(
        self, data: bytes, status: int, harness: ProxyHarness | None = None
    ) -> tuple[Message, FakeClient]:
        harness = harness or ProxyHarness()
        client = harness.client()
        client.send(data)
        self.assertEqual(harness.connect_attempts, 0)
        return self.assertErrorPage(client.received(), status), client

    def assertBadRequest(self, data: bytes) -> Message:
        message, client = self.assertRejected(data, 400)
        self.assertTrue(client.closed)
        return message

    def test_transfer_encoding_and_content_length(self) -> None:
        self.assertBadRequest(
            request(
                b"POST / HTTP/1.1",
                b"Host: example.com",
                b"Transfer-Encoding: chunked",
                b"Content-Length: 5",
                body=b"0\r\n\r\n",
            )
        )

    def test_differing_content_lengths(self) -> None:
        self.assertBadRequest(
            request(
                b"POST / HTTP/1.1",
                b"Host: example.com",
                b"Content-Length: 5",
                b"Content-Length: 6",
                body=b"hello!",
            )
        )

    def test_invalid_chunk_size(self) -> None:
        """
        A bad chunk size arriving with the head gets a 400 before any backend is contacted.
        """
        harness = ProxyHarness()
        client = harness.client()
        client.send(CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n")
        self.assertErrorPage(client.received(), 400)
        self.assertEqual(harness.connect_attempts, 0)
        self.assertTrue(client.closed)

    def test_invalid_chunk_size_after_body_started(self) -> None:
        """
        A bad chunk size after part of the body went out gets a 400 and aborts the backend
        connection, so the backend never sees a complete request.
        """
        harness = ProxyHarness()
        client = harness.client()
        client.send(CHUNKED_HEAD + b"5\r\nhello\r\n")
        backend = harness.accept()
        client.send(b"-1\r\n")
        self.assertErrorPage(client.received(), 400)
        self.assertTrue(backend.aborted)
        self.assertNotIn(b"0\r\n\r\n", backend.received().partition(b"\r\n\r\n")[2])

    def test_obsolete_line_folding(self) -> None:
        self.assertBadRequest(
            request(b"GET / HTTP/1.1", b"Host: example.com", b"X-Long: one", b" two")
        )

    def test_bare_lf_in_header_block(self) -> None:
        self.assertBadRequest(b"GET / HTTP/1.1\r\nHost: example.com\nX-A: b\r\n\r\n")

    def test_bare_lf_after_request_line(self) -> None:
        self.assertBadRequest(b"GET / HTTP/1.1\nHost: example.com\r\n\r\n")

    def test_whitespace_before_colon(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host : example.com"))

    def test_nul_in_field_value(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host: example.com", b"X-A: a\x00b"))

    def test_control_character_in_field_value(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host: example.com", b"X-A: a\x01b"))

    def test_missing_host_on_http11(self) -> None:
        message = self.assertBadRequest(request(b"GET / HTTP/1.1", b"Accept: */*"))
        self.assertIn(b"Host", message.body)

    def test_two_host_fields(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host: a.example", b"Host: b.example"))

    def test_invalid_host(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host: exa mple.com"))

    def test_invalid_host_port(self) -> None:
        self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host: example.com:99999"))

    def test_bad_heads_after_a_good_one(self) -> None:
        """
        A connection remembers its last valid Host and field block, not to read them again;
        a new Host and the request line are always checked.
        """
        for bad in [get(b"/", b"exa mple.com"), get(b"/\x7f", b"example.com")]:
            harness = ProxyHarness()
            client = harness.client()
            client.send(get(b"/", b"example.com"))
            harness.accept().answer(response(body=b"ok"))
            client.take()
            client.send(bad)
            self.assertEqual(parse_message(client.received()).start, b"HTTP/1.1 400 Bad Request")
            self.assertEqual(harness.connect_attempts, 1)

    def test_request_line_too_long(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_request_line=100)))
        _, client = self.assertRejected(get(b"/" + b"a" * 200), 414, harness)
        self.assertTrue(client.closed)

    def test_request_line_too_long_before_it_ends(self) -> None:
        """The 414 comes as soon as the line is too long, without waiting for its end."""
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_request_line=100)))
        self.assertRejected(b"GET /" + b"a" * 200, 414, harness)

    def test_head_too_large(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_header_bytes=1024)))
        _, client = self.assertRejected(
            get(b"/", b"example.com", b"X-Big: " + b"x" * 2000), 431, harness
        )
        self.assertTrue(client.closed)

    def test_head_too_large_before_it_ends(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_header_bytes=1024)))
        self.assertRejected(
            b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"x" * 2000, 431, harness
        )

    def test_too_many_fields(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_headers=10)))
        fields = [b"X-F%d: v" % i for i in range(20)]
        self.assertRejected(get(b"/", b"example.com", *fields), 431, harness)

    def test_unknown_transfer_coding(self) -> None:
        self.assertRejected(
            request(b"POST / HTTP/1.1", b"Host: example.com", b"Transfer-Encoding: gzip"), 501
        )

    def test_http2_version(self) -> None:
        self.assertRejected(request(b"GET / HTTP/2.0", b"Host: example.com"), 505)

    def test_http09_version(self) -> None:
        self.assertRejected(request(b"GET / HTTP/0.9", b"Host: example.com"), 505)

    def test_connect_method(self) -> None:
        self.assertRejected(
            request(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 405
        )

    def test_expectation_names_are_case_insensitive(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"hello", b"/", b"Expect: 100-Continue"))
        self.assertEqual(harness.connect_attempts, 1)

    def test_unsupported_expectation(self) -> None:
        self.assertRejected(
            post(b"hello", b"/", b"Expect: something-else"),
            417,
        )

    def test_content_length_over_max_body(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_body=10)))
        self.assertRejected(post(b"x" * 11), 413, harness)

    def test_content_length_at_max_body_is_forwarded(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_body=10)))
        client = harness.client()
        client.send(post(b"x" * 10))
        backend = harness.accept()
        self.assertTrue(backend.received().endswith(b"\r\n\r\n" + b"x" * 10))

    def test_chunked_body_over_max_body(self) -> None:
        """
        A chunked body that grows past the limit gets a 413; the backend never receives the
        whole body.
        """
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_body=10)))
        client = harness.client()
        client.send(CHUNKED_HEAD + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        if harness.connect_attempts:
            backend = harness.accept()
            self.assertNotIn(b"0\r\n\r\n", backend.received().partition(b"\r\n\r\n")[2])
        self.assertErrorPage(client.received(), 413)

    def test_no_route(self) -> None:
        pool = BackendPool("web", [])
        harness = ProxyHarness(routes=[Route(pool, hosts=("example.com",))])
        message, client = self.assertRejected(get(b"/", b"other.example"), 404, harness)
        self.assertTrue(message.body.strip().count(b"\n") >= 1, "4xx pages say why")
        self.assertFalse(client.closed)

    def test_client_error_page_says_why(self) -> None:
        message, _ = self.assertRejected(
            request(b"POST / HTTP/1.1", b"Host: example.com", b"Transfer-Encoding: gzip"), 501
        )
        self.assertNotIn(b"gzip", message.body)
        message = self.assertBadRequest(request(b"GET / HTTP/1.1", b"Host : example.com"))
        first, _, detail = message.body.partition(b"\n")
        self.assertEqual(first, b"400 Bad Request")
        self.assertTrue(detail.strip())

    def test_server_error_page_reveals_no_details(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        harness.refuse()
        message = self.assertErrorPage(client.received(), 502)
        self.assertEqual(message.body.strip(), b"502 Bad Gateway")

    def test_next_request_after_keep_alive_error(self) -> None:
        """After a 404 the connection stays usable for the next request."""
        harness = ProxyHarness(hosts=("example.com",))
        client = harness.client()
        client.send(get(b"/", b"other.example") + get(b"/", b"example.com"))
        self.assertEqual(harness.connect_attempts, 1)
        harness.accept().answer(response(body=b"ok"))
        statuses = [m.status for m in split_responses(client.received())]
        self.assertEqual(statuses, [404, 200])


class ForwardedRequestTests(ProxyTestCase):
    """
    What the backend receives.
    """

    def test_request_line_is_http11(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(request(b"GET /path?q=1 HTTP/1.0", b"Host: example.com"))
        self.assertEqual(self.forwarded(harness.accept()).start, b"GET /path?q=1 HTTP/1.1")

    def test_method_and_target_kept(self) -> None:
        harness = ProxyHarness()
        harness.client().send(request(b"DELETE /items/7?force=yes HTTP/1.1", b"Host: a.example"))
        self.assertEqual(
            self.forwarded(harness.accept()).start, b"DELETE /items/7?force=yes HTTP/1.1"
        )

    def test_original_host_kept(self) -> None:
        harness = ProxyHarness()
        harness.client().send(get(b"/", b"Example.com:8080"))
        self.assertEqual(self.forwarded(harness.accept()).get_all(b"host"), [b"Example.com:8080"])

    def test_head_in_pieces(self) -> None:
        """However a head is split across reads, the backend gets it once, whole."""
        head = get(b"/pieces", b"example.com")
        for sizes in ([3], [1, 2, 3], [len(head) - 4], [len(head) - 3], [len(head) - 1]):
            harness = ProxyHarness()
            client = harness.client()
            rest = head
            for size in sizes:
                client.send(rest[:size])
                rest = rest[size:]
                self.assertEqual(harness.connect_attempts, 0, sizes)
            client.send(rest)
            forwarded = self.forwarded(harness.accept())
            self.assertEqual(forwarded.start, b"GET /pieces HTTP/1.1", sizes)
            self.assertEqual(forwarded.get_all(b"host"), [b"example.com"])

    def test_empty_lines_before_the_head_are_ignored(self) -> None:
        harness = ProxyHarness()
        harness.client().send(b"\r\n\r\n" + get(b"/after", b"example.com"))
        self.assertEqual(self.forwarded(harness.accept()).start, b"GET /after HTTP/1.1")

    def test_absolute_form_target(self) -> None:
        """The authority of an absolute-form target becomes the Host; the path is sent."""
        harness = ProxyHarness()
        harness.client().send(
            request(b"GET http://example.org/a?b HTTP/1.1", b"Host: ignored.example")
        )
        message = self.forwarded(harness.accept())
        self.assertEqual(message.start, b"GET /a?b HTTP/1.1")
        self.assertEqual(message.get_all(b"host"), [b"example.org"])

    def test_backend_address_as_host(self) -> None:
        harness = ProxyHarness(preserve_host=False)
        harness.client().send(get(b"/", b"example.com"))
        self.assertEqual(self.forwarded(harness.accept()).get_all(b"host"), [b"127.0.0.1:8001"])

    def test_hop_by_hop_fields_removed(self) -> None:
        harness = ProxyHarness()
        harness.client().send(
            get(
                b"/",
                b"example.com",
                b"Connection: keep-alive",
                b"Keep-Alive: timeout=5",
                b"Proxy-Connection: keep-alive",
                b"TE: trailers",
                b"Trailer: X-Checksum",
                b"Upgrade: h2c",
                b"Accept: */*",
            )
        )
        message = self.forwarded(harness.accept())
        names = {n.lower() for n in message.names()}
        for hop in (
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"transfer-encoding",
            b"upgrade",
        ):
            self.assertNotIn(hop, names)
        self.assertEqual(message.get(b"accept"), b"*/*")

    def test_transfer_encoding_not_forwarded_as_is(self) -> None:
        """The client's Transfer-Encoding field is replaced by the proxy's own framing."""
        harness = ProxyHarness()
        harness.client().send(
            request(b"POST / HTTP/1.1", b"Host: example.com", b"Transfer-Encoding:  Chunked ")
            + b"0\r\n\r\n"
        )
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get_all(b"transfer-encoding"), [b"chunked"])

    def test_fields_named_in_connection_removed(self) -> None:
        harness = ProxyHarness()
        harness.client().send(
            post(
                b"hello",
                b"/",
                b"Connection: X-Secret, Host, Content-Length",
                b"X-Secret: 1",
                b"X-Public: 2",
            )
        )
        message = self.forwarded(harness.accept())
        self.assertIsNone(message.get(b"x-secret"))
        self.assertEqual(message.get(b"x-public"), b"2")
        self.assertEqual(message.get_all(b"host"), [b"example.com"])
        self.assertEqual(message.get_all(b"content-length"), [b"5"])
        self.assertEqual(message.body, b"hello")

    def test_repeated_fields_kept_in_order_with_case(self) -> None:
        harness = ProxyHarness()
        harness.client().send(
            get(
                b"/",
                b"example.com",
                b"x-tag: one",
                b"Accept: */*",
                b"X-TAG: two",
                b"X-Tag: three",
            )
        )
        message = self.forwarded(harness.accept())
        tags = [(n, v) for n, v in message.headers if n.lower() == b"x-tag"]
        self.assertEqual(tags, [(b"x-tag", b"one"), (b"X-TAG", b"two"), (b"X-Tag", b"three")])
        self.assertLess(message.names().index(b"x-tag"), message.names().index(b"Accept"))

    def test_forwarding_fields_added(self) -> None:
        harness = ProxyHarness()
        harness.client().send(get(b"/", b"example.com"))
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get_all(b"x-forwarded-for"), [CLIENT_IP.encode()])
        self.assertEqual(message.get_all(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(message.get_all(b"x-forwarded-host"), [b"example.com"])
        self.assertEqual(message.get_all(b"x-forwarded-port"), [b"8080"])
        self.assertEqual(
            message.get_all(b"forwarded"), [b"for=10.0.0.9;proto=http;host=example.com"]
        )
        self.assertEqual(message.get_all(b"via"), [b"1.1 twisted_rp"])

    def test_https_listener_scheme(self) -> None:
        harness = ProxyHarness(scheme="https")
        harness.client().send(get())
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get(b"x-forwarded-proto"), b"https")
        self.assertIn(b"proto=https", message.get(b"forwarded") or b"")

    def test_request_id_generated(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        backend = harness.accept()
        backend.answer(response())
        client.send(get())
        first, second = (
            parse_message(b"GET " + part).get(b"x-request-id")
            for part in backend.received().split(b"GET ")[1:]
        )
        assert first is not None and second is not None
        self.assertIsNotNone(HEX_ID.fullmatch(first), first)
        self.assertIsNotNone(HEX_ID.fullmatch(second), second)
        self.assertNotEqual(first, second)

    def test_valid_request_id_kept(self) -> None:
        harness = ProxyHarness()
        harness.client().send(get(b"/", b"example.com", b"X-Request-ID: abc-123"))
        self.assertEqual(self.forwarded(harness.accept()).get_all(b"x-request-id"), [b"abc-123"])

    def test_invalid_request_id_replaced(self) -> None:
        harness = ProxyHarness()
        harness.client().send(get(b"/", b"example.com", b"X-Request-ID: not valid <script>"))
        ids = self.forwarded(harness.accept()).get_all(b"x-request-id")
        self.assertEqual(len(ids), 1)
        self.assertIsNotNone(HEX_ID.fullmatch(ids[0]))

    def test_untrusted_forwarding_fields_replaced(self) -> None:
        harness = ProxyHarness()
        harness.client().send(
            get(
                b"/",
                b"example.com",
                b"X-Forwarded-For: 6.6.6.6",
                b"X-Forwarded-Proto: https",
                b"X-Forwarded-Host: evil.example",
                b"X-Forwarded-Port: 443",
                b"Forwarded: for=6.6.6.6",
            )
        )
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get_all(b"x-forwarded-for"), [b"10.0.0.9"])
        self.assertEqual(message.get_all(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(message.get_all(b"x-forwarded-host"), [b"example.com"])
        self.assertEqual(message.get_all(b"x-forwarded-port"), [b"8080"])
        self.assertEqual(
            message.get_all(b"forwarded"), [b"for=10.0.0.9;proto=http;host=example.com"]
        )

    def test_trusted_forwarding_fields_appended(self) -> None:
        settings = ProxySettings(headers=HeaderPolicy(trusted_proxies=("10.0.0.0/8",)))
        harness = ProxyHarness(settings=settings)
        harness.client().send(
            get(
                b"/",
                b"example.com",
                b"X-Forwarded-For: 1.1.1.1, 2.2.2.2",
                b"X-Forwarded-Proto: https",
                b"Forwarded: for=1.1.1.1",
                b"Via: 1.0 edge",
            )
        )
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get_all(b"x-forwarded-for"), [b"1.1.1.1, 2.2.2.2, 10.0.0.9"])
        self.assertEqual(message.get_all(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(
            message.get_all(b"forwarded"),
            [b"for=1.1.1.1, for=10.0.0.9;proto=http;host=example.com"],
        )
        self.assertEqual(message.get_all(b"via"), [b"1.0 edge, 1.1 twisted_rp"])

    def test_ipv6_client(self) -> None:
        harness = ProxyHarness()
        harness.client(ip="::1", ipv6=True).send(get())
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get(b"x-forwarded-for"), b"::1")
        self.assertEqual(message.get(b"forwarded"), b'for="[::1]";proto=http;host=example.com')

    def test_switches_off(self) -> None:
        policy = HeaderPolicy(x_forwarded=False, forwarded=False, via=False, request_id=False)
        harness = ProxyHarness(settings=ProxySettings(headers=policy))
        harness.client().send(get())
        message = self.forwarded(harness.accept())
        self.assertEqual(message.names(), [b"Host"])

    def test_each_switch_alone(self) -> None:
        switches = {
            "x_forwarded": b"x-forwarded-for",
            "forwarded": b"forwarded",
            "via": b"via",
            "request_id": b"x-request-id",
        }
        for switch, field in switches.items():
            policy = HeaderPolicy(**{switch: False})  # type: ignore[arg-type]
            harness = ProxyHarness(settings=ProxySettings(headers=policy))
            harness.client().send(get())
            names = {n.lower() for n in self.forwarded(harness.accept()).names()}
            self.assertNotIn(field, names, switch)
            self.assertEqual(len(names & set(switches.values())), 3, switch)

    def test_strip_prefix(self) -> None:
        harness = ProxyHarness(path_prefix="/api", strip_prefix=True)
        harness.client().send(get(b"/api/users?page=2"))
        self.assertEqual(self.forwarded(harness.accept()).start, b"GET /users?page=2 HTTP/1.1")

    def test_prefix_kept_without_strip(self) -> None:
        harness = ProxyHarness(path_prefix="/api")
        harness.client().send(get(b"/api/users"))
        self.assertEqual(self.forwarded(harness.accept()).start, b"GET /api/users HTTP/1.1")

    def test_content_length_body(self) -> None:
        harness = ProxyHarness()
        harness.client().send(post(b"hello world"))
        message = self.forwarded(harness.accept())
        self.assertEqual(message.get_all(b"content-length"), [b"11"])
        self.assertEqual(message.body, b"hello world")

    def test_content_length_body_in_pieces(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        data = post(b"hello world")
        client.send(data[:-8])
        backend = harness.accept()
        client.send(data[-8:-3])
        client.send(data[-3:])
        self.assertEqual(self.forwarded(backend).body, b"hello world")

    def test_chunked_body_rechunked(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(CHUNKED_HEAD + b"5;ext=1\r\nhello\r\n6\r\n world\r\n")
        backend = harness.accept()
        client.send(b"0\r\nX-Trailer: t\r\n\r\n")
        message = self.forwarded(backend)
        self.assertEqual(message.get_all(b"transfer-encoding"), [b"chunked"])
        self.assertIsNone(message.get(b"content-length"))
        self.assertNotIn(b"ext", message.body)
        self.assertEqual(dechunk(message.body), (b"hello world", b""))

    def test_expect_100_continue(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(
            request(
                b"PUT /file HTTP/1.1",
                b"Host: example.com",
                b"Expect: 100-continue",
                b"Content-Length: 5",
            )
        )
        self.assertEqual(client.received(), b"", "no 100 before a backend is ready")
        backend = harness.accept()
        self.assertEqual(client.take(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertIsNone(self.forwarded(backend).get(b"expect"))
        client.send(b"hello")
        self.assertEqual(self.forwarded(backend).body, b"hello")
        backend.answer(response(201, reason=b"Created"))
        self.assertEqual(parse_message(client.received()).status, 201)


class RoutingTests(ProxyTestCase):
    """
    The host and path the router is asked about.
    """

    def test_host_port_and_case_ignored(self) -> None:
        harness = ProxyHarness(hosts=("www.example.com",))
        harness.client().send(get(b"/", b"WWW.Example.COM:8080"))
        self.assertEqual(harness.connect_attempts, 1)

    def test_host_trailing_dot_ignored(self) -> None:
        harness = ProxyHarness(hosts=("www.example.com",))
        harness.client().send(get(b"/", b"www.example.com."))
        self.assertEqual(harness.connect_attempts, 1)

    def test_ipv6_literal_host(self) -> None:
        harness = ProxyHarness(hosts=("[::1]",))
        harness.client().send(get(b"/", b"[::1]:8080"))
        self.assertEqual(harness.connect_attempts, 1)

    def test_query_not_part_of_the_path(self) -> None:
        harness = ProxyHarness(path_prefix="/api")
        client = harness.client()
        client.send(get(b"/api?x=/y"))
        self.assertEqual(harness.connect_attempts, 1)
        client.send(get(b"/other?/api"))
        self.assertEqual(harness.connect_attempts, 1)

    def test_most_specific_route_serves(self) -> None:
        site = BackendPool("site", [Backend("site1", "127.0.0.1", 9001)])
        api = BackendPool("api", [Backend("api1", "127.0.0.1", 9002)])
        routes = [Route(site), Route(api, hosts=("www.example.com",), path_prefix="/api")]
        harness = ProxyHarness(routes=routes)
        harness.client().send(get(b"/api/users", b"www.example.com"))
        harness.client().send(get(b"/apiary", b"www.example.com"))
        harness.client().send(get(b"/api/users", b"other.example"))
        self.assertEqual(
            harness.connect_targets(),
            [("127.0.0.1", 9002), ("127.0.0.1", 9001), ("127.0.0.1", 9001)],
        )


class ResponseTests(ProxyTestCase):
    """
    What the client receives of a backend's response.
    """

    def test_status_line(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(), response(201, b"made", reason=b"Made It", version=b"HTTP/1.0")
        )
        message = parse_message(client.received())
        self.assertEqual(message.start, b"HTTP/1.1 201 Made It")
        self.assertEqual(message.body, b"made")

    def test_empty_reason(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(get(), b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 "))

    def test_content_length_response(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(get(), response(body=b"hello", headers=[b"X-App: 1"]))
        self.assertEqual(
            client.received(),
            b"HTTP/1.1 200 OK\r\nX-App: 1\r\nContent-Length: 5\r\n\r\nhello",
        )
        self.assertFalse(client.closed)

    def test_hop_by_hop_fields_removed(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(),
            response(
                body=b"ok",
                headers=[
                    b"Connection: X-Internal, keep-alive",
                    b"Keep-Alive: timeout=5",
                    b"Proxy-Connection: keep-alive",
                    b"Trailer: X-Sum",
                    b"Upgrade: h2c",
                    b"X-Internal: secret",
                    b"X-App: 1",
                ],
            ),
        )
        message = parse_message(client.received())
        self.assertEqual(
            message.headers, [(b"X-App", b"1"), (b"Content-Length", b"2")], message.headers
        )
        self.assertEqual(message.body, b"ok")

    def test_connection_keep_alive_from_backend_dropped(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(), response(body=b"ok", headers=[b"Connection: keep-alive"])
        )
        self.assertEqual(parse_message(client.received()).get(b"connection"), None)

    def test_repeated_response_fields_kept(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(), response(headers=[b"Set-Cookie: a=1", b"set-cookie: b=2", b"Vary: x"])
        )
        message = parse_message(client.received())
        self.assertEqual(message.headers[:2], [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2")])

    def test_chunked_response_rechunked(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        message = parse_message(client.received())
        self.assertEqual(message.get_all(b"transfer-encoding"), [b"chunked"])
        self.assertNotIn(b"ext", message.body)
        self.assertEqual(dechunk(message.body), (b"hello world", b""))
        self.assertFalse(client.closed)

    def test_chunked_response_to_http10_client(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            request(b"GET / HTTP/1.0", b"Host: example.com", b"Connection: keep-alive"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        message = parse_message(client.received())
        self.assertIsNone(message.get(b"transfer-encoding"))
        self.assertEqual(message.body, b"hello")
        self.assertTrue(client.closed)
        self.assertFalse(client.aborted)

    def test_unframed_response_chunked_for_http11(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhel")
        backend.answer(b"lo")
        backend.close()
        message = parse_message(client.take())
        self.assertEqual(message.get_all(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(dechunk(message.body), (b"hello", b""))
        self.assertFalse(client.closed)
        client.send(get(b"/next"))
        self.assertEqual(harness.connect_attempts, 2)

    def test_unframed_response_close_delimited_for_http10(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            request(b"GET / HTTP/1.0", b"Host: example.com", b"Connection: keep-alive"),
            b"HTTP/1.0 200 OK\r\n\r\nhello",
        )
        backend.close()
        message = parse_message(client.received())
        self.assertIsNone(message.get(b"transfer-encoding"))
        self.assertIsNone(message.get(b"content-length"))
        self.assertEqual(message.body, b"hello")
        self.assertTrue(client.closed)
        self.assertFalse(client.aborted)

    def test_head_response_keeps_content_length(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            request(b"HEAD / HTTP/1.1", b"Host: example.com"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        )
        self.assertEqual(client.take(), b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        client.send(get(b"/next"))
        backend.answer(response(body=b"next"))
        self.assertEqual(parse_message(client.take()).body, b"next")

    def test_head_response_with_chunked(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            request(b"HEAD / HTTP/1.1", b"Host: example.com"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        self.assertEqual(parse_message(client.received()).body, b"")
        self.assertFalse(client.closed)

    def assertBodiless(self, status_line: bytes) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), status_line + b"\r\nETag: x\r\n\r\n")
        message = parse_message(client.take())
        self.assertEqual(message.start, status_line)
        self.assertEqual(message.body, b"")
        self.assertIsNone(message.get(b"transfer-encoding"))
        client.send(get(b"/next"))
        backend.answer(response(body=b"next"))
        self.assertEqual(parse_message(client.take()).body, b"next")

    def test_204_has_no_body(self) -> None:
        self.assertBodiless(b"HTTP/1.1 204 No Content")

    def test_304_has_no_body(self) -> None:
        self.assertBodiless(b"HTTP/1.1 304 Not Modified")

    def test_103_relayed(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(),
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response(body=b"ok"),
        )
        hints, _, rest = client.received().partition(b"\r\n\r\n")
        self.assertEqual(hints, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>")
        self.assertEqual(parse_message(rest).body, b"ok")

    def test_103_not_relayed_to_http10(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            request(b"GET / HTTP/1.0", b"Host: example.com"),
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response(body=b"ok"),
        )
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_100_from_backend_swallowed(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            post(b"data"), b"HTTP/1.1 100 Continue\r\n\r\n" + response(body=b"ok")
        )
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(parse_message(client.received()).body, b"ok")

    def test_http10_client_closed_by_default(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            request(b"GET / HTTP/1.0", b"Host: example.com"), response(body=b"ok")
        )
        self.assertEqual(parse_message(client.received()).get(b"connection"), b"close")
        self.assertTrue(client.closed)

    def test_http10_client_without_host(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(request(b"GET / HTTP/1.0"), response(body=b"ok"))
        self.assertEqual(parse_message(client.received()).body, b"ok")

    def test_http10_client_keep_alive_when_asked(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            request(b"GET / HTTP/1.0", b"Host: example.com", b"Connection: keep-alive"),
            response(body=b"ok"),
        )
        self.assertEqual(parse_message(client.take()).get(b"connection"), b"keep-alive")
        self.assertFalse(client.closed)
        client.send(request(b"GET /2 HTTP/1.0", b"Host: example.com"))
        backend.answer(response(body=b"two"))
        self.assertEqual(parse_message(client.take()).body, b"two")
        self.assertTrue(client.closed)

    def test_client_connection_close(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(b"/", b"example.com", b"Connection: close"), response(body=b"ok")
        )
        message = parse_message(client.received())
        self.assertEqual(message.get(b"connection"), b"close")
        self.assertEqual(message.body, b"ok")
        self.assertTrue(client.closed)
        self.assertFalse(client.aborted)

    def test_closing_lets_go_of_the_producer(self) -> None:
        """
        The proxy unregisters its producer before closing: a TCP transport whose full buffer
        paused that producer would otherwise resume it when the buffer drains, and never
        close.
        """
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(b"/", b"example.com", b"Connection: close"), response(body=b"ok")
        )
        self.assertTrue(client.closed)
        self.assertIsNone(client.transport.producer)

    def test_client_connection_close_with_chunked_response(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(b"/", b"example.com", b"Connection: close"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        self.assertEqual(parse_message(client.received()).get(b"connection"), b"close")
        self.assertTrue(client.closed)


class PipeliningTests(ProxyTestCase):
    def test_answered_in_order(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get(b"/1") + get(b"/2") + get(b"/3"))
        backend = harness.accept()
        self.assertEqual(backend.take().count(b"GET "), 1, "one request at a time")
        backend.answer(response(body=b"one"))
        self.assertTrue(backend.take().startswith(b"GET /2 "))
        backend.answer(response(body=b"two"))
        self.assertTrue(backend.take().startswith(b"GET /3 "))
        backend.answer(response(body=b"three"))
        bodies = [m.body for m in split_responses(client.received())]
        self.assertEqual(bodies, [b"one", b"two", b"three"])
        self.assertEqual(harness.connect_attempts, 1)

    def test_error_in_the_middle_keeps_order(self) -> None:
        harness = ProxyHarness(hosts=("example.com",))
        client = harness.client()
        client.send(get(b"/1") + get(b"/2", b"unknown.example") + get(b"/3"))
        backend = harness.accept()
        backend.answer(response(body=b"one"))
        backend.answer(response(body=b"three"))
        statuses = [m.status for m in split_responses(client.received())]
        self.assertEqual(statuses, [200, 404, 200])

    def test_request_with_body_then_pipelined(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"hello") + get(b"/after"))
        backend = harness.accept()
        self.assertTrue(backend.take().endswith(b"\r\n\r\nhello"))
        backend.answer(response(body=b"one"))
        self.assertTrue(backend.take().startswith(b"GET /after "))

    def test_nothing_answered_after_connection_close(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get(b"/1", b"example.com", b"Connection: close") + get(b"/2"))
        backend = harness.accept()
        backend.answer(response(body=b"one"))
        self.assertEqual([m.body for m in split_responses(client.received())], [b"one"])
        self.assertTrue(client.closed)
        self.assertNotIn(b"GET /2", backend.received())

    def test_waiting_bytes_bounded(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(limits=Limits(max_header_bytes=1024)))
        client = harness.client()
        client.send(get(b"/1"))
        backend = harness.accept()
        client.send(get(b"/more") * 50)
        self.assertTrue(client.reading_paused)
        backend.answer(response(body=b"one"))
        self.assertFalse(client.reading_paused)
        self.assertIn(b"GET /more HTTP/1.1", backend.received())


class BackendFailureTests(ProxyTestCase):
    def test_refused_tries_another_backend(self) -> None:
        harness = ProxyHarness(backends=2)
        client = harness.client()
        client.send(get())
        harness.refuse()
        self.assertEqual(harness.connect_targets(), [("127.0.0.1", 8001), ("127.0.0.1", 8002)])
        harness.accept().answer(response(body=b"ok"))
        self.assertEqual(parse_message(client.received()).body, b"ok")

    def test_invalid_response_heads(self) -> None:
        """A backend's malformed or oversized head is a 502, whatever path reads it."""
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(200))
        for answer in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + many + b"\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: \x01\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n X: folded\r\n\r\nok",
            b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        ]:
            harness = ProxyHarness()
            client, backend = harness.exchange(get(), answer)
            self.assertErrorPage(client.received(), 502)
            self.assertTrue(backend.closed, answer)

    def test_refused_by_all_three_attempts(self) -> None:
        harness = ProxyHarness(backends=4)
        client = harness.client()
        client.send(get())
        for _ in range(3):
            harness.refuse()
        self.assertEqual(harness.connect_attempts, 3)
        self.assertErrorPage(client.received(), 502)

    def test_refused_by_the_only_backend(self) -> None:
        harness = ProxyHarness(backends=1)
        client = harness.client()
        client.send(get())
        while not client.received() and harness.connect_attempts <= 3:
            harness.refuse()
        self.assertLessEqual(harness.connect_attempts, 3)
        self.assertErrorPage(client.received(), 502)

    def test_connect_timeout(self) -> None:
        timeouts = Timeouts(backend_connect=2.5)
        harness = ProxyHarness(settings=ProxySettings(timeouts=timeouts))
        client = harness.client()
        client.send(get())
        self.assertEqual(harness.reactor.tcpClients[0][3], 2.5)
        harness.refuse(reason=ConnectTimeoutError())
        self.assertErrorPage(client.received(), 504)

    def test_first_byte_timeout(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(backend_first_byte=10)))
        client = harness.client()
        client.send(get())
        backend = harness.accept()
        harness.reactor.advance(9.9)
        self.assertEqual(client.received(), b"")
        harness.reactor.advance(0.1)
        self.assertErrorPage(client.received(), 504)
        self.assertTrue(backend.aborted)

    def test_first_byte_timeout_counts_from_end_of_request(self) -> None:
        harness = ProxyHarness(
            settings=ProxySettings(timeouts=Timeouts(backend_first_byte=10, client_body=60))
        )
        client = harness.client()
        client.send(post(b"0123456789")[:-5])
        backend = harness.accept()
        harness.reactor.advance(30)
        client.send(b"56789")
        harness.reactor.advance(9)
        self.assertEqual(client.received(), b"")
        backend.answer(response(body=b"ok"))
        self.assertEqual(parse_message(client.received()).body, b"ok")

    def test_invalid_response_head(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), b"HTTP/1.1 2OO OK\r\n\r\n")
        self.assertErrorPage(client.received(), 502)
        self.assertTrue(backend.aborted)

    def test_invalid_response_field(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(get(), b"HTTP/1.1 200 OK\r\nBad Field: x\r\n\r\n")
        self.assertErrorPage(client.received(), 502)

    def test_conflicting_response_lengths(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        self.assertErrorPage(client.received(), 502)

    def test_backend_closes_before_full_head(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), b"HTTP/1.1 200 OK\r\nContent-Le")
        backend.close()
        self.assertErrorPage(client.received(), 502)

    def test_backend_closes_without_answering(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        harness.accept().close()
        self.assertErrorPage(client.received(), 502)

    def test_backend_dies_mid_chunked_response(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        backend.close()
        self.assertTrue(client.aborted)
        body = parse_message(client.received()).body
        self.assertEqual(dechunk(body), (b"hello", None))

    def test_backend_dies_mid_content_length_response(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"
        )
        backend.reset()
        self.assertTrue(client.aborted)
        self.assertEqual(parse_message(client.received()).body, b"hello")

    def test_no_usable_backend(self) -> None:
        harness = ProxyHarness(routes=[Route(BackendPool("empty", []))])
        client = harness.client()
        client.send(get())
        self.assertEqual(harness.connect_attempts, 0)
        self.assertErrorPage(client.received(), 503)

    def test_reused_connection_closed_while_idle_is_retried(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(get(b"/2"))
        self.assertEqual(harness.connect_attempts, 1)
        backend.close()
        self.assertEqual(harness.connect_attempts, 2)
        fresh = harness.accept()
        self.assertTrue(fresh.received().startswith(b"GET /2 HTTP/1.1\r\n"))
        fresh.answer(response(body=b"two"))
        self.assertEqual(parse_message(client.received()).body, b"two")

    def test_retried_only_once(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(get(b"/2"))
        backend.close()
        harness.accept().close()
        self.assertEqual(harness.connect_attempts, 2)
        self.assertErrorPage(client.received(), 502)

    def test_non_idempotent_request_not_retried(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(request(b"POST /2 HTTP/1.1", b"Host: example.com"))
        backend.close()
        self.assertEqual(harness.connect_attempts, 1)
        self.assertErrorPage(client.received(), 502)

    def test_request_with_body_not_retried(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(
            request(b"PUT /2 HTTP/1.1", b"Host: example.com", b"Content-Length: 2", body=b"hi")
        )
        backend.close()
        self.assertEqual(harness.connect_attempts, 1)
        self.assertErrorPage(client.received(), 502)

    def test_first_use_not_retried(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        harness.accept().close()
        self.assertEqual(harness.connect_attempts, 1)
        self.assertErrorPage(client.received(), 502)

    def test_connection_closed_while_pooled_not_used(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        backend.close()
        client.send(get(b"/2"))
        self.assertEqual(harness.connect_attempts, 2)
        harness.accept().answer(response(body=b"two"))
        self.assertEqual(parse_message(client.received()).body, b"two")


class ClientGoneTests(ProxyTestCase):
    def test_client_gone_mid_upload(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"x" * 100)[:-90])
        backend = harness.accept()
        client.go_away()
        self.assertTrue(backend.aborted)
        harness.settle()
        harness.client().send(get())
        self.assertEqual(harness.connect_attempts, 2)

    def test_client_gone_mid_response(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
        )
        client.go_away()
        self.assertTrue(backend.aborted)
        harness.settle()
        harness.client().send(get())
        self.assertEqual(harness.connect_attempts, 2)

    def test_client_gone_before_backend_connected(self) -> None:
        """
        A connection that comes up after its client left carries nothing, so the next request
        may use it.
        """
        harness = ProxyHarness()
        client = harness.client()
        client.send(get(b"/abandoned"))
        client.go_away()
        backend = harness.accept()
        self.assertEqual(backend.received(), b"")
        harness.client().send(get(b"/next"))
        self.assertEqual(harness.connect_attempts, 1)
        self.assertTrue(backend.received().startswith(b"GET /next HTTP/1.1\r\n"))


class BackpressureTests(ProxyTestCase):
    def test_slow_client_pauses_backend(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart"
        )
        self.assertFalse(backend.reading_paused)
        client.fill_up()
        self.assertTrue(backend.reading_paused)
        client.drain()
        self.assertFalse(backend.reading_paused)
        backend.answer(b"x" * 95)
        self.assertEqual(parse_message(client.received()).body, b"start" + b"x" * 95)

    def test_slow_client_pauses_new_backend_connection(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        client.fill_up()
        backend = harness.accept()
        self.assertTrue(backend.reading_paused)
        client.drain()
        self.assertFalse(backend.reading_paused)

    def test_paused_connection_resumed_before_reuse(self) -> None:
        """A connection paused for a slow client is not handed, still paused, to the next."""
        harness = ProxyHarness()
        slow, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nstart"
        )
        slow.fill_up()
        backend.answer(b"12345")
        harness.client(ip="10.0.0.10").send(get(b"/next"))
        self.assertEqual(harness.connect_attempts, 1)
        self.assertFalse(backend.reading_paused)

    def test_full_backend_pauses_client_upload(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"x" * 100)[:-90])
        backend = harness.accept()
        self.assertFalse(client.reading_paused)
        backend.fill_up()
        self.assertTrue(client.reading_paused)
        backend.drain()
        self.assertFalse(client.reading_paused)
        client.send(b"x" * 90)
        self.assertEqual(self.forwarded(backend).body, b"x" * 100)

    def test_client_reading_resumes_when_request_complete(self) -> None:
        """A backend that stops reading after the body does not stall later requests."""
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"x" * 100)[:-90])
        backend = harness.accept()
        backend.fill_up()
        backend.drain()
        client.send(b"x" * 90)
        backend.answer(response(body=b"ok"))
        self.assertFalse(client.reading_paused)
        client.send(get(b"/next"))
        self.assertIn(b"GET /next HTTP/1.1", backend.received())


class ConnectionReuseTests(ProxyTestCase):
    def test_sequential_requests_share_a_connection(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(b"/1"), response(body=b"one"))
        client.send(get(b"/2"))
        self.assertEqual(harness.connect_attempts, 1)
        self.assertIn(b"GET /2 HTTP/1.1", backend.received())
        backend.answer(response(body=b"two"))
        self.assertEqual([m.body for m in split_responses(client.received())], [b"one", b"two"])

    def test_connection_shared_between_clients(self) -> None:
        harness = ProxyHarness()
        harness.exchange(get(b"/1"), response(body=b"one"))
        other = harness.client(ip="10.0.0.10")
        other.send(get(b"/2"))
        self.assertEqual(harness.connect_attempts, 1)

    def assertNotReused(self, harness: ProxyHarness, backend: FakeBackend) -> None:
        harness.settle()
        self.assertTrue(backend.closed)
        harness.client().send(get(b"/again"))
        self.assertEqual(harness.connect_attempts, 2)
        self.assertNotIn(b"/again", backend.received())

    def test_same_response_head_to_get_then_head(self) -> None:
        """A repeated response head is read again for a request whose method changes it."""
        harness = ProxyHarness()
        client = harness.client()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        client.send(get(b"/1"))
        backend = harness.accept()
        backend.answer(head + b"hello")
        self.assertEqual(parse_message(client.take()).body, b"hello")
        client.send(request(b"HEAD /1 HTTP/1.1", b"Host: example.com"))
        backend.answer(head)
        message = parse_message(client.take())
        self.assertEqual((message.get(b"Content-Length"), message.body), (b"5", b""))
        client.send(get(b"/1"))
        backend.answer(head + b"hello")
        self.assertEqual(parse_message(client.take()).body, b"hello")
        self.assertEqual(harness.connect_attempts, 1)

    def test_not_reused_after_error(self) -> None:
        harness = ProxyHarness()
        _, backend = harness.exchange(get(), b"HTTP/1.1 999 Nope\r\n\r\n")
        self.assertNotReused(harness, backend)

    def test_not_reused_with_unread_bytes(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), response(body=b"ok") + b"HTTP/1.1 200 OK")
        self.assertEqual(parse_message(client.received()).body, b"ok")
        self.assertNotReused(harness, backend)

    def test_not_reused_after_connection_close(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            get(), response(body=b"ok", headers=[b"Connection: close"])
        )
        self.assertEqual(parse_message(client.received()).get(b"connection"), None)
        self.assertFalse(client.closed)
        self.assertNotReused(harness, backend)

    def test_not_reused_after_read_until_close_body(self) -> None:
        harness = ProxyHarness()
        _, backend = harness.exchange(get(), b"HTTP/1.1 200 OK\r\n\r\nbody")
        backend.close()
        harness.client().send(get(b"/again"))
        self.assertEqual(harness.connect_attempts, 2)

    def test_not_reused_after_first_byte_timeout(self) -> None:
        harness = ProxyHarness()
        client = harness.client()
        client.send(get())
        backend = harness.accept()
        harness.reactor.advance(harness.factory.settings.timeouts.backend_first_byte)
        self.assertNotReused(harness, backend)

    def test_not_reused_when_response_came_before_request_body(self) -> None:
        """A backend that answers before reading the whole body leaves unread bytes behind."""
        harness = ProxyHarness()
        client = harness.client()
        client.send(post(b"x" * 100)[:-90])
        backend = harness.accept()
        backend.answer(response(413, b"too big", reason=b"Content Too Large"))
        self.assertEqual(parse_message(client.received()).status, 413)
        self.assertNotReused(harness, backend)

    def test_idle_connection_closed_after_backend_keepalive(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(backend_keepalive=4)))
        _, backend = harness.exchange(get(), response(body=b"ok"))
        harness.reactor.advance(3.9)
        self.assertFalse(backend.closed)
        harness.reactor.advance(0.1)
        self.assertTrue(backend.closed)
        harness.settle()
        harness.client().send(get(b"/later"))
        self.assertEqual(harness.connect_attempts, 2)


class TimeoutTests(ProxyTestCase):
    def test_default_client_keepalive(self) -> None:
        self.assertGreaterEqual(Timeouts().client_keepalive, 30)
        self.assertEqual(Timeouts().client_keepalive, 60)

    def test_idle_client_closed_after_client_keepalive(self) -> None:
        harness = ProxyHarness()
        client, _ = harness.exchange(get(), response(body=b"ok"))
        client.take()
        harness.reactor.advance(59.9)
        self.assertFalse(client.closed)
        harness.reactor.advance(0.1)
        self.assertTrue(client.closed)
        self.assertEqual(client.received(), b"", "an idle connection closes silently")

    def test_keepalive_timer_restarts_per_request(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(get(), response(body=b"ok"))
        harness.reactor.advance(50)
        client.send(get(b"/2"))
        backend.answer(response(body=b"ok"))
        harness.reactor.advance(50)
        self.assertFalse(client.closed)

    def test_partial_head_times_out_with_408(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(client_header=10)))
        client = harness.client()
        client.send(b"GET / HTTP/1.1\r\nHost: exa")
        harness.reactor.advance(9.9)
        self.assertFalse(client.closed)
        harness.reactor.advance(0.1)
        self.assertErrorPage(client.received(), 408)
        self.assertTrue(client.closed)
        self.assertEqual(harness.connect_attempts, 0)

    def test_slow_head_not_extended_by_more_bytes(self) -> None:
        """Trickling the head byte by byte does not reset the header timeout."""
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(client_header=10)))
        client = harness.client()
        for byte in b"GET / HTTP/1.1\r\nHost:":
            client.send(bytes([byte]))
            harness.reactor.advance(0.5)
        self.assertErrorPage(client.received(), 408)

    def test_backend_idle_during_response_body(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(backend_idle=20)))
        client, backend = harness.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart"
        )
        harness.reactor.advance(19)
        backend.answer(b"more")
        harness.reactor.advance(19)
        self.assertFalse(client.closed)
        harness.reactor.advance(1)
        self.assertTrue(client.aborted)
        self.assertTrue(backend.aborted)

    def test_client_body_timeout(self) -> None:
        harness = ProxyHarness(settings=ProxySettings(timeouts=Timeouts(client_body=20)))
        client = harness.client()
        client.send(post(b"x" * 100)[:-90])
        backend = harness.accept()
        harness.reactor.advance(20)
        self.assertErrorPage(client.received(), 408)
        self.assertTrue(backend.aborted)


class UpgradeTests(ProxyTestCase):
    UPGRADE = get(
        b"/ws",
        b"example.com",
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Key: abc",
    )

    def test_upgrade_headers_forwarded(self) -> None:
        harness = ProxyHarness()
        harness.client().send(self.UPGRADE)
        message = self.forwarded(harness.accept())
        self.assertEqual([v.lower() for v in message.get_all(b"connection")], [b"upgrade"])
        self.assertEqual(message.get_all(b"upgrade"), [b"websocket"])
        self.assertEqual(message.get(b"sec-websocket-key"), b"abc")

    def test_raw_relay_after_101(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            self.UPGRADE,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Accept: xyz\r\n\r\nserver-hello",
        )
        head, _, rest = client.take().partition(b"\r\n\r\n")
        message = parse_message(head + b"\r\n\r\n")
        self.assertEqual(message.start, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual([v.lower() for v in message.get_all(b"connection")], [b"upgrade"])
        self.assertEqual(message.get_all(b"upgrade"), [b"websocket"])
        self.assertEqual(message.get(b"sec-websocket-accept"), b"xyz")
        self.assertEqual(rest, b"server-hello")
        backend.take()
        client.send(b"\x81\x05hello GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(backend.take(), b"\x81\x05hello GET / HTTP/1.1\r\n\r\n")
        backend.answer(b"\x81\x02hi")
        self.assertEqual(client.take(), b"\x81\x02hi")
        harness.reactor.advance(3600)
        self.assertFalse(client.closed, "a tunnel has no HTTP timeouts")
        backend.close()
        self.assertTrue(client.closed)

    def test_client_closing_tunnel_closes_backend(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(
            self.UPGRADE,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n",
        )
        client.go_away()
        self.assertTrue(backend.closed)

    def test_upgrade_refused_with_200(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.exchange(self.UPGRADE, response(body=b"no upgrade"))
        message = parse_message(client.take())
        self.assertEqual(message.status, 200)
        self.assertEqual(message.body, b"no upgrade")
        self.assertFalse(client.closed)
        client.send(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(harness.connect_attempts, 1)
        self.assertIn(b"GET /next HTTP/1.1", backend.received())


@implementer(IAuthenticator)
class ScriptedAuthenticator:
    def __init__(self, verdict: object) -> None:
        self.verdict = verdict
        self.seen: list[ProxyRequest] = []

    def authenticate(self, request: ProxyRequest) -> object:
        self.seen.append(request)
        return self.verdict


@implementer(IRequestRewriter)
class AddHeader:
    def rewrite_request(self, request: ProxyRequest) -> None:
        request.head.headers.add(b"X-User", (request.identity or "anonymous").encode())
        request.head.target = b"/rewritten" + request.head.target


@implementer(IResponseRewriter)
class StampResponse:
    def __init__(self) -> None:
        self.backends: list[str] = []

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        response.headers.add(b"X-Served-By", request.backend.name.encode())
        response.headers.remove(b"Server")
        self.backends.append(request.backend.name)


@implementer(IAccessLog)
class RecordingAccessLog:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class HookTests(ProxyTestCase):
    def test_interfaces(self) -> None:
        verifyObject(IAuthenticator, ScriptedAuthenticator(None))
        verifyObject(IRequestRewriter, AddHeader())
        verifyObject(IResponseRewriter, StampResponse())
        verifyObject(IAccessLog, RecordingAccessLog())

    def test_authenticator_allows(self) -> None:
        authenticator = ScriptedAuthenticator(None)
        harness = ProxyHarness(authenticators=(authenticator,))
        client, _ = harness.exchange(get(b"/secret"), response(body=b"ok"))
        self.assertEqual(parse_message(client.received()).body, b"ok")
        (seen,) = authenticator.seen
        self.assertEqual(seen.client_ip, CLIENT_IP)
        self.assertEqual(seen.host, "example.com")

    def test_authenticator_answers(self) -> None:
        challenge = ErrorResponse(
            401, b"log in\n", Headers.of((b"WWW-Authenticate", b'Basic realm="x"'))
        )
        harness = ProxyHarness(authenticators=(ScriptedAuthenticator(challenge),))
        client = harness.client()
        client.send(get(b"/secret"))
        self.assertEqual(harness.connect_attempts, 0)
        message = parse_message(client.received())
        self.assertEqual(message.start, b"HTTP/1.1 401 Unauthorized")
        self.assertEqual(message.get(b"www-authenticate"), b'Basic realm="x"')
        self.assertEqual(message.body, b"log in\n")
        self.assertEqual(message.get(b"content-length"), b"7")
        self.assertFalse(client.closed)

    def test_authenticators_in_order(self) -> None:
        denied = ScriptedAuthenticator(ErrorResponse(403, b"no\n"))
        never = ScriptedAuthenticator(None)
        first = ScriptedAuthenticator(None)
        harness = ProxyHarness(authenticators=(first, denied, never))
        client = harness.client()
        client.send(get())
        self.assertEqual((len(first.seen), len(denied.seen), len(never.seen)), (1, 1, 0))
        self.assertEqual(parse_message(client.received()).status, 403)

    def test_deferred_allow(self) -> None:
        verdict: Deferred[ErrorResponse | None] = Deferred()
        harness = ProxyHarness(authenticators=(ScriptedAuthenticator(verdict),))
        client = harness.client()
        client.send(get())
        self.assertEqual(harness.connect_attempts, 0)
        verdict.callback(None)
        harness.accept().answer(response(body=b"ok"))
        self.assertEqual(parse_message(client.received()).body, b"ok")

    def test_deferred_answer(self) -> None:
        verdict: Deferred[ErrorResponse | None] = Deferred()
        harness = ProxyHarness(authenticators=(ScriptedAuthenticator(verdict),))
        client = harness.client()
        client.send(get())
        verdict.callback(ErrorResponse(403, b"forbidden\n"))
        self.assertEqual(harness.connect_attempts, 0)
        self.assertEqual(parse_message(client.received()).start, b"HTTP/1.1 403 Forbidden")

    def test_failing_authenticator_is_500_without_details(self) -> None:
        verdict: Deferred[ErrorResponse | None] = Deferred()
        harness = ProxyHarness(authenticators=(ScriptedAuthenticator(verdict),))
        client = harness.client()
        client.send(get())
        verdict.errback(RuntimeError("database password is hunter2"))
        self.assertEqual(harness.connect_attempts, 0)
        message = parse_message(client.received())
        self.assertEqual(message.status, 500)
        self.assertNotIn(b"hunter2", client.received())
        self.flushLoggedErrors(RuntimeError)

    def test_request_rewriter(self) -> None:
        harness = ProxyHarness(request_rewriters=(AddHeader(),))
        harness.client().send(get(b"/page"))
        message = self.forwarded(harness.accept())
        self.assertEqual(message.start, b"GET /rewritten/page HTTP/1.1")
        self.assertEqual(message.get(b"x-user"), b"anonymous")

    def test_response_rewriter(self) -> None:
        stamp = StampResponse()
        harness = ProxyHarness(response_rewriters=(stamp,))
        client, _ = harness.exchange(get(), response(body=b"ok", headers=[b"Server: leaky/1.0"]))
        message = parse_message(client.received())
        self.assertEqual(message.get(b"x-served-by"), b"b1")
        self.assertIsNone(message.get(b"server"))
        self.assertEqual(message.body, b"ok")
        self.assertEqual(stamp.backends, ["b1"])

    def test_response_rewriter_not_called_for_1xx(self) -> None:
        stamp = StampResponse()
        harness = ProxyHarness(response_rewriters=(stamp,))
        harness.exchange(get(), b"HTTP/1.1 103 Early Hints\r\n\r\n" + response(body=b"ok"))
        self.assertEqual(stamp.backends, ["b1"])

    def test_access_log_once_per_request(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(access_log=access_log)
        client, backend = harness.exchange(get(b"/a"), response(body=b"hello"))
        client.send(get(b"/b"))
        backend.answer(response(404, b"gone", reason=b"Not Found"))
        ids = [
            parse_message(b"GET " + part).get(b"x-request-id")
            for part in backend.received().split(b"GET ")[1:]
        ]
        first, second = access_log.records
        self.assertEqual((first.status, first.bytes_sent, first.backend), (200, 5, "b1"))
        self.assertEqual((second.status, second.bytes_sent, second.backend), (404, 4, "b1"))
        self.assertEqual([first.request_id.encode(), second.request_id.encode()], ids)
        self.assertEqual((first.method, first.target, first.pool), ("GET", "/a", "web"))

    def test_access_log_once_across_retries(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(backends=2, access_log=access_log)
        client = harness.client()
        client.send(get())
        harness.refuse()
        harness.accept().answer(response(body=b"ok"))
        self.assertEqual([(r.status, r.backend) for r in access_log.records], [(200, "b2")])

    def test_access_log_when_client_goes_away(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(access_log=access_log)
        client, _ = harness.exchange(get(), b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
        client.go_away()
        harness.settle()
        self.assertEqual(len(access_log.records), 1)

    def test_access_log_for_backend_failure(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(access_log=access_log)
        client = harness.client()
        client.send(get())
        harness.refuse()
        (record,) = access_log.records
        self.assertEqual(record.status, 502)

    def test_access_log_for_request_without_route(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(
            routes=[Route(BackendPool("web", []), hosts=("example.com",))], access_log=access_log
        )
        harness.client().send(get(b"/", b"other.example"))
        self.assertEqual([(r.status, r.host) for r in access_log.records], [(404, "other.example")])

    def test_access_log_for_malformed_request(self) -> None:
        access_log = RecordingAccessLog()
        harness = ProxyHarness(access_log=access_log)
        harness.client().send(request(b"GET / HTTP/1.1", b"Host : example.com"))
        self.assertEqual([r.status for r in access_log.records], [400])


class DeadlineTests(SynchronousTestCase):
    """The connection timer: restarting later is cheap, restarting earlier is exact."""

    def deadline(self) -> tuple[Clock, Deadline, list[float]]:
        clock = Clock()
        expired: list[float] = []
        return clock, Deadline(clock, lambda: expired.append(clock.seconds())), expired

    def test_later_restarts_move_the_expiry(self) -> None:
        clock, deadline, expired = self.deadline()
        deadline.restart(60)
        clock.advance(10)
        deadline.restart(60)
        # Not moved (moving a reactor's call costs a search of its timers), ...
        [call] = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 60.0)
        clock.advance(50)
        self.assertEqual(expired, [])
        # ... it fires early and re-arms itself for what is left.
        clock.advance(9.5)
        self.assertEqual(expired, [])
        clock.advance(0.5)
        self.assertEqual(expired, [70.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_earlier_restart_expires_earlier(self) -> None:
        clock, deadline, expired = self.deadline()
        deadline.restart(60)
        clock.advance(10)
        deadline.restart(30)
        clock.advance(30)
        self.assertEqual(expired, [40.0])

    def test_stop_and_restart(self) -> None:
        clock, deadline, expired = self.deadline()
        deadline.restart(5)
        deadline.stop()
        clock.advance(10)
        self.assertEqual((expired, clock.getDelayedCalls()), ([], []))
        deadline.restart(5)
        clock.advance(5)
        self.assertEqual(expired, [15.0])
