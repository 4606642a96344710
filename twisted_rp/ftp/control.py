"""
The FTP listener: one L{FTPSession} per client control connection.

A session greets the client with the proxy's own banner and answers the few commands that
need no server (C{FEAT}, C{SYST}, C{NOOP}, C{QUIT}) itself until C{USER}; then it leases a
backend from the pool (L{twisted_rp.ftp.login}) (with a proxy-side login, only once it has
checked C{USER} and C{PASS} itself, L{twisted_rp.ftp.proxylogin}), and relays every command
and reply from then on, one command at a time, rewriting only the data-connection commands
(C{PASV}, C{EPSV}, C{PORT}, C{EPRT}), whose data connections the proxy opens and splices
itself (L{twisted_rp.ftp.data}).

The client's control connection is only ever written through C{self.transport}, so that a
later C{AUTH TLS} can swap it for a TLS transport in place (L{twisted_rp.ftp.tls}).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.addresses import address_ip
from twisted_rp.ftp.data import DataChannel, port_range
from twisted_rp.ftp.proxylogin import RELOGIN_COMMANDS, ProxyLogin, ProxyLoginMixin
from twisted_rp.ftp.replies import (
    MAX_COMMAND_LINE,
    Command,
    FTPSyntaxError,
    Reply,
    parse_command,
)
from twisted_rp.ftp.tls import BACKEND_TLS_MODES, TLS_COMMANDS, FrontTLSMixin
from twisted_rp.ftp.transfer import TransferMixin
from twisted_rp.interfaces import IBackendPool, IFTPObserver
from twisted_rp.pool.backend import Backend
from twisted_rp.tls import ServerTLS

BACKEND_PASSIVE_MODES = ("epsv", "pasv")

#: Queued client commands beyond which the proxy stops reading the control connection.
_QUEUE_HIGH = 32


class FTPProxyFactory(ServerFactory):
    """
    Builds an L{FTPSession} for every client of an FTP listener.

    @ivar reactor: listens, connects and keeps time.
    @ivar pool: where backends come from; the C{ftp} port of a backend is used.
    @ivar banner: the text of the proxy's C{220} greeting (several lines allowed).
    @ivar passive_ports: the ports passive data listeners may use; L{None} for any free one.
    @ivar masquerade_address: the IPv4 address announced in C{227} replies (behind NAT);
        L{None} for the address the client connected to.
    @ivar idle_timeout: seconds a control connection may stay silent outside a transfer.
    @ivar data_timeout: seconds a passive port waits for the client, and a data connection
        may go without a byte.
    @ivar transfer_timeout: seconds a whole transfer may take, however steadily its data
        flows; 0 for no limit.  Past it both data connections are closed, the backend is sent
        C{ABOR}, and the client is told C{426 Transfer timed out}.
    @ivar connect_timeout: seconds for a backend (control or data) or an active client to
        accept a connection, and for a backend's greeting.
    @ivar max_sessions_per_ip: the most sessions one client address may hold; 0 for no limit.
    @ivar backend_passive: C{"epsv"} (falling back to C{PASV} for a backend that lacks it) or
        C{"pasv"}: how the proxy asks backends for data connections.
    @ivar show_backend_features: list the backend's C{FEAT} (less what the proxy cannot
        relay) rather than the proxy's minimal set.
    @ivar tls: FTPS toward clients: C{AUTH TLS} (and data connections after C{PROT P}) use
        it; L{None} for plain FTP only (C{AUTH} is answered C{502}).
    @ivar implicit: implicit FTPS (port 990 style): TLS from the first byte, and data
        connections protected unless the client says C{PROT C}.  Needs C{tls}.
    @ivar require_tls: refuse C{USER} and C{PASS} (C{534}) until the client has said
        C{AUTH TLS}.  Needs C{tls}.
    @ivar backend_tls: C{"none"}, C{"explicit"} (C{AUTH TLS} after the greeting) or
        C{"implicit"} (TLS from the first byte): FTPS toward backends, always with C{PROT P}.
    @ivar backend_tls_creator: the client TLS for backends (L{twisted_rp.tls.client_tls})
        when a backend has none of its own (L{Backend.tls}).
    @ivar login: the proxy checks C{USER} and C{PASS} itself and logs in to backends with
        mapped accounts; L{None} to relay the client's login to the backend as it is.
    @ivar sessions: open sessions by client IP.
    @ivar observers: told of sessions and data transfers; add to the list at any time.
    @ivar live: the open control connections, for a graceful stop.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        reactor: IReactorTCP,
        pool: IBackendPool,
        *,
        banner: str = "twisted_rp FTP proxy ready",
        passive_ports: Sequence[int] | None = None,
        masquerade_address: str | None = None,
        idle_timeout: float = 300.0,
        data_timeout: float = 60.0,
        transfer_timeout: float = 0.0,
        connect_timeout: float = 5.0,
        max_sessions_per_ip: int = 0,
        backend_passive: str = "epsv",
        show_backend_features: bool = False,
        tls: ServerTLS | None = None,
        implicit: bool = False,
        require_tls: bool = False,
        backend_tls: str = "none",
        backend_tls_creator: IOpenSSLClientConnectionCreator | None = None,
        login: ProxyLogin | None = None,
    ) -> None:
        """
        @raise ValueError: for a timeout, limit, port or mode out of range, or a TLS policy
            without C{tls}.
        """
        if backend_passive not in BACKEND_PASSIVE_MODES:
            raise ValueError(f"backend_passive must be one of {BACKEND_PASSIVE_MODES}")
        if backend_tls not in BACKEND_TLS_MODES:
            raise ValueError(f"backend_tls must be one of {BACKEND_TLS_MODES}")
        if (implicit or require_tls) and tls is None:
            raise ValueError("implicit and require_tls need tls (the server certificate)")
        if idle_timeout < 0 or transfer_timeout < 0 or data_timeout <= 0 or connect_timeout <= 0:
            raise ValueError(
                "timeouts must be positive (idle_timeout and transfer_timeout 0 for none)"
            )
        if max_sessions_per_ip < 0:
            raise ValueError("max_sessions_per_ip must not be negative")
        if passive_ports is not None:
            passive_ports = tuple(passive_ports)
            if not passive_ports or not all(0 < p < 65536 for p in passive_ports):
                raise ValueError("passive_ports must be a non-empty set of ports 1-65535")
        if masquerade_address is not None:
            ipaddress.IPv4Address(masquerade_address)
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.pool = pool
        self.banner = banner
        self.passive_ports = passive_ports
        self.masquerade_address = masquerade_address
        self.idle_timeout = idle_timeout
        self.data_timeout = data_timeout
        self.transfer_timeout = transfer_timeout
        self.connect_timeout = connect_timeout
        self.max_sessions_per_ip = max_sessions_per_ip
        self.backend_passive = backend_passive
        self.show_backend_features = show_backend_features
        self.tls = tls
        self.implicit = implicit
        self.require_tls = require_tls
        self.backend_tls = backend_tls
        self.backend_tls_creator = backend_tls_creator
        self.login = login
        self.sessions: dict[str, int] = {}
        self.observers: list[IFTPObserver] = []
        self.live: set[FTPSession] = set()
        self._next_passive = 0

    def buildProtocol(self, addr: IAddress | None) -> FTPSession:  # type: ignore[override]
        return FTPSession(self)

    def backend_creator(self, backend: Backend) -> IOpenSSLClientConnectionCreator | None:
        """The client TLS for C{backend}: its own, else L{backend_tls_creator}."""
        own = backend.tls
        if own is not None:
            return own  # type: ignore[return-value]
        return self.backend_tls_creator

    def passive_port_candidates(self) -> Iterator[int]:
        """The passive ports to try for the next listener, starting after the last one."""
        start = self._next_passive
        self._next_passive += 1
        return port_range(self.passive_ports, start)

    def session_opened(self, client_ip: str) -> bool:
        """Count a session from C{client_ip}; C{False} when that is over the limit."""
        count = self.sessions.get(client_ip, 0)
        if self.max_sessions_per_ip and count >= self.max_sessions_per_ip:
            return False
        self.sessions[client_ip] = count + 1
        for observer in self.observers:
            observer.session_opened()
        return True

    def session_closed(self, client_ip: str) -> None:
        """Uncount a session L{session_opened} counted."""
        count = self.sessions.get(client_ip, 0) - 1
        if count > 0:
            self.sessions[client_ip] = count
        else:
            self.sessions.pop(client_ip, None)
        for observer in self.observers:
            observer.session_closed()


