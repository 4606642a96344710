"""
A strict HTTP/1.1 message head parser and the body framing rules of RFC 9112.

The parser validates a whole head with a few precompiled regular expressions and only takes
the slow path, which works out which rule was broken, when a head fails them.  Anything that
could let two parsers disagree about where a message ends (bare LF, obs-fold, whitespace
before the colon, conflicting framing headers) is refused rather than repaired.
"""

from __future__ import annotations

import ipaddress
import re

from attrs import define, frozen

from twisted_rp.http.message import Headers, HTTPError, RequestHead, ResponseHead

__all__ = [
    "Framing",
    "RequestInfo",
    "ResponseInfo",
    "analyze_request",
    "analyze_response",
    "parse_request_head",
    "parse_response_head",
    "request_framing",
    "request_host",
    "response_framing",
    "split_absolute_target",
]

HTTP_10 = b"HTTP/1.0"
HTTP_11 = b"HTTP/1.1"
_VERSIONS = {b"1.0": HTTP_10, b"1.1": HTTP_11}

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = rb"[" + _TCHAR + rb"]+"
# Field values: HTAB, SP, VCHAR and obs-text; no CTLs (NUL, CR, LF, ...) and no DEL.
_VALUE_CHARS = rb"[\t\x20-\x7e\x80-\xff]"
_FIELD_LINE = _TOKEN + rb":" + _VALUE_CHARS + rb"*"

FIELD_LINE_RE = re.compile(_FIELD_LINE)
"""One header (or trailer) line, without its CRLF; use with C{fullmatch}."""

_FIELD_BLOCK_RE = re.compile(_FIELD_LINE + rb"(?:\r\n" + _FIELD_LINE + rb")*")
_TOKEN_RE = re.compile(_TOKEN)
_REQUEST_LINE_RE = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")
_STATUS_LINE_RE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: (" + _VALUE_CHARS + rb"*))?")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_BAD_VALUE_CHAR_RE = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
_CONTENT_LENGTH_RE = re.compile(rb"[0-9]{1,18}")
_ABSOLUTE_TARGET_RE = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)(.*)", re.DOTALL)
_HOST_RE = re.compile(
    rb"(?:\[([0-9A-Fa-f:.]+)\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)"
    rb"(?::([0-9]{1,5}))?"
)
_OWS = b" \t"


@frozen
class Framing:
    """
    How a message body is delimited.

    @ivar kind: C{"none"} (no body), C{"length"} (C{length} bytes), C{"chunked"}, or
        C{"close"} (the body runs until the connection closes).
    @ivar length: the body size when C{kind} is C{"length"}.
    @ivar reusable: C{False} when the connection must not carry another message after this
        one, because the framing was suspicious or runs to the close.
    """

    kind: str
    length: int = 0
    reusable: bool = True


_NO_BODY = NO_BODY = Framing("none")
_CHUNKED = Framing("chunked")
_CLOSE = Framing("close", reusable=False)


