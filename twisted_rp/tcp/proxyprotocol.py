"""
The PROXY protocol (versions 1 and 2), as specified by HAProxy: a header a load balancer sends
first on a connection it relays, naming the client's original address.

Version 1 is one line of text (C{PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\\r\\n}, at most
107 bytes); version 2 is binary: a 12-byte signature, a version/command byte, a
family/protocol byte, a 16-bit length, then the addresses and optional TLVs (which L{parse}
validates and skips).

Parsing is strict: anything the specification does not allow raises L{ValueError}, so that a
listener can close the connection rather than guess who the client is.
"""

from __future__ import annotations

import ipaddress
import re
import struct

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from twisted_rp.addresses import address_ip

#: The first 12 bytes of every version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The longest version 1 header, CRLF included.
V1_MAX_LENGTH = 107

_V1_PREFIX = b"PROXY "
_V2_FIXED_LENGTH = 16
_V2_VERSION = 0x20
_V2_LOCAL = 0x00
_V2_PROXY = 0x01
_AF_UNSPEC = 0x00
_INET_STREAM = 0x11
_INET6_STREAM = 0x21
# Every family/protocol byte the specification defines: UNSPEC, then TCP/UDP over IPv4, IPv6
# and UNIX sockets.
_V2_FAMILIES = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_TLV_HEADER_LENGTH = 3
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")

IPAddress = IPv4Address | IPv6Address
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@frozen
class ProxyHeader:
    """
    One parsed PROXY protocol header.

    @ivar version: 1 or 2.
    @ivar local: C{True} for a version 2 C{LOCAL} command (the sender's own connection, such as
        a health check): the real connection's addresses apply.
    @ivar source: the client's address (C{IPv4Address} or C{IPv6Address}, type C{"TCP"}), or
        L{None} when the header names none (C{UNKNOWN}, C{LOCAL}, C{AF_UNSPEC}, C{AF_UNIX},
        datagram protocols): the real connection's addresses apply.
    @ivar destination: the address the client connected to, L{None} exactly when C{source} is.
    """

    version: int
    local: bool = False
    source: IPv4Address | IPv6Address | None = None
    destination: IPv4Address | IPv6Address | None = None


def _ip_pair(source: IAddress | None, destination: IAddress | None) -> tuple[_IP, _IP] | None:
    """
    Both addresses' IPs in one family: IPv4 when both are IPv4 (or IPv4-mapped IPv6), else
    IPv6 (an IPv4 address becomes IPv4-mapped); L{None} when either is not an IP address.
    """
    first, second = address_ip(source), address_ip(destination)
    if first is None or second is None:
        return None
    if isinstance(first, ipaddress.IPv4Address) and isinstance(second, ipaddress.IPv4Address):
        return first, second
    return _as_ipv6(first), _as_ipv6(second)


def _as_ipv6(ip: _IP) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{ip}")
    return ip


def _port(address: IAddress | None) -> int:
    assert isinstance(address, IPv4Address | IPv6Address)
    return address.port


