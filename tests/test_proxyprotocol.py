"""
Tests for L{twisted_rp.tcp.proxyprotocol}: PROXY protocol v1 and v2 headers, encoded and
parsed, against the byte layouts of the HAProxy specification.
"""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.tcp.proxyprotocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    encode_v1,
    encode_v2,
    parse,
)

CLIENT4 = IPv4Address("TCP", "192.0.2.10", 51234)
SERVER4 = IPv4Address("TCP", "198.51.100.7", 443)
CLIENT6 = IPv6Address("TCP", "2001:db8::10", 51234)
SERVER6 = IPv6Address("TCP", "2001:db8:1::7", 443)


def v2(command: int, family: int, body: bytes) -> bytes:
    """A version 2 header built by hand from the specification's layout."""
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def inet_body(tlvs: bytes = b"") -> bytes:
    """The TCP/IPv4 address block of CLIENT4 -> SERVER4, then C{tlvs}."""
    return bytes([192, 0, 2, 10, 198, 51, 100, 7]) + struct.pack("!HH", 51234, 443) + tlvs


class EncodeV1Tests(SynchronousTestCase):
    """Version 1 headers are the exact text lines of the specification."""

    def test_tcp4(self) -> None:
        self.assertEqual(
            encode_v1(CLIENT4, SERVER4), b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 443\r\n"
        )

    def test_tcp6(self) -> None:
        self.assertEqual(
            encode_v1(CLIENT6, SERVER6), b"PROXY TCP6 2001:db8::10 2001:db8:1::7 51234 443\r\n"
        )

    def test_ipv4_mapped_addresses_are_sent_as_tcp4(self) -> None:
        """A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 addresses."""
        client = IPv6Address("TCP", "::ffff:192.0.2.10", 51234)
        server = IPv6Address("TCP", "::ffff:198.51.100.7", 443)
        self.assertEqual(
            encode_v1(client, server), b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 443\r\n"
        )

    def test_mixed_families_are_sent_as_tcp6(self) -> None:
        self.assertEqual(
            encode_v1(CLIENT4, SERVER6),
            b"PROXY TCP6 ::ffff:c000:20a 2001:db8:1::7 51234 443\r\n",
        )

    def test_non_ip_addresses_are_unknown(self) -> None:
        self.assertEqual(encode_v1(UNIXAddress(b"/tmp/socket"), SERVER4), b"PROXY UNKNOWN\r\n")
        self.assertEqual(encode_v1(None, None), b"PROXY UNKNOWN\r\n")

    def test_longest_header_fits_the_limit(self) -> None:
        client = IPv6Address("TCP", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
        header = encode_v1(client, client)
        self.assertLessEqual(len(header), V1_MAX_LENGTH)
        self.assertEqual(parse(header), (ProxyHeader(1, source=client, destination=client), b""))


class EncodeV2Tests(SynchronousTestCase):
    """Version 2 headers have the specification's binary layout."""

    def test_tcp4(self) -> None:
        self.assertEqual(encode_v2(CLIENT4, SERVER4), v2(0x21, 0x11, inet_body()))

    def test_tcp6(self) -> None:
        header = encode_v2(CLIENT6, SERVER6)
        self.assertEqual(header[:16], V2_SIGNATURE + b"\x21\x21\x00\x24")
        self.assertEqual(
            header[16:],
            bytes.fromhex("20010db8000000000000000000000010")
            + bytes.fromhex("20010db8000100000000000000000007")
            + struct.pack("!HH", 51234, 443),
        )

    def test_local(self) -> None:
        self.assertEqual(encode_v2(CLIENT4, SERVER4, local=True), v2(0x20, 0x00, b""))

    def test_non_ip_addresses_are_unspecified(self) -> None:
        self.assertEqual(encode_v2(UNIXAddress(b"/tmp/socket"), SERVER4), v2(0x21, 0x00, b""))


class RoundTripTests(SynchronousTestCase):
    """What one side encodes, the other parses back, leaving the bytes that follow."""

    def test_round_trips(self) -> None:
        for encode in (encode_v1, encode_v2):
            for source, destination in ((CLIENT4, SERVER4), (CLIENT6, SERVER6)):
                header = encode(source, destination)
                version = 1 if encode is encode_v1 else 2
                self.assertEqual(
                    parse(header + b"GET / HTTP/1.1\r\n"),
                    (
                        ProxyHeader(version, source=source, destination=destination),
                        b"GET / HTTP/1.1\r\n",
                    ),
                )

    def test_every_prefix_needs_more(self) -> None:
        for header in (encode_v1(CLIENT6, SERVER6), encode_v2(CLIENT6, SERVER6)):
            for length in range(len(header)):
                self.assertIsNone(parse(header[:length]), header[:length])

    def test_v2_local(self) -> None:
        self.assertEqual(
            parse(encode_v2(None, None, local=True) + b"x"), (ProxyHeader(2, local=True), b"x")
        )

    def test_v1_unknown(self) -> None:
        self.assertEqual(parse(b"PROXY UNKNOWN\r\nrest"), (ProxyHeader(1), b"rest"))

    def test_v1_unknown_ignores_the_rest_of_its_line(self) -> None:
        self.assertEqual(
            parse(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\nrest"), (ProxyHeader(1), b"rest")
        )


class ParseV2Tests(SynchronousTestCase):
    """Version 2 details: TLVs, LOCAL, families without addresses."""

    def test_tlvs_are_skipped(self) -> None:
        tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\x05\x00\x03abc"
        self.assertEqual(
            parse(v2(0x21, 0x11, inet_body(tlvs)) + b"data"),
            (ProxyHeader(2, source=CLIENT4, destination=SERVER4), b"data"),
        )

    def test_local_ignores_family_and_addresses(self) -> None:
        self.assertEqual(parse(v2(0x20, 0x77, b"\xff" * 5)), (ProxyHeader(2, local=True), b""))

    def test_unspecified_and_unix_families_name_no_address(self) -> None:
        self.assertEqual(parse(v2(0x21, 0x00, b"")), (ProxyHeader(2), b""))
        self.assertEqual(parse(v2(0x21, 0x00, b"ignored")), (ProxyHeader(2), b""))
        self.assertEqual(parse(v2(0x21, 0x31, b"\x00" * 216)), (ProxyHeader(2), b""))

    def test_waits_for_the_whole_address_block(self) -> None:
        header = v2(0x21, 0x11, inet_body(b"\x04\x00\x00"))
        self.assertIsNone(parse(header[:-1]))


class MalformedTests(SynchronousTestCase):
    """Anything the specification does not allow is refused with L{ValueError}."""

    def assert_malformed(self, data: bytes) -> None:
        self.assertRaises(ValueError, parse, data)

    def test_not_a_proxy_header(self) -> None:
        for data in (b"GET / HTTP/1.1\r\n", b"proxy TCP4", b"PROXX", b"\r\n\r\n\x00\r\nQUIX\n"):
            self.assert_malformed(data)

    def test_v1_malformed_lines(self) -> None:
        for line in (
            b"PROXY TCP4  192.0.2.10 198.51.100.7 51234 443",
            b"PROXY tcp4 192.0.2.10 198.51.100.7 51234 443",
            b"PROXY TCP5 192.0.2.10 198.51.100.7 51234 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 51234",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 443 1",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 443 ",
            b"PROXY TCP4 2001:db8::10 198.51.100.7 51234 443",
            b"PROXY TCP6 192.0.2.10 2001:db8::7 51234 443",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::7 51234 443",
            b"PROXY TCP4 192.0.2.010 198.51.100.7 51234 443",
            b"PROXY TCP4 192.0.2 198.51.100.7 51234 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 65536 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 051234 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 +5123 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 5\xd9\xa3 443",
            b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 -1",
            b"PROXY TCP4 192.0.2.10\r198.51.100.7 51234 443",
            b"PROXY UNKNOWNX",
            b"PROXY",
        ):
            self.assert_malformed(line + b"\r\n")

    def test_v1_needs_crlf(self) -> None:
        self.assert_malformed(b"PROXY TCP4 192.0.2.10 198.51.100.7 51234 443\n")
        self.assert_malformed(b"PROXY TCP4 192.0.2.10\n")

    def test_v1_longer_than_107_bytes(self) -> None:
        self.assertIsNone(parse(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15)))
        self.assert_malformed(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 14))
        self.assert_malformed(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n")

    def test_v1_of_exactly_107_bytes(self) -> None:
        line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
        self.assertEqual(len(line), V1_MAX_LENGTH)
        self.assertEqual(parse(line), (ProxyHeader(1), b""))

    def test_v2_bad_version(self) -> None:
        self.assert_malformed(v2(0x11, 0x11, inet_body()))
        self.assert_malformed(v2(0x31, 0x11, inet_body()))

    def test_v2_bad_command(self) -> None:
        self.assert_malformed(v2(0x22, 0x11, inet_body()))
        self.assert_malformed(v2(0x2F, 0x11, inet_body()))

    def test_v2_bad_family_or_protocol(self) -> None:
        for family in (0x01, 0x10, 0x13, 0x23, 0x41, 0xFF):
            self.assert_malformed(v2(0x21, family, inet_body()))

    def test_v2_too_short_for_its_family(self) -> None:
        self.assert_malformed(v2(0x21, 0x11, inet_body()[:-1]))
        self.assert_malformed(v2(0x21, 0x21, inet_body()))

    def test_v2_bad_tlvs(self) -> None:
        self.assert_malformed(v2(0x21, 0x11, inet_body(b"\x04\x00")))
        self.assert_malformed(v2(0x21, 0x11, inet_body(b"\x04\x00\x05abcd")))
        self.assert_malformed(v2(0x21, 0x11, inet_body(b"\x04\x00\x00\x01")))
