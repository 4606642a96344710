"""
In-memory fakes shared by the HTTP proxy tests: a proxy wired to a L{MemoryReactorClock}, clients
and backends on L{StringTransport}s, and small parsers for the bytes they exchange.

Nothing here opens a socket: a backend connection is a C{connectTCP} call recorded by the
reactor, which a test then accepts (L{ProxyHarness.accept}) or refuses (L{ProxyHarness.refuse}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from twisted_rp.http.body import ChunkedDecoder
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IAccessLog
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.settings import ProxySettings

CLIENT_IP = "10.0.0.9"
CLIENT_PORT = 5555
PROXY_PORT = 8080


class FakeTCPTransport(StringTransport):
    """
    A L{StringTransport} that behaves like a TCP connection where the proxy can tell: it takes
    socket options, and closing it tells its protocol, one reactor turn later, as Twisted does.

    @ivar no_delay: the last C{setTcpNoDelay} value.
    """

    def __init__(
        self,
        clock: MemoryReactorClock,
        peer: IPv4Address | IPv6Address,
        host: IPv4Address | IPv6Address,
    ) -> None:
        # Lenient: a real TCP transport accepts resumeProducing after loseConnection.
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.clock = clock
        self.protocol: IProtocol | None = None
        self.no_delay = False
        self._lost_scheduled = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def loseConnection(self) -> None:
        super().loseConnection()
        self._schedule_lost(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.disconnected = True
        self.disconnecting = True
        self._schedule_lost(Failure(ConnectionAborted()))

    def _schedule_lost(self, reason: Failure) -> None:
        if self._lost_scheduled or self.protocol is None:
            return
        self._lost_scheduled = True
        self.clock.callLater(0, self._deliver_lost, reason)

    def _deliver_lost(self, reason: Failure) -> None:
        self.connected = False
        assert self.protocol is not None
        self.protocol.connectionLost(reason)

    def lost_by_peer(self, reason: Failure) -> None:
        """The other end went away (the fake is the one who closes)."""
        if not self._lost_scheduled:
            self._lost_scheduled = True
            self.connected = False
            assert self.protocol is not None
            self.protocol.connectionLost(reason)


class FakeClient:
    """
    One client connection to the proxy.

    @ivar transport: what the proxy writes to.
    """

    def __init__(
        self,
        factory: HTTPProxyFactory,
        clock: MemoryReactorClock,
        peer: IPv4Address | IPv6Address,
    ) -> None:
        self.transport = FakeTCPTransport(clock, peer, IPv4Address("TCP", "127.0.0.1", PROXY_PORT))
        self.protocol = factory.buildProtocol(peer)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        """Bytes from the client arrive at the proxy."""
        if not self.transport.disconnecting:
            self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """Everything the proxy sent to this client so far."""
        return self.transport.value()

    def take(self) -> bytes:
        """What the proxy sent since the last C{take}."""
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closed(self) -> bool:
        """Whether the proxy closed (or aborted) this connection."""
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        """Whether the proxy aborted this connection: the client sees a reset, no clean end."""
        return bool(self.transport.disconnected)

    @property
    def reading_paused(self) -> bool:
        """Whether the proxy stopped reading from this client."""
        return self.transport.producerState == "paused"

    def go_away(self) -> None:
        """The client disconnects."""
        self.transport.lost_by_peer(Failure(ConnectionLost()))

    def fill_up(self) -> None:
        """The client reads slowly: its send buffer in the proxy is full."""
        assert self.transport.producer is not None
        self.transport.producer.pauseProducing()

    def drain(self) -> None:
        """The client caught up."""
        assert self.transport.producer is not None
        self.transport.producer.resumeProducing()


class FakeBackend:
    """
    The server side of one backend connection the proxy made: records what it received and
    answers whatever a test scripts.
    """

    def __init__(self, clock: MemoryReactorClock, host: str, port: int, factory: Any) -> None:
        self.host = host
        self.port = port
        address = IPv4Address("TCP", host, port)
        self.transport = FakeTCPTransport(clock, address, IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = factory.buildProtocol(address)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        """Everything the proxy sent to this backend so far."""
        return self.transport.value()

    def take(self) -> bytes:
        """What the proxy sent since the last C{take}."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def answer(self, data: bytes) -> None:
        """The backend sends C{data}; an aborted connection reads nothing more."""
        if not self.transport.disconnected:
            self.protocol.dataReceived(data)

    def close(self) -> None:
        """The backend closes the connection cleanly."""
        self.transport.lost_by_peer(Failure(ConnectionDone()))

    def reset(self) -> None:
        """The connection to the backend breaks."""
        self.transport.lost_by_peer(Failure(ConnectionLost()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def reading_paused(self) -> bool:
        """Whether the proxy stopped reading from this backend."""
        return self.transport.producerState == "paused"

    def fill_up(self) -> None:
        """The backend reads slowly: the proxy's send buffer towards it is full."""
        assert self.transport.producer is not None
        self.transport.producer.pauseProducing()

    def drain(self) -> None:
        assert self.transport.producer is not None
        self.transport.producer.resumeProducing()


class ProxyHarness:
    """
    An L{HTTPProxyFactory} on a L{MemoryReactorClock}, with one pool of backends named
    C{b1}, C{b2}, ... on 127.0.0.1 ports 8001, 8002, ...

    @param route_options: passed to the L{Route} of the pool (ignored when C{routes} is given).
    """

    def __init__(
        self,
        backends: int = 1,
        settings: ProxySettings = ProxySettings(),
        routes: Sequence[Route] | None = None,
        access_log: IAccessLog | None = None,
        scheme: str = "http",
        **route_options: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [Backend(f"b{i + 1}", "127.0.0.1", 8001 + i) for i in range(backends)]
        self.pool = BackendPool("web", self.backends)
        if routes is None:
            routes = [Route(self.pool, **route_options)]
        self.factory = HTTPProxyFactory(
            self.reactor, Router(routes), settings=settings, scheme=scheme, access_log=access_log
        )
        self._accepted = 0

    @property
    def connect_attempts(self) -> int:
        """How many backend connections the proxy tried to open."""
        return len(self.reactor.tcpClients)

    def connect_targets(self) -> list[tuple[str, int]]:
        """Where each backend connection attempt went, in order."""
        return [(host, port) for host, port, _, _, _ in self.reactor.tcpClients]

    def client(
        self, ip: str = CLIENT_IP, port: int = CLIENT_PORT, ipv6: bool = False
    ) -> FakeClient:
        peer: IPv4Address | IPv6Address = (
            IPv6Address("TCP", ip, port) if ipv6 else IPv4Address("TCP", ip, port)
        )
        return FakeClient(self.factory, self.reactor, peer)

    def accept(self, index: int = -1) -> FakeBackend:
        """The backend accepts connection attempt C{index} (the newest by default)."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        return FakeBackend(self.reactor, host, port, factory)

    def refuse(self, index: int = -1, reason: Exception | None = None) -> None:
        """Connection attempt C{index} fails (refused unless C{reason} says otherwise)."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(reason or ConnectionRefusedError()))

    def settle(self) -> None:
        """Let connection losses the proxy caused reach their protocols."""
        self.reactor.advance(0)

    def exchange(self, request: bytes, response: bytes) -> tuple[FakeClient, FakeBackend]:
        """A new client sends C{request}; a new backend connection answers C{response}."""
        client = self.client()
        client.send(request)
        backend = self.accept()
        backend.answer(response)
        return client, backend

    def reused(self) -> tuple[FakeClient, FakeBackend]:
        """
        A client whose first request (C{GET /1}) was answered: its next one goes to the
        pooled backend connection.  Neither side holds what was sent so far.
        """
        client, backend = self.exchange(get(b"/1"), response(body=b"one"))
        client.take()
        backend.take()
        return client, backend


@frozen
class Message:
    """
    A parsed HTTP message as one side received it.

    @ivar start: the request or status line.
    @ivar headers: C{(name, value)} in order, names as sent.
    @ivar body: the bytes after the head, as sent (still chunked if it was).
    """

    start: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def get(self, name: bytes) -> bytes | None:
        values = self.get_all(name)
        return values[0] if values else None

    def names(self) -> list[bytes]:
        return [n for n, _ in self.headers]

    @property
    def status(self) -> int:
        return int(self.start.split(b" ")[1])


def parse_message(data: bytes) -> Message:
    """Split the first message head in C{data} from what follows it."""
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete head in {data!r}"
    start, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        assert colon, f"malformed field line {line!r}"
        headers.append((name, value.strip(b" \t")))
    return Message(start, headers, body)


def split_responses(data: bytes) -> list[Message]:
    """
    Consecutive responses with C{Content-Length} or no body, as a pipelining client reads them.
    """
    messages = []
    while data:
        message = parse_message(data)
        length = int(message.get(b"content-length") or 0)
        messages.append(Message(message.start, message.headers, message.body[:length]))
        data = message.body[length:]
    return messages


def dechunk(body: bytes) -> tuple[bytes, bytes | None]:
    """
    Decode a chunked body.

    @return: the payload and what followed the last chunk (L{None} if it never came).
    """
    decoder = ChunkedDecoder()
    pieces, leftover = decoder.feed(body)
    return b"".join(pieces), leftover


def response(
    status: int = 200,
    body: bytes = b"",
    headers: Sequence[bytes] = (),
    reason: bytes = b"OK",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A backend response with a Content-Length and C{headers} (C{b"Name: value"} lines)."""
    lines = [b"%s %d %s" % (version, status, reason), *headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(target: bytes = b"/", host: bytes = b"example.com", *fields: bytes) -> bytes:
    """A bodiless HTTP/1.1 GET with C{fields} (C{b"Name: value"} lines)."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + host, *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"
