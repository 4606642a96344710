"""
In-memory tests of FTP data connections: the proxy's rewriting of C{PASV}/C{EPSV}/C{PORT}/
C{EPRT} and their security rules, transfers spliced with backpressure, C{ABOR}, and the
L{twisted_rp.ftp.data.DataChannel} on its own.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_ftp_control import CLIENT, PROXY, Harness, Peer, Transport
from twisted_rp.ftp.data import BACKEND, DataChannel, port_range
from twisted_rp.ftp.data import CLIENT as CLIENT_SIDE

STRANGER = IPv4Address("TCP", "203.0.113.5", 40000)


def passive_listener(harness: Harness, index: int = -1) -> Any:
    """The factory of the proxy's latest passive data listener."""
    return harness.reactor.tcpServers[index][1]


def connect_data(harness: Harness, peer: IPv4Address = CLIENT) -> Peer | None:
    """A client data connection to the proxy's latest passive port, if it is accepted."""
    protocol = passive_listener(harness).buildProtocol(peer)
    if protocol is None:
        return None
    transport = Transport(harness.reactor, peer, PROXY)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return Peer(protocol, transport)


class PassiveTests(SynchronousTestCase):
    """Client PASV and EPSV: the proxy listens itself and asks the backend for a port."""

    def setUp(self) -> None:
        self.harness = Harness()
        self.backend = self.harness.login()

    def test_pasv_over_backend_epsv(self) -> None:
        harness = self.harness
        harness.send("PASV")
        self.assertEqual(self.backend.heard(), ["EPSV"])
        self.backend.say("229 Entering Extended Passive Mode (|||4000|)")
        self.assertEqual(harness.dialled(), ("10.0.0.1", 4000))
        self.assertEqual(harness.replies(), [])  # Not before the backend's leg is connected.
        harness.accept()
        port, _, _, interface = harness.reactor.tcpServers[-1]
        self.assertEqual((port, interface), (30000, "198.51.100.1"))
        self.assertEqual(harness.replies(), ["227 Entering Passive Mode (198,51,100,1,117,48)."])

    def test_masquerade_address(self) -> None:
        harness = Harness(masquerade_address="192.0.2.200")
        backend = harness.login()
        harness.send("PASV")
        backend.say("229 ok (|||4000|)")
        harness.accept()
        self.assertEqual(harness.replies(), ["227 Entering Passive Mode (192,0,2,200,117,48)."])

    def test_epsv(self) -> None:
        self.harness.send("EPSV")
        self.backend.say("229 ok (|||4000|)")
        self.harness.accept()
        self.assertEqual(self.harness.replies(), ["229 Entering Extended Passive Mode (|||30000|)"])

    def test_epsv_wrong_family(self) -> None:
        self.harness.send("EPSV 2")
        self.assertEqual(self.harness.replies(), ["522 Network protocol not supported, use (1)"])
        self.assertEqual(self.backend.heard(), [])

    def test_backend_pasv_foreign_address_ignored(self) -> None:
        """A backend without EPSV gets PASV; the address in its 227 is not followed."""
        harness = self.harness
        harness.send("EPSV")
        self.backend.say("500 EPSV not understood")
        self.assertEqual(self.backend.heard(), ["EPSV", "PASV"])
        self.backend.say("227 Entering Passive Mode (203,0,113,9,15,161).")
        self.assertEqual(harness.dialled(), ("10.0.0.1", 4001))
        harness.accept()
        harness.replies()
        harness.send("EPSV")
        self.assertEqual(self.backend.heard(), ["PASV"])  # Remembered.

    def test_backend_data_refused(self) -> None:
        self.harness.send("PASV")
        self.backend.say("229 ok (|||4000|)")
        self.harness.refuse()
        self.assertEqual(self.harness.replies(), ["425 Can't open data connection."])

    def test_no_passive_port_free(self) -> None:
        harness = self.harness

        def busy(*args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("198.51.100.1", args[0], OSError("in use"))

        harness.reactor.listenTCP = busy  # type: ignore[method-assign]
        harness.send("PASV")
        self.backend.say("229 ok (|||4000|)")
        leg = harness.accept()
        self.assertEqual(harness.replies(), ["425 Can't open data connection: no port free."])
        self.assertTrue(leg.transport.aborted)

    def test_foreign_data_connection_dropped(self) -> None:
        """Only the control connection's address may use the passive port."""
        harness = self.harness
        harness.send("PASV")
        self.backend.say("229 ok (|||4000|)")
        harness.accept()
        self.assertIsNone(connect_data(harness, STRANGER))
        self.assertIsNotNone(connect_data(harness, CLIENT))
        self.assertIsNone(connect_data(harness, CLIENT))  # One connection per port.

    def test_transfer_without_data_command(self) -> None:
        self.harness.send("RETR x")
        self.assertEqual(self.harness.replies(), ["425 Use PORT, PASV, EPRT or EPSV first."])
        self.assertEqual(self.backend.heard(), [])


class ActiveTests(SynchronousTestCase):
    """Client PORT and EPRT: only to the client's own address (no FTP bounce)."""

    def setUp(self) -> None:
        self.harness = Harness()
        self.backend = self.harness.login()

    def test_port_to_third_address_refused(self) -> None:
        for command in ("PORT 203,0,113,9,15,160", "EPRT |1|203.0.113.9|4000|"):
            self.harness.send(command)
            reply = self.harness.replies()
            self.assertEqual(len(reply), 1)
            self.assertTrue(reply[0].startswith("500 Illegal"), reply)
        self.assertEqual(self.backend.heard(), [])
        self.assertEqual(len(self.harness.reactor.tcpClients), 1)

    def test_privileged_port_refused(self) -> None:
        self.harness.send("PORT 192,0,2,10,0,25")
        self.assertEqual(self.harness.replies(), ["500 Illegal PORT command: privileged port."])

    def test_malformed(self) -> None:
        self.harness.send("PORT 1,2,3", "EPRT |2|192.0.2.10|4000|", "LPRT 1,2")
        self.assertEqual([r[:3] for r in self.harness.replies()], ["501", "501", "502"])

    def test_port_retr(self) -> None:
        """The proxy connects to the client from its own address once the backend says 150."""
        harness = self.harness
        harness.send("PORT 192,0,2,10,15,160")
        self.backend.say("229 ok (|||4000|)")
        backend_leg = harness.accept()
        self.assertEqual(harness.replies(), ["200 PORT command successful."])
        harness.send("RETR file")
        self.assertEqual(self.backend.heard(), ["EPSV", "RETR file"])
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        self.backend.say("150 Opening")
        host, port, _, _, bind = harness.reactor.tcpClients[-1]
        self.assertEqual((host, port, bind), ("192.0.2.10", 4000, ("198.51.100.1", 0)))
        client_leg = harness.accept()
        backend_leg.protocol.dataReceived(b"payload")
        self.assertEqual(client_leg.transport.value(), b"payload")

    def test_eprt_accepted(self) -> None:
        self.harness.send("EPRT |1|192.0.2.10|4000|")
        self.backend.say("229 ok (|||4000|)")
        self.harness.accept()
        self.assertEqual(self.harness.replies(), ["200 EPRT command successful."])


class TransferTests(SynchronousTestCase):
    """A RETR through a passive channel, its final reply, and ABOR."""

    def setUp(self) -> None:
        self.harness = Harness()
        self.backend = self.harness.login()
        self.harness.send("EPSV")
        self.backend.say("229 ok (|||4000|)")
        self.backend_leg = self.harness.accept()
        self.harness.replies()
        self.backend.heard()
        client_leg = connect_data(self.harness)
        assert client_leg is not None
        self.client_leg = client_leg

    def test_splice_with_backpressure(self) -> None:
        client, backend = self.client_leg.transport, self.backend_leg.transport
        self.assertIs(client.producer, backend)
        self.assertIs(backend.producer, client)
        self.assertEqual((client.producerState, backend.producerState), ("producing",) * 2)
        self.harness.send("STOR up")
        self.assertEqual(self.backend.heard(), ["STOR up"])
        self.client_leg.protocol.dataReceived(b"upload")
        self.assertEqual(backend.value(), b"upload")

    def test_final_reply_after_the_data(self) -> None:
        """The client hears 226 only once its data connection is closed with every byte."""
        harness = self.harness
        harness.send("RETR file")
        self.backend.say("150 Opening")
        self.assertEqual(harness.replies(), ["150 Opening"])
        self.assertEqual(self.backend.heard(), ["RETR file"])
        self.backend_leg.protocol.dataReceived(b"contents")
        self.backend_leg.transport.close_from_peer()
        self.backend.say("226 Done")
        self.assertEqual(self.client_leg.transport.value(), b"contents")
        self.assertTrue(self.client_leg.transport.disconnecting)
        self.assertIsNone(self.client_leg.transport.producer)
        self.assertEqual(harness.replies(), [])
        harness.send("NOOP")  # Waits for the transfer.
        harness.reactor.advance(0)
        self.assertEqual(harness.replies(), ["226 Done"])
        self.assertEqual(self.backend.heard(), ["NOOP"])

    def test_failed_transfer_closes_channel(self) -> None:
        self.harness.send("RETR missing")
        self.backend.say("550 No such file")
        self.assertEqual(self.harness.replies(), ["550 No such file"])
        self.assertTrue(self.client_leg.transport.aborted)
        self.assertTrue(self.backend_leg.transport.aborted)

    def test_abort(self) -> None:
        """ABOR jumps the queue, closes both data connections, and both replies follow."""
        harness = self.harness
        harness.send("RETR big")
        self.backend.say("150 Opening")
        harness.client.protocol.dataReceived(b"\xff\xf4\xff\xf2ABOR\r\n")
        self.assertTrue(self.client_leg.transport.aborted)
        self.assertTrue(self.backend_leg.transport.aborted)
        self.assertEqual(self.backend.heard(), ["RETR big", "ABOR"])
        self.backend.say("426 Aborted", "226 ABOR ok")
        self.assertEqual(harness.replies(), ["150 Opening", "426 Aborted", "226 ABOR ok"])
        harness.send("NOOP")
        self.assertEqual(self.backend.heard(), ["NOOP"])

    def test_abort_idle(self) -> None:
        """ABOR without a transfer is relayed like any command."""
        self.harness.send("ABOR")
        self.assertEqual(self.backend.heard(), ["ABOR"])


class DataChannelTests(SynchronousTestCase):
    """The channel on its own."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.channel = DataChannel(self.clock, idle_timeout=30)
        self.finished: list[bool] = []
        self.channel.when_finished(lambda: self.finished.append(True))

    def leg(self, side: str) -> Peer:
        protocol = self.channel.leg(side)
        transport = Transport(self.clock, CLIENT, PROXY)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def test_first_leg_paused_until_second(self) -> None:
        backend = self.leg(BACKEND)
        self.assertEqual(backend.transport.producerState, "paused")
        self.leg(CLIENT_SIDE)
        self.assertEqual(backend.transport.producerState, "producing")

    def test_counts_and_finish(self) -> None:
        backend, client = self.leg(BACKEND), self.leg(CLIENT_SIDE)
        backend.protocol.dataReceived(b"abc")
        client.protocol.dataReceived(b"de")
        self.assertEqual((self.channel.bytes_to_client, self.channel.bytes_to_backend), (3, 2))
        client.transport.close_from_peer()
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(self.finished, [])
        self.clock.advance(0)
        self.assertEqual(self.finished, [True])

    def test_leg_lost_before_splice(self) -> None:
        backend = self.leg(BACKEND)
        backend.transport.close_from_peer()
        self.assertEqual(self.finished, [True])
        late = self.leg(CLIENT_SIDE)
        self.assertTrue(late.transport.aborted)

    def test_idle_timeout(self) -> None:
        backend, client = self.leg(BACKEND), self.leg(CLIENT_SIDE)
        self.clock.advance(20)
        backend.protocol.dataReceived(b"x")
        self.clock.advance(20)
        self.assertFalse(client.transport.aborted)
        self.clock.advance(10)
        self.assertTrue(client.transport.aborted)
        self.assertTrue(backend.transport.aborted)

    def test_unused_passive_port_times_out(self) -> None:
        reactor = MemoryReactorClock()
        channel = DataChannel(reactor, idle_timeout=30)
        self.assertEqual(channel.listen(reactor, "127.0.0.1", [30000], "192.0.2.10", 60), 30000)
        reactor.advance(60)
        self.assertTrue(channel.finished)
        listener: Any = reactor.tcpServers[-1][1]
        self.assertIsNone(listener.port)

    def test_port_range(self) -> None:
        self.assertEqual(list(port_range([1, 2, 3], 4)), [2, 3, 1])
        self.assertEqual(list(port_range(None, 4)), [0])