class FTPSession(FrontTLSMixin, TransferMixin, ProxyLoginMixin, Protocol):
    """
    One client's control connection, and its session with a backend.

    @ivar client_ip: the client's IP address (IPv4-mapped addresses as IPv4).
    @ivar local_ip: the proxy's address the client connected to.
    """

    transport: Any
    log = Logger()

    def __init__(self, factory: FTPProxyFactory) -> None:
        self.factory = factory
        self.client_ip = ""
        self.local_ip = ""
        self._counted = False
        self._closed = False
        self._buffer = b""
        self._discarding = False
        self._queue: deque[Command | Reply] = deque()
        self._busy = False
        self._paused = False
        self._quitting = False
        self._stopping = False
        self._idle_timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._init_login()
        self._init_transfer()
        self._init_tls()

    # Connection

    def connectionMade(self) -> None:
        factory = self.factory
        factory.live.add(self)
        ip = address_ip(self.transport.getPeer())
        self.client_ip = "" if ip is None else ip.compressed
        local = address_ip(self.transport.getHost())
        self.local_ip = "" if local is None else local.compressed
        if not factory.session_opened(self.client_ip):
            factory.log.warn(
                "FTP: refusing {client}: {limit} sessions already",
                client=self.client_ip,
                limit=factory.max_sessions_per_ip,
            )
            self.reply_and_close(Reply.of(421, "Too many connections from your address."))
            return
        self._counted = True
        self._set_oob_inline()
        if factory.implicit:
            self.start_implicit_tls()
        self.send_reply(Reply.of(220, *(factory.banner.splitlines() or [""])))
        self._last_activity = factory.clock.seconds()
        if factory.idle_timeout > 0:
            self._idle_timer = factory.clock.callLater(factory.idle_timeout, self._check_idle)

    def _set_oob_inline(self) -> None:
        # Clients send ABOR as urgent data; without this its last byte would vanish.
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            with contextlib.suppress(OSError):
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.live.discard(self)
        self._closed = True
        self._cancel_idle()
        if self._counted:
            self._counted = False
            self.factory.session_closed(self.client_ip)
        self.close_data()
        self.stop_login()
        self.end_backend("ok")

    def send_reply(self, reply: Reply) -> None:
        """Write C{reply} to the client."""
        if not self._closed:
            self.transport.write(reply.encode())

    def reply_and_close(self, reply: Reply) -> None:
        """Write C{reply} to the client and close the session once it is flushed."""
        self.send_reply(reply)
        self.close_session()

    def close_session(self) -> None:
        """Close the client's connection (after flushing) and everything behind it."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self.close_data()
        self.end_backend("ok")
        self.transport.loseConnection()

    # Reading commands

    def dataReceived(self, data: bytes) -> None:
        if self.tls_pending:
            # Sent after AUTH TLS, before the handshake: dropped, never run as if protected.
            return
        self._buffer += data
        while not self._closed and not self.tls_pending:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_COMMAND_LINE:
                    self._buffer = b""
                    self._discarding = True
                break
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            self._line_received(line, len(line) + 1 <= MAX_COMMAND_LINE)
        self._next()

    def _line_received(self, line: bytes, fits: bool) -> None:
        self._last_activity = self.factory.clock.seconds()
        if self._discarding or not fits:
            self._discarding = False
            self._queue.append(Reply.of(500, "Command line too long."))
            return
        if not line.endswith(b"\r"):
            self._queue.append(Reply.of(500, "Command lines end with CRLF."))
            return
        try:
            command = parse_command(line[:-1])
        except FTPSyntaxError:
            self._queue.append(Reply.of(500, "Syntax error, command unrecognized."))
            return
        if command.verb == "ABOR" and self.transfer_in_flight():
            # Not queued behind the transfer it is meant to stop.
            self.abort_transfer(command)
            return
        if self.accepts_auth(command):
            self.tls_pending = True
            self._buffer = b""
        self._queue.append(command)
        if len(self._queue) >= _QUEUE_HIGH and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _next(self) -> None:
        """Run queued commands until one has to wait for a backend."""
        while not self._busy and self._queue and not self._closed:
            item = self._queue.popleft()
            if isinstance(item, Reply):
                self.send_reply(item)
                continue
            self._dispatch(item)
        if self._paused and len(self._queue) < _QUEUE_HIGH // 4 and not self._closed:
            self._paused = False
            self.transport.resumeProducing()

    def _dispatch(self, command: Command) -> None:
        verb = command.verb
        refusal = self.tls_refuses(command)
        if refusal is not None:
            self.send_reply(refusal)
        elif verb in TLS_COMMANDS:
            self.tls_command(command)
        elif verb in ("USER", "PASS") and not self.logged_in:
            proxy_side = self.factory.login is not None
            self.run(
                self.proxy_login_command(command) if proxy_side else self.login_command(command)
            )
        elif verb in RELOGIN_COMMANDS and self.logged_in and self.factory.login is not None:
            # The backend account is the proxy's, not the client's to change.
            self.send_reply(self.relogin_refusal(command))
        elif self.backend is None:
            self._answer_locally(command)
        elif verb in ("PASV", "EPSV", "PORT", "EPRT", "LPRT", "LPSV"):
            self.run(self.prepare_data(command))
        elif verb in self.TRANSFER_VERBS:
            self.start_transfer(command)
        elif verb == "FEAT":
            self.run(self.features())
        elif verb == "QUIT":
            self._quitting = True
            self.relay(command)
        else:
            self.relay(command)

    def _answer_locally(self, command: Command) -> None:
        verb = command.verb
        if verb == "QUIT":
            self.reply_and_close(Reply.of(221, "Goodbye."))
        elif verb == "FEAT":
            self.send_reply(self.proxy_features())
        elif verb == "SYST":
            self.send_reply(Reply.of(215, "UNIX Type: L8"))
        elif verb == "NOOP":
            self.send_reply(Reply.of(200, "NOOP ok."))
        elif verb == "OPTS" and command.argument.upper().split() == ["UTF8", "ON"]:
            self.send_reply(Reply.of(200, "Always in UTF8 mode."))
        else:
            self.send_reply(Reply.of(530, "Please login with USER and PASS."))

    # Running commands

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run C{work} as the command in flight; the next one waits for it."""
        self._busy = True
        done = Deferred.fromCoroutine(work)
        done.addErrback(self._work_failed)
        done.addBoth(lambda _: self.command_done())

    def _work_failed(self, failure: Failure) -> None:
        self.log.failure("FTP: session of {client} failed", failure, client=self.client_ip)
        self.reply_and_close(Reply.of(421, "Service not available, closing control connection."))

    def command_done(self) -> None:
        """The command in flight is answered: run the next one."""
        self._busy = False
        if self._quitting and not self._closed:
            self.close_session()
            return
        if self._stopping:
            self.shutdown()
            return
        self._next()

    def shutdown(self) -> None:
        """
        The proxy is stopping: end the session with C{421} (which RFC 959 allows in answer to
        any command) once the command or transfer in flight is done, or now if there is none.
        """
        self._stopping = True
        if not self._busy and not self._closed:
            self.reply_and_close(
                Reply.of(421, "Service not available, closing control connection.")
            )

    def relay(self, command: Command) -> None:
        """Send C{command} to the backend and its replies to the client."""
        backend = self.backend
        assert backend is not None
        self._busy = True

        def handle(reply: Reply) -> None:
            self.send_reply(reply)
            if not reply.preliminary:
                self.command_done()

        backend.send(command, handle, self.backend_connection_lost)

    def backend_unsolicited(self, reply: Reply) -> None:
        """A reply from the backend that no command waits for."""
        self.send_reply(reply)
        if reply.code == 421:
            self.close_session()

    def backend_connection_lost(self, reason: Failure) -> None:
        """The backend's control connection is gone mid-session."""
        if self._closed or self._quitting:
            self.close_session()
            return
        self.log.info(
            "FTP: backend closed the session of {client}: {reason}",
            client=self.client_ip,
            reason=reason.value,
        )
        self.reply_and_close(
            Reply.of(421, "Service not available, remote server has closed connection.")
        )

    # Idle timeout

    def _check_idle(self) -> None:
        self._idle_timer = None
        timeout = self.factory.idle_timeout
        quiet = self.factory.clock.seconds() - self._last_activity
        if self.transfer_in_flight() or quiet < timeout:
            delay = timeout if self.transfer_in_flight() else timeout - quiet
            self._idle_timer = self.factory.clock.callLater(delay, self._check_idle)
            return
        self.log.info("FTP: closing idle session of {client}", client=self.client_ip)
        self.reply_and_close(
            Reply.of(421, f"Idle timeout ({timeout:g} seconds): closing control connection.")
        )

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def new_channel(self) -> DataChannel:
        """A data channel with the factory's clock and data timeout."""
        channel = DataChannel(self.factory.clock, self.factory.data_timeout)
        observers = self.factory.observers
        if observers:

            def finished() -> None:
                for observer in observers:
                    observer.data_done(channel.bytes_to_client, channel.bytes_to_backend)

            channel.when_finished(finished)
        return channel
