"""
Tests for L{twisted_rp.http.forwarding}: the header rules applied to every forwarded request.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.forwarding import (
    HOP_BY_HOP,
    RequestForwarding,
    new_request_id,
    remove_hop_by_hop,
)
from twisted_rp.http.message import Headers
from twisted_rp.settings import HeaderPolicy

HEX_ID = re.compile(r"[0-9a-f]{32}")
CLIENT = "192.0.2.7"


def forward(
    *lines: bytes,
    policy: HeaderPolicy = HeaderPolicy(),
    client_ip: str = CLIENT,
    scheme: str = "http",
    host: bytes | None = b"example.com",
    local_port: int = 8080,
    keep: frozenset[bytes] = frozenset(),
    raw: bool = True,
) -> tuple[list[tuple[bytes, bytes]], str]:
    """
    Apply C{policy} to a request with the header C{lines}, as the proxy does: on the raw block
    when C{raw}, else on fields that were split first.

    @return: the resulting fields and the request id.
    """
    block = b"\r\n".join(lines)
    headers = Headers.from_block(block)
    connection = Headers.from_block(block).tokens(b"connection")
    # As the proxy has it: CRLF and the lower-cased block.
    lowered: bytes | None = b"\r\n" + block.lower()
    if not raw:
        headers.fields  # noqa: B018 - splitting the block is the point
        lowered = None
    request_id = RequestForwarding.from_policy(policy).apply(
        headers, connection, client_ip, scheme, host, local_port, keep, lowered
    )
    return list(headers), request_id


def values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name]


def names(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in fields]


class BothPathsTestCase(SynchronousTestCase):
    def forward_both(self, *lines: bytes, **options: object) -> list[tuple[bytes, bytes]]:
        """
        Forward on the raw and the split path; they must agree (but for the request id).

        @return: the fields, with a generated request id replaced by C{"<id>"}.
        """
        results = []
        for raw in (True, False):
            fields, request_id = forward(*lines, raw=raw, **options)  # type: ignore[arg-type]
            results.append(
                [(n, b"<id>" if request_id and v == request_id.encode() else v) for n, v in fields]
            )
        self.assertEqual(results[0], results[1])
        return results[0]


class HopByHopTests(BothPathsTestCase):
    def test_hop_by_hop_fields_removed(self) -> None:
        fields = self.forward_both(
            b"Host: example.com",
            b"Connection: keep-alive",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Trailer: X-Sum",
            b"Transfer-Encoding: chunked",
            b"Upgrade: websocket",
            b"Accept: */*",
        )
        self.assertEqual(set(names(fields)) & HOP_BY_HOP, set())
        self.assertEqual(values(fields, b"accept"), [b"*/*"])

    def test_hop_by_hop_names_are_case_insensitive(self) -> None:
        fields = self.forward_both(b"Host: example.com", b"KEEP-ALIVE: 5", b"proxy-connection: x")
        self.assertNotIn(b"keep-alive", names(fields))
        self.assertNotIn(b"proxy-connection", names(fields))

    def test_fields_named_in_connection_removed(self) -> None:
        fields = self.forward_both(
            b"Host: example.com",
            b"Connection: X-Secret, x-other",
            b"Connection: x-third",
            b"X-Secret: 1",
            b"X-Other: 2",
            b"X-Third: 3",
            b"X-Public: 4",
        )
        self.assertEqual(values(fields, b"x-public"), [b"4"])
        for name in (b"x-secret", b"x-other", b"x-third"):
            self.assertNotIn(name, names(fields))

    def test_host_cannot_be_removed_by_connection(self) -> None:
        fields = self.forward_both(b"Host: example.com", b"Connection: Host")
        self.assertEqual(values(fields, b"host"), [b"example.com"])

    def test_framing_and_expect_left_to_the_proxy(self) -> None:
        """The proxy re-creates Content-Length and answers Expect itself."""
        fields = self.forward_both(
            b"Host: example.com", b"Content-Length: 5", b"Expect: 100-continue"
        )
        self.assertNotIn(b"content-length", names(fields))
        self.assertNotIn(b"expect", names(fields))

    def test_kept_field(self) -> None:
        """An upgrade request keeps its Upgrade field, and only that one."""
        fields = self.forward_both(
            b"Host: example.com",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Keep-Alive: 5",
            keep=frozenset({b"upgrade"}),
        )
        self.assertEqual(values(fields, b"upgrade"), [b"websocket"])
        self.assertNotIn(b"keep-alive", names(fields))
        self.assertNotIn(b"connection", names(fields))

    def test_other_fields_kept_in_order_with_case(self) -> None:
        fields = self.forward_both(
            b"Host: example.com",
            b"x-tag: one",
            b"Accept: */*",
            b"X-TAG: two",
            b"Connection: close",
            b"X-Tag: three",
        )
        self.assertEqual(
            fields[:5],
            [
                (b"Host", b"example.com"),
                (b"x-tag", b"one"),
                (b"Accept", b"*/*"),
                (b"X-TAG", b"two"),
                (b"X-Tag", b"three"),
            ],
        )


class RemoveHopByHopTests(SynchronousTestCase):
    def test_removes_standard_and_named_fields(self) -> None:
        headers = Headers.of(
            (b"Connection", b"x-a"),
            (b"X-A", b"1"),
            (b"Upgrade", b"h2c"),
            (b"Content-Length", b"2"),
            (b"Host", b"h"),
            (b"X-B", b"2"),
        )
        remove_hop_by_hop(headers, [b"x-a", b"content-length", b"host"])
        self.assertEqual(
            list(headers), [(b"Content-Length", b"2"), (b"Host", b"h"), (b"X-B", b"2")]
        )

    def test_also(self) -> None:
        headers = Headers.of((b"Content-Length", b"2"), (b"X-B", b"2"))
        remove_hop_by_hop(headers, [], frozenset({b"content-length"}))
        self.assertEqual(list(headers), [(b"X-B", b"2")])


class ForwardingFieldTests(BothPathsTestCase):
    def test_fields_added(self) -> None:
        fields = self.forward_both(b"Host: example.com", b"Accept: */*")
        self.assertEqual(
            fields,
            [
                (b"Host", b"example.com"),
                (b"Accept", b"*/*"),
                (b"X-Forwarded-For", b"192.0.2.7"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"example.com"),
                (b"X-Forwarded-Port", b"8080"),
                (b"Forwarded", b"for=192.0.2.7;proto=http;host=example.com"),
                (b"Via", b"1.1 twisted_rp"),
                (b"X-Request-ID", b"<id>"),
            ],
        )

    def test_https_and_port(self) -> None:
        fields = self.forward_both(b"Host: example.com", scheme="https", local_port=443)
        self.assertEqual(values(fields, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(fields, b"x-forwarded-port"), [b"443"])
        self.assertEqual(
            values(fields, b"forwarded"), [b"for=192.0.2.7;proto=https;host=example.com"]
        )

    def test_without_host(self) -> None:
        fields = self.forward_both(b"Accept: */*", host=None)
        self.assertNotIn(b"x-forwarded-host", names(fields))
        self.assertEqual(values(fields, b"forwarded"), [b"for=192.0.2.7;proto=http"])

    def test_host_with_port_is_quoted_in_forwarded(self) -> None:
        fields = self.forward_both(b"Host: example.com:8443", host=b"example.com:8443")
        self.assertEqual(values(fields, b"x-forwarded-host"), [b"example.com:8443"])
        self.assertEqual(
            values(fields, b"forwarded"), [b'for=192.0.2.7;proto=http;host="example.com:8443"']
        )

    def test_ipv6_client(self) -> None:
        fields = self.forward_both(b"Host: example.com", client_ip="2001:db8::1")
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"2001:db8::1"])
        self.assertEqual(
            values(fields, b"forwarded"), [b'for="[2001:db8::1]";proto=http;host=example.com']
        )

    def test_ipv6_loopback(self) -> None:
        fields = self.forward_both(b"Host: example.com", client_ip="::1")
        self.assertTrue(values(fields, b"forwarded")[0].startswith(b'for="[::1]";'))

    def test_custom_via_name(self) -> None:
        fields = self.forward_both(b"Host: h", policy=HeaderPolicy(via_name="edge-7"))
        self.assertEqual(values(fields, b"via"), [b"1.1 edge-7"])

    def test_via_appended_to(self) -> None:
        fields = self.forward_both(b"Host: h", b"Via: 1.0 first", b"Via: 1.1 second")
        self.assertEqual(values(fields, b"via"), [b"1.0 first, 1.1 second, 1.1 twisted_rp"])


class TrustTests(BothPathsTestCase):
    INCOMING = (
        b"Host: example.com",
        b"X-Forwarded-For: 203.0.113.1, 203.0.113.2",
        b"x-forwarded-for: 203.0.113.3",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.example",
        b"X-Forwarded-Port: 443",
        b"Forwarded: for=203.0.113.1;proto=https",
    )

    def test_untrusted_fields_replaced(self) -> None:
        fields = self.forward_both(*self.INCOMING)
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"192.0.2.7"])
        self.assertEqual(values(fields, b"x-forwarded-proto"), [b"http"])
        self.assertEqual(values(fields, b"x-forwarded-host"), [b"example.com"])
        self.assertEqual(values(fields, b"x-forwarded-port"), [b"8080"])
        self.assertEqual(
            values(fields, b"forwarded"), [b"for=192.0.2.7;proto=http;host=example.com"]
        )

    def test_untrusted_with_trusted_list(self) -> None:
        policy = HeaderPolicy(trusted_proxies=("10.0.0.0/8",))
        fields = self.forward_both(*self.INCOMING, policy=policy)
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_trusted_fields_kept_and_appended(self) -> None:
        policy = HeaderPolicy(trusted_proxies=("192.0.2.0/24",))
        fields = self.forward_both(*self.INCOMING, policy=policy)
        self.assertEqual(
            values(fields, b"x-forwarded-for"),
            [b"203.0.113.1, 203.0.113.2, 203.0.113.3, 192.0.2.7"],
        )
        self.assertEqual(values(fields, b"x-forwarded-proto"), [b"https"])
        self.assertEqual(values(fields, b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(values(fields, b"x-forwarded-port"), [b"443"])
        self.assertEqual(
            values(fields, b"forwarded"),
            [b"for=203.0.113.1;proto=https, for=192.0.2.7;proto=http;host=example.com"],
        )

    def test_trusted_without_incoming_fields(self) -> None:
        policy = HeaderPolicy(trusted_proxies=("192.0.2.7/32",))
        fields = self.forward_both(b"Host: example.com", policy=policy)
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"192.0.2.7"])
        self.assertEqual(values(fields, b"x-forwarded-proto"), [b"http"])

    def test_trusted_ipv6_proxy(self) -> None:
        policy = HeaderPolicy(trusted_proxies=("2001:db8::/32",))
        fields = self.forward_both(*self.INCOMING, policy=policy, client_ip="2001:db8::9")
        self.assertEqual(
            values(fields, b"x-forwarded-for"),
            [b"203.0.113.1, 203.0.113.2, 203.0.113.3, 2001:db8::9"],
        )

    def test_oddly_cased_incoming_field_replaced(self) -> None:
        """The raw path spots forwarding fields whatever their case."""
        fields = self.forward_both(b"Host: example.com", b"X-FORWARDED-FOR: 6.6.6.6")
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"192.0.2.7"])

    def test_field_with_similar_name_kept(self) -> None:
        fields = self.forward_both(b"Host: example.com", b"X-Via: a", b"My-Forwarded: b")
        self.assertEqual(values(fields, b"x-via"), [b"a"])
        self.assertEqual(values(fields, b"my-forwarded"), [b"b"])
        self.assertEqual(values(fields, b"via"), [b"1.1 twisted_rp"])

    def test_trusts(self) -> None:
        policy = HeaderPolicy(trusted_proxies=("10.0.0.0/8", "::1"))
        self.assertTrue(policy.trusts("10.1.2.3"))
        self.assertTrue(policy.trusts("::1"))
        self.assertFalse(policy.trusts("11.0.0.1"))
        self.assertFalse(policy.trusts("not an address"))
        self.assertFalse(HeaderPolicy().trusts("10.1.2.3"))


class RequestIdTests(BothPathsTestCase):
    def test_generated(self) -> None:
        fields, request_id = forward(b"Host: h")
        self.assertIsNotNone(HEX_ID.fullmatch(request_id), request_id)
        self.assertEqual(values(fields, b"x-request-id"), [request_id.encode()])

    def test_generated_ids_differ(self) -> None:
        self.assertNotEqual(forward(b"Host: h")[1], forward(b"Host: h")[1])
        self.assertIsNotNone(HEX_ID.fullmatch(new_request_id()))

    def test_valid_incoming_id_kept(self) -> None:
        for raw in (True, False):
            fields, request_id = forward(b"Host: h", b"X-Request-ID: req-42.a:b", raw=raw)
            self.assertEqual(request_id, "req-42.a:b")
            self.assertEqual(values(fields, b"x-request-id"), [b"req-42.a:b"])

    def test_invalid_incoming_id_replaced(self) -> None:
        for bad in (b"has space", b"x" * 201, b"<script>", b""):
            fields, request_id = forward(b"Host: h", b"X-Request-ID: " + bad)
            self.assertIsNotNone(HEX_ID.fullmatch(request_id), bad)
            self.assertEqual(values(fields, b"x-request-id"), [request_id.encode()])

    def test_incoming_id_kept_from_untrusted_peer(self) -> None:
        """A request id is a correlation token, not a claim about the client: it is kept."""
        _, request_id = forward(b"Host: h", b"x-request-id: abc")
        self.assertEqual(request_id, "abc")

    def test_custom_header_name(self) -> None:
        policy = HeaderPolicy(request_id_header="X-Trace")
        fields, request_id = forward(b"Host: h", b"X-Trace: t-1", policy=policy)
        self.assertEqual(request_id, "t-1")
        self.assertEqual(values(fields, b"x-trace"), [b"t-1"])
        self.assertNotIn(b"x-request-id", names(fields))


class SwitchTests(BothPathsTestCase):
    def test_everything_off(self) -> None:
        policy = HeaderPolicy(x_forwarded=False, forwarded=False, via=False, request_id=False)
        fields, request_id = forward(b"Host: h", b"Accept: */*", policy=policy)
        self.assertEqual(fields, [(b"Host", b"h"), (b"Accept", b"*/*")])
        self.assertEqual(request_id, "")
        self.assertEqual(self.forward_both(b"Host: h", policy=policy), [(b"Host", b"h")])

    def test_x_forwarded_off(self) -> None:
        fields = self.forward_both(b"Host: h", policy=HeaderPolicy(x_forwarded=False))
        self.assertFalse([n for n in names(fields) if n.startswith(b"x-forwarded-")])
        self.assertIn(b"forwarded", names(fields))

    def test_forwarded_off(self) -> None:
        fields = self.forward_both(b"Host: h", policy=HeaderPolicy(forwarded=False))
        self.assertNotIn(b"forwarded", names(fields))
        self.assertIn(b"x-forwarded-for", names(fields))

    def test_via_off(self) -> None:
        fields = self.forward_both(b"Host: h", policy=HeaderPolicy(via=False))
        self.assertNotIn(b"via", names(fields))
        self.assertIn(b"x-request-id", names(fields))

    def test_request_id_off(self) -> None:
        fields, request_id = forward(b"Host: h", policy=HeaderPolicy(request_id=False))
        self.assertEqual(request_id, "")
        self.assertNotIn(b"x-request-id", names(fields))
        self.assertIn(b"via", names(fields))


class RawAndSplitPathTests(BothPathsTestCase):
    """
    The raw fast path (appending to the block as it came) gives the same fields as the
    split path, for every policy and client.
    """

    POLICIES = (
        HeaderPolicy(),
        HeaderPolicy(x_forwarded=False),
        HeaderPolicy(forwarded=False, via=False),
        HeaderPolicy(request_id=False),
        HeaderPolicy(x_forwarded=False, forwarded=False, via=False, request_id=False),
        HeaderPolicy(via_name="edge", request_id_header="X-Trace"),
        HeaderPolicy(trusted_proxies=("0.0.0.0/0", "::/0")),
    )
    BLOCKS = (
        (b"Host: example.com",),
        (b"Host: example.com", b"Accept: */*", b"User-Agent: test/1.0", b"Cookie: a=b"),
        (b"Accept: */*",),
        (b"host:example.com", b"x-custom:\tspaced value "),
    )

    def test_same_result(self) -> None:
        for policy in self.POLICIES:
            for block in self.BLOCKS:
                incoming = [
                    (name, value.strip(b" \t"))
                    for name, _, value in (line.partition(b":") for line in block)
                ]
                for client_ip in ("192.0.2.7", "2001:db8::1"):
                    for host in (b"example.com", b"example.com:8080", None):
                        fields = self.forward_both(
                            *block, policy=policy, client_ip=client_ip, host=host
                        )
                        self.assertEqual(fields[: len(block)], incoming)

    def test_same_result_when_merging(self) -> None:
        """Blocks with fields to merge or drop leave the fast path and still agree."""
        for block in (
            (b"Via: 1.0 a", b"Host: h"),
            (b"Host: h", b"Via: 1.0 a"),
            (b"Host: h", b"Connection: close"),
            (b"Host: h", b"X-Request-ID: abc"),
            (b"Host: h", b"Forwarded: for=1.2.3.4"),
        ):
            self.forward_both(*block)

    def test_empty_block(self) -> None:
        fields = self.forward_both(host=None)
        self.assertEqual(values(fields, b"x-forwarded-for"), [b"192.0.2.7"])
