"""
FTP data connections: the proxy's passive ports, its connections out to backends and active
clients, and the splice between the two legs of one transfer.

A L{DataChannel} has two legs, the client's and the backend's.  Each leg's reads are paused
from the moment it connects until the other leg is there too; then each transport becomes the
other's streaming producer, so a slow reader slows the writer down and nothing piles up in the
proxy.  A TLS leg (FTPS, L{LegTLS}) counts as there once its handshake is done; what it decrypts
before the splice (one read at most: it is paused then) is kept and passed on first.  A leg's
end (FTP marks the end of a file by closing the data connection) closes the
other once what it holds is flushed; the channel is finished when both are closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, NotConnectingError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rp.addresses import address_ip
from twisted_rp.sendnow import writer_for

log = Logger()

CLIENT = "client"
BACKEND = "backend"


@frozen
class LegTLS:
    """
    TLS on a data leg.

    @ivar creator: an C{IOpenSSLServerConnectionCreator} or C{IOpenSSLClientConnectionCreator}
        (or a context factory): whatever C{ITLSTransport.startTLS} takes.
    @ivar client: whether the proxy is the TLS client on this leg (toward backends), whichever
        end opened the TCP connection.
    """

    creator: object
    client: bool


@implementer(IHandshakeListener)
class DataLeg(Protocol):
    """
    One data connection (to the client or to the backend) of a L{DataChannel}.

    @ivar ready: connected and, for TLS, through the handshake: ready to be spliced.
    @ivar pending: what arrived before the splice (a TLS leg only).
    """

    transport: Any
    dialed = False

    def __init__(self, channel: DataChannel, side: str, tls: LegTLS | None = None) -> None:
        self.channel = channel
        self.side = side
        self.tls = tls
        self.connected_leg = False
        self.ready = False
        self.lost = False
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        self.connected_leg = True
        if self.tls is None:
            # Nothing is read before the other leg can take it.
            self.transport.pauseProducing()
            self.ready = True
        else:
            # "normal" means the TLS roles follow the TCP ones (the dialer is the TLS client).
            self.transport.startTLS(self.tls.creator, self.dialed == self.tls.client)
        self.channel.leg_connected(self)

    def handshakeCompleted(self) -> None:
        if self.lost or self.ready:
            return
        self.transport.pauseProducing()
        self.ready = True
        self.channel.leg_ready(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.channel.spliced:
            self.pending.append(data)
            self.transport.pauseProducing()
            return
        self.channel.leg_data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self.tls is not None and not self.ready:
            log.info(
                "FTP: TLS on the {side} data connection failed: {reason}",
                side=self.side,
                reason=reason.value,
            )
        self.channel.leg_lost(self)


class DataChannel:
    """
    The data connection for one transfer, as two spliced legs.

    @ivar client_leg: the client's leg once connected.
    @ivar backend_leg: the backend's leg once connected.
    @ivar bytes_to_client: bytes relayed from the backend to the client.
    @ivar bytes_to_backend: bytes relayed from the client to the backend.
    @ivar finished: whether both legs are closed (or will never be opened).
    """

    def __init__(self, clock: IReactorTime, idle_timeout: float) -> None:
        """
        @param idle_timeout: seconds without a byte after which a spliced channel is aborted;
            0 for no limit.
        """
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.client_leg: DataLeg | None = None
        self.backend_leg: DataLeg | None = None
        self.bytes_to_client = 0
        self.bytes_to_backend = 0
        self.finished = False
        self.spliced = False
        self._closing = False
        self._listener: PassiveListener | None = None
        self._dials: list[_Dial] = []
        self._timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._write: dict[str, Callable[[bytes], None]] = {}
        self._on_finished: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return (
            f"<DataChannel client={self.client_leg is not None} "
            f"backend={self.backend_leg is not None} finished={self.finished}>"
        )

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call C{callback} once the channel is finished (at once if it is)."""
        if self.finished:
            callback()
        else:
            self._on_finished.append(callback)

    def leg(self, side: str, tls: LegTLS | None = None) -> DataLeg:
        """A new, unconnected leg for C{side} (L{CLIENT} or L{BACKEND}), with C{tls} if given."""
        return DataLeg(self, side, tls)

    # Opening legs

    def listen(
        self,
        reactor: IReactorTCP,
        interface: str,
        ports: Iterable[int],
        allowed_ip: str,
        timeout: float,
        tls: LegTLS | None = None,
    ) -> int:
        """
        Listen for the client's leg on the first free port of C{ports} on C{interface},
        accepting only C{allowed_ip}; stop listening after C{timeout} seconds unused.

        @param tls: TLS for the leg (FTPS C{PROT P}).
        @return: the port number listened on.
        @raise CannotListenError: no port of C{ports} is free.
        """
        listener = PassiveListener(self, allowed_ip, tls)
        listener.listen(reactor, interface, ports)
        self._listener = listener
        listener.timer = self.clock.callLater(timeout, self._listen_timed_out)
        return listener.port_number

    def dial(
        self,
        reactor: IReactorTCP,
        side: str,
        host: str,
        port: int,
        timeout: float,
        bind: str | None = None,
        tls: LegTLS | None = None,
    ) -> Deferred[DataLeg]:
        """
        Connect C{side}'s leg to C{host}:C{port}, from address C{bind} if given.

        @param tls: TLS for the leg; its handshake goes on after the L{Deferred} fires.
        @return: a L{Deferred} firing with the leg once TCP is connected, or failing with the
            reason.
        """
        dial = _Dial(self, side, tls)
        self._dials.append(dial)
        bind_address = None if bind is None else (bind, 0)
        dial.connector = reactor.connectTCP(
            host, port, dial, timeout=timeout, bindAddress=bind_address
        )
        return dial.deferred

    def _listen_timed_out(self) -> None:
        if self._listener is not None:
            self._listener.timer = None
        if self.client_leg is None and not self.finished:
            log.info("FTP: passive data port unused, closing it")
            self.close(abort=True)

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    # Legs reporting

    def leg_connected(self, leg: DataLeg) -> None:
        """C{leg} connected: keep it, and splice once both legs are ready."""
        if self.finished or self._closing:
            leg.transport.abortConnection()
            return
        if leg.side == CLIENT:
            self.client_leg = leg
            self._stop_listening()
        else:
            self.backend_leg = leg
        if not leg.ready and self._timer is None and self.idle_timeout > 0:
            # A TLS handshake that never ends must not hold the transfer forever.
            self._last_activity = self.clock.seconds()
            self._timer = self.clock.callLater(self.idle_timeout, self._check_idle)
        self._maybe_splice()

    def leg_ready(self, leg: DataLeg) -> None:
        """C{leg}'s TLS handshake is done: splice if the other leg is ready too."""
        if not (self.finished or self._closing):
            self._maybe_splice()

    def _maybe_splice(self) -> None:
        client, backend = self.client_leg, self.backend_leg
        if client is None or backend is None or self.spliced:
            return
        if client.ready and backend.ready:
            self._splice(client, backend)

    def _splice(self, client: DataLeg, backend: DataLeg) -> None:
        self.spliced = True
        self._write = {CLIENT: writer_for(backend.transport), BACKEND: writer_for(client.transport)}
        backend.transport.registerProducer(client.transport, True)
        client.transport.registerProducer(backend.transport, True)
        self._last_activity = self.clock.seconds()
        if self.idle_timeout > 0 and self._timer is None:
            self._timer = self.clock.callLater(self.idle_timeout, self._check_idle)
        for leg in (client, backend):
            pending, leg.pending = leg.pending, []
            for data in pending:
                self.leg_data(leg, data)
        client.transport.resumeProducing()
        backend.transport.resumeProducing()

    def leg_data(self, leg: DataLeg, data: bytes) -> None:
        """C{leg} received C{data}: pass it to the other leg."""
        write = self._write.get(leg.side)
        if write is None:
            return
        self._last_activity = self.clock.seconds()
        if leg.side == CLIENT:
            self.bytes_to_backend += len(data)
        else:
            self.bytes_to_client += len(data)
        write(data)

    def leg_lost(self, leg: DataLeg) -> None:
        """C{leg} closed: close the other after flushing; finish once both are closed."""
        if leg is not self.client_leg and leg is not self.backend_leg:
            return  # Connected after the channel closed, and aborted then.
        if not self.spliced:
            # The transfer never started, and now cannot.
            self.close(abort=True)
            return
        other = self.backend_leg if leg.side == CLIENT else self.client_leg
        if other is not None and not other.lost:
            _unregister(other.transport)
            other.transport.loseConnection()
        self._maybe_finished()

    # Closing

    def close(self, abort: bool = True) -> None:
        """Close both legs (dropping what they hold when C{abort}) and stop listening."""
        if self.finished:
            return
        self._closing = True
        self._stop_listening()
        for dial in self._dials:
            dial.cancel()
        for leg in (self.client_leg, self.backend_leg):
            if leg is not None and not leg.lost:
                _unregister(leg.transport)
                if abort:
                    leg.transport.abortConnection()
                else:
                    leg.transport.loseConnection()
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self.finished or not (self._closing or self.spliced):
            return
        if any(leg is not None and not leg.lost for leg in (self.client_leg, self.backend_leg)):
            return
        self.finished = True
        self._stop_listening()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        callbacks, self._on_finished = self._on_finished, []
        for callback in callbacks:
            callback()

    def _check_idle(self) -> None:
        self._timer = None
        quiet = self.clock.seconds() - self._last_activity
        if quiet < self.idle_timeout:
            self._timer = self.clock.callLater(self.idle_timeout - quiet, self._check_idle)
            return
        log.info("FTP: data connection idle for {timeout} s, closing it", timeout=quiet)
        self.close(abort=True)


