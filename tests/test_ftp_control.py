"""
In-memory tests of the FTP proxy's control channel: the command and reply grammar
(L{twisted_rp.ftp.replies}) and the session (L{twisted_rp.ftp.control}): login and failover,
relaying, the data-command rewriting and its security rules, limits and timeouts.

Backend connections are C{connectTCP} calls recorded by a L{MemoryReactorClock}, which a test
accepts or refuses; every end is a L{StringTransport}.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.ftp import FTPProxyFactory, FTPSession
from twisted_rp.ftp.replies import (
    FTPSyntaxError,
    Reply,
    ReplyError,
    ReplyReader,
    format_227,
    format_229,
    parse_227,
    parse_229,
    parse_command,
    parse_eprt_argument,
    parse_port_argument,
)
from twisted_rp.interfaces import IStickiness
from twisted_rp.pool import Backend, BackendPool, PickContext, StickyResponse

CLIENT = IPv4Address("TCP", "192.0.2.10", 50000)
PROXY = IPv4Address("TCP", "198.51.100.1", 21)


class Transport(StringTransport):
    """
    A L{StringTransport} that, like TCP, tells its protocol it is closed one reactor turn
    after C{loseConnection} or C{abortConnection}.
    """

    def __init__(self, clock: MemoryReactorClock, peer: Any, host: Any) -> None:
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.clock = clock
        self.protocol: Any = None
        self.closed = False
        self.aborted = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close_soon()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def _close_soon(self) -> None:
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def close_from_peer(self) -> None:
        """The other end closed the connection."""
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


@define
class Peer:
    """An end the proxy talks to, driven by the test."""

    protocol: Any
    transport: Transport

    def say(self, *lines: str) -> None:
        self.protocol.dataReceived(b"".join(line.encode() + b"\r\n" for line in lines))

    def heard(self) -> list[str]:
        text = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return text.splitlines()


@implementer(IStickiness)
@define
class RecordingStickiness:
    strict: bool = False
    pins: list[tuple[str | None, str]] = field(factory=list)

    def pinned(self, context: PickContext) -> str | None:
        return None

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        self.pins.append((context.user, backend.name))


class Harness:
    """A proxy on a memory reactor with two backends, and one client session."""

    def __init__(self, **factory_options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.stickiness = RecordingStickiness()
        self.backends = [Backend("a", "10.0.0.1", 21), Backend("b", "10.0.0.2", 2121)]
        self.pool = BackendPool(
            "ftp", self.backends, clock=self.reactor, stickiness=self.stickiness
        )
        options: dict[str, Any] = {"banner": "Proxy here", "passive_ports": [30000, 30001]}
        options.update(factory_options)
        self.factory = FTPProxyFactory(self.reactor, self.pool, **options)
        self.client = self.connect_client()

    def connect_client(self, peer: IPv4Address = CLIENT) -> Peer:
        session = self.factory.buildProtocol(peer)
        transport = Transport(self.reactor, peer, PROXY)
        transport.protocol = session
        session.makeConnection(transport)
        return Peer(session, transport)

    @property
    def session(self) -> FTPSession:
        session: FTPSession = self.client.protocol
        return session

    def send(self, *lines: str) -> None:
        self.client.say(*lines)

    def replies(self) -> list[str]:
        return self.client.heard()

    def dialled(self, index: int = -1) -> tuple[str, int]:
        host, port = self.reactor.tcpClients[index][:2]
        return host, port

    def accept(self, index: int = -1) -> Peer:
        host, port, factory = self.reactor.tcpClients[index][:3]
        protocol: Any = factory.buildProtocol(None)
        transport = Transport(self.reactor, IPv4Address("TCP", host, port), PROXY)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def refuse(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def login(self, user: str = "alice") -> Peer:
        self.replies()
        self.send(f"USER {user}")
        backend = self.accept()
        backend.say("220 backend secret banner")
        assert backend.heard() == [f"USER {user}"]
        backend.say("331 Password please")
        self.send("PASS pw")
        assert backend.heard() == ["PASS pw"]
        backend.say("230 Logged in")
        assert self.replies() == ["331 Password please", "230 Logged in"]
        return backend


class CommandGrammarTests(SynchronousTestCase):
    """Parsing client command lines."""

    def test_verb_and_argument(self) -> None:
        command = parse_command(b"retr some file.txt")
        self.assertEqual((command.verb, command.argument), ("RETR", "some file.txt"))
        self.assertEqual(command.encode(), b"RETR some file.txt\r\n")

    def test_bare_line_feed_refused(self) -> None:
        """A bare LF could smuggle a second command to a backend."""
        self.assertRaises(FTPSyntaxError, parse_command, b"USER a\nDELE x")
        self.assertRaises(FTPSyntaxError, parse_command, b"USER a\rDELE x")

    def test_not_a_command(self) -> None:
        for line in (b"", b"G3T / HTTP/1.1", b"12", b"TOOLONG x", b"\xc3\xa9TE"):
            self.assertRaises(FTPSyntaxError, parse_command, line)

    def test_telnet_interrupt_before_abor(self) -> None:
        self.assertEqual(parse_command(b"\xff\xf4\xff\xf2ABOR").verb, "ABOR")


class ReplyGrammarTests(SynchronousTestCase):
    """Reading backend replies and the data-address formats."""

    def test_multi_line_reply_whole(self) -> None:
        """A multi-line reply ends only at "code SP", across reads; inner lines are kept."""
        reader = ReplyReader()
        data = b"211-Features:\r\n MDTM\r\n211-not the end\r\n211 End\r\n200 ok\n"
        replies = list(reader.feed(data[:20])) + list(reader.feed(data[20:]))
        self.assertEqual([r.code for r in replies], [211, 200])
        self.assertEqual(
            replies[0].encode(), b"211-Features:\r\n MDTM\r\n211-not the end\r\n211 End\r\n"
        )

    def test_garbage(self) -> None:
        self.assertRaises(ReplyError, list, ReplyReader().feed(b"HTTP/1.1 200 OK\r\n"))

    def test_made_replies(self) -> None:
        self.assertEqual(Reply.of(200, "ok").encode(), b"200 ok\r\n")
        self.assertEqual(Reply.of(211, "a", "b", "c").encode(), b"211-a\r\n b\r\n211 c\r\n")

    def test_227(self) -> None:
        reply = format_227("198.51.100.1", 30000)
        self.assertEqual(reply.encode(), b"227 Entering Passive Mode (198,51,100,1,117,48).\r\n")
        self.assertEqual(parse_227(reply), ("198.51.100.1", 30000))
        bare = Reply(227, (b"227 Entering Passive Mode 10,0,0,1,15,160",))
        self.assertEqual(parse_227(bare), ("10.0.0.1", 4000))
        for bad in (b"227 no address", b"227 (300,0,0,1,1,1)"):
            self.assertRaises(FTPSyntaxError, parse_227, Reply(227, (bad,)))

    def test_229(self) -> None:
        self.assertEqual(
            format_229(4000).encode(), b"229 Entering Extended Passive Mode (|||4000|)\r\n"
        )
        self.assertEqual(parse_229(format_229(4000)), 4000)
        self.assertEqual(parse_229(Reply(229, (b"229 ok (!!!4001!)",))), 4001)
        self.assertRaises(FTPSyntaxError, parse_229, Reply(229, (b"229 (|||99999|)",)))

    def test_port(self) -> None:
        self.assertEqual(parse_port_argument("192,0,2,10,15,160"), ("192.0.2.10", 4000))
        for bad in ("192,0,2,10,15", "192,0,2,300,1,1", "a,b,c,d,e,f"):
            self.assertRaises(FTPSyntaxError, parse_port_argument, bad)

    def test_eprt(self) -> None:
        self.assertEqual(parse_eprt_argument("|1|192.0.2.10|4000|"), ("192.0.2.10", 4000))
        self.assertEqual(parse_eprt_argument("!2!2001:DB8::1!4000!"), ("2001:db8::1", 4000))
        for bad in ("|2|192.0.2.10|4000|", "|1|::1|4000|", "|1|192.0.2.10|0|", "|3|x|1|"):
            self.assertRaises(FTPSyntaxError, parse_eprt_argument, bad)


class BeforeLoginTests(SynchronousTestCase):
    """What the proxy answers itself before a backend is chosen."""

    def test_banner_is_the_proxys(self) -> None:
        harness = Harness()
        self.assertEqual(harness.replies(), ["220 Proxy here"])

    def test_local_commands_need_no_backend(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("FEAT", "SYST", "NOOP", "LIST", "PASV")
        replies = harness.replies()
        self.assertEqual(replies[0], "211-Features:")
        self.assertIn(" EPSV", replies)
        self.assertEqual(
            replies[-4:],
            ["215 UNIX Type: L8", "200 NOOP ok.", *["530 Please login with USER and PASS."] * 2],
        )
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_strict_lines(self) -> None:
        """Bare-LF lines and overlong lines get a 500 and are not run."""
        harness = Harness()
        harness.replies()
        harness.client.protocol.dataReceived(b"NOOP\n" + b"X" * 3000 + b"\r\nNOOP\r\n")
        self.assertEqual(
            harness.replies(),
            ["500 Command lines end with CRLF.", "500 Command line too long.", "200 NOOP ok."],
        )

    def test_quit(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("QUIT")
        self.assertEqual(harness.replies(), ["221 Goodbye."])
        self.assertTrue(harness.client.transport.disconnecting)


class LoginTests(SynchronousTestCase):
    """Choosing a backend at USER, and failing over before the login is answered."""

    def test_user_picks_and_relays(self) -> None:
        harness = Harness()
        backend = harness.login()
        self.assertEqual(harness.dialled(), ("10.0.0.1", 21))
        self.assertEqual(harness.stickiness.pins, [("alice", "a")])
        harness.send("HELP")
        self.assertEqual(backend.heard(), ["HELP"])
        backend.say("214-Help", " commands", "214 End")
        self.assertEqual(harness.replies(), ["214-Help", " commands", "214 End"])

    def test_uses_the_ftp_port(self) -> None:
        harness = Harness()
        harness.backends[0].ports["ftp"] = 2100
        harness.send("USER alice")
        self.assertEqual(harness.dialled(), ("10.0.0.1", 2100))

    def test_refused_backend_skipped(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("USER alice")
        harness.refuse()
        self.assertEqual(harness.dialled(), ("10.0.0.2", 2121))
        self.assertEqual(harness.backends[0].active, 0)
        backend = harness.accept()
        backend.say("220 hi")
        self.assertEqual(backend.heard(), ["USER alice"])
        backend.say("331 pw")
        self.assertEqual(harness.replies(), ["331 pw"])

    def test_refusing_greeting_skipped(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("USER alice")
        first = harness.accept()
        first.say("421 Too busy")
        self.assertTrue(first.transport.aborted)
        self.assertEqual(harness.dialled(), ("10.0.0.2", 2121))

    def test_all_failing(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("USER alice")
        harness.refuse()
        harness.refuse()
        harness.refuse()
        self.assertEqual(
            harness.replies(), ["421 Service not available, closing control connection."]
        )
        self.assertTrue(harness.client.transport.disconnecting)
        self.assertEqual([b.active for b in harness.backends], [0, 0])

    def test_backend_lost_at_pass_fails_over(self) -> None:
        """A backend that drops the session before PASS is answered: replayed elsewhere."""
        harness = Harness()
        harness.replies()
        harness.send("USER alice")
        first = harness.accept()
        first.say("220 hi")
        first.say("331 pw")
        harness.send("PASS secret")
        first.transport.close_from_peer()
        second = harness.accept()
        self.assertEqual(harness.dialled(), ("10.0.0.2", 2121))
        second.say("220 hi")
        self.assertEqual(second.heard(), ["USER alice"])
        second.say("331 pw")
        self.assertEqual(second.heard(), ["PASS secret"])
        second.say("230 welcome")
        self.assertEqual(harness.replies(), ["331 pw", "230 welcome"])
        self.assertEqual(harness.stickiness.pins, [("alice", "b")])

    def test_backend_lost_before_login_with_command_waiting(self) -> None:
        harness = Harness()
        harness.replies()
        harness.send("USER alice")
        backend = harness.accept()
        backend.say("220 hi", "331 pw")
        harness.send("SYST")
        backend.transport.close_from_peer()
        self.assertEqual(
            harness.replies(),
            ["331 pw", "421 Service not available, remote server has closed connection."],
        )
        self.assertEqual(harness.backends[0].active, 0)

    def test_lease_released_at_end(self) -> None:
        harness = Harness()
        backend = harness.login()
        self.assertEqual(harness.backends[0].active, 1)
        harness.send("QUIT")
        backend.say("221 Bye")
        self.assertEqual(harness.replies(), ["221 Bye"])
        harness.reactor.advance(0)
        self.assertTrue(harness.client.transport.disconnecting)
        self.assertEqual(harness.backends[0].active, 0)

    def test_backend_gone_mid_session(self) -> None:
        harness = Harness()
        backend = harness.login()
        backend.transport.close_from_peer()
        self.assertEqual(
            harness.replies(), ["421 Service not available, remote server has closed connection."]
        )
        self.assertTrue(harness.client.transport.disconnecting)

    def test_feat_filtered(self) -> None:
        """After login FEAT shows harmless backend features, never TLS or vendor ones."""
        harness = Harness()
        backend = harness.login()
        harness.send("FEAT")
        self.assertEqual(backend.heard(), ["FEAT"])
        backend.say("211-Features:", " AUTH TLS", " MDTM", " XCRC", " MLST type*;size*;", "211 End")
        replies = harness.replies()
        self.assertEqual(
            replies,
            ["211-Features:", " EPRT", " EPSV", " PASV", " MDTM", " MLST type*;size*;", "211 End"],
        )


class LimitTests(SynchronousTestCase):
    def test_session_limit_per_address(self) -> None:
        harness = Harness(max_sessions_per_ip=1)
        second = harness.connect_client()
        self.assertEqual(second.heard(), ["421 Too many connections from your address."])
        self.assertTrue(second.transport.disconnecting)
        other = harness.connect_client(IPv4Address("TCP", "192.0.2.11", 1))
        self.assertEqual(other.heard(), ["220 Proxy here"])
        harness.client.transport.close_from_peer()
        again = harness.connect_client()
        self.assertEqual(again.heard(), ["220 Proxy here"])

    def test_idle_timeout(self) -> None:
        harness = Harness(idle_timeout=60)
        harness.login()
        harness.reactor.advance(59)
        self.assertEqual(harness.replies(), [])
        harness.reactor.advance(1)
        self.assertEqual(
            harness.replies(), ["421 Idle timeout (60 seconds): closing control connection."]
        )

    def test_factory_provides(self) -> None:
        verifyObject(IStickiness, RecordingStickiness())
        pool = BackendPool("p", [])
        self.assertRaises(
            ValueError, FTPProxyFactory, MemoryReactorClock(), pool, backend_passive="x"
        )
        self.assertRaises(
            ValueError, FTPProxyFactory, MemoryReactorClock(), pool, passive_ports=[0]
        )
