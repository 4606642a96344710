"""
The FTP control channel's grammar: command lines, replies, and the data-address formats the
proxy rewrites (C{PORT}, C{EPRT}, C{227}, C{229}).

Everything here is pure: bytes and text in, values out, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

from attrs import frozen

#: The longest command line a client may send, CRLF included.
MAX_COMMAND_LINE = 2048
#: The longest reply line a backend may send, and the most bytes one reply may take.
MAX_REPLY_LINE = 8192
MAX_REPLY_SIZE = 1024 * 1024

_TELNET_IAC = 0xFF
_REPLY_START = re.compile(rb"^([1-5]\d\d)([ -])")
_HOST_PORT = re.compile(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EXTENDED_PORT = re.compile(r"\(([\x21-\x7e])\1\1(\d{1,5})\1\)")


class FTPSyntaxError(ValueError):
    """A command argument or a reply the proxy must understand is malformed."""


class ReplyError(ValueError):
    """A backend sent something that is not an FTP reply."""


@frozen
class Command:
    """
    One client command line.

    @ivar verb: the command, upper-cased (C{"RETR"}).
    @ivar argument: everything after the first space, as sent (may be empty).
    """

    verb: str
    argument: str

    def encode(self) -> bytes:
        """The command line as it goes to a backend, CRLF-terminated."""
        if self.argument:
            return f"{self.verb} {self.argument}\r\n".encode("utf-8", "surrogateescape")
        return f"{self.verb}\r\n".encode("ascii")


def strip_telnet(line: bytes) -> bytes:
    """
    Remove Telnet IAC sequences (C{IAC IP}, C{IAC DM}, ...) that clients put before an urgent
    C{ABOR}; an escaped C{IAC IAC} stays as one C{0xff} byte.
    """
    if _TELNET_IAC not in line:
        return line
    out = bytearray()
    index = 0
    while index < len(line):
        byte = line[index]
        if byte == _TELNET_IAC and index + 1 < len(line):
            if line[index + 1] == _TELNET_IAC:
                out.append(_TELNET_IAC)
            index += 2
            continue
        out.append(byte)
        index += 1
    return bytes(out)


def parse_command(line: bytes) -> Command:
    """
    Parse one command line (without its CRLF).

    @raise FTPSyntaxError: the line is empty, has a bare CR, LF or NUL (which could smuggle a
        second command to a backend), or its verb is not a short run of letters.
    """
    line = strip_telnet(line)
    if any(c in line for c in b"\r\n\0"):
        raise FTPSyntaxError("bare CR, LF or NUL in command line")
    verb, _, argument = line.partition(b" ")
    if not verb.isalpha() or not 3 <= len(verb) <= 4 or not verb.isascii():
        raise FTPSyntaxError("not an FTP command")
    return Command(verb.decode("ascii").upper(), argument.decode("utf-8", "surrogateescape"))


@frozen
class Reply:
    """
    One complete reply: its code and its lines as received (without line ends).
    """

    code: int
    lines: tuple[bytes, ...]

    @classmethod
    def of(cls, code: int, *texts: str) -> Reply:
        """A reply the proxy makes itself, of one line or several."""
        if not texts:
            texts = ("",)
        if len(texts) == 1:
            return cls(code, (f"{code} {texts[0]}".encode(),))
        first = f"{code}-{texts[0]}".encode()
        middle = tuple(f" {text}".encode() for text in texts[1:-1])
        return cls(code, (first, *middle, f"{code} {texts[-1]}".encode()))

    @property
    def preliminary(self) -> bool:
        """A 1xx reply: a final one for the same command follows."""
        return self.code < 200

    @property
    def text(self) -> str:
        """The lines as text, joined with newlines (for parsing and logs)."""
        return "\n".join(line.decode("utf-8", "replace") for line in self.lines)

    def encode(self) -> bytes:
        """The reply as it goes to a client, each line CRLF-terminated."""
        return b"".join(line + b"\r\n" for line in self.lines)


class ReplyReader:
    """
    Cuts a backend's byte stream into L{Reply}s, multi-line replies whole (RFC 959 4.2: the
    first line is C{"123-"}, the last C{"123 "}).  Lines may end in CRLF or a bare LF.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []
        self._size = 0
        self._code: bytes | None = None

    def feed(self, data: bytes) -> Iterator[Reply]:
        """
        Take C{data} and yield the replies it completes.

        @raise ReplyError: a line is not part of a valid reply or is too long.
        """
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise ReplyError("reply line too long")
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_REPLY_LINE:
                raise ReplyError("reply line too long")
            reply = self._line(line)
            if reply is not None:
                yield reply

    def _line(self, line: bytes) -> Reply | None:
        if self._code is None:
            match = _REPLY_START.match(line + b" " if len(line) == 3 else line)
            if match is None:
                raise ReplyError(f"not an FTP reply: {line[:80]!r}")
            if match.group(2) == b" ":
                return Reply(int(match.group(1)), (line,))
            self._code = match.group(1)
            self._lines = [line]
            self._size = len(line)
            return None
        self._lines.append(line)
        self._size += len(line)
        if self._size > MAX_REPLY_SIZE:
            raise ReplyError("multi-line reply too long")
        if line[:3] == self._code and (len(line) == 3 or line[3:4] == b" "):
            reply = Reply(int(self._code), tuple(self._lines))
            self._code = None
            self._lines = []
            return reply
        return None


