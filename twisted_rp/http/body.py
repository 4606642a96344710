"""
Streaming decoders for HTTP/1.1 message bodies, and the chunked encoder.

A decoder is fed whatever the transport delivered and hands back the payload found in it,
as slices of the input, without ever holding a whole body.  Both decoders share one contract:
C{feed(data)} returns C{(pieces, leftover)}, where C{leftover} is C{None} while the body goes
on and, once it ended, the bytes that followed it (the start of a pipelined message, or
C{b""}).
"""

from __future__ import annotations

import re

from twisted_rp.http.message import HTTPError
from twisted_rp.http.parser import FIELD_LINE_RE, diagnose_field_line

__all__ = ["LAST_CHUNK", "ChunkedDecoder", "LengthDecoder", "encode_chunk"]

LAST_CHUNK = b"0\r\n\r\n"
"""The last chunk of a chunked body, with no trailers."""

_MAX_SIZE_DIGITS = 16
_OWS = b" \t"
_CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT_RE = re.compile(
    rb"(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED_STRING
    + rb"))?)+"
)

_SIZE = 0
_DATA = 1
_DATA_CRLF = 2
_TRAILER = 3
_DONE = 4


def encode_chunk(data: bytes) -> bytes:
    """
    Frame C{data} as one chunk; empty data gives C{b""}, since an empty chunk would end the body.
    """
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


class LengthDecoder:
    """
    Decode a body of known length (C{Content-Length}).

    @ivar remaining: how many body bytes are still to come.
    """

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        if length < 0:
            raise ValueError("negative body length")
        self.remaining = length

    @property
    def done(self) -> bool:
        """Whether the whole body was read."""
        return self.remaining == 0

    def feed(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        """
        Take the body bytes out of C{data}.

        @return: C{(pieces, leftover)} as described in the module docstring.
        """
        remaining = self.remaining
        if not remaining:
            return [], data
        size = len(data)
        if size < remaining:
            self.remaining = remaining - size
            return ([data] if size else []), None
        self.remaining = 0
        if size == remaining:
            return [data], b""
        return [data[:remaining]], data[remaining:]


class ChunkedDecoder:
    """
    Decode a body in the chunked transfer coding (RFC 9112 section 7.1).

    Chunk extensions are checked and dropped.  Input may be split anywhere.

    @ivar trailers: the trailer fields, C{(name, value)}, once the body is complete.
    """

    __slots__ = (
        "_crlf_seen",
        "_line",
        "_max_chunk_ext",
        "_max_size_line",
        "_max_trailer_bytes",
        "_remaining",
        "_state",
        "_trailer_bytes",
        "trailers",
    )

    def __init__(self, max_trailer_bytes: int = 16384, max_chunk_ext: int = 4096) -> None:
        """
        @param max_trailer_bytes: the size limit of the trailer section, line breaks included.
        @param max_chunk_ext: the size limit of the extensions of one chunk.
        """
        self._max_trailer_bytes = max_trailer_bytes
        self._max_chunk_ext = max_chunk_ext
        self._max_size_line = _MAX_SIZE_DIGITS + max_chunk_ext
        self._state = _SIZE
        self._remaining = 0
        self._crlf_seen = False
        # A size or trailer line whose end has not arrived yet.
        self._line = bytearray()
        self._trailer_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] = []

    @property
    def done(self) -> bool:
        """Whether the whole body, trailers included, was read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        """
        Decode C{data}.

        @return: C{(pieces, leftover)} as described in the module docstring.
        @raise HTTPError: 400 for a malformed or oversized chunk framing.
        """
        if self._state == _DONE:
            return [], data
        pieces: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                pieces.append(data if take == end else data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                if not self._crlf_seen and data[pos : pos + 2] == b"\r\n":
                    pos += 2
                    self._state = _SIZE
                    continue
                expected = 10 if self._crlf_seen else 13
                if data[pos] != expected:
                    raise HTTPError(400, "missing CRLF after chunk data")
                pos += 1
                if self._crlf_seen:
                    self._crlf_seen = False
                    self._state = _SIZE
                else:
                    self._crlf_seen = True
            elif state == _SIZE:
                line, pos = self._take_line(data, pos, self._max_size_line)
                if line is None:
                    break
                self._start_chunk(line)
            else:
                limit = self._max_trailer_bytes - self._trailer_bytes - 2
                line, pos = self._take_line(data, pos, limit)
                if line is None:
                    break
                self._trailer_bytes += len(line) + 2
                if not line:
                    self._state = _DONE
                    return pieces, data[pos:]
                self._add_trailer(line)
        return pieces, None

    def _take_line(self, data: bytes, pos: int, limit: int) -> tuple[bytes | None, int]:
        """
        Read a CRLF-terminated line from C{data} at C{pos}, carrying a partial one over.

        @param limit: the longest line allowed, without its CRLF.
        @return: the line without its CRLF (or C{None} if it has not ended yet) and the
            position after it.
        """
        newline = data.find(b"\n", pos)
        if newline < 0:
            if len(self._line) + len(data) - pos > limit + 1:
                raise self._too_long()
            self._line += data[pos:]
            return None, len(data)
        if self._line:
            self._line += data[pos:newline]
            raw = bytes(self._line)
            self._line.clear()
        else:
            raw = data[pos:newline]
        if raw[-1:] != b"\r":
            raise HTTPError(400, "bare LF in chunked body")
        if len(raw) > limit + 1:
            raise self._too_long()
        return raw[:-1], newline + 1

    def _too_long(self) -> HTTPError:
        if self._state == _SIZE:
            return HTTPError(400, "chunk extension too long")
        return HTTPError(400, "trailer section too large")

    def _start_chunk(self, line: bytes) -> None:
        """Act on a chunk-size line (without its CRLF)."""
        match = _CHUNK_SIZE_RE.match(line)
        if match is None:
            raise HTTPError(400, "invalid chunk size")
        digits = match.end()
        if digits > _MAX_SIZE_DIGITS:
            raise HTTPError(400, "chunk size too large")
        if digits < len(line):
            if len(line) - digits > self._max_chunk_ext:
                raise HTTPError(400, "chunk extension too long")
            if _CHUNK_EXT_RE.fullmatch(line, digits) is None:
                raise HTTPError(400, "invalid chunk extension")
        size = int(line[:digits], 16)
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _add_trailer(self, line: bytes) -> None:
        if FIELD_LINE_RE.fullmatch(line) is None:
            raise HTTPError(400, f"invalid trailer: {diagnose_field_line(line)}")
        name, _, value = line.partition(b":")
        self.trailers.append((name, value.strip(_OWS)))
