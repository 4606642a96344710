"""
Tests for L{twisted_rp.tcp.relay}: the layer-4 TCP listener.

The unit tests run in memory: backend connections are C{connectTCP} calls recorded by a
L{MemoryReactorClock}, which a test accepts or refuses, and both ends are L{StringTransport}s
that can half-close.  L{LoopbackTests} relays real sockets to two echo servers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, UserError
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.auth.ipfilter import IPFilter
from twisted_rp.interfaces import IBackendPool
from twisted_rp.pool import (
    Backend,
    BackendPool,
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    StickyResponse,
)
from twisted_rp.tcp import TCPProxyFactory, encode_v1, encode_v2

CLIENT = IPv4Address("TCP", "192.0.2.10", 50000)
LISTENER = IPv4Address("TCP", "198.51.100.1", 9000)
BALANCER = IPv4Address("TCP", "10.1.0.5", 41000)


class HalfCloseableTransport(StringTransport):
    """
    A L{StringTransport} that, like a TCP connection, can close its write side alone and be
    aborted.

    @ivar write_closed: whether C{loseWriteConnection} was called.
    @ivar aborted: whether C{abortConnection} was called.
    """

    def __init__(self, peer: Any, host: Any) -> None:
        # Lenient: a real TCP transport accepts pause/resume after loseConnection.
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class Side:
    """One end the proxy talks to (the client, or a backend), as the test drives it."""

    def __init__(self, protocol: Any, transport: HalfCloseableTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        protocol.makeConnection(transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send_eof(self) -> None:
        """This side half-closes: the proxy reads the end of its stream."""
        self.protocol.readConnectionLost()

    def lose(self, reason: Failure) -> None:
        """This side's connection is gone."""
        self.protocol.connectionLost(reason)

    def received(self) -> bytes:
        return self.transport.value()

    @property
    def producer(self) -> Any:
        """What the proxy registered as this transport's producer (it pauses when full)."""
        assert self.transport.producer is not None
        return self.transport.producer

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def reading(self) -> bool:
        return self.transport.producerState == "producing"


@implementer(IBackendPool)
class RecordingPool:
    """
    An L{IBackendPool} that hands out its backends in turn and records what the proxy asked
    and reported.

    @ivar contexts: every L{PickContext} the proxy picked with.
    @ivar outcomes: C{(backend name, outcome kind)} for every released lease.
    @ivar waiting: when set, C{pick} returns a L{Deferred} appended to C{waiters}.
    @ivar unavailable: when set, C{pick} raises L{NoBackendAvailable}.
    """

    def __init__(self, backends: Sequence[Backend], retries: int | None = None) -> None:
        self.name = "recording"
        self._backends = list(backends)
        self.retries = 2 if retries is None else retries
        self.stickiness = None
        self.pinned: list[tuple[str, str]] = []
        self.contexts: list[PickContext] = []
        self.outcomes: list[tuple[str, str]] = []
        self.waiting = False
        self.waiters: list[Deferred[Lease]] = []
        self.cancelled = 0
        self.unavailable = False
        self._next = 0

    def backends(self) -> Sequence[Backend]:
        return tuple(self._backends)

    def sticky_response_done(
        self, context: PickContext, backend: Backend, response: StickyResponse
    ) -> None:
        self.pinned.append((context.client_ip, backend.name))

    def lease(self, backend: Backend) -> Lease:
        backend.active += 1
        return Lease(backend, self)

    def pick(self, context: PickContext) -> Lease | Deferred[Lease]:
        self.contexts.append(context)
        if self.unavailable:
            raise NoBackendAvailable("nothing usable")
        if self.waiting:
            waiter: Deferred[Lease] = Deferred(lambda d: self._cancelled())
            self.waiters.append(waiter)
            return waiter
        backend = self._backends[self._next % len(self._backends)]
        self._next += 1
        return self.lease(backend)

    def _cancelled(self) -> None:
        self.cancelled += 1

    def release(self, lease: Lease, outcome: Outcome) -> None:
        lease.backend.active -= 1
        self.outcomes.append((lease.backend.name, outcome.kind))


