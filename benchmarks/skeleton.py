"""
A calibration peer, not a proxy: the least an HTTP/1.1 keep-alive proxy on Twisted can do.

It finds the end of each request head, appends X-Forwarded-For and Via, sends it on a pooled
backend connection with twisted_rp's send-now writer, finds Content-Length in the response
and relays it whole.  No validation, no routing, no error handling: the gap between it and
twisted_rp is the cost of what twisted_rp checks and adds per request.

    benchmarks/run.sh --proxy \\
        'skeleton={python} benchmarks/skeleton.py {port} {backend_host} {backend_port}'

(run from the repository; the harness's {python} must have twisted_rp installed.)
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from twisted_rp.sendnow import writer_for


class Backend(Protocol):
    def __init__(self, idle: list[Backend], front: Front | None, request: bytes) -> None:
        self.idle = idle
        self.front = front
        self.request = request
        self.buffer = b""

    def connectionMade(self) -> None:
        self.write = writer_for(self.transport)
        self.transport.setTcpNoDelay(True)
        self.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        lowered = buffer[:end].lower()
        start = lowered.find(b"\r\ncontent-length:") + 17
        line_end = lowered.find(b"\r\n", start)
        length = int(lowered[start : line_end if line_end >= 0 else end])
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        self.buffer = b""
        front, self.front = self.front, None
        self.idle.append(self)
        assert front is not None
        front.write(buffer[:end] + b"\r\nVia: 1.1 skeleton" + buffer[end:])


class Front(Protocol):
    def __init__(self, idle: list[Backend], host: str, port: int) -> None:
        self.idle = idle
        self.host = host
        self.port = port

    def connectionMade(self) -> None:
        self.write = writer_for(self.transport)
        self.transport.setTcpNoDelay(True)
        client = self.transport.getPeer().host.encode()
        self.forwarded = b"\r\nX-Forwarded-For: " + client + b"\r\nVia: 1.1 skeleton\r\n\r\n"

    def dataReceived(self, data: bytes) -> None:
        request = data[: data.find(b"\r\n\r\n")] + self.forwarded
        if self.idle:
            backend = self.idle.pop()
            backend.front = self
            backend.write(request)
            return
        backend = Backend(self.idle, self, request)
        factory = ClientFactory.forProtocol(lambda: backend)
        reactor.connectTCP(self.host, self.port, factory)  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    port, host, backend_port = int(argv[1]), argv[2], int(argv[3])
    idle: list[Backend] = []
    factory = Factory.forProtocol(lambda: Front(idle, host, backend_port))
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=4096)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