def encode_v1(source: IAddress | None, destination: IAddress | None) -> bytes:
    """
    A version 1 (text) header announcing a connection from C{source} to C{destination}.

    @param source: the client's address, normally C{transport.getPeer()}.
    @param destination: the address it connected to, normally C{transport.getHost()}.
    @return: C{PROXY TCP4 ...} or C{PROXY TCP6 ...}; C{PROXY UNKNOWN} when either address is
        not an IP address.
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if isinstance(pair[0], ipaddress.IPv4Address) else "TCP6"
    line = (
        f"PROXY {family} {pair[0].compressed} {pair[1].compressed} "
        f"{_port(source)} {_port(destination)}\r\n"
    )
    return line.encode("ascii")


def encode_v2(
    source: IAddress | None, destination: IAddress | None, *, local: bool = False
) -> bytes:
    """
    A version 2 (binary) header announcing a connection from C{source} to C{destination},
    without TLVs.

    @param local: send the C{LOCAL} command (the addresses are then ignored): for connections
        the proxy makes on its own behalf, such as health checks.
    @return: a C{PROXY} command over C{TCP/IPv4} or C{TCP/IPv6}; with C{AF_UNSPEC} and no
        addresses when either address is not an IP address.
    """
    pair = None if local else _ip_pair(source, destination)
    command = _V2_VERSION | (_V2_LOCAL if local else _V2_PROXY)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", command, _AF_UNSPEC, 0)
    family = _INET_STREAM if isinstance(pair[0], ipaddress.IPv4Address) else _INET6_STREAM
    addresses = pair[0].packed + pair[1].packed
    addresses += struct.pack("!HH", _port(source), _port(destination))
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(addresses)) + addresses


def parse(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    """
    Parse the PROXY header at the start of C{data}, of either version.

    @param data: everything received on the connection so far.
    @return: the header and the bytes after it, or L{None} when C{data} is a valid beginning
        of a header but more bytes are needed.
    @raise ValueError: when C{data} does not start with a valid header (including a version
        1 line longer than L{V1_MAX_LENGTH}).
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(_V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or _V1_PREFIX.startswith(data):
        return None
    raise ValueError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        partial = data[:V1_MAX_LENGTH]
        if len(data) >= V1_MAX_LENGTH:
            raise ValueError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
        if b"\n" in partial or b"\r" in partial[:-1]:
            raise ValueError("PROXY v1 header with a stray CR or LF")
        return None
    line, rest = data[:end], data[end + 2 :]
    if b"\r" in line or b"\n" in line:
        raise ValueError("PROXY v1 header with a stray CR or LF")
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        # The specification has receivers ignore whatever follows UNKNOWN.
        return ProxyHeader(1), rest
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise ValueError(f"PROXY v1 header with unknown protocol {fields[1]!r}")
    if len(fields) != 6:
        raise ValueError("PROXY v1 header must have exactly 6 space-separated fields")
    try:
        texts = [field.decode("ascii") for field in fields[2:]]
    except UnicodeDecodeError:
        raise ValueError("PROXY v1 header is not ASCII") from None
    version = 4 if fields[1] == b"TCP4" else 6
    source_ip, destination_ip = (_v1_ip(text, version) for text in texts[:2])
    source_port, destination_port = (_v1_port(text) for text in texts[2:])
    return (
        ProxyHeader(
            1,
            source=_address(source_ip, source_port),
            destination=_address(destination_ip, destination_port),
        ),
        rest,
    )


def _v1_ip(text: str, version: int) -> _IP:
    # ipaddress accepts IPv6 scope ids ("fe80::1%eth0"), which the PROXY protocol does not.
    if "%" in text:
        raise ValueError(f"PROXY v1 header with invalid address {text!r}")
    try:
        return ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ipaddress.AddressValueError:
        raise ValueError(f"PROXY v1 header with invalid IPv{version} address {text!r}") from None


def _v1_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"PROXY v1 header with invalid port {text!r}")
    return int(text)


def _address(ip: _IP, port: int) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address):
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", ip.compressed, port)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    if len(data) < _V2_FIXED_LENGTH:
        return None
    version_command, family, length = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if version_command & 0xF0 != _V2_VERSION:
        raise ValueError(f"PROXY v2 header with unsupported version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ValueError(f"PROXY v2 header with unknown command {command}")
    end = _V2_FIXED_LENGTH + length
    if len(data) < end:
        return None
    rest = data[end:]
    if command == _V2_LOCAL:
        # LOCAL: the receiver uses the real endpoints and ignores the family and addresses.
        return ProxyHeader(2, local=True), rest
    if family not in _V2_FAMILIES:
        raise ValueError(f"PROXY v2 header with unknown family/protocol 0x{family:02x}")
    address_length = _V2_FAMILIES[family]
    if length < address_length:
        raise ValueError("PROXY v2 header too short for its address family")
    block = data[_V2_FIXED_LENGTH:end]
    if family == _AF_UNSPEC:
        # The block's layout is unknown: the receiver is to ignore it whole.
        return ProxyHeader(2), rest
    _check_tlvs(block[address_length:])
    if family not in (_INET_STREAM, _INET6_STREAM):
        return ProxyHeader(2), rest
    size = address_length // 2 - 2
    ip_type = ipaddress.IPv4Address if family == _INET_STREAM else ipaddress.IPv6Address
    source_ip = ip_type(block[:size])
    destination_ip = ip_type(block[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * size)
    return (
        ProxyHeader(
            2,
            source=_address(source_ip, source_port),
            destination=_address(destination_ip, destination_port),
        ),
        rest,
    )


def _check_tlvs(tlvs: bytes) -> None:
    """Check that C{tlvs} is a sequence of whole type-length-value records; skip their content."""
    offset = 0
    while offset < len(tlvs):
        if len(tlvs) - offset < _TLV_HEADER_LENGTH:
            raise ValueError("PROXY v2 header with a truncated TLV")
        (value_length,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += _TLV_HEADER_LENGTH + value_length
        if offset > len(tlvs):
            raise ValueError("PROXY v2 header with a TLV longer than the header")
