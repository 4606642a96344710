"""
The layer-4 TCP listener: every accepted connection is relayed, byte for byte, to one backend
of a pool.

A connection goes through these steps:

    1. with C{accept_proxy}, a PROXY header (v1 or v2) is read first, from trusted peers only;
       the client address it names is the one balancing, stickiness and C{send_proxy} see;
    2. C{pool.pick(PickContext("tcp", client_ip))}, then a connection to the backend's C{tcp}
       port; when that fails, another pick, up to C{pool.retries} more times;
    3. with C{send_proxy}, a PROXY header goes to the backend before any client byte;
    4. both directions are spliced: each transport is the other's streaming producer, so a
       slow reader pauses the other side's reads; an end of stream from one side is passed on
       as a half-close, and the session ends when both directions ended or either connection
       is lost.

Reading from the client pauses while a backend is being chosen and connected, so nothing is
buffered beyond what one read returned.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import NotConnectingError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTCP,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rp.addresses import address_ip
from twisted_rp.interfaces import IBackendPool
from twisted_rp.pool.backend import (
    Backend,
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    StickyResponse,
)
from twisted_rp.sendnow import writer_for
from twisted_rp.tcp.proxyprotocol import encode_v1, encode_v2, parse

#: The values C{send_proxy} accepts.
SEND_PROXY_VERSIONS = (None, "v1", "v2")

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HEADER = "header"
_CONNECTING = "connecting"
_SPLICING = "splicing"
_CLOSED = "closed"


def describe(address: IAddress | None) -> str:
    """C{host:port} of an IP address (brackets around IPv6 hosts), for logs."""
    if isinstance(address, IPv4Address | IPv6Address):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{host}:{address.port}"
    return str(address)


def _half_close(transport: ITransport) -> None:
    """End the stream written to C{transport}, or the whole connection if it cannot half-close."""
    lose_write = getattr(transport, "loseWriteConnection", None)
    if lose_write is not None:
        lose_write()
    else:
        transport.loseConnection()


class ClientFilter(TypingProtocol):
    """Decides which client addresses a listener serves (L{twisted_rp.auth.ipfilter.IPFilter})."""

    def allows(self, host: str) -> bool: ...


class TCPProxyFactory(Factory):
    """
    Relays every accepted TCP connection to a backend of C{pool}.

    @ivar reactor: connects to backends and keeps time.
    @ivar pool: where backends come from (any L{IBackendPool}; its optional C{retries}
        attribute says how many other backends to try after a connect failure, default 2).
    @ivar connect_timeout: seconds a backend may take to accept a connection.
    @ivar idle_timeout: seconds without a byte in either direction after which both
        connections are aborted; 0 for no limit.
    @ivar send_proxy: C{"v1"} or C{"v2"} to announce the client to backends with a PROXY
        header of that version; L{None} to send none.
    @ivar accept_proxy: whether clients are load balancers that send a PROXY header first.
    @ivar trusted_proxies: with C{accept_proxy}, the networks a client must connect from;
        connections from elsewhere are closed unread.
    @ivar header_timeout: with C{accept_proxy}, seconds a client may take to send its header.
    @ivar live: the open client connections, for a graceful stop.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        pool: IBackendPool,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 0.0,
        send_proxy: str | None = None,
        accept_proxy: bool = False,
        trusted_proxies: Iterable[str] = (),
        header_timeout: float = 5.0,
        client_filter: ClientFilter | None = None,
    ) -> None:
        """
        @param trusted_proxies: IP addresses or networks (C{"10.0.0.0/8"}, C{"::1"}).
        @param client_filter: closes connections from clients it does not allow; with
            C{accept_proxy}, the client the PROXY header names, not the load balancer.
        @raise ValueError: for an unknown C{send_proxy}, an invalid trusted network,
            C{accept_proxy} without any trusted network (which could never accept a client),
            or a timeout out of range.
        """
        if connect_timeout <= 0 or header_timeout <= 0:
            raise ValueError("connect_timeout and header_timeout must be positive")
        if idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative (0 for none)")
        if send_proxy not in SEND_PROXY_VERSIONS:
            raise ValueError(f"send_proxy must be one of {SEND_PROXY_VERSIONS}, not {send_proxy!r}")
        networks: tuple[_IPNetwork, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in trusted_proxies
        )
        if accept_proxy and not networks:
            raise ValueError("accept_proxy needs at least one trusted proxy network")
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.send_proxy = send_proxy
        self.accept_proxy = accept_proxy
        self.trusted_proxies = networks
        self.header_timeout = header_timeout
        self.client_filter = client_filter
        self.live: set[ClientConnection] = set()

    def trusts(self, address: IAddress) -> bool:
        """Whether C{address} may send a PROXY header (it is in C{trusted_proxies})."""
        ip = address_ip(address)
        return ip is not None and any(ip in network for network in self.trusted_proxies)

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection:
        return ClientConnection(self)

    def proxy_header(self, source: IAddress | None, destination: IAddress | None) -> bytes:
        """The PROXY header to send a backend for a client at C{source}, or C{b""}."""
        if self.send_proxy == "v1":
            return encode_v1(source, destination)
        if self.send_proxy == "v2":
            return encode_v2(source, destination)
        return b""


