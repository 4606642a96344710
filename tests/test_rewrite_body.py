"""
Response body filters: L{Substitute}, L{Gzip} and L{NoStore} on their own, and on a route of a
real L{HTTPProxyFactory} in memory.
"""

from __future__ import annotations

import random
import re
import zlib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.helpers import ProxyHarness, dechunk, get, parse_message, response
from twisted_rp.http.message import Headers, ProxyRequest, RequestHead, ResponseHead
from twisted_rp.http.response import FilterChain
from twisted_rp.interfaces import IBodyTransform, IResponseBodyFilter, IResponseRewriter
from twisted_rp.rewrite.body import Gzip, NoStore, Substitute, accepts_gzip


def request(*fields: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of(*fields))
    return ProxyRequest(head, "192.0.2.1", 40000, "http", "example.com")


def head(status: int = 200, *fields: tuple[bytes, bytes]) -> ResponseHead:
    return ResponseHead(b"HTTP/1.1", status, b"OK", Headers.of(*fields))


HTML = (b"Content-Type", b"text/html; charset=utf-8")
GZIP_OK = (b"Accept-Encoding", b"gzip, deflate, br")


def gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 16 + zlib.MAX_WBITS)


class SubstituteTests(SynchronousTestCase):
    rules = [(b"http://backend:8001", b"https://www.example.com"), (b"back", b"front")]

    def transform(self, rules: list[tuple[bytes, bytes]] | None = None) -> IBodyTransform:
        found = Substitute(rules or self.rules).start(request(), head(200, HTML))
        assert found is not None
        return found

    def test_interfaces(self) -> None:
        substitute = Substitute(self.rules)
        self.assertTrue(verifyObject(IResponseBodyFilter, substitute))
        self.assertTrue(verifyObject(IBodyTransform, self.transform()))

    def test_same_result_as_one_pass_however_the_body_is_cut(self) -> None:
        rules = [(b"abc", b"X"), (b"abcd", b"LONG"), (b"cab", b"y"), (b"b", b"")]
        body = bytes(random.Random(7).choice(b"abcd") for _ in range(2000))
        table = dict(rules)
        # Leftmost, the longest at a position, no overlaps.
        expected = re.sub(b"abcd|abc|cab|b", lambda m: table[m.group()], body)
        self.assert_cut_anyhow(rules, body, expected)

    def test_many_rules_however_the_body_is_cut(self) -> None:
        # Past eight search strings, one regular expression finds them all.
        searches = [b"ab", b"abc", b"ca", b"dd", b"bd", b"cdb", b"dab", b"cc", b"bcd", b"a"]
        rules = [(search, b"<%d>" % i) for i, search in enumerate(searches)]
        body = bytes(random.Random(9).choice(b"abcd") for _ in range(2000))
        table = dict(rules)
        alternatives = b"|".join(sorted(searches, key=len, reverse=True))
        expected = re.sub(alternatives, lambda m: table[m.group()], body)
        self.assert_cut_anyhow(rules, body, expected)

    def test_a_shorter_match_waits_for_a_longer_one(self) -> None:
        rng = random.Random(10)
        body = b"".join(rng.choice([b"ab", b"ab", b"xy", b"c", b"d", b"abcd"]) for _ in range(800))
        rules = [(b"ab", b"1"), (b"abcd", b"2"), (b"zz", b"3")]
        expected = re.sub(b"abcd|ab", lambda m: b"2" if m.group() == b"abcd" else b"1", body)
        self.assert_cut_anyhow(rules, body, expected)

    def test_one_rule_however_the_body_is_cut(self) -> None:
        body = bytes(random.Random(8).choice(b"ab") for _ in range(2000))
        self.assert_cut_anyhow([(b"aba", b"<>")], body, body.replace(b"aba", b"<>"))

    def assert_cut_anyhow(
        self, rules: list[tuple[bytes, bytes]], body: bytes, expected: bytes
    ) -> None:
        for seed in range(30):
            rng = random.Random(seed)
            transform = self.transform(rules)
            out = []
            position = 0
            while position < len(body):
                size = rng.choice([1, 2, 3, 5, 64])
                out.append(transform.feed(body[position : position + size]))
                out.append(transform.flush())
                position += size
            out.append(transform.finish())
            self.assertEqual(b"".join(out), expected, f"cut with seed {seed}")

    def test_match_split_across_reads(self) -> None:
        transform = self.transform()
        first = transform.feed(b"<a href='http://back")
        second = transform.feed(b"end:8001/x'>")
        self.assertEqual(
            first + second + transform.finish(), b"<a href='https://www.example.com/x'>"
        )

    def test_holds_back_less_than_the_longest_search_string(self) -> None:
        transform = self.transform()
        longest = len(b"http://backend:8001")
        for _ in range(100):
            out = transform.feed(b"y" * 1000)
            self.assertGreaterEqual(len(out), 1000 - (longest - 1))
        self.assertEqual(len(transform.finish()), longest - 1)

    def test_only_text_types_and_unencoded_bodies(self) -> None:
        substitute = Substitute(self.rules)
        self.assertIsNone(substitute.start(request(), head(200, (b"Content-Type", b"image/png"))))
        self.assertIsNone(substitute.start(request(), head(200)))
        self.assertIsNone(
            substitute.start(request(), head(200, HTML, (b"Content-Encoding", b"gzip")))
        )
        self.assertIsNone(substitute.start(request(), head(206, HTML)))
        self.assertIsNone(
            substitute.start(request(), head(200, HTML, (b"Cache-Control", b"no-transform")))
        )
        self.assertIsNotNone(
            substitute.start(request(), head(200, (b"Content-Type", b"Application/JSON")))
        )

    def test_validators_of_the_backend_bytes_are_dropped(self) -> None:
        response_head = head(200, HTML, (b"ETag", b'"v1"'), (b"Last-Modified", b"x"))
        Substitute(self.rules).start(request(), response_head)
        self.assertNotIn(b"etag", response_head.headers)
        self.assertNotIn(b"last-modified", response_head.headers)

    def test_asks_the_backend_for_an_unencoded_body(self) -> None:
        proxied = request(GZIP_OK)
        Substitute(self.rules).prepare_request(proxied)
        self.assertNotIn(b"accept-encoding", proxied.head.headers)

    def test_bad_rules(self) -> None:
        self.assertRaises(ValueError, Substitute, [])
        self.assertRaises(ValueError, Substitute, [(b"", b"x")])
        self.assertRaises(ValueError, Substitute, [("text", b"x")])
        self.assertRaises(ValueError, Substitute, [(b"a", b"b")], content_types=["html"])


