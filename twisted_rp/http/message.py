"""
HTTP message heads and the request object extensions see.

Header names and values are C{bytes} as on the wire.  L{Headers} keeps repeated headers and
their order, and the case a name arrived in; lookups are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from http import HTTPStatus
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from twisted_rp.pool.sticky import request_cookie

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# RFC 9110 renamed these; older Pythons still have the RFC 7231 phrases.
_REASONS.update(
    {
        413: b"Content Too Large",
        414: b"URI Too Long",
        416: b"Range Not Satisfiable",
        422: b"Unprocessable Content",
    }
)


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for C{status} (RFC 9110 and its registry)."""
    return _REASONS.get(status, b"Unknown")


class HTTPError(Exception):
    """
    A request the proxy refuses before it reaches any backend.

    @ivar status: the 4xx/5xx status to answer with.
    @ivar detail: a short human-readable reason, used in the response body and the log.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"


#: Methods a client may send twice with the effect of once (RFC 9110 9.2.2): safe to retry.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Headers:
    """
    An ordered multi-map of header fields.

    Each field is stored as C{[lower-cased name, name as received, value]}.  Headers parsed
    from the wire start as their validated raw block and are split into fields only when
    something asks for them, since most are forwarded as they came.
    """

    __slots__ = ("_fields", "_raw")

    def __init__(self, fields: list[list[bytes]] | None = None) -> None:
        self._fields: list[list[bytes]] | None = fields if fields is not None else []
        self._raw: bytes | None = None

    @classmethod
    def from_block(cls, block: bytes) -> Headers:
        """
        Headers from a validated block of CRLF-separated C{name: value} lines (no final CRLF).
        """
        headers = cls.__new__(cls)
        headers._fields = None
        headers._raw = block
        return headers

    @property
    def raw(self) -> bytes | None:
        """The unsplit block, while the fields were never asked for; else L{None}."""
        return self._raw

    def replace_raw(self, block: bytes) -> None:
        """Replace the unsplit block (which must be valid) by C{block}."""
        assert self._fields is None
        self._raw = block

    @property
    def fields(self) -> list[list[bytes]]:
        fields = self._fields
        if fields is None:
            raw = self._raw
            fields = self._fields = (
                [
                    [name.lower(), name, value.strip(b" \t")]
                    for name, _, value in (line.partition(b":") for line in raw.split(b"\r\n"))
                ]
                if raw
                else []
            )
            self._raw = None
        return fields

    @fields.setter
    def fields(self, fields: list[list[bytes]]) -> None:
        self._fields = fields
        self._raw = None

    @classmethod
    def of(cls, *pairs: tuple[bytes, bytes]) -> Headers:
        """Build from C{(name, value)} pairs."""
        return cls([[name.lower(), name, value] for name, value in pairs])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for _, name, value in self.fields:
            yield name, value

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: bytes) -> bool:
        lname = name.lower()
        return any(f[0] == lname for f in self.fields)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def _find_raw(self, raw: bytes, lname: bytes) -> int:
        """
        Where the first C{lname} field's value starts in the unsplit block, or -1.  The
        block was validated (names are tokens directly followed by a colon), so one search
        of the lower-cased block finds a field without splitting it into fields.
        """
        found = (b"\n" + raw).lower().find(b"\n" + lname + b":")
        return found if found < 0 else found + len(lname) + 1

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of C{name}, or C{default}."""
        lname = name.lower()
        raw = self._raw
        if raw is not None:
            # Forwarded heads stay unsplit: asking for one field (Host) must not split them.
            start = self._find_raw(raw, lname)
            if start < 0:
                return default
            end = raw.find(b"\r\n", start)
            return raw[start : end if end >= 0 else len(raw)].strip(b" \t")
        for f in self.fields:
            if f[0] == lname:
                return f[2]
        return default

    def text(self, name: str) -> str | None:
        """The first value of C{name} as text (Latin-1), or L{None}: for L{PickContext}."""
        value = self.get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def cookie(self, name: str) -> str | None:
        """The value of request cookie C{name} (RFC 6265), or L{None}: for L{PickContext}."""
        fields = self.get_all(b"cookie")
        if not fields:
            return None
        return request_cookie("; ".join(f.decode("latin-1") for f in fields), name)

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of C{name}, in order."""
        lname = name.lower()
        return [f[2] for f in self.fields if f[0] == lname]

    def add(self, name: bytes, value: bytes) -> None:
        """Append a field."""
        raw = self._raw
        if raw is not None:
            # Appending to the unsplit block serializes exactly as a new field would.
            self._raw = raw + b"\r\n" + name + b": " + value if raw else name + b": " + value
            return
        self.fields.append([name.lower(), name, value])

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every C{name} field by one with C{value}, where the first one stood."""
        lname = name.lower()
        raw = self._raw
        if raw is not None and self._find_raw(raw, lname) < 0:
            self.add(name, value)
            return
        fields = self.fields
        for i, f in enumerate(fields):
            if f[0] == lname:
                fields[i] = [lname, name, value]
                rest = fields[i + 1 :]
                if any(g[0] == lname for g in rest):
                    fields[i + 1 :] = [g for g in rest if g[0] != lname]
                return
        fields.append([lname, name, value])

    def remove(self, name: bytes) -> None:
        """Drop every C{name} field."""
        lname = name.lower()
        raw = self._raw
        if raw is not None:
            self._raw = self._cut_raw(raw, (lname,))
            return
        self.fields = [f for f in self.fields if f[0] != lname]

    @staticmethod
    def _cut_raw(raw: bytes, lnames: Iterable[bytes]) -> bytes:
        """C{raw} without the lines of the fields named C{lnames}, still unsplit."""
        lowered = (b"\n" + raw).lower()
        # lowered[i] is the byte before raw[i]: a match at i is a field name starting at raw[i].
        starts = []
        for lname in lnames:
            key = b"\n" + lname + b":"
            found = lowered.find(key)
            while found >= 0:
                starts.append(found)
                found = lowered.find(key, found + 1)
        if not starts:
            return raw
        pieces = []
        kept_from = 0
        for found in sorted(starts):
            pieces.append(raw[kept_from:found])
            line_end = raw.find(b"\r\n", found)
            kept_from = len(raw) if line_end < 0 else line_end + 2
        pieces.append(raw[kept_from:])
        block = b"".join(pieces)
        return block[:-2] if block.endswith(b"\r\n") else block

    def remove_all(self, lnames: AbstractSet[bytes]) -> None:
        """Drop every field whose lower-cased name is in C{lnames}."""
        raw = self._raw
        if raw is not None:
            self._raw = self._cut_raw(raw, lnames)
            return
        self.fields = [f for f in self.fields if f[0] not in lnames]

    def tokens(self, name: bytes) -> list[bytes]:
        """The comma-separated, lower-cased tokens of every C{name} field (e.g. C{Connection})."""
        out: list[bytes] = []
        for value in self.get_all(name):
            for token in value.split(b","):
                token = token.strip(b" \t").lower()
                if token:
                    out.append(token)
        return out

    def serialize(self) -> bytes:
        """The fields as wire bytes, each line ending in CRLF."""
        if self._fields is None:
            return self._raw + b"\r\n" if self._raw else b""
        return b"".join([f[1] + b": " + f[2] + b"\r\n" for f in self._fields])


