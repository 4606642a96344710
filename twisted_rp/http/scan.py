"""
One-pass scanners for the common request and response heads.

Most heads a proxy sees are simple: an origin-form HTTP/1.1 request with no body and nothing
hop-by-hop, or a response framed by one plain C{Content-Length}.  These functions recognise
such heads with one regular expression that validates the whole head and a few searches of
its lower-cased copy, and return L{None} for anything else; the caller then takes the general
path (L{twisted_rp.http.parser}), which gives the same answer for every head these accept and
works out the error for the rest.  Both paths are tested against the same heads.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from twisted_rp.http.message import Headers, ResponseHead
from twisted_rp.http.parser import (
    _FIELD_LINE,
    _TOKEN,
    _VALUE_CHARS,
    NO_BODY,
    Framing,
    ResponseInfo,
)

_FIELDS = _FIELD_LINE + rb"(?:\r\n" + _FIELD_LINE + rb")*"

_ORIGIN_FORM_LINE = rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/1\.1"

#: An origin-form HTTP/1.1 request line and at least one field, all valid.
_SIMPLE_REQUEST = re.compile(_ORIGIN_FORM_LINE + rb"\r\n(" + _FIELDS + rb")").fullmatch

#: Such a request line alone.
_SIMPLE_REQUEST_LINE = re.compile(_ORIGIN_FORM_LINE).fullmatch

#: A reg-name or IPv4 host with an optional port up to 65535 (IPv6 takes the general path).
_SIMPLE_HOST = re.compile(
    rb"[A-Za-z0-9\-._~!$&'()*+,;=]+"
    rb"(?::(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
).fullmatch

#: An HTTP/1.x status line with a final status and its fields, all valid.
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.([01]) ([2-5][0-9][0-9])(?: (" + _VALUE_CHARS + rb"*))?\r\n(" + _FIELDS + rb")"
).fullmatch

#: The response fields the scanner reads, with their values: framing and hop-by-hop ones, in
#: CRLF + the lower-cased block.  Only one Content-Length and at most one Connection (both
#: checked below) keep a head on the simple path.
_RESPONSE_FIELDS = re.compile(
    rb"\r\n(content-length|connection|transfer-encoding|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade):([^\r\n]*)"
).findall

_OWS = b" \t"
_BODILESS_STATUS = frozenset({204, 304})
_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close"})
_NO_CUT = (0, 0)
_HOST_KEY = b"\r\nhost:"
_CONNECTION_KEY = b"\r\nconnection:"


def scan_request(
    head: bytes,
    special: re.Pattern[bytes],
    max_request_line: int,
    max_fields: int,
    valid_host: bytes | None = None,
    previous: tuple[bytes, bytes, bytes, bytes, bytes] | None = None,
) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    """
    Recognise a simple request head.

    @param head: the head without its final empty line.
    @param special: matches CRLF, a lower-cased field name and a colon for every field that
        takes the general path (framing, hop-by-hop, forwarding fields, ...).
    @param max_request_line: a longer request line takes the general path (which refuses it).
    @param max_fields: so does a head with more fields.
    @param valid_host: a C{Host} value known to be valid (the connection's last one), which
        need not be checked again.
    @param previous: what this function returned for the connection's previous request; when
        the field block is the same (clients often send the same fields on one connection),
        only the request line is read.
    @return: C{(method, target, fields, lowered, host)}, where C{fields} is the raw field block,
        C{lowered} CRLF and that block lower-cased, and C{host} the one valid C{Host} value; or
        L{None} for any other head.
    """
    if previous is not None:
        block = previous[2]
        line_end = len(head) - len(block) - 2
        # A valid line holds no CRLF: then the head is that line and the block, which the
        # previous request proved simple.  (Otherwise, it may still be another simple head.)
        if line_end > 0 and head.endswith(block) and head.startswith(b"\r\n", line_end):
            line = _SIMPLE_REQUEST_LINE(head, 0, line_end)
            if line is not None:
                method, target = line.groups()
                if line_end > max_request_line or method == b"CONNECT":
                    return None
                return method, target, block, previous[3], previous[4]
    match = _SIMPLE_REQUEST(head)
    if match is None:
        return None
    method, target, block = match.groups()
    if match.start(3) - 2 > max_request_line or method == b"CONNECT":
        return None
    lowered = b"\r\n" + block.lower()
    if special.search(lowered) is not None or _too_many_fields(lowered, max_fields):
        return None
    start = lowered.find(_HOST_KEY)
    if start < 0 or lowered.find(_HOST_KEY, start + 7) >= 0:
        return None
    # Offsets in CRLF + block are those in the block plus 2.
    end = block.find(b"\r\n", start + 5)
    host = block[start + 5 : end if end >= 0 else len(block)].strip(_OWS)
    if host != valid_host and _SIMPLE_HOST(host) is None:
        return None
    return method, target, block, lowered, host


def scan_response(head: bytes, method: bytes, max_fields: int) -> SimpleResponse | None:
    """
    Recognise a simple final response head: framed by one plain C{Content-Length} (or
    bodiless), with at most one C{Connection: keep-alive} or C{close}.

    @param head: the head without its final empty line.
    @param method: the request's method (a response to C{HEAD} has no body).
    @param max_fields: a head with more fields takes the general path (which refuses it).
    @return: the head's parts, its fields unsplit; or L{None} for any other head.
    """
    match = _SIMPLE_RESPONSE(head)
    if match is None:
        return None
    minor, status_text, reason, block = match.groups()
    lowered = b"\r\n" + block.lower()
    length = -1
    token = b""
    # One pass finds every field that matters here; most heads have two.
    for name, value in _RESPONSE_FIELDS(lowered):
        value = value.strip(_OWS)
        if name == b"content-length":
            if length >= 0 or len(value) > 18 or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection" and not token and value in _CONNECTION_TOKENS:
            token = value
        else:
            return None
    if length < 0 or _too_many_fields(lowered, max_fields):
        return None
    cut = _NO_CUT
    if token:
        # In the block, the field's line runs from start - 2 to end - 2; remove it with one
        # of its CRLFs (the one before it, unless it is the first line).
        start = lowered.find(_CONNECTION_KEY)
        end = lowered.find(b"\r\n", start + 2)
        if end < 0:
            end = len(lowered)
        cut = (start - 2, end - 2) if start else (0, min(end, len(block)))
    status = int(status_text)
    body = 0 if method == b"HEAD" or status in _BODILESS_STATUS else length
    version = b"HTTP/1.1" if minor == b"1" else b"HTTP/1.0"
    return _new_simple(
        SimpleResponse, (version, status, reason or b"", block, lowered, body, cut, token)
    )


def _too_many_fields(lowered: bytes, max_fields: int) -> bool:
    """Whether CRLF + a lower-cased field block has more than C{max_fields} fields."""
    # A field line is at least two bytes ("a:") after its CRLF: most blocks are too short to
    # hold more than max_fields, and need no count.
    return len(lowered) >= 4 * (max_fields + 1) and lowered.count(b"\r\n") > max_fields


class SimpleResponse(NamedTuple):
    """
    A simple response head, as L{scan_response} found it.

    @ivar lowered: CRLF and C{fields} lower-cased.
    @ivar length: how many body bytes follow (0 for a bodiless response, whatever its
        C{Content-Length} says).
    @ivar cut: the C{(start, end)} span of C{fields} to remove for the client (the
        C{Connection} field), or C{(0, 0)}.
    @ivar connection: the C{Connection} token (C{b"keep-alive"} or C{b"close"}), or C{b""}.
    """

    version: bytes
    status: int
    reason: bytes
    fields: bytes
    lowered: bytes
    length: int
    cut: tuple[int, int]
    connection: bytes

    def parsed(self) -> tuple[ResponseHead, ResponseInfo]:
        """The head and its L{ResponseInfo}, as the general path has them."""
        framing = Framing("length", self.length) if self.length else NO_BODY
        return (
            ResponseHead(self.version, self.status, self.reason, Headers.from_block(self.fields)),
            ResponseInfo(framing, [self.connection] if self.connection else [], self.cut),
        )


# A NamedTuple's own constructor is a Python function; the scanner fills all fields at once.
_new_simple = tuple.__new__