class AcceptEncodingTests(SynchronousTestCase):
    def test_weights(self) -> None:
        for value, accepted in [
            (b"gzip", True),
            (b"GZIP", True),
            (b"deflate, gzip;q=0.5", True),
            (b"gzip;q=0", False),
            (b"gzip; q=0.000", False),
            (b"gzip;q=0, *", False),
            (b"*", True),
            (b"*;q=0", False),
            (b"br, *;q=0.1", True),
            (b"identity", False),
            (b"br", False),
            (b"x-gzip", True),
            (b"", False),
            (None, False),
        ]:
            self.assertEqual(accepts_gzip(value), accepted, value)


class GzipTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        gzip = Gzip()
        self.assertTrue(verifyObject(IResponseBodyFilter, gzip))
        transform = gzip.start(request(GZIP_OK), head(200, HTML))
        self.assertTrue(verifyObject(IBodyTransform, transform))

    def test_headers_of_a_compressed_response(self) -> None:
        response_head = head(200, HTML, (b"ETag", b'"v1"'), (b"Vary", b"Cookie"))
        self.assertIsNotNone(Gzip().start(request(GZIP_OK), response_head))
        headers = response_head.headers
        self.assertEqual(headers.get(b"content-encoding"), b"gzip")
        self.assertEqual(headers.tokens(b"vary"), [b"cookie", b"accept-encoding"])
        self.assertEqual(headers.get(b"etag"), b'W/"v1"')

    def test_vary_even_when_not_compressed(self) -> None:
        for client in [request(), request((b"Accept-Encoding", b"gzip;q=0"))]:
            response_head = head(200, HTML)
            self.assertIsNone(Gzip().start(client, response_head))
            self.assertEqual(response_head.headers.get(b"vary"), b"Accept-Encoding")
            self.assertNotIn(b"content-encoding", response_head.headers)

    def test_skipped(self) -> None:
        gzip = Gzip(min_length=100)
        client = request(GZIP_OK)
        cases = [
            head(200, (b"Content-Type", b"image/png")),
            head(200),
            head(200, HTML, (b"Content-Encoding", b"br")),
            head(200, HTML, (b"Cache-Control", b"public, no-transform")),
            head(200, HTML, (b"Content-Length", b"99")),
            head(206, HTML, (b"Content-Range", b"bytes 0-9/100")),
        ]
        for response_head in cases:
            self.assertIsNone(gzip.start(client, response_head), response_head)
            self.assertNotEqual(response_head.headers.get(b"content-encoding"), b"gzip")
        self.assertIsNotNone(gzip.start(client, head(200, HTML, (b"Content-Length", b"100"))))
        self.assertIsNotNone(gzip.start(client, head(200, (b"Content-Type", b"text/x-custom"))))

    def test_no_vary_added_twice(self) -> None:
        response_head = head(200, HTML, (b"Vary", b"accept-encoding"))
        Gzip().start(request(GZIP_OK), response_head)
        self.assertEqual(response_head.headers.get_all(b"vary"), [b"accept-encoding"])

    def test_every_flush_can_be_decoded_at_once(self) -> None:
        transform = Gzip(level=9).start(request(GZIP_OK), head(200, HTML))
        assert transform is not None
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        for part in [b"<html><head>", b"<title>x</title></head>", b"<body>" + b"a" * 5000]:
            sent = transform.feed(part) + transform.flush()
            self.assertEqual(decoder.decompress(sent), part)
        decoder.decompress(transform.finish())
        self.assertTrue(decoder.eof)

    def test_small_window_for_a_small_body(self) -> None:
        for length in [1024, 5000, 17000, 40000]:
            body = bytes(random.Random(length).choice(b"abcdefgh <>") for _ in range(length))
            response_head = head(200, HTML, (b"Content-Length", b"%d" % length))
            transform = Gzip().start(request(GZIP_OK), response_head)
            assert transform is not None
            out = transform.feed(body[:700]) + transform.flush() + transform.feed(body[700:])
            self.assertEqual(gunzip(out + transform.finish()), body)

    def test_accept_encoding_kept_by_substitute(self) -> None:
        proxied = request(GZIP_OK)
        Substitute([(b"a", b"b")]).prepare_request(proxied)
        self.assertIsNotNone(Gzip().start(proxied, head(200, HTML)))

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, Gzip, level=0)
        self.assertRaises(ValueError, Gzip, min_length=-1)