@define
class RequestHead:
    """
    A request line and header fields.  C{version} is C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers


@define
class ResponseHead:
    """
    A status line and header fields.
    """

    version: bytes
    status: int
    reason: bytes
    headers: Headers


@define
class ErrorResponse:
    """
    A small response the proxy itself sends (an error page, an authentication challenge).
    """

    status: int
    body: bytes = b""
    headers: Headers = field(factory=Headers)


@define(eq=False)
class ProxyRequest:
    """
    One request on its way through the proxy, as authenticators and rewriters see it.

    @ivar head: the request head as it will be sent to the backend (mutable).
    @ivar client_ip: the peer address of the client connection.
    @ivar scheme: C{"http"} or C{"https"}: how the client reached the proxy.
    @ivar route: the route that matched.
    @ivar backend: the backend chosen, once there is one.
    @ivar identity: set by an authenticator to name the authenticated user.
    @ivar request_id: the request's id (sent in C{X-Request-ID}).
    @ivar notes: free space for extensions to pass things from request to response hooks.
    @ivar authority: the C{Host} field (or absolute-form authority) as the client sent it,
        before any hook changed the head; L{None} if it sent none.
    """

    head: RequestHead
    client_ip: str
    client_port: int
    scheme: str
    host: str
    route: Any = None
    backend: Any = None
    identity: str | None = None
    request_id: str = ""
    notes: dict[str, Any] = field(factory=dict)
    authority: bytes | None = None


@define
class AccessRecord:
    """
    What the access log records of one request.
    """

    client_ip: str
    method: str
    target: str
    version: str
    status: int
    bytes_sent: int
    referer: str
    user_agent: str
    host: str
    request_id: str
    backend: str
    pool: str
    started: float
    duration: float
    backend_time: float | None
    user: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None


def default_error_page(status: int, detail: str) -> ErrorResponse:
    """
    The proxy's own page for an error: the status line's words, and C{detail} for a 4xx
    only (for a 5xx it may name backends and addresses).
    """
    body = b"%d %s\n" % (status, reason_phrase(status))
    if status < 500:
        body += detail.encode("utf-8", "replace") + b"\n"
    return ErrorResponse(status, body)


def checked_error_page(
    make: Callable[[int, str], ErrorResponse],
    default: Callable[[int, str], ErrorResponse],
    status: int,
    detail: str,
    log: Logger,
) -> ErrorResponse:
    """
    The page C{make} (an overridable C{error_response}) makes for an error; C{default}'s if
    it raises or answers another status, which would misreport the error to the client.
    """
    try:
        page = make(status, detail)
        if page.status != status:
            raise ValueError(f"error_response answered {page.status} for {status}")
    except Exception:
        log.failure("error_response failed; sending the default page")
        page = default(status, detail)
    return page