def _bare_newline(data: bytes) -> str | None:
    """Name the stray line break in C{data}, if it has one."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        return "bare LF"
    if data.count(b"\r") != crlf:
        return "bare CR"
    return None


def _parse_fields(block: bytes, max_fields: int, status: int, too_many_status: int) -> Headers:
    """
    Parse CRLF-separated field lines.

    @param status: the status of the L{HTTPError} for a malformed line.
    @param too_many_status: the status of the L{HTTPError} for more than C{max_fields} lines.
    """
    if not block:
        return Headers()
    if block.count(b"\r\n") >= max_fields:
        raise HTTPError(too_many_status, "too many header fields")
    if _FIELD_BLOCK_RE.fullmatch(block) is None:
        raise HTTPError(status, _diagnose_fields(block))
    return Headers.from_block(block)


def diagnose_field_line(line: bytes) -> str | None:
    """
    Say what is wrong with one field line (without its line break), or C{None} if it is valid.
    """
    if FIELD_LINE_RE.fullmatch(line) is not None:
        return None
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding"
    name, colon, value = line.partition(b":")
    if not colon:
        return "header line without colon"
    if not name:
        return "empty header name"
    if name[-1:] in (b" ", b"\t"):
        return "whitespace between header name and colon"
    if _TOKEN_RE.fullmatch(name) is None:
        return "invalid header name"
    bad = _BAD_VALUE_CHAR_RE.search(value)
    assert bad is not None
    return f"control character 0x{bad.group()[0]:02x} in header value"


def _diagnose_fields(block: bytes) -> str:
    newline = _bare_newline(block)
    if newline is not None:
        return newline
    for line in block.split(b"\r\n"):
        problem = diagnose_field_line(line)
        if problem is not None:
            return problem
    return "malformed header block"  # pragma: no cover - the block regex and lines agree


def _diagnose_request_line(line: bytes) -> HTTPError:
    newline = _bare_newline(line)
    if newline is not None:
        return HTTPError(400, newline)
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return HTTPError(400, "malformed request line")
    method, target, _ = parts
    if _TOKEN_RE.fullmatch(method) is None:
        return HTTPError(400, "invalid method")
    if _TARGET_RE.fullmatch(target) is None:
        return HTTPError(400, "invalid request target")
    return HTTPError(400, "invalid HTTP version")


def parse_request_head(data: bytes, max_request_line: int, max_headers: int) -> RequestHead:
    """
    Parse a request head.

    @param data: the head up to, not including, the empty line that ends it.
    @raise HTTPError: 400 for malformed heads, 405 for CONNECT, 414 for a request line longer
        than C{max_request_line}, 431 for more than C{max_headers} fields, 505 for versions
        other than HTTP/1.0 and HTTP/1.1.
    """
    # RFC 9112 section 2.2: ignore empty lines left over before a request line.
    while data.startswith(b"\r\n"):
        data = data[2:]
    end = data.find(b"\r\n")
    if end < 0:
        line, block = data, b""
    else:
        line, block = data[:end], data[end + 2 :]
    if len(line) > max_request_line:
        raise (
            HTTPError(400, "bare LF") if b"\n" in line else HTTPError(414, "request line too long")
        )
    if _REQUEST_LINE_RE.fullmatch(line) is None:
        raise _diagnose_request_line(line)
    method, target, version = line.split(b" ")
    http_version = _VERSIONS.get(version[5:])
    if http_version is None:
        raise HTTPError(505, "HTTP version not supported")
    _check_target_form(method, target)
    headers = _parse_fields(block, max_headers, 400, 431)
    return RequestHead(method, target, http_version, headers)


def parse_response_head(data: bytes, max_headers: int) -> ResponseHead:
    """
    Parse a response head.

    @param data: the head up to, not including, the empty line that ends it.
    @raise HTTPError: 502 for anything malformed, an unsupported version, or more than
        C{max_headers} fields.
    """
    end = data.find(b"\r\n")
    if end < 0:
        line, block = data, b""
    else:
        line, block = data[:end], data[end + 2 :]
    match = _STATUS_LINE_RE.fullmatch(line)
    if match is None:
        newline = _bare_newline(line)
        raise HTTPError(502, f"invalid status line from backend ({newline or 'malformed'})")
    version = _VERSIONS.get(match.group(1))
    if version is None:
        raise HTTPError(502, "unsupported HTTP version from backend")
    status = int(match.group(2))
    if not 100 <= status <= 599:
        raise HTTPError(502, "invalid status code from backend")
    try:
        headers = _parse_fields(block, max_headers, 502, 502)
    except HTTPError as e:
        raise HTTPError(502, f"{e.detail} (from backend)") from None
    return ResponseHead(version, status, match.group(3) or b"", headers)


def _content_length(values: list[bytes], status: int) -> int:
    """
    The one length that every Content-Length field and list element agrees on.

    @raise HTTPError: with C{status} for an invalid or disagreeing value.
    """
    lengths = set()
    for value in values:
        for element in value.split(b","):
            element = element.strip(_OWS)
            if _CONTENT_LENGTH_RE.fullmatch(element) is None:
                raise HTTPError(status, "invalid Content-Length")
            lengths.add(int(element))
    if len(lengths) != 1:
        raise HTTPError(status, "conflicting Content-Length values")
    return lengths.pop()


def _length_framing(length: int) -> Framing:
    return Framing("length", length) if length else _NO_BODY


def request_framing(head: RequestHead) -> Framing:
    """
    Decide how the body of a request is delimited (RFC 9112 section 6.3).

    @raise HTTPError: 400 for ambiguous or malformed framing headers, 501 for a transfer
        coding other than chunked.
    """
    headers = head.headers
    return _request_framing(
        head.version,
        headers.get_all(b"transfer-encoding"),
        headers.get_all(b"content-length"),
    )


def _request_framing(version: bytes, encodings: list[bytes], lengths: list[bytes]) -> Framing:
    if encodings:
        if lengths:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length")
        if version == HTTP_10:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = _tokens(encodings)
        if codings == [b"chunked"]:
            return _CHUNKED
        if not codings:
            raise HTTPError(400, "empty Transfer-Encoding")
        if b"chunked" in codings[:-1]:
            raise HTTPError(400, "chunked must be the last transfer coding, applied once")
        raise HTTPError(501, "unsupported transfer coding")
    if lengths:
        return _length_framing(_content_length(lengths, 400))
    return _NO_BODY


def _tokens(values: list[bytes]) -> list[bytes]:
    """The lower-cased, non-empty comma-separated elements of C{values}."""
    out = []
    for value in values:
        for token in value.split(b","):
            token = token.strip(_OWS).lower()
            if token:
                out.append(token)
    return out


def response_framing(request_method: bytes, head: ResponseHead) -> Framing:
    """
    Decide how the body of a response is delimited (RFC 9112 section 6.3).

    @param request_method: the method of the request this response answers.
    @raise HTTPError: 502 for a malformed or conflicting Content-Length, or chunked applied
        more than once.
    """
    headers = head.headers
    return _response_framing(
        request_method,
        head,
        headers.get_all(b"transfer-encoding"),
        headers.get_all(b"content-length"),
    )


def _response_framing(
    request_method: bytes, head: ResponseHead, encodings: list[bytes], lengths: list[bytes]
) -> Framing:
    status = head.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return _NO_BODY
    if encodings:
        codings = _tokens(encodings)
        if not codings or codings[-1] != b"chunked":
            return _CLOSE
        if codings.count(b"chunked") > 1:
            raise HTTPError(502, "chunked applied more than once by backend")
        # Both headers, or TE in HTTP/1.0, smell of request smuggling: decode it, then close.
        if lengths or head.version == HTTP_10:
            return Framing("chunked", reusable=False)
        return _CHUNKED
    if lengths:
        return _length_framing(_content_length(lengths, 502))
    return _CLOSE


def _check_target_form(method: bytes, target: bytes) -> None:
    """Refuse request-target forms this proxy does not serve (RFC 9112 section 3.2)."""
    if method == b"CONNECT":
        raise HTTPError(405, "CONNECT is not supported")
    if target[:1] == b"/":
        return
    if target == b"*":
        if method != b"OPTIONS":
            raise HTTPError(400, "asterisk-form target is only allowed for OPTIONS")
        return
    split_absolute_target(target)


def _check_authority(authority: bytes) -> None:
    """
    Refuse a Host value or target authority that is not C{host [":" port]}.

    @raise HTTPError: 400.
    """
    match = _HOST_RE.fullmatch(authority)
    if match is None:
        raise HTTPError(400, "invalid host")
    ipv6, port = match.groups()
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6.decode("ascii"))
        except ValueError:
            raise HTTPError(400, "invalid host") from None
    if port is not None and int(port) > 65535:
        raise HTTPError(400, "invalid port")


def split_absolute_target(target: bytes) -> tuple[bytes | None, bytes]:
    """
    Split a request target into its authority and origin-form path.

    @return: C{(authority, path)} for an absolute-form target such as
        C{b"http://h:8080/p?q"} (C{(b"h:8080", b"/p?q")}); C{(None, target)} for
        origin-form and asterisk-form targets.
    @raise HTTPError: 400 for any other form, a scheme other than http or https, userinfo,
        or an invalid authority.
    """
    if target[:1] == b"/" or target == b"*":
        return None, target
    match = _ABSOLUTE_TARGET_RE.fullmatch(target)
    if match is None:
        raise HTTPError(400, "invalid request target")
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise HTTPError(400, "unsupported scheme in request target")
    if b"@" in authority:
        raise HTTPError(400, "userinfo in request target")
    _check_authority(authority)
    if rest[:1] != b"/":
        rest = b"/" + rest
    return authority, rest


def request_host(head: RequestHead) -> bytes | None:
    """
    The host a request is for: the authority of an absolute-form target, else the Host field.

    @return: the authority as received (C{host[:port]}), or C{None} for an HTTP/1.0 request
        without Host, or with an empty one, and an origin-form target.
    @raise HTTPError: 400 for an HTTP/1.1 request without exactly one Host field, several Host
        fields, or an invalid host; 405 for CONNECT.
    """
    return _request_host(head, head.headers.get_all(b"host"))


def _request_host(head: RequestHead, hosts: list[bytes], checked: bool = False) -> bytes | None:
    """
    @param checked: the target form was already checked (by L{parse_request_head}).
    """
    if not checked:
        _check_target_form(head.method, head.target)
    if len(hosts) > 1:
        raise HTTPError(400, "more than one Host header")
    if not hosts and head.version != HTTP_10:
        raise HTTPError(400, "missing Host header")
    host = hosts[0] if hosts else b""
    if host:
        _check_authority(host)
    if head.target[:1] == b"/":
        return host or None
    authority, _ = split_absolute_target(head.target)
    if authority is not None:
        return authority
    return host or None


@define(slots=True)
class RequestInfo:
    """
    What the proxy needs to know of a request head, gathered in one pass over its fields.

    @ivar connection: the lower-cased tokens of every C{Connection} field.
    @ivar lowered: CRLF and the lower-cased raw field block, when the fields were never
        split (the fast path); L{None} otherwise.
    @ivar plain: the head has none of the fields the proxy removes or merges on the way to
        the backend (L{twisted_rp.http.forwarding.RequestForwarding.needs_fields}).
    """

    framing: Framing
    host: bytes | None
    connection: list[bytes]
    expect: bytes | None
    upgrade: bytes | None
    lowered: bytes | None = None
    plain: bool = False


_HOST, _LENGTH, _ENCODING, _CONNECTION, _EXPECT, _UPGRADE = range(6)
_REQUEST_FIELDS = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
}
# Field names are validated tokens, so in CRLF + the lower-cased block "\r\nname:" is an
# exact match for a field of that name.  (A leading CRLF rather than an "\A|" alternative
# keeps the patterns' literal prefix, which makes the search three times faster.)
_REQUEST_FRAMING_RE = re.compile(
    rb"\r\n(?:content-length|transfer-encoding|connection|expect|upgrade):"
)
_HOST_FIELD_RE = re.compile(rb"\r\nhost:")


def analyze_request(head: RequestHead) -> RequestInfo:
    """
    Framing, host, C{Connection} tokens, C{Expect} and C{Upgrade} of a request: the same rules
    as L{request_framing} and L{request_host}, in one pass over the fields.

    @raise HTTPError: as those do.
    """
    raw = head.headers.raw
    if raw is not None:
        lowered = b"\r\n" + raw.lower()
        if _REQUEST_FRAMING_RE.search(lowered) is None:
            # The common request: no body, no connection options, only Host to look at.
            hosts = []
            for match in _HOST_FIELD_RE.finditer(lowered):
                start = match.end() - 2
                end = raw.find(b"\r\n", start)
                hosts.append(raw[start : end if end >= 0 else len(raw)].strip(_OWS))
            # Raw fields only come from parse_request_head, which checked the target form.
            host = _request_host(head, hosts, checked=True)
            return RequestInfo(_NO_BODY, host, [], None, None, lowered)
    found: list[list[bytes]] = [[], [], [], [], [], []]
    interesting = _REQUEST_FIELDS.get
    for field in head.headers.fields:
        kind = interesting(field[0])
        if kind is not None:
            found[kind].append(field[2])
    hosts, lengths, encodings, connection, expect, upgrade = found
    framing = _request_framing(head.version, encodings, lengths)
    host = _request_host(head, hosts)
    if len(expect) > 1:
        raise HTTPError(400, "more than one Expect header")
    return RequestInfo(
        framing,
        host,
        _tokens(connection) if connection else [],
        expect[0] if expect else None,
        upgrade[0] if upgrade else None,
    )


@define(slots=True)
class ResponseInfo:
    """
    The framing of a response, its C{Connection} tokens and, for a head read by
    L{twisted_rp.http.scan.scan_response}, how to make its raw field block fit for the client.

    @ivar cut: the C{(start, end)} span of the raw block to remove (the C{Connection} field)
        or C{(0, 0)}; L{None} for a head the general parser read.
    """

    framing: Framing
    connection: list[bytes]
    cut: tuple[int, int] | None = None


_RESPONSE_FIELDS = {b"content-length": 0, b"transfer-encoding": 1, b"connection": 2}


def analyze_response(request_method: bytes, head: ResponseHead) -> ResponseInfo:
    """
    The framing of a response (as L{response_framing}) and its C{Connection} tokens, in one
    pass over the fields.
    """
    found: list[list[bytes]] = [[], [], []]
    interesting = _RESPONSE_FIELDS.get
    for field in head.headers.fields:
        kind = interesting(field[0])
        if kind is not None:
            found[kind].append(field[2])
    lengths, encodings, connection = found
    framing = _response_framing(request_method, head, encodings, lengths)
    return ResponseInfo(framing, _tokens(connection) if connection else [])