class NoStoreTests(SynchronousTestCase):
    def test_replaces_caching_fields(self) -> None:
        no_store = NoStore()
        self.assertTrue(verifyObject(IResponseRewriter, no_store))
        response_head = head(
            200, (b"Cache-Control", b"public, max-age=3600"), (b"Expires", b"Thu, 01 Dec 2033")
        )
        no_store.rewrite_response(request(), response_head)
        self.assertEqual(response_head.headers.get_all(b"cache-control"), [b"no-store"])
        self.assertNotIn(b"expires", response_head.headers)


PAGE = b"<html>" + b"<p>served by http://backend:8001/</p>" * 200 + b"</html>"


def html_response(body: bytes = PAGE, *fields: bytes) -> bytes:
    return response(200, body, [b"Content-Type: text/html", *fields])


class ThroughTheProxyTests(SynchronousTestCase):
    def test_gzip_reframes_as_chunked(self) -> None:
        proxy = ProxyHarness(response_body_filters=[Gzip()])
        client, backend = proxy.exchange(get(b"/", b"example.com", b"Accept-Encoding: gzip"), b"")
        self.assertIn(b"accept-encoding: gzip", backend.received().lower())
        answer = html_response()
        # The body arrives in three reads: each read's output is sent at once.
        backend.answer(answer[:100])
        backend.answer(answer[100:3000])
        partial = parse_message(client.received())
        self.assertGreater(len(gunzip_prefix(dechunk(partial.body)[0])), 2000)
        backend.answer(answer[3000:])
        message = parse_message(client.received())
        self.assertIsNone(message.get(b"content-length"))
        self.assertEqual(message.get(b"transfer-encoding"), b"chunked")
        self.assertEqual(message.get(b"content-encoding"), b"gzip")
        self.assertEqual(message.get(b"vary"), b"Accept-Encoding")
        payload, after = dechunk(message.body)
        self.assertEqual(after, b"")
        self.assertEqual(gunzip(payload), PAGE)
        self.assertLess(len(payload), len(PAGE) / 10)
        self.assertFalse(client.closed)

    def test_http_10_client_gets_a_close_delimited_body(self) -> None:
        proxy = ProxyHarness(response_body_filters=[Gzip()])
        client, _ = proxy.exchange(
            b"GET / HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n"
            b"Accept-Encoding: gzip\r\n\r\n",
            html_response(),
        )
        message = parse_message(client.received())
        self.assertIsNone(message.get(b"transfer-encoding"))
        self.assertEqual(message.get(b"connection"), b"close")
        self.assertEqual(gunzip(message.body), PAGE)
        self.assertTrue(client.closed)

    def test_substitute_then_gzip(self) -> None:
        proxy = ProxyHarness(
            response_body_filters=[
                Substitute([(b"http://backend:8001", b"https://www.example.com")]),
                Gzip(),
            ]
        )
        client, backend = proxy.exchange(
            get(b"/", b"example.com", b"Accept-Encoding: gzip"), html_response()
        )
        # The backend is asked for a body the substitution can read.
        self.assertNotIn(b"accept-encoding", backend.received().lower())
        message = parse_message(client.received())
        self.assertEqual(message.get(b"content-encoding"), b"gzip")
        self.assertEqual(
            gunzip(dechunk(message.body)[0]),
            PAGE.replace(b"http://backend:8001", b"https://www.example.com"),
        )

    def test_bodiless_responses_are_untouched(self) -> None:
        for request_bytes, answer in [
            (b"HEAD / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n", html_response()),
            (get(b"/", b"a", b"Accept-Encoding: gzip"), b"HTTP/1.1 204 No Content\r\n\r\n"),
            (
                get(b"/", b"a", b"Accept-Encoding: gzip"),
                b"HTTP/1.1 304 Not Modified\r\nContent-Type: text/html\r\n\r\n",
            ),
            (get(b"/", b"a", b"Accept-Encoding: gzip"), html_response(b"")),
        ]:
            proxy = ProxyHarness(response_body_filters=[Gzip(min_length=0)])
            client, _ = proxy.exchange(request_bytes, answer)
            message = parse_message(client.received())
            self.assertIsNone(message.get(b"content-encoding"), answer)
            self.assertIsNone(message.get(b"transfer-encoding"), answer)
            self.assertEqual(message.body, b"")
            self.assertFalse(client.closed)

    def test_upgrade_tunnel_is_not_filtered(self) -> None:
        proxy = ProxyHarness(response_body_filters=[Substitute([(b"ping", b"PONG")])])
        client, _ = proxy.exchange(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Type: text/html\r\n\r\nping",
        )
        self.assertTrue(client.received().endswith(b"\r\n\r\nping"))

    def test_backpressure_still_pauses_the_backend(self) -> None:
        proxy = ProxyHarness(response_body_filters=[Substitute([(b"a", b"b")])])
        client, backend = proxy.exchange(
            get(), b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"
        )
        client.fill_up()
        self.assertTrue(backend.reading_paused)
        client.drain()
        self.assertFalse(backend.reading_paused)
        backend.answer(b"a" * 10)
        self.assertEqual(dechunk(parse_message(client.received()).body), (b"b" * 10, b""))

    def test_a_failing_filter_aborts_the_client_connection(self) -> None:
        class Broken:
            def feed(self, data: bytes) -> bytes:
                raise RuntimeError("broken")

            flush = finish = lambda self: b""

        class BrokenFilter:
            def prepare_request(self, request: ProxyRequest) -> None:
                pass

            def start(self, request: ProxyRequest, response: ResponseHead) -> Broken:
                return Broken()

        proxy = ProxyHarness(response_body_filters=[BrokenFilter()])
        client, backend = proxy.exchange(get(), html_response())
        # Head and body came in one read: nothing was sent before the abort.
        self.assertEqual(client.received(), b"")
        self.assertTrue(client.aborted)
        self.assertTrue(backend.aborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_without_filters_the_response_is_forwarded_as_it_came(self) -> None:
        proxy = ProxyHarness()
        client, _ = proxy.exchange(get(b"/", b"a", b"Accept-Encoding: gzip"), html_response())
        message = parse_message(client.received())
        self.assertEqual(message.get(b"content-length"), b"%d" % len(PAGE))
        self.assertEqual(message.body, PAGE)


class FilterChainTests(SynchronousTestCase):
    def test_what_one_releases_reaches_the_next(self) -> None:
        substitute = Substitute([(b"abcdef", b"X")]).start(request(), head(200, HTML))
        gzip = Gzip().start(request(GZIP_OK), head(200, HTML))
        assert substitute is not None and gzip is not None
        chain = FilterChain([substitute, gzip])
        self.assertTrue(verifyObject(IBodyTransform, chain))
        out = chain.feed(b"123abc") + chain.flush() + chain.feed(b"def456") + chain.finish()
        self.assertEqual(gunzip(out), b"123X456")


def gunzip_prefix(data: bytes) -> bytes:
    """What a streaming client can decode of a gzip stream that has not ended."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
