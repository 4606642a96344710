"""
Tests for L{twisted_rp.http.backend}: persistent backend connections and the pool of idle ones.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeBackend
from twisted_rp.http.backend import BackendConnection, BackendConnections
from twisted_rp.http.message import ResponseHead
from twisted_rp.http.parser import ResponseInfo
from twisted_rp.http.scan import SimpleResponse
from twisted_rp.pool import Backend
from twisted_rp.settings import Limits, Timeouts


class RecordingSink:
    """A L{twisted_rp.http.backend.ResponseSink} that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.body = b""

    def on_informational(self, head: ResponseHead) -> bool:
        self.events.append(("informational", head.status))
        return False

    def on_response_head(self, head: ResponseHead, info: ResponseInfo) -> None:
        self.events.append(("head", head.status))

    def simple_response(self, simple: SimpleResponse, body: bytes) -> bool:
        return False

    def on_response_body(self, pieces: list[bytes]) -> None:
        self.body += b"".join(pieces)

    def on_response_end(self) -> None:
        self.events.append(("end", None))

    def on_tunnel_data(self, data: bytes) -> None:
        self.events.append(("tunnel", data))

    def on_backend_error(self, reason: str) -> None:
        self.events.append(("error", reason))

    def on_backend_lost(self, reason: Failure) -> None:
        self.events.append(("lost", reason.type))

    def flush(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events if kind != "informational"]


class BackendConnectionsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = Backend("b1", "127.0.0.1", 8001)
        self.other = Backend("b2", "127.0.0.1", 8002)
        self.connections = self.make_connections()

    def make_connections(
        self, timeouts: Timeouts = Timeouts(), limits: Limits = Limits()
    ) -> BackendConnections:
        return BackendConnections(self.reactor, self.reactor, timeouts, limits)

    def connect(self, backend: Backend | None = None) -> tuple[BackendConnection, FakeBackend]:
        """A new connection to C{backend}, accepted by a fake server."""
        d = self.connections.connect(backend or self.backend)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        server = FakeBackend(self.reactor, host, port, factory)
        return self.successResultOf(d), server

    def used(
        self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ) -> tuple[BackendConnection, FakeBackend, RecordingSink]:
        """A connection that carried one request and got C{answer}."""
        connection, server = self.connect()
        sink = RecordingSink()
        connection.start(sink, b"GET")
        connection.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        server.answer(answer)
        return connection, server, sink


class ConnectTests(BackendConnectionsTestCase):
    def test_connects_to_backend_address_with_connect_timeout(self) -> None:
        self.connections = self.make_connections(Timeouts(backend_connect=3.5))
        self.connections.connect(self.other)
        ((host, port, _, timeout, _),) = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8002, 3.5))

    def test_connects_to_the_backends_http_port(self) -> None:
        # A server shared by several protocols names its HTTP port.
        self.connections.connect(Backend("b3", "127.0.0.1", 21, ports={"http": 8080}))
        ((host, port, _, _, _),) = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8080))

    def test_connected_connection_sets_no_delay(self) -> None:
        _, server = self.connect()
        self.assertTrue(server.transport.no_delay)

    def test_refused_connection_fails(self) -> None:
        d = self.connections.connect(self.backend)
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )
        self.failureResultOf(d, ConnectionRefusedError)

    def test_every_connect_is_new(self) -> None:
        first, _ = self.connect()
        second, _ = self.connect()
        self.assertIsNot(first, second)
        self.assertEqual(len(self.reactor.tcpClients), 2)