def _unregister(transport: Any) -> None:
    # A transport with a producer registered does not close once flushed.
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()


class PassiveListener(ServerFactory):
    """
    A passive data port: the first connection from C{allowed_ip} becomes the client's leg;
    connections from anywhere else are closed at once, unread and unanswered.
    """

    noisy = False

    def __init__(self, channel: DataChannel, allowed_ip: str, tls: LegTLS | None = None) -> None:
        self.channel = channel
        self.tls = tls
        self.allowed_ip = ipaddress.ip_address(allowed_ip)
        self.port: IListeningPort | None = None
        self.port_number = 0
        self.timer: IDelayedCall | None = None
        self.accepted = False

    def listen(self, reactor: IReactorTCP, interface: str, ports: Iterable[int]) -> None:
        """Listen on the first port of C{ports} that is free."""
        last_error: CannotListenError | None = None
        for number in ports:
            try:
                self.port = reactor.listenTCP(number, self, interface=interface)
            except CannotListenError as error:
                last_error = error
                continue
            self.port_number = self.port.getHost().port  # type: ignore[attr-defined]
            return
        raise last_error or CannotListenError(interface, 0, "no passive ports configured")

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.accepted or address_ip(addr) != self.allowed_ip:
            log.warn(
                "FTP: refused data connection from {peer} (expected {allowed})",
                peer=addr,
                allowed=self.allowed_ip,
            )
            return None
        self.accepted = True
        return self.channel.leg(CLIENT, self.tls)

    def stop(self) -> None:
        """Stop listening and the timeout."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()


class _Dial(ClientFactory):
    """One outgoing data connection attempt, as a cancellable L{Deferred}."""

    noisy = False

    def __init__(self, channel: DataChannel, side: str, tls: LegTLS | None = None) -> None:
        self.channel = channel
        self.side = side
        self.tls = tls
        self.connector: IConnector | None = None
        self.deferred: Deferred[DataLeg] = Deferred(lambda d: self.cancel())

    def cancel(self) -> None:
        """Stop connecting (no effect once connected)."""
        if self.connector is not None and not self.deferred.called:
            with contextlib.suppress(NotConnectingError):
                self.connector.stopConnecting()

    def buildProtocol(self, addr: IAddress | None) -> DataLeg:
        leg = _DialedLeg(self.channel, self.side, self.tls)
        leg.dial = self
        return leg

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


class _DialedLeg(DataLeg):
    dial: _Dial
    dialed = True

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.dial.deferred.called:
            self.dial.deferred.callback(self)


def port_range(ports: Iterable[int] | None, start: int = 0) -> Iterator[int]:
    """
    The ports to try for a passive listener: C{ports} from index C{start} on, wrapping
    around (so that consecutive listeners spread over the range), or just 0 (any free port)
    when C{ports} is L{None}.
    """
    if ports is None:
        yield 0
        return
    ordered = list(ports)
    if not ordered:
        return
    start %= len(ordered)
    yield from ordered[start:]
    yield from ordered[:start]