# Data addresses


def _port_number(high: int, low: int) -> int:
    if not (0 <= high <= 255 and 0 <= low <= 255):
        raise FTPSyntaxError("port byte out of range")
    return high << 8 | low


def parse_port_argument(argument: str) -> tuple[str, int]:
    """
    Parse a C{PORT} argument C{h1,h2,h3,h4,p1,p2}.

    @return: the IPv4 address as text and the port.
    @raise FTPSyntaxError: when malformed.
    """
    parts = argument.strip().split(",")
    if len(parts) != 6 or not all(p.strip().isdigit() for p in parts):
        raise FTPSyntaxError("PORT needs h1,h2,h3,h4,p1,p2")
    numbers = [int(p) for p in parts]
    if any(n > 255 for n in numbers):
        raise FTPSyntaxError("PORT number out of range")
    host = ".".join(str(n) for n in numbers[:4])
    return host, _port_number(numbers[4], numbers[5])


def parse_eprt_argument(argument: str) -> tuple[str, int]:
    """
    Parse an C{EPRT} argument C{|1|192.0.2.1|6275|} or C{|2|2001:db8::1|6275|} (RFC 2428;
    any printable delimiter).

    @return: the address as text (compressed) and the port.
    @raise FTPSyntaxError: when malformed, or the family does not match the address.
    """
    argument = argument.strip()
    if len(argument) < 2:
        raise FTPSyntaxError("EPRT argument too short")
    delimiter = argument[0]
    fields = argument.split(delimiter)
    if len(fields) != 5 or fields[0] or fields[4]:
        raise FTPSyntaxError("EPRT needs |family|address|port|")
    family, host, port_text = fields[1:4]
    if family not in ("1", "2") or not port_text.isdigit():
        raise FTPSyntaxError("EPRT family must be 1 or 2 and the port a number")
    try:
        address = ipaddress.ip_address(host)
    except ValueError as error:
        raise FTPSyntaxError(f"EPRT address invalid: {host!r}") from error
    if address.version != (4 if family == "1" else 6):
        raise FTPSyntaxError("EPRT address does not match its family")
    port = int(port_text)
    if not 0 < port < 65536:
        raise FTPSyntaxError("EPRT port out of range")
    return address.compressed, port


def parse_227(reply: Reply) -> tuple[str, int]:
    """
    The address and port in a C{227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)} reply, found
    anywhere in its text (servers differ on the parentheses).

    @raise FTPSyntaxError: no address in the reply.
    """
    match = _HOST_PORT.search(reply.text)
    if reply.code != 227 or match is None:
        raise FTPSyntaxError(f"not a 227 reply with an address: {reply.text[:80]!r}")
    numbers = [int(n) for n in match.groups()]
    if any(n > 255 for n in numbers):
        raise FTPSyntaxError("227 number out of range")
    return ".".join(map(str, numbers[:4])), _port_number(numbers[4], numbers[5])


def parse_229(reply: Reply) -> int:
    """
    The port in a C{229 Entering Extended Passive Mode (|||port|)} reply.

    @raise FTPSyntaxError: no port in the reply.
    """
    match = _EXTENDED_PORT.search(reply.text)
    if reply.code != 229 or match is None:
        raise FTPSyntaxError(f"not a 229 reply with a port: {reply.text[:80]!r}")
    port = int(match.group(2))
    if not 0 < port < 65536:
        raise FTPSyntaxError("229 port out of range")
    return port


def format_227(host: str, port: int) -> Reply:
    """
    A C{227} reply announcing C{host} (IPv4) and C{port}.

    @raise ValueError: C{host} is not an IPv4 address.
    """
    address = ipaddress.IPv4Address(host)
    numbers = ",".join(str(b) for b in address.packed)
    return Reply.of(227, f"Entering Passive Mode ({numbers},{port >> 8},{port & 0xFF}).")


def format_229(port: int) -> Reply:
    """A C{229} reply announcing C{port}."""
    return Reply.of(229, f"Entering Extended Passive Mode (|||{port}|)")


def format_port_argument(host: str, port: int) -> str:
    """The C{PORT} argument for an IPv4 C{host} and C{port}."""
    address = ipaddress.IPv4Address(host)
    return ",".join([*(str(b) for b in address.packed), str(port >> 8), str(port & 0xFF)])


def feature_lines(reply: Reply) -> list[str]:
    """The features a C{211} C{FEAT} reply lists, one per line, stripped."""
    if reply.code != 211 or len(reply.lines) < 2:
        return []
    return [line.decode("utf-8", "replace").strip() for line in reply.lines[1:-1] if line.strip()]


def feat_reply(features: Iterable[str]) -> Reply:
    """A C{211} C{FEAT} reply listing C{features}."""
    features = list(features)
    if not features:
        return Reply.of(211, "No features")
    return Reply.of(211, "Features:", *features, "End")
