"""
A plain-HTTP listener that sends every request to the same URL over HTTPS.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from twisted_rp.http.message import HTTPError
from twisted_rp.http.parser import analyze_request, parse_request_head, split_absolute_target
from twisted_rp.settings import Limits

_SAFE_METHODS = frozenset({b"GET", b"HEAD"})


class HTTPSRedirectProtocol(Protocol):
    """
    Answers each request with a redirect to its HTTPS URL: 301 for GET and HEAD, 308 (which
    keeps the method and body) for the rest; then closes.
    """

    _log = Logger()
    transport: Any

    def __init__(self, factory: HTTPSRedirectFactory) -> None:
        self.factory = factory
        self._buffer = b""

    def connectionMade(self) -> None:
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        limits = self.factory.limits
        if end < 0:
            if len(self._buffer) > limits.max_header_bytes:
                self._answer(431, b"Request Header Fields Too Large", None)
            return
        try:
            head = parse_request_head(
                self._buffer[:end], limits.max_request_line, limits.max_headers
            )
            host = analyze_request(head).host
            _, target = split_absolute_target(head.target)
        except HTTPError as e:
            self._answer(e.status, b"Bad Request", None)
            return
        if not host:
            self._answer(400, b"Bad Request", None)
            return
        name = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        port = self.factory.https_port
        authority = name if port in (None, 443) else name + b":%d" % port
        status, reason = (301, b"Moved Permanently")
        if head.method not in _SAFE_METHODS:
            status, reason = (308, b"Permanent Redirect")
        self._answer(status, reason, b"https://" + authority + target)

    def _answer(self, status: int, reason: bytes, location: bytes | None) -> None:
        body = b"%d %s\n" % (status, reason)
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if location is not None:
            head += b"Location: " + location + b"\r\n"
        head += b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
        self.transport.write(head + b"Connection: close\r\n\r\n" + body)
        self._buffer = b""
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer.active():
            self._timer.cancel()


class HTTPSRedirectFactory(Factory):
    """
    @param https_port: the port of the HTTPS listener clients are sent to (omitted from the
        URL when 443 or L{None}).
    """

    protocol = HTTPSRedirectProtocol

    def __init__(
        self,
        clock: IReactorTime,
        https_port: int | None = None,
        limits: Limits = Limits(),
        timeout: float = 30.0,
    ) -> None:
        self.clock = clock
        self.https_port = https_port
        self.limits = limits
        self.timeout = timeout

    def buildProtocol(self, addr: Any) -> HTTPSRedirectProtocol:
        return HTTPSRedirectProtocol(self)