@implementer(IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """
    One client's connection to the listener, and the session relaying it to a backend.

    @ivar source: the client's address: the connection's peer, or the one a PROXY header named.
    @ivar destination: the address the client connected to, likewise.
    @ivar backend: the backend connection, once spliced.
    """

    # A TCP transport: its producer, consumer and half-close methods are used.
    transport: Any

    def __init__(self, factory: TCPProxyFactory) -> None:
        self.factory = factory
        self.source: IAddress | None = None
        self.destination: IAddress | None = None
        self.backend: BackendConnection | None = None
        self._state = _HEADER
        self._buffer = b""
        self._client_eof = False
        self._backend_eof = False
        # Which transport currently has the other registered as its producer.
        self._client_feeds_backend = False
        self._backend_feeds_client = False
        self._lease: Lease | None = None
        self._connect_elapsed = 0.0
        self._session: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._write_backend: Callable[[bytes], None] = self._drop
        self._write_client: Callable[[bytes], None] = self._drop

    @staticmethod
    def _drop(data: bytes) -> None:
        """Where writes go before the splice starts (never called)."""

    @property
    def client_ip(self) -> str:
        """The client's IP address as text (IPv4-mapped addresses as IPv4); C{""} if none."""
        ip = address_ip(self.source)
        return "" if ip is None else ip.compressed

    def connectionMade(self) -> None:
        self.factory.live.add(self)
        self.source = self.transport.getPeer()
        self.destination = self.transport.getHost()
        if not self.factory.accept_proxy:
            self._connect()
            return
        if not self.factory.trusts(self.source):
            self.factory.log.warn(
                "TCP: closing connection from {peer}: not a trusted proxy",
                peer=describe(self.source),
            )
            self._state = _CLOSED
            self.transport.loseConnection()
            return
        self._timer = self.factory.clock.callLater(
            self.factory.header_timeout, self._header_timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        if self._state == _SPLICING:
            self._last_activity = self.factory.clock.seconds()
            self._write_backend(data)
        elif self._state == _HEADER:
            self._read_header(data)
        elif self._state == _CONNECTING:
            self._buffer += data

    def _read_header(self, data: bytes) -> None:
        self._buffer += data
        try:
            parsed = parse(self._buffer)
        except ValueError as error:
            self.factory.log.warn(
                "TCP: closing connection from {peer}: {error}",
                peer=describe(self.source),
                error=error,
            )
            self._close_client(abort=True)
            return
        if parsed is None:
            return
        header, self._buffer = parsed
        self._cancel_timer()
        if header.source is not None:
            self.source, self.destination = header.source, header.destination
        self._connect()

    def _header_timed_out(self) -> None:
        self._timer = None
        self.factory.log.warn(
            "TCP: closing connection from {peer}: no PROXY header within {timeout} s",
            peer=describe(self.source),
            timeout=self.factory.header_timeout,
        )
        self._close_client(abort=True)

    def _connect(self) -> None:
        client_filter = self.factory.client_filter
        if client_filter is not None and not client_filter.allows(self.client_ip):
            self.factory.log.info("TCP: refused a connection from {client}", client=self.client_ip)
            self._close_client(abort=False)
            return
        self._state = _CONNECTING
        # Whatever the client sends meanwhile waits in its socket, not in our memory.
        self.transport.pauseProducing()
        session = Deferred.fromCoroutine(self._open_backend())
        session.addErrback(self._session_failed)
        if not session.called:
            self._session = session

    async def _open_backend(self) -> None:
        factory = self.factory
        clock = factory.clock
        failed: set[str] = set()
        attempts = 1 + max(0, int(getattr(factory.pool, "retries", 2)))
        for attempt in range(1, attempts + 1):
            # A retry goes to a backend that has not failed this client yet, if there is one.
            context = PickContext("tcp", self.client_ip, avoid=frozenset(failed))
            try:
                picked = factory.pool.pick(context)
                lease = await picked if isinstance(picked, Deferred) else picked
            except NoBackendAvailable as error:
                factory.log.warn(
                    "TCP: no backend for {client}: {reason}", client=self.client_ip, reason=error
                )
                self._close_client(abort=False)
                return
            started = clock.seconds()
            try:
                connection = await self._dial(lease.backend)
            except CancelledError:
                lease.release(Outcome("aborted", clock.seconds() - started))
                raise
            except Exception as error:
                lease.release(Outcome("connect_failed", clock.seconds() - started))
                failed.add(lease.backend.name)
                factory.log.info(
                    "TCP: connecting to backend {backend} failed (attempt {attempt} of "
                    "{attempts}): {error}",
                    backend=lease.backend.name,
                    attempt=attempt,
                    attempts=attempts,
                    error=error,
                )
                continue
            sticky_done = getattr(factory.pool, "sticky_response_done", None)
            if sticky_done is not None:
                # Source-address stickiness pins TCP clients too (a TCP session has no headers).
                sticky_done(context, lease.backend, StickyResponse())
            self._splice(connection, lease, clock.seconds() - started)
            return
        factory.log.warn(
            "TCP: closing connection from {client}: {attempts} backend connection attempts failed",
            client=self.client_ip,
            attempts=attempts,
        )
        self._close_client(abort=False)

    def _dial(self, backend: Backend) -> Deferred[BackendConnection]:
        dial = _Dial()
        dial.connector = self.factory.reactor.connectTCP(
            backend.host, backend.port_for("tcp"), dial, timeout=self.factory.connect_timeout
        )
        return dial.deferred

    def _session_failed(self, failure: Failure) -> None:
        self._session = None
        if failure.check(CancelledError):
            return
        self.factory.log.failure("TCP: relaying {client} failed", failure, client=self.client_ip)
        self._end_session(abort=True)

    def _splice(self, connection: BackendConnection, lease: Lease, elapsed: float) -> None:
        self._session = None
        self._state = _SPLICING
        self._lease = lease
        self._connect_elapsed = elapsed
        self.backend = connection
        connection.client = self
        backend_transport = connection.transport
        self._write_backend = writer_for(backend_transport)
        self._write_client = writer_for(self.transport)
        for transport in (self.transport, backend_transport):
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
        header = self.factory.proxy_header(self.source, self.destination)
        if header:
            self._write_backend(header)
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self._write_backend(data)
        backend_transport.registerProducer(self.transport, True)
        self._client_feeds_backend = True
        self.transport.registerProducer(backend_transport, True)
        self._backend_feeds_client = True
        self._last_activity = self.factory.clock.seconds()
        if self.factory.idle_timeout > 0:
            self._timer = self.factory.clock.callLater(self.factory.idle_timeout, self._check_idle)
        if self._client_eof:
            self._client_stream_ended()
        else:
            self.transport.resumeProducing()

    def backend_data(self, data: bytes) -> None:
        """The backend sent C{data}."""
        self._last_activity = self.factory.clock.seconds()
        self._write_client(data)

    def readConnectionLost(self) -> None:
        if self._state == _SPLICING:
            self._client_eof = True
            self._client_stream_ended()
        elif self._state == _CONNECTING:
            self._client_eof = True
        elif self._state == _HEADER:
            self._close_client(abort=False)

    def writeConnectionLost(self) -> None:
        """Our half-close reached the client; its stream to us may go on."""

    def _client_stream_ended(self) -> None:
        assert self.backend is not None
        backend_transport = self.backend.transport
        if self._client_feeds_backend:
            self._client_feeds_backend = False
            backend_transport.unregisterProducer()
        _half_close(backend_transport)
        if self._backend_eof:
            self._end_session(abort=False)

    def backend_stream_ended(self) -> None:
        """The backend sent its end of stream; pass it on to the client."""
        if self._state != _SPLICING:
            return
        self._backend_eof = True
        if self._backend_feeds_client:
            self._backend_feeds_client = False
            self.transport.unregisterProducer()
        _half_close(self.transport)
        if self._client_eof:
            self._end_session(abort=False)

    def backend_lost(self, reason: Failure) -> None:
        """The backend connection is gone."""
        if self._state == _SPLICING:
            self._end_session(abort=False)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.live.discard(self)
        state, self._state = self._state, _CLOSED
        self._cancel_timer()
        if state == _CONNECTING and self._session is not None:
            session, self._session = self._session, None
            session.cancel()
        elif state == _SPLICING:
            self._end_session(abort=False)

    def shutdown(self) -> None:
        """
        Nothing to do: a relayed stream has no point where it could stop early, so it goes on
        until either side closes it (or the grace period of a stop ends).
        """

    def _check_idle(self) -> None:
        self._timer = None
        quiet = self.factory.clock.seconds() - self._last_activity
        if quiet < self.factory.idle_timeout:
            self._timer = self.factory.clock.callLater(
                self.factory.idle_timeout - quiet, self._check_idle
            )
            return
        self.factory.log.info(
            "TCP: closing idle connection from {client} after {timeout} s",
            client=self.client_ip,
            timeout=self.factory.idle_timeout,
        )
        self._end_session(abort=True)

    def _end_session(self, abort: bool) -> None:
        """
        Close both connections (flushing what they hold unless C{abort}) and release the lease.
        """
        self._state = _CLOSED
        self._cancel_timer()
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release(Outcome("ok", self._connect_elapsed))
        if self.backend is not None:
            backend_transport = self.backend.transport
            if self._client_feeds_backend:
                self._client_feeds_backend = False
                backend_transport.unregisterProducer()
            # A transport with a producer registered does not close once flushed.
            _close(backend_transport, abort)
        if self._backend_feeds_client:
            self._backend_feeds_client = False
            self.transport.unregisterProducer()
        _close(self.transport, abort)

    def _close_client(self, abort: bool) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        _close(self.transport, abort)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _close(transport: ITransport, abort: bool) -> None:
    if abort and hasattr(transport, "abortConnection"):
        transport.abortConnection()
    else:
        transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class BackendConnection(Protocol):
    """
    The relay's connection to a backend; hands everything to its L{ClientConnection}.
    """

    # A TCP transport: its producer, consumer and half-close methods are used.
    transport: Any

    def __init__(self, dial: _Dial) -> None:
        self._dial = dial
        self.client: ClientConnection | None = None

    def connectionMade(self) -> None:
        self._dial.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.client is not None:
            self.client.backend_data(data)

    def readConnectionLost(self) -> None:
        if self.client is not None:
            self.client.backend_stream_ended()

    def writeConnectionLost(self) -> None:
        """Our half-close reached the backend; its stream to us may go on."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client is not None:
            self.client.backend_lost(reason)


class _Dial(ClientFactory):
    noisy = False

    """
    One connection attempt to a backend, as a L{Deferred} that fires with the
    L{BackendConnection} or fails with the reason; cancelling it stops the attempt.
    """

    noisy = False

    def __init__(self) -> None:
        self.connector: IConnector | None = None
        self.deferred: Deferred[BackendConnection] = Deferred(self._cancel)
        self._cancelled = False

    def _cancel(self, deferred: Deferred[BackendConnection]) -> None:
        # Stopping a connector reports a failed connection, which is not a backend failure.
        self._cancelled = True
        if self.connector is not None:
            with contextlib.suppress(NotConnectingError):
                self.connector.stopConnecting()

    def buildProtocol(self, addr: IAddress | None) -> BackendConnection:
        return BackendConnection(self)

    def connected(self, connection: BackendConnection) -> None:
        if self.deferred.called:
            connection.transport.loseConnection()
            return
        self.deferred.callback(connection)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self._cancelled and not self.deferred.called:
            self.deferred.errback(reason)
