"""
Response body filters: search-and-replace substitution and gzip compression, both streaming;
and L{NoStore}, the response rewriter that keeps responses out of every cache.

Each is an L{IResponseBodyFilter} installed on a route's C{response_body_filters}; neither ever
holds a whole body: L{Substitute} keeps at most the longest search string less one byte between
reads, L{Gzip} what zlib keeps in its window.  See C{docs/rewriting.rst}.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence

from zope.interface import implementer

from twisted_rp.http.message import Headers, ProxyRequest, ResponseHead
from twisted_rp.interfaces import IBodyTransform, IResponseBodyFilter, IResponseRewriter

#: Where L{Substitute} keeps the client's C{Accept-Encoding} after asking the backend for an
#: unencoded body, so that a L{Gzip} later on the route still knows what the client accepts.
CLIENT_ACCEPT_ENCODING = "twisted_rp.client-accept-encoding"

#: Media types L{Substitute} rewrites by default: text a browser reads.
TEXT_TYPES: tuple[str, ...] = (
    "text/html",
    "text/css",
    "text/plain",
    "text/xml",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/xhtml+xml",
    "image/svg+xml",
)

#: Media types L{Gzip} compresses by default (C{type/*} matches a whole type): text, and the
#: textual or uncompressed formats of nginx's and Apache's usual C{gzip_types} lists.
COMPRESSIBLE_TYPES: tuple[str, ...] = (
    "text/*",
    "application/javascript",
    "application/x-javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "font/ttf",
    "font/otf",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
)


def media_type(headers: Headers) -> str | None:
    """The lower-cased media type of C{Content-Type} without parameters, or L{None}."""
    value = headers.get(b"content-type")
    if value is None:
        return None
    return value.split(b";", 1)[0].strip(b" \t").decode("latin-1").lower() or None


#: What a changed body can no longer be validated with.
_VALIDATORS = frozenset({b"etag", b"last-modified"})
#: The caching fields "never cache" replaces.
_CACHING = frozenset({b"cache-control", b"expires", b"pragma"})


class _TypeSet:
    """A set of media types where C{type/*} stands for every subtype of C{type}."""

    def __init__(self, types: Iterable[str]) -> None:
        types = [t.lower() for t in types]
        for t in types:
            if "/" not in t:
                raise ValueError(f"not a media type: {t!r}")
        self.exact = frozenset(t for t in types if not t.endswith("/*"))
        self.whole = frozenset(t[:-1] for t in types if t.endswith("/*"))

    def __contains__(self, media: str | None) -> bool:
        if media is None:
            return False
        return media in self.exact or media[: media.find("/") + 1] in self.whole


def _encoded(headers: Headers) -> bool:
    """Whether the body has a content coding other than C{identity}."""
    return any(token != b"identity" for token in headers.tokens(b"content-encoding"))


def _ranged(response: ResponseHead) -> bool:
    # A part of a representation: transforming it would not match its Content-Range.
    return response.status == 206 or b"content-range" in response.headers


def accepts_gzip(accept_encoding: bytes | None) -> bool:
    """
    Whether an C{Accept-Encoding} value accepts gzip (RFC 9110 section 12.5.3): C{gzip} or
    C{x-gzip} with a non-zero weight, or else C{*} with one.  No field accepts nothing here
    (a client that sends none may not decode gzip).
    """
    if accept_encoding is None:
        return False
    named: float | None = None
    wildcard: float | None = None
    for item in accept_encoding.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip(b" \t").lower()
        weight = 1.0
        for param in params.split(b";"):
            name, _, value = param.partition(b"=")
            if name.strip(b" \t").lower() == b"q":
                try:
                    weight = float(value.strip(b" \t"))
                except ValueError:
                    weight = 0.0
        if coding in (b"gzip", b"x-gzip"):
            named = weight if named is None else max(named, weight)
        elif coding == b"*":
            wildcard = weight
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0


def _accept_encoding(headers: Headers) -> bytes | None:
    return b", ".join(headers.get_all(b"accept-encoding")) or None


def _add_vary(headers: Headers, name: bytes) -> None:
    tokens = headers.tokens(b"vary")
    if b"*" in tokens or name.lower() in tokens:
        return
    headers.add(b"Vary", name)


#: Up to this many search strings are found with C{bytes.find}, one each; beyond, with one
#: regular expression (which scans each byte once, but slowly, without a literal prefix).
_FIND_LIMIT = 8

#: A scanner substitutes the matches in C{buffer} that start before C{safe}, returning the
#: substituted bytes and where they end in C{buffer} (at C{safe} or, after a match crossing
#: it, beyond); the rest waits for more bytes.
_Scanner = Callable[[bytes, int], tuple[bytes, int]]


def _split_scan(buffer: bytes, safe: int, search: bytes, replacement: bytes) -> tuple[bytes, int]:
    """Substitute one search string (the only one in C{buffer}) with C{bytes.split}."""
    pieces = buffer.split(search)
    # `end` is where match `count` ends; matches starting at `safe` or later wait (with one
    # rule none can, a longer search string of another rule might match there).
    count = len(pieces) - 1
    end = len(buffer) - len(pieces[-1])
    length = len(search)
    while count and end - length >= safe:
        end -= length + len(pieces[count - 1])
        count -= 1
    cut = max(end, safe)
    if count < len(pieces) - 1:
        del pieces[count:]
        pieces.append(buffer[end:cut])
    else:
        pieces[-1] = buffer[end:cut]
    return replacement.join(pieces), cut


def _one_scanner(search: bytes, replacement: bytes) -> _Scanner:
    def scan(buffer: bytes, safe: int) -> tuple[bytes, int]:
        return _split_scan(buffer, safe, search, replacement)

    return scan


def _find_scanner(rules: Sequence[tuple[bytes, bytes]]) -> _Scanner:
    # Longest first, so that of matches at one position the first found is the longest.
    ordered = sorted(rules, key=lambda rule: len(rule[0]), reverse=True)
    searches = [search for search, _ in ordered]
    replacements = [replacement for _, replacement in ordered]

    def scan(buffer: bytes, safe: int) -> tuple[bytes, int]:
        find = buffer.find
        found = [find(search) for search in searches]
        present = [i for i, at in enumerate(found) if at >= 0]
        if len(present) <= 1:
            # The usual case for one read: at most one of the strings is in it.
            if not present:
                return buffer[:safe], safe
            return _split_scan(buffer, safe, searches[present[0]], replacements[present[0]])
        out: list[bytes] = []
        done = 0
        while True:
            best = index = -1
            for i in present:
                at = found[i]
                if 0 <= at < done:
                    at = found[i] = find(searches[i], done)
                if at >= 0 and (best < 0 or at < best):
                    best, index = at, i
            if best < 0 or best >= safe:
                break
            out.append(buffer[done:best])
            out.append(replacements[index])
            done = best + len(searches[index])
        cut = max(done, safe)
        out.append(buffer[done:cut])
        return b"".join(out), cut

    return scan


def _regex_scanner(rules: dict[bytes, bytes]) -> _Scanner:
    ordered = sorted(rules, key=len, reverse=True)
    # Capturing: split() returns [text, match, text, ..., text] from the C scanner.
    split = re.compile(b"(" + b"|".join(re.escape(s) for s in ordered) + b")").split

    def scan(buffer: bytes, safe: int) -> tuple[bytes, int]:
        parts = split(buffer)
        # Walk back over the matches that start at `safe` or later: a longer search string
        # may match there once more bytes come.  `end` is where match `last` ends.
        last = len(parts) - 2
        end = len(buffer) - len(parts[-1])
        while last >= 1:
            start = end - len(parts[last])
            if start < safe:
                break
            end = start - len(parts[last - 1])
            last -= 2
        cut = max(end, safe)
        if last < 1:
            return buffer[:cut], cut
        decided = parts[: last + 1]
        decided[1::2] = [rules[match] for match in decided[1::2]]
        decided.append(buffer[end:cut])
        return b"".join(decided), cut

    return scan


@implementer(IBodyTransform)
class _Substitution:
    """One body being substituted."""

    __slots__ = ("_carry", "_keep", "_scan")

    def __init__(self, scan: _Scanner, keep: int) -> None:
        self._scan = scan
        self._keep = keep
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._carry + data if self._carry else data
        # A match starting before `safe` is final: the longest search string fits after it.
        safe = len(buffer) - self._keep
        if safe <= 0:
            self._carry = buffer
            return b""
        out, cut = self._scan(buffer, safe)
        self._carry = buffer[cut:]
        return out

    def flush(self) -> bytes:
        # The carry may be the start of a match: it waits for more of the body.
        return b""

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        return self._scan(carry, len(carry))[0] if carry else b""


@implementer(IResponseBodyFilter)
class Substitute:
    """
    Replace every occurrence of each search string by its replacement in text bodies, as they
    stream.

    At each position the longest search string wins; matches do not overlap and a replacement
    is never searched again, so the result is that of one pass over the whole body.  Strings
    are bytes, compared with the body's own bytes (the same charset).  Only unencoded bodies
    are changed: the filter asks the backend for one (it removes the request's
    C{Accept-Encoding}, keeping it for a later L{Gzip}).  A changed response loses its
    C{ETag} and C{Last-Modified}, which described the backend's bytes.

    @ivar rules: the C{(search, replacement)} pairs; the first of equal search strings wins.
    @ivar content_types: the media types to change (C{type/*} for every subtype).
    """

    def __init__(
        self,
        rules: Sequence[tuple[bytes, bytes]],
        content_types: Iterable[str] = TEXT_TYPES,
    ) -> None:
        replace: dict[bytes, bytes] = {}
        for rule in rules:
            search, replacement = rule
            if not isinstance(search, bytes) or not isinstance(replacement, bytes):
                raise ValueError(f"search and replacement must be bytes: {rule!r}")
            if not search:
                raise ValueError("a search string cannot be empty")
            replace.setdefault(search, replacement)
        if not replace:
            raise ValueError("Substitute needs at least one rule")
        self.rules = tuple((bytes(s), bytes(r)) for s, r in rules)
        self.content_types = tuple(content_types)
        self._types = _TypeSet(self.content_types)
        unique = list(replace.items())
        if len(unique) == 1:
            self._scan = _one_scanner(*unique[0])
        elif len(unique) <= _FIND_LIMIT:
            self._scan = _find_scanner(unique)
        else:
            self._scan = _regex_scanner(replace)
        self._keep = max(len(search) for search in replace) - 1

    def __repr__(self) -> str:
        return f"Substitute({list(self.rules)!r}, content_types={self.content_types!r})"

    def prepare_request(self, request: ProxyRequest) -> None:
        headers = request.head.headers
        if CLIENT_ACCEPT_ENCODING not in request.notes:
            request.notes[CLIENT_ACCEPT_ENCODING] = _accept_encoding(headers)
        headers.remove(b"accept-encoding")

    def start(self, request: ProxyRequest, response: ResponseHead) -> IBodyTransform | None:
        headers = response.headers
        if (
            media_type(headers) not in self._types
            or _encoded(headers)
            or _ranged(response)
            or b"no-transform" in headers.tokens(b"cache-control")
        ):
            return None
        headers.remove_all(_VALIDATORS)
        return _Substitution(self._scan, self._keep)


@implementer(IBodyTransform)
class _Compression:
    """One body being compressed (an L{IBodyTransform})."""

    __slots__ = ("_compressor",)

    def __init__(self, level: int, length: int | None) -> None:
        wbits, memory = zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL
        if length is not None:
            # As nginx does: a window no larger than the body.  zlib's state for the largest
            # window costs more to set up than compressing a small page.
            while wbits > 9 and length < 1 << (wbits - 1):
                wbits -= 1
                memory = max(memory - 1, 1)
        # 16 + wbits: the gzip container.
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memory)

    def feed(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        # A sync flush ends the deflate block so the client can decode everything sent so far.
        return self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


@implementer(IResponseBodyFilter)
class Gzip:
    """
    Compress response bodies with gzip for clients that accept it, as they stream.

    A response is compressed when the request's C{Accept-Encoding} accepts gzip (weights
    honoured: C{gzip;q=0} refuses), its media type is in C{content_types}, it has no content
    coding yet, is not a range, does not say C{Cache-Control: no-transform}, and its
    C{Content-Length}, when known, is at least C{min_length}.  Every response of a
    compressible type that is not encoded gets C{Vary: Accept-Encoding}, compressed or not, so
    caches keep the two forms apart.  A compressed response's strong C{ETag} becomes weak.

    The output is flushed after each read from the backend, so a page streamed in parts reaches
    the browser in parts.

    @ivar level: the zlib compression level, 1 (fastest, the default as in nginx) to 9
        (smallest): level 6 makes pages about a fifth smaller than level 1 for three times
        the CPU time, which a single-threaded proxy pays per response.
    @ivar min_length: smaller bodies of known length are sent as they are.
    @ivar content_types: the media types to compress (C{type/*} for every subtype).
    """

    def __init__(
        self,
        level: int = 1,
        min_length: int = 1024,
        content_types: Iterable[str] = COMPRESSIBLE_TYPES,
    ) -> None:
        if not 1 <= level <= 9:
            raise ValueError(f"gzip level must be 1 to 9, not {level!r}")
        if min_length < 0:
            raise ValueError(f"min_length must not be negative, not {min_length!r}")
        self.level = level
        self.min_length = min_length
        self.content_types = tuple(content_types)
        self._types = _TypeSet(self.content_types)

    def __repr__(self) -> str:
        return (
            f"Gzip(level={self.level}, min_length={self.min_length}, "
            f"content_types={self.content_types!r})"
        )

    def prepare_request(self, request: ProxyRequest) -> None:
        pass

    def start(self, request: ProxyRequest, response: ResponseHead) -> IBodyTransform | None:
        headers = response.headers
        if media_type(headers) not in self._types or _encoded(headers):
            return None
        if b"no-transform" in headers.tokens(b"cache-control"):
            return None
        _add_vary(headers, b"Accept-Encoding")
        if _ranged(response):
            return None
        field = headers.get(b"content-length")
        length = int(field) if field is not None and field.isdigit() else None
        if length is not None and length < self.min_length:
            return None
        notes = request.notes
        accept = (
            notes[CLIENT_ACCEPT_ENCODING]
            if CLIENT_ACCEPT_ENCODING in notes
            else _accept_encoding(request.head.headers)
        )
        if not accepts_gzip(accept):
            return None
        headers.remove(b"content-encoding")
        headers.add(b"Content-Encoding", b"gzip")
        etag = headers.get(b"etag")
        if etag is not None and not etag.startswith(b"W/"):
            headers.set(b"ETag", b"W/" + etag)
        return _Compression(self.level, length)


@implementer(IResponseRewriter)
class NoStore:
    """
    Never cache: every response gets C{Cache-Control: no-store} in place of the backend's
    caching fields, so neither browsers nor shared caches keep a copy.  C{Expires} is
    removed too, and C{Pragma: no-cache} added, for HTTP/1.0 caches.
    """

    def __repr__(self) -> str:
        return "NoStore()"

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        headers = response.headers
        headers.remove_all(_CACHING)
        headers.add(b"Cache-Control", b"no-store")
        headers.add(b"Pragma", b"no-cache")
