"""
Tests for L{twisted_rp.sendnow}: sending at once on an idle plain TCP connection, and falling
back to the transport's own buffered C{write} whenever that would be wrong.

The transports here are real Twisted TCP connections over real loopback sockets, driven by a
L{MemoryReactor}: whether the transport asked the reactor to watch it for writability shows
whether data was queued, and the peer socket shows what was actually sent.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.sendnow import send_now, supports_send_now, writer_for


class RecordingProtocol(Protocol):
    """Stands in for the TLS layer a transport hands writes to once C{TLS} is set."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FlakySocket:
    """
    A socket whose C{send} misbehaves as scripted, then behaves like the real one.

    @param script: for each of the first calls, an exception to raise or a number of bytes to
        send at most.
    """

    def __init__(self, real: socket.socket, script: list[BaseException | int]) -> None:
        self._real = real
        self._script = script
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        if self._script:
            step = self._script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return self._real.send(bytes(data[:step]))
        return self._real.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class SendNowTests(SynchronousTestCase):
    def setUp(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.peer = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(self.peer.close)
        ours, address = listener.accept()
        self.addCleanup(ours.close)
        self.reactor = MemoryReactor()
        self.protocol = RecordingProtocol()
        self.transport = tcp.Server(
            ours,
            self.protocol,
            address,
            None,  # type: ignore[arg-type]  # no listening port: the pair was made by hand
            0,
            self.reactor,
        )
        self.transport.repstr = "<test connection>"
        self.protocol.makeConnection(self.transport)

    def queued(self) -> bool:
        """Whether the transport holds data it waits to send."""
        return self.transport in self.reactor.getWriters()

    def pending_at_peer(self) -> bool:
        readable, _, _ = select.select([self.peer], [], [], 0)
        return bool(readable)

    def read_at_peer(self, size: int) -> bytes:
        """Exactly C{size} bytes from the peer, or fewer if the connection ends."""
        data = b""
        while len(data) < size:
            piece = self.peer.recv(size - len(data))
            if not piece:
                break
            data += piece
        return data

    def flush(self) -> None:
        """What the reactor does when the socket becomes writable, until nothing is queued."""
        for _ in range(10000):
            if not self.queued():
                return
            self.transport.doWrite()
        self.fail("the transport never emptied its buffer")

    def test_fast_path_sends_without_queuing(self) -> None:
        self.assertTrue(supports_send_now(self.transport))
        write = writer_for(self.transport)
        write(b"hello ")
        write(b"world")
        self.assertFalse(self.queued())
        self.assertEqual(self.read_at_peer(11), b"hello world")

    def test_send_now_directly(self) -> None:
        send_now(self.transport, b"direct")
        self.assertFalse(self.queued())
        self.assertEqual(self.read_at_peer(6), b"direct")

    def test_plain_write_queues(self) -> None:
        """The contrast that makes the fast path worth having."""
        self.transport.write(b"queued")
        self.assertTrue(self.queued())
        self.assertFalse(self.pending_at_peer())

    def test_disabled_uses_transport_write(self) -> None:
        write = writer_for(self.transport, enabled=False)
        self.assertEqual(write, self.transport.write)
        write(b"slow")
        self.assertTrue(self.queued())

    def test_queued_data_goes_first(self) -> None:
        self.transport.write(b"first ")
        send_now(self.transport, b"second")
        self.assertFalse(self.pending_at_peer(), "nothing may overtake queued data")
        self.flush()
        self.assertEqual(self.read_at_peer(12), b"first second")

    def test_partly_sent_buffer_goes_first(self) -> None:
        self.transport.socket = FlakySocket(self.transport.socket, [3])  # type: ignore[assignment]
        self.transport.write(b"abcdef")
        self.transport.doWrite()
        self.assertEqual(self.read_at_peer(3), b"abc")
        send_now(self.transport, b"ghi")
        self.flush()
        self.assertEqual(self.read_at_peer(6), b"defghi")

    def test_eagain_queues(self) -> None:
        self.transport.socket = FlakySocket(  # type: ignore[assignment]
            self.transport.socket, [BlockingIOError()]
        )
        send_now(self.transport, b"later")
        self.assertTrue(self.queued())
        self.assertFalse(self.pending_at_peer())
        self.flush()
        self.assertEqual(self.read_at_peer(5), b"later")

    def test_interrupted_send_queues(self) -> None:
        self.transport.socket = FlakySocket(  # type: ignore[assignment]
            self.transport.socket, [InterruptedError()]
        )
        send_now(self.transport, b"later")
        self.assertTrue(self.queued())
        self.flush()
        self.assertEqual(self.read_at_peer(5), b"later")

    def test_partial_send_queues_the_rest(self) -> None:
        flaky = FlakySocket(self.transport.socket, [4, 4])
        self.transport.socket = flaky  # type: ignore[assignment]
        send_now(self.transport, b"0123456789")
        self.assertTrue(self.queued())
        self.assertEqual(self.read_at_peer(4), b"0123")
        self.flush()
        self.assertEqual(self.read_at_peer(6), b"456789")

    def test_socket_error_left_to_the_transport(self) -> None:
        self.transport.socket = FlakySocket(  # type: ignore[assignment]
            self.transport.socket, [ConnectionResetError()]
        )
        send_now(self.transport, b"data")
        self.assertTrue(self.queued(), "the normal write path discovers the failure")

    def test_write_side_closed(self) -> None:
        self.transport.loseWriteConnection()
        self.flush()
        send_now(self.transport, b"too late")
        self.assertFalse(self.queued())
        self.assertEqual(self.read_at_peer(8), b"", "the peer sees the end, and no data")

    def test_disconnected(self) -> None:
        self.transport.connectionLost(Failure(ConnectionDone()))
        send_now(self.transport, b"too late")
        self.assertFalse(self.queued())
        self.assertEqual(self.read_at_peer(8), b"", "the peer sees the end, and no data")

    def test_tls_uses_transport_write(self) -> None:
        self.transport.TLS = True
        self.assertFalse(supports_send_now(self.transport))
        self.assertEqual(writer_for(self.transport), self.transport.write)
        send_now(self.transport, b"secret")
        self.assertEqual(self.protocol.written, [b"secret"], "went through the TLS layer")
        self.assertFalse(self.pending_at_peer(), "nothing went out in the clear")

    def test_non_tcp_transport(self) -> None:
        transport = StringTransport()
        self.assertFalse(supports_send_now(transport))
        write = writer_for(transport)
        self.assertEqual(write, transport.write)
        write(b"data")
        self.assertEqual(transport.value(), b"data")

    def test_tcp_subclass_missing_internals(self) -> None:
        """A transport without the internals relied on gets its own write."""

        class Stripped(tcp.Connection):
            def __getattribute__(self, name: str) -> Any:
                if name == "_tempDataLen":
                    raise AttributeError(name)
                return super().__getattribute__(name)

        stripped = Stripped.__new__(Stripped)
        self.assertFalse(supports_send_now(stripped))