class ReuseTests(BackendConnectionsTestCase):
    def test_nothing_idle_at_first(self) -> None:
        self.assertIsNone(self.connections.take_idle(self.backend))
        self.assertEqual(self.connections.idle_count(self.backend), 0)

    def test_complete_response_makes_connection_reusable(self) -> None:
        connection, server, sink = self.used()
        self.assertEqual(sink.kinds(), ["head", "end"])
        self.assertEqual(sink.body, b"ok")
        connection.detach()
        self.assertEqual(self.connections.idle_count(self.backend), 1)
        self.assertIs(self.connections.take_idle(self.backend), connection)
        self.assertEqual(self.connections.idle_count(self.backend), 0)
        self.assertFalse(server.closed)

    def test_body_of_known_length_in_many_reads(self) -> None:
        """Reads in the middle of the body reach the sink as they come; the last ends it."""
        connection, server, sink = self.used(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        for piece in (b"cd", b"e", b"fgh"):
            server.answer(piece)
            self.assertEqual(sink.kinds(), ["head"])
        self.assertEqual(sink.body, b"abcdefgh")
        server.answer(b"ij")
        self.assertEqual(sink.kinds(), ["head", "end"])
        self.assertEqual(sink.body, b"abcdefghij")
        connection.detach()
        self.assertIs(self.connections.take_idle(self.backend), connection)

    def test_reused_connection_carries_next_request(self) -> None:
        connection, server, _ = self.used()
        connection.detach()
        again = self.connections.take_idle(self.backend)
        assert again is not None
        sink = RecordingSink()
        again.start(sink, b"GET")
        server.take()
        again.write(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        server.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        self.assertEqual(server.take(), b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual((sink.kinds(), sink.body), (["head", "end"], b"two"))
        self.assertEqual(again.requests, 2)

    def test_idle_connections_are_per_backend(self) -> None:
        connection, _, _ = self.used()
        connection.detach()
        self.assertIsNone(self.connections.take_idle(self.other))
        self.assertIs(self.connections.take_idle(self.backend), connection)

    def test_most_recently_used_first(self) -> None:
        older, _, _ = self.used()
        newer, _, _ = self.used()
        older.detach()
        newer.detach()
        self.assertIs(self.connections.take_idle(self.backend), newer)
        self.assertIs(self.connections.take_idle(self.backend), older)


class CapTests(BackendConnectionsTestCase):
    def test_idle_connections_capped(self) -> None:
        self.connections = self.make_connections(limits=Limits(backend_idle_connections=2))
        used = [self.used() for _ in range(3)]
        for connection, _, _ in used:
            connection.detach()
        self.assertEqual(self.connections.idle_count(self.backend), 2)
        servers = [server for _, server, _ in used]
        self.assertEqual([s.aborted for s in servers], [False, False, True])

    def test_cap_is_per_backend(self) -> None:
        self.connections = self.make_connections(limits=Limits(backend_idle_connections=1))
        mine, _, _ = self.used()
        mine.detach()
        theirs, server = self.connect(self.other)
        theirs.start(RecordingSink(), b"GET")
        server.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        theirs.detach()
        self.assertEqual(self.connections.idle_count(self.backend), 1)
        self.assertEqual(self.connections.idle_count(self.other), 1)


class IdleExpiryTests(BackendConnectionsTestCase):
    def test_idle_connection_closed_after_keepalive(self) -> None:
        self.connections = self.make_connections(Timeouts(backend_keepalive=4))
        connection, server, _ = self.used()
        connection.detach()
        self.reactor.advance(3.9)
        self.assertFalse(server.closed)
        self.reactor.advance(0.1)
        self.assertTrue(server.aborted)
        self.assertEqual(self.connections.idle_count(self.backend), 0)
        self.assertIsNone(self.connections.take_idle(self.backend))

    def test_each_connection_expires_on_its_own_schedule(self) -> None:
        self.connections = self.make_connections(Timeouts(backend_keepalive=4))
        first, first_server, _ = self.used()
        first.detach()
        self.reactor.advance(3)
        second, second_server, _ = self.used()
        second.detach()
        self.reactor.advance(1)
        self.assertTrue(first_server.aborted)
        self.assertFalse(second_server.closed)
        self.assertIs(self.connections.take_idle(self.backend), second)

    def test_later_connection_still_expires(self) -> None:
        self.connections = self.make_connections(Timeouts(backend_keepalive=4))
        first, _, _ = self.used()
        first.detach()
        self.reactor.advance(3)
        second, second_server, _ = self.used()
        second.detach()
        self.reactor.advance(1)
        self.assertFalse(second_server.closed)
        self.reactor.advance(3)
        self.assertTrue(second_server.aborted)
        self.assertEqual(self.connections.idle_count(self.backend), 0)

    def test_reuse_resets_idle_time(self) -> None:
        self.connections = self.make_connections(Timeouts(backend_keepalive=4))
        connection, server, _ = self.used()
        connection.detach()
        self.reactor.advance(3)
        again = self.connections.take_idle(self.backend)
        assert again is not None
        sink = RecordingSink()
        again.start(sink, b"GET")
        server.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        again.detach()
        self.reactor.advance(3)
        self.assertFalse(server.closed)
        self.assertIs(self.connections.take_idle(self.backend), connection)

    def test_close_idle(self) -> None:
        used = [self.used() for _ in range(2)]
        for connection, _, _ in used:
            connection.detach()
        self.connections.close_idle()
        self.assertTrue(all(server.aborted for _, server, _ in used))
        self.assertEqual(self.connections.idle_count(self.backend), 0)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.getDelayedCalls(), [], "the expiry timer is stopped")


class NeverReuseBadConnectionTests(BackendConnectionsTestCase):
    def assertDiscarded(self, connection: BackendConnection, server: FakeBackend) -> None:
        connection.detach()
        self.assertTrue(server.aborted)
        self.assertEqual(self.connections.idle_count(self.backend), 0)
        self.assertIsNone(self.connections.take_idle(self.backend))

    def test_connection_close_from_backend(self) -> None:
        connection, server, _ = self.used(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertDiscarded(connection, server)

    def test_connection_close_among_other_tokens(self) -> None:
        connection, server, _ = self.used(
            b"HTTP/1.1 200 OK\r\nConnection: x-foo, Close\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertDiscarded(connection, server)

    def test_unread_bytes_after_response(self) -> None:
        connection, server, sink = self.used(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"
        )
        self.assertEqual(sink.body, b"ok")
        self.assertDiscarded(connection, server)

    def test_unread_bytes_after_body_read_in_pieces(self) -> None:
        connection, server, sink = self.used(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
        server.answer(b"cd")
        server.answer(b"efHTTP/1.1 200 OK\r\n")
        self.assertEqual(sink.body, b"abcdef")
        self.assertEqual(sink.kinds(), ["head", "end"])
        self.assertDiscarded(connection, server)

    def test_response_not_finished(self) -> None:
        connection, server, _ = self.used(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
        self.assertDiscarded(connection, server)

    def test_no_response_yet(self) -> None:
        connection, server = self.connect()
        connection.start(RecordingSink(), b"GET")
        self.assertDiscarded(connection, server)

    def test_read_until_close_body(self) -> None:
        connection, server, sink = self.used(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        server.close()
        self.assertEqual(sink.kinds(), ["head", "end"])
        self.assertEqual(sink.body, b"until close")
        connection.detach()
        self.assertEqual(self.connections.idle_count(self.backend), 0)

    def test_chunked_with_content_length(self) -> None:
        """Both framing fields smell of smuggling: the body is read, the connection dropped."""
        connection, server, sink = self.used(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.body, b"ok")
        self.assertDiscarded(connection, server)

    def test_invalid_response(self) -> None:
        connection, server, sink = self.used(b"HTTP/1.1 200 OK\r\nBad Field: 1\r\n\r\n")
        self.assertEqual(sink.kinds(), ["error"])
        self.assertTrue(server.aborted)
        connection.detach()
        self.assertEqual(self.connections.idle_count(self.backend), 0)

    def test_bytes_while_idle(self) -> None:
        connection, server, _ = self.used()
        connection.detach()
        server.answer(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(server.aborted)
        self.assertIsNone(self.connections.take_idle(self.backend))

    def test_closed_by_backend_while_idle(self) -> None:
        connection, server, _ = self.used()
        connection.detach()
        server.close()
        self.assertEqual(self.connections.idle_count(self.backend), 0)
        self.assertIsNone(self.connections.take_idle(self.backend))

    def test_lost_mid_response_tells_sink(self) -> None:
        _, server, sink = self.used(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")
        server.close()
        self.assertEqual(sink.kinds(), ["head", "lost"])
        self.assertIsNone(self.connections.take_idle(self.backend))

    def test_tunnel_is_never_reused(self) -> None:
        connection, server = self.connect()

        class Upgrading(RecordingSink):
            def on_informational(self, head: ResponseHead) -> bool:
                return head.status == 101

        sink = Upgrading()
        connection.start(sink, b"GET")
        server.answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw")
        self.assertEqual(sink.events, [("tunnel", b"raw")])
        self.assertDiscarded(connection, server)