class Harness:
    """
    A L{TCPProxyFactory} on a L{MemoryReactorClock} over three backends.
    """

    def __init__(self, pool: Any = None, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [
            Backend("b1", "10.0.0.1", 7001),
            Backend("b2", "10.0.0.2", 7002),
            Backend("b3", "10.0.0.3", 7003),
        ]
        self.pool = RecordingPool(self.backends) if pool is None else pool
        self.factory = TCPProxyFactory(self.reactor, self.pool, **options)

    def client(self, peer: Any = CLIENT) -> Side:
        return Side(self.factory.buildProtocol(peer), HalfCloseableTransport(peer, LISTENER))

    def dials(self) -> list[tuple[str, int]]:
        """The C{(host, port)} of every backend connection attempted so far."""
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def accept(self, index: int = -1) -> Side:
        """The backend accepts connection attempt C{index}."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        return Side(protocol, HalfCloseableTransport(address, IPv4Address("TCP", "10.0.0.99", 1)))

    def refuse(self, index: int = -1) -> None:
        """Connection attempt C{index} is refused."""
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )


class RelayTests(SynchronousTestCase):
    """A connection is relayed, both ways, to the backend the pool picked."""

    def test_fake_pool_is_a_pool(self) -> None:
        self.assertTrue(verifyObject(IBackendPool, RecordingPool([])))

    def test_client_protocol_half_closes(self) -> None:
        client = Harness().client()
        self.assertTrue(verifyObject(IHalfCloseableProtocol, client.protocol))

    def test_picks_with_the_client_address(self) -> None:
        harness = Harness()
        harness.client()
        self.assertEqual(harness.pool.contexts, [PickContext("tcp", "192.0.2.10")])
        self.assertEqual(harness.dials(), [("10.0.0.1", 7001)])

    def test_ipv4_mapped_client_address_is_ipv4(self) -> None:
        harness = Harness()
        harness.client(IPv6Address("TCP", "::ffff:192.0.2.10", 50000))
        self.assertEqual(harness.pool.contexts[0].client_ip, "192.0.2.10")

    def test_connects_to_the_tcp_port_with_the_timeout(self) -> None:
        harness = Harness(connect_timeout=2.5)
        harness.backends[0].ports["tcp"] = 7100
        harness.client()
        host, port, _, timeout, _ = harness.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("10.0.0.1", 7100, 2.5))

    def test_relays_both_ways(self) -> None:
        harness = Harness()
        client = harness.client()
        client.send(b"early ")
        self.assertFalse(client.reading, "the client is read while no backend is connected")
        backend = harness.accept()
        self.assertTrue(client.reading)
        client.send(b"bytes")
        self.assertEqual(backend.received(), b"early bytes")
        backend.send(b"answer")
        self.assertEqual(client.received(), b"answer")
        self.assertEqual(harness.backends[0].active, 1)

    def test_backend_closing_closes_client_and_releases(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        backend.send(b"bye")
        backend.lose(Failure(ConnectionLost()))
        self.assertTrue(client.closed)
        self.assertFalse(client.transport.aborted, "what the backend sent is flushed first")
        self.assertEqual(client.received(), b"bye")
        self.assertEqual(harness.pool.outcomes, [("b1", "ok")])
        self.assertEqual(harness.backends[0].active, 0)

    def test_client_closing_closes_backend_and_releases(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        client.send(b"last words")
        client.lose(Failure(ConnectionDone()))
        self.assertTrue(backend.closed)
        self.assertEqual(backend.received(), b"last words")
        self.assertEqual(harness.pool.outcomes, [("b1", "ok")])
        backend.lose(Failure(ConnectionDone()))
        self.assertEqual(harness.pool.outcomes, [("b1", "ok")], "released once")

    def test_real_pool_round_robin(self) -> None:
        reactor = MemoryReactorClock()
        backends = [Backend("one", "10.0.0.1", 7001), Backend("two", "10.0.0.2", 7002)]
        harness = Harness(pool=BackendPool("tcp", backends, clock=reactor))
        sessions = []
        for _ in range(4):
            client = harness.client()
            sessions.append((client, harness.accept()))
        self.assertEqual(harness.dials(), [("10.0.0.1", 7001), ("10.0.0.2", 7002)] * 2)
        self.assertEqual([b.active for b in backends], [2, 2])
        for client, backend in sessions:
            client.lose(Failure(ConnectionDone()))
            backend.lose(Failure(ConnectionDone()))
        self.assertEqual([b.active for b in backends], [0, 0])


class FailoverTests(SynchronousTestCase):
    """A backend that does not accept the connection is replaced without the client noticing."""

    def test_connect_failure_tries_next_backend(self) -> None:
        harness = Harness()
        client = harness.client()
        client.send(b"hello")
        harness.refuse()
        self.assertEqual(harness.dials(), [("10.0.0.1", 7001), ("10.0.0.2", 7002)])
        self.assertEqual(harness.pool.outcomes, [("b1", "connect_failed")])
        self.assertFalse(client.closed)
        backend = harness.accept()
        self.assertEqual(backend.received(), b"hello")
        self.assertEqual(harness.backends[0].active, 0)
        self.assertEqual(harness.backends[1].active, 1)
        # The retry asked the pool to avoid the backend that failed, and the one that answered
        # was offered to the stickiness.
        self.assertEqual([c.avoid for c in harness.pool.contexts], [frozenset(), {"b1"}])
        self.assertEqual([name for _, name in harness.pool.pinned], ["b2"])

    def test_all_attempts_fail_closes_client(self) -> None:
        harness = Harness()
        harness.pool.retries = 1
        client = harness.client()
        harness.refuse()
        self.assertFalse(client.closed)
        harness.refuse()
        self.assertTrue(client.closed)
        self.assertEqual(len(harness.dials()), 2)
        self.assertEqual(
            harness.pool.outcomes, [("b1", "connect_failed"), ("b2", "connect_failed")]
        )
        self.assertEqual(client.received(), b"")

    def test_retries_default_to_two(self) -> None:
        """A pool with the default C{retries} of 2 gets three attempts in all."""
        harness = Harness()
        client = harness.client()
        for _ in range(3):
            harness.refuse()
        self.assertTrue(client.closed)
        self.assertEqual(len(harness.dials()), 3)

    def test_no_backend_available_closes_client(self) -> None:
        harness = Harness()
        harness.pool.unavailable = True
        client = harness.client()
        self.assertTrue(client.closed)
        self.assertEqual(harness.dials(), [])

    def test_waits_for_a_queued_pick(self) -> None:
        harness = Harness()
        harness.pool.waiting = True
        client = harness.client()
        self.assertEqual(harness.dials(), [])
        harness.pool.waiters[0].callback(harness.pool.lease(harness.backends[2]))
        self.assertEqual(harness.dials(), [("10.0.0.3", 7003)])
        harness.accept()
        self.assertTrue(client.reading)

    def test_queued_pick_failing_closes_client(self) -> None:
        harness = Harness()
        harness.pool.waiting = True
        client = harness.client()
        harness.pool.waiters[0].errback(NoBackendAvailable("queue timeout"))
        self.assertTrue(client.closed)

    def test_client_leaving_cancels_queued_pick(self) -> None:
        harness = Harness()
        harness.pool.waiting = True
        client = harness.client()
        client.lose(Failure(ConnectionLost()))
        self.assertEqual(harness.pool.cancelled, 1)
        self.assertEqual(harness.dials(), [])

    def test_client_leaving_stops_connecting(self) -> None:
        harness = Harness()
        client = harness.client()
        connector = harness.reactor.connectors[0]
        stopped = []

        def stop_connecting() -> None:
            # Like a real connector: the stopped attempt is reported as a failure at once.
            stopped.append(True)
            factory = harness.reactor.tcpClients[0][2]
            factory.clientConnectionFailed(connector, Failure(UserError()))

        connector.stopConnecting = stop_connecting
        client.lose(Failure(ConnectionLost()))
        self.assertEqual(stopped, [True])
        self.assertEqual(len(harness.dials()), 1, "no other backend for a client that left")
        self.assertEqual(harness.pool.outcomes, [("b1", "aborted")])


class SpliceTests(SynchronousTestCase):
    """Backpressure and half-closes pass through the relay."""

    def test_slow_backend_pauses_client(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        backend.producer.pauseProducing()
        self.assertFalse(client.reading)
        backend.producer.resumeProducing()
        self.assertTrue(client.reading)

    def test_slow_client_pauses_backend(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        client.producer.pauseProducing()
        self.assertFalse(backend.reading)
        client.producer.resumeProducing()
        self.assertTrue(backend.reading)

    def test_client_half_close(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        client.send(b"request")
        client.send_eof()
        self.assertTrue(backend.transport.write_closed)
        self.assertFalse(backend.closed)
        self.assertFalse(client.closed)
        backend.send(b"response after the client's end")
        self.assertEqual(client.received(), b"response after the client's end")
        self.assertEqual(harness.pool.outcomes, [])
        backend.send_eof()
        self.assertTrue(client.transport.write_closed)
        self.assertTrue(client.closed)
        self.assertTrue(backend.closed)
        self.assertEqual(harness.pool.outcomes, [("b1", "ok")])

    def test_backend_half_close(self) -> None:
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        backend.send(b"banner")
        backend.send_eof()
        self.assertTrue(client.transport.write_closed)
        self.assertFalse(client.closed)
        client.send(b"still talking")
        self.assertEqual(backend.received(), b"still talking")
        client.send_eof()
        self.assertTrue(backend.transport.write_closed)
        self.assertTrue(client.closed)
        self.assertTrue(backend.closed)

    def test_half_closed_side_is_no_longer_a_producer(self) -> None:
        """A transport with a producer never closes: after an end of stream, none is left."""
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        client.send_eof()
        self.assertIsNone(backend.transport.producer)
        backend.send_eof()
        self.assertIsNone(client.transport.producer)

    def test_ended_session_leaves_no_producer(self) -> None:
        """A transport with a paused producer would never close once flushed."""
        harness = Harness()
        client = harness.client()
        backend = harness.accept()
        backend.producer.pauseProducing()
        client.lose(Failure(ConnectionLost()))
        self.assertIsNone(backend.transport.producer)
        self.assertTrue(backend.closed)

        client = harness.client()
        backend = harness.accept()
        client.producer.pauseProducing()
        backend.lose(Failure(ConnectionLost()))
        self.assertIsNone(client.transport.producer)
        self.assertTrue(client.closed)

    def test_idle_timeout(self) -> None:
        harness = Harness(idle_timeout=10.0)
        client = harness.client()
        backend = harness.accept()
        harness.reactor.advance(9)
        backend.send(b"tick")
        harness.reactor.advance(9)
        client.send(b"tock")
        harness.reactor.advance(9)
        self.assertFalse(client.closed)
        harness.reactor.advance(1)
        self.assertTrue(client.transport.aborted)
        self.assertTrue(backend.transport.aborted)
        self.assertEqual(harness.pool.outcomes, [("b1", "ok")])

    def test_no_idle_timeout_by_default(self) -> None:
        harness = Harness()
        client = harness.client()
        harness.accept()
        harness.reactor.advance(86400)
        self.assertFalse(client.closed)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])


class SendProxyTests(SynchronousTestCase):
    """With C{send_proxy}, a backend learns who the client is before any client byte."""

    def test_v1(self) -> None:
        harness = Harness(send_proxy="v1")
        client = harness.client()
        client.send(b"data")
        backend = harness.accept()
        self.assertEqual(
            backend.received(), b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 9000\r\ndata"
        )

    def test_v2(self) -> None:
        harness = Harness(send_proxy="v2")
        client = harness.client()
        backend = harness.accept()
        client.send(b"data")
        self.assertEqual(backend.received(), encode_v2(CLIENT, LISTENER) + b"data")

    def test_after_failover_the_header_goes_to_the_new_backend_only(self) -> None:
        harness = Harness(send_proxy="v1")
        harness.client()
        harness.refuse()
        backend = harness.accept()
        self.assertEqual(backend.received(), encode_v1(CLIENT, LISTENER))

    def test_client_filter_without_proxy_header(self) -> None:
        harness = Harness(client_filter=IPFilter(deny=["192.0.2.0/24"]))
        refused = harness.client(CLIENT)
        self.assertTrue(refused.closed)
        allowed = harness.client(IPv4Address("TCP", "198.51.100.7", 1))
        self.assertFalse(allowed.closed)
        self.assertEqual(harness.pool.contexts, [PickContext("tcp", "198.51.100.7")])

    def test_invalid_options(self) -> None:
        self.assertRaises(ValueError, Harness, send_proxy="v3")
        self.assertRaises(ValueError, Harness, connect_timeout=0)
        self.assertRaises(ValueError, Harness, idle_timeout=-1)


class AcceptProxyTests(SynchronousTestCase):
    """With C{accept_proxy}, trusted load balancers say who the client is."""

    def harness(self, **options: Any) -> Harness:
        return Harness(accept_proxy=True, trusted_proxies=["10.1.0.0/16"], **options)

    def test_header_names_the_client(self) -> None:
        harness = self.harness()
        balancer = harness.client(BALANCER)
        self.assertEqual(harness.dials(), [], "no backend before the header")
        header = encode_v1(CLIENT, LISTENER)
        balancer.send(header[:20])
        balancer.send(header[20:] + b"first")
        self.assertEqual(harness.pool.contexts, [PickContext("tcp", "192.0.2.10")])
        backend = harness.accept()
        self.assertEqual(backend.received(), b"first")

    def test_forwards_the_original_addresses(self) -> None:
        harness = self.harness(send_proxy="v1")
        balancer = harness.client(BALANCER)
        original = IPv6Address("TCP", "2001:db8::77", 1234)
        destination = IPv6Address("TCP", "2001:db8::1", 443)
        balancer.send(encode_v2(original, destination) + b"payload")
        backend = harness.accept()
        self.assertEqual(
            backend.received(), b"PROXY TCP6 2001:db8::77 2001:db8::1 1234 443\r\npayload"
        )

    def test_local_command_uses_the_connection_addresses(self) -> None:
        harness = self.harness(send_proxy="v1")
        balancer = harness.client(BALANCER)
        balancer.send(encode_v2(None, None, local=True))
        self.assertEqual(harness.pool.contexts, [PickContext("tcp", "10.1.0.5")])
        backend = harness.accept()
        self.assertEqual(backend.received(), encode_v1(BALANCER, LISTENER))

    def test_malformed_header_closes(self) -> None:
        harness = self.harness()
        balancer = harness.client(BALANCER)
        balancer.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 99999\r\n")
        self.assertTrue(balancer.transport.aborted)
        self.assertEqual(harness.pool.contexts, [])
        self.assertEqual(harness.dials(), [])

    def test_missing_header_closes(self) -> None:
        harness = self.harness()
        balancer = harness.client(BALANCER)
        balancer.send(b"GET / HTTP/1.1\r\n")
        self.assertTrue(balancer.closed)
        self.assertEqual(harness.dials(), [])

    def test_untrusted_peer_is_refused(self) -> None:
        harness = self.harness()
        with capturedLogs() as events:
            stranger = harness.client(IPv4Address("TCP", "203.0.113.66", 40000))
        self.assertEqual(
            [formatEvent(event) for event in events],
            ["TCP: closing connection from 203.0.113.66:40000: not a trusted proxy"],
        )
        self.assertTrue(stranger.closed)
        stranger.send(encode_v1(IPv4Address("TCP", "10.1.2.3", 1), LISTENER) + b"data")
        self.assertEqual(harness.pool.contexts, [])
        self.assertEqual(harness.dials(), [])

    def test_header_timeout(self) -> None:
        harness = self.harness(header_timeout=3.0)
        balancer = harness.client(BALANCER)
        balancer.send(b"PROXY TCP4 ")
        harness.reactor.advance(2.9)
        self.assertFalse(balancer.closed)
        harness.reactor.advance(0.1)
        self.assertTrue(balancer.closed)
        self.assertEqual(harness.dials(), [])

    def test_allow_and_deny_judge_the_client_the_header_names(self) -> None:
        """Not the load balancer: behind one, every connection comes from its address."""
        only_documentation = IPFilter(allow=["192.0.2.0/24"])
        harness = self.harness(client_filter=only_documentation)
        balancer = harness.client(BALANCER)
        balancer.send(encode_v1(CLIENT, LISTENER) + b"first")
        self.assertEqual(harness.pool.contexts, [PickContext("tcp", "192.0.2.10")])
        self.assertEqual(harness.accept().received(), b"first")

        harness = self.harness(client_filter=IPFilter(deny=["192.0.2.10"]))
        balancer = harness.client(BALANCER)
        with capturedLogs() as events:
            balancer.send(encode_v1(CLIENT, LISTENER) + b"first")
        self.assertIn("TCP: refused a connection from 192.0.2.10", [formatEvent(e) for e in events])
        self.assertTrue(balancer.closed)
        self.assertEqual(harness.pool.contexts, [])
        self.assertEqual(harness.dials(), [])

    def test_trusted_networks_are_validated(self) -> None:
        self.assertRaises(ValueError, Harness, accept_proxy=True)
        self.assertRaises(ValueError, Harness, accept_proxy=True, trusted_proxies=["10.0.0.0/33"])

    def test_single_addresses_and_ipv6_are_trusted(self) -> None:
        harness = Harness(accept_proxy=True, trusted_proxies=["10.1.0.5", "2001:db8::/32"])
        self.assertTrue(harness.factory.trusts(BALANCER))
        self.assertTrue(harness.factory.trusts(IPv6Address("TCP", "2001:db8::9", 1)))
        self.assertTrue(harness.factory.trusts(IPv6Address("TCP", "::ffff:10.1.0.5", 1)))
        self.assertFalse(harness.factory.trusts(IPv4Address("TCP", "10.1.0.6", 1)))


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Sends back everything, reading no faster than its peer reads."""

    transport: Any

    def __init__(self, factory: EchoFactory) -> None:
        self.factory = factory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class EchoFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Echo:
        return Echo(self)


@implementer(IHalfCloseableProtocol)
class Exchange(Protocol):
    """Sends C{payload}, half-closes, and hashes what comes back until the proxy closes."""

    transport: Any

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = 0
        self.digest = hashlib.sha256()
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


class LoopbackTests(TestCase):
    """Real sockets on 127.0.0.1: a proxy in front of two echo servers."""

    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor
        self.addCleanup(self.wait_for_connections_to_close)
        self.echoes = [EchoFactory(), EchoFactory()]
        self.backends = []
        for index, echo in enumerate(self.echoes):
            address = self.listen(echo)
            self.backends.append(Backend(f"echo{index}", "127.0.0.1", address.port))
        pool = BackendPool("echo", self.backends, clock=self.reactor)
        factory = TCPProxyFactory(self.reactor, pool, send_proxy=None)
        self.proxy_port = self.listen(factory).port

    def listen(self, factory: Factory) -> Any:
        """Listen on a free loopback port; return the port's address."""
        port: IListeningPort = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost()

    async def wait_for_connections_to_close(self) -> None:
        """Every socket the test opened is closed before the reactor is checked."""
        for _ in range(500):
            selectables = [*self.reactor.getReaders(), *self.reactor.getWriters()]
            if not any(isinstance(selectable, tcp.Connection) for selectable in selectables):
                return
            await deferLater(self.reactor, 0.01)

    async def exchange(self, payload: bytes) -> Exchange:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.proxy_port)
        protocol = Exchange(payload)
        await connectProtocol(endpoint, protocol)
        await protocol.done
        return protocol

    async def test_round_robin_across_connections(self) -> None:
        for number in range(4):
            payload = b"hello %d" % number
            result = await self.exchange(payload)
            self.assertEqual(result.digest.digest(), hashlib.sha256(payload).digest())
        self.assertEqual([echo.connections for echo in self.echoes], [2, 2])
        self.assertEqual([backend.active for backend in self.backends], [0, 0])

    async def test_twenty_mebibytes_intact(self) -> None:
        payload = random.Random(20).randbytes(20 << 20)
        result = await self.exchange(payload)
        self.assertEqual(result.received, len(payload))
        self.assertEqual(result.digest.hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual([backend.active for backend in self.backends], [0, 0])
