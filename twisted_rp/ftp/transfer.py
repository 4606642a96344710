"""
Data-connection commands of an FTP session: the proxy answers C{PASV}/C{EPSV}/C{PORT}/C{EPRT}
itself, asks the backend for a passive port of its own, and splices the two data connections
of each transfer (L{twisted_rp.ftp.data.DataChannel}).

Security rules kept here: a C{PORT}/C{EPRT} must name the client's own control address and an
unprivileged port (no FTP bounce); the address in a backend's C{227} is never followed (the
backend's control address is); a passive port accepts only the client's address.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from attrs import define
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.ftp.data import BACKEND, CLIENT, DataChannel, LegTLS
from twisted_rp.ftp.replies import (
    Command,
    FTPSyntaxError,
    Reply,
    format_227,
    format_229,
    parse_227,
    parse_229,
    parse_eprt_argument,
    parse_port_argument,
)
from twisted_rp.ftp.upstream import BackendControl, BackendGone
from twisted_rp.pool.backend import Lease

if TYPE_CHECKING:
    from twisted_rp.ftp.control import FTPProxyFactory

log = Logger()

#: Commands that move data over the data connection.
TRANSFER_VERBS = frozenset({"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"})


@define(eq=False)
class Transfer:
    """
    A transfer command in flight.

    @ivar active_target: for C{PORT}/C{EPRT}, where the proxy connects to the client.
    @ivar started: the backend sent its preliminary (C{1xx}) reply.
    @ivar held: the backend's final reply, kept back until the data is all relayed.
    @ivar aborted: the client sent C{ABOR}.
    @ivar timed_out: the transfer outlasted the transfer timeout; the client has had its
        C{426} and the backend's replies about it are not relayed.
    @ivar timer: the transfer timeout, while it runs.
    """

    command: Command
    channel: DataChannel
    active_target: tuple[str, int] | None
    started: bool = False
    held: Reply | None = None
    aborted: bool = False
    timed_out: bool = False
    timer: IDelayedCall | None = None

    def stop_timer(self) -> None:
        """Cancel the transfer timeout."""
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class TransferMixin:
    """The data-connection side of an L{twisted_rp.ftp.control.FTPSession}."""

    TRANSFER_VERBS = TRANSFER_VERBS

    factory: FTPProxyFactory
    client_ip: str
    local_ip: str
    backend: BackendControl | None
    lease: Lease | None
    _closed: bool
    _busy: bool
    _last_activity: float

    def send_reply(self, reply: Reply) -> None:
        raise NotImplementedError

    def command_done(self) -> None:
        raise NotImplementedError

    def reply_and_close(self, reply: Reply) -> None:
        raise NotImplementedError

    def new_channel(self) -> DataChannel:
        raise NotImplementedError

    def client_leg_tls(self) -> LegTLS | None:
        raise NotImplementedError

    def _init_transfer(self) -> None:
        self._channel: DataChannel | None = None
        self._active_target: tuple[str, int] | None = None
        self._transfer: Transfer | None = None
        self._epsv_all = False
        self._backend_mode = self.factory.backend_passive
        self._settling: IDelayedCall | None = None

    def transfer_in_flight(self) -> bool:
        """Whether a transfer command waits for its final reply."""
        return self._transfer is not None

    def close_data(self) -> None:
        """Close the prepared data channel and the transfer's, if any."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        if self._transfer is not None:
            self._transfer.stop_timer()
            self._transfer.channel.close()
        self._stop_settling()

    # PASV, EPSV, PORT, EPRT

    def _check_data_command(self, command: Command) -> Reply | tuple[str, int] | None:
        """
        Validate a data-connection command: an error reply, the client address to connect to
        (C{PORT}/C{EPRT}), or L{None} for a passive command that may go ahead.
        """
        verb, argument = command.verb, command.argument.strip()
        if verb in ("LPRT", "LPSV"):
            return Reply.of(502, f"{verb} not implemented; use EPRT or EPSV.")
        if self._epsv_all and verb != "EPSV":
            return Reply.of(503, f"{verb} not allowed after EPSV ALL.")
        local_version = ipaddress.ip_address(self.local_ip).version
        if verb == "PASV":
            if self.factory.masquerade_address is None and local_version != 4:
                return Reply.of(500, "PASV is IPv4 only; use EPSV.")
            return None
        if verb == "EPSV":
            if argument and argument not in ("1", "2"):
                return Reply.of(501, "Syntax error in parameters or arguments.")
            if argument and int(argument) != (1 if local_version == 4 else 2):
                family = "1" if local_version == 4 else "2"
                return Reply.of(522, f"Network protocol not supported, use ({family})")
            return None
        try:
            if verb == "PORT":
                host, port = parse_port_argument(argument)
            else:
                host, port = parse_eprt_argument(argument)
        except FTPSyntaxError:
            return Reply.of(501, "Syntax error in parameters or arguments.")
        if ipaddress.ip_address(host) != ipaddress.ip_address(self.client_ip):
            log.warn(
                "FTP: refused {verb} to {host} from {client} (FTP bounce)",
                verb=verb,
                host=host,
                client=self.client_ip,
            )
            return Reply.of(500, f"Illegal {verb} command: only your own address is allowed.")
        if port < 1024:
            return Reply.of(500, f"Illegal {verb} command: privileged port.")
        return host, port

    async def prepare_data(self, command: Command) -> None:
        """Answer a data-connection command after preparing the backend's leg."""
        if command.verb == "EPSV" and command.argument.strip().upper() == "ALL":
            self._epsv_all = True
            self.send_reply(Reply.of(200, "EPSV ALL ok."))
            return
        checked = self._check_data_command(command)
        if isinstance(checked, Reply):
            self.send_reply(checked)
            return
        active_target = checked
        self.close_data()
        channel = self.new_channel()
        factory = self.factory
        assert self.lease is not None
        backend_host = self.lease.backend.host
        try:
            port = await self._backend_data_port()
            await channel.dial(
                factory.reactor,
                BACKEND,
                backend_host,
                port,
                factory.connect_timeout,
                tls=self._backend_leg_tls(),
            )
        except BackendGone:
            channel.close()
            return
        except Exception as error:
            channel.close()
            log.info("FTP: no data connection to the backend: {error}", error=error)
            self.send_reply(Reply.of(425, "Can't open data connection."))
            return
        if self._closed:
            channel.close()
            return
        if active_target is None:
            try:
                number = channel.listen(
                    factory.reactor,
                    self.local_ip,
                    factory.passive_port_candidates(),
                    self.client_ip,
                    factory.data_timeout,
                    tls=self.client_leg_tls(),
                )
            except CannotListenError as error:
                channel.close()
                log.warn("FTP: no passive port free: {error}", error=error)
                self.send_reply(Reply.of(425, "Can't open data connection: no port free."))
                return
            if command.verb == "PASV":
                announced = factory.masquerade_address or self.local_ip
                self.send_reply(format_227(announced, number))
            else:
                self.send_reply(format_229(number))
        else:
            self.send_reply(Reply.of(200, f"{command.verb} command successful."))
        self._channel, self._active_target = channel, active_target

    def _backend_leg_tls(self) -> LegTLS | None:
        backend = self.backend
        return None if backend is None else backend.data_tls()

    async def _backend_data_port(self) -> int:
        """
        Ask the backend for a passive port: C{EPSV}, or C{PASV} for backends configured so or
        found to lack C{EPSV}.

        @raise FTPSyntaxError: the backend refused or answered nonsense.
        """
        backend = self.backend
        assert backend is not None
        if self._backend_mode == "epsv":
            reply = await backend.ask(Command("EPSV", ""))
            if reply.code == 229:
                return parse_229(reply)
            if not 500 <= reply.code < 600:
                raise FTPSyntaxError(f"backend EPSV: {reply.text[:80]!r}")
            self._backend_mode = "pasv"
        reply = await backend.ask(Command("PASV", ""))
        # The address is the backend's to claim, not ours to follow: only its port is used.
        _, port = parse_227(reply)
        return port

    # Transfers

    def start_transfer(self, command: Command) -> None:
        """Relay a transfer command over the prepared data channel."""
        channel, self._channel = self._channel, None
        target, self._active_target = self._active_target, None
        backend = self.backend
        assert backend is not None
        if channel is None or channel.finished:
            self.send_reply(Reply.of(425, "Use PORT, PASV, EPRT or EPSV first."))
            return
        transfer = Transfer(command, channel, target)
        self._transfer = transfer
        self._busy = True
        timeout = self.factory.transfer_timeout
        if timeout > 0:
            transfer.timer = self.factory.clock.callLater(
                timeout, self._transfer_timed_out, transfer
            )
        channel.when_finished(lambda: self._channel_finished(transfer))
        backend.send(
            command,
            lambda reply: self._transfer_reply(transfer, reply),
            lambda reason: channel.close(),
        )

    def _transfer_reply(self, transfer: Transfer, reply: Reply) -> None:
        if transfer.timed_out:
            # The client was told 426 already; a late 150 must not open its data connection.
            return
        if reply.preliminary:
            if not transfer.started:
                transfer.started = True
                self._connect_client(transfer)
            self.send_reply(reply)
            return
        if transfer.started and not transfer.channel.finished and not transfer.aborted:
            # The client hears "226" only once it has every byte.
            transfer.held = reply
            return
        self._finish_transfer(transfer, reply)

    def _connect_client(self, transfer: Transfer) -> None:
        if transfer.active_target is None:
            return
        host, port = transfer.active_target
        channel = transfer.channel
        dialing = channel.dial(
            self.factory.reactor,
            CLIENT,
            host,
            port,
            self.factory.connect_timeout,
            bind=self.local_ip,
            tls=self.client_leg_tls(),
        )

        def failed(reason: Failure) -> None:
            log.info(
                "FTP: cannot connect to {client} for data: {reason}",
                client=self.client_ip,
                reason=reason.value,
            )
            channel.close()

        dialing.addErrback(failed)

    def _channel_finished(self, transfer: Transfer) -> None:
        held, transfer.held = transfer.held, None
        if held is not None:
            self._finish_transfer(transfer, held)

    def _finish_transfer(self, transfer: Transfer, reply: Reply) -> None:
        transfer.stop_timer()
        if not transfer.channel.finished:
            transfer.channel.close()
        if self._transfer is transfer:
            self._transfer = None
        self._last_activity = self.factory.clock.seconds()
        self.send_reply(reply)
        self.command_done()

    def abort_transfer(self, command: Command) -> None:
        """
        C{ABOR} while a transfer runs: close its data connections at once and relay C{ABOR};
        the transfer's final reply (C{426} usually) and C{ABOR}'s follow in order.
        """
        transfer = self._transfer
        backend = self.backend
        assert transfer is not None and backend is not None
        transfer.aborted = True
        backend.send(command, self._abort_reply)
        transfer.channel.close()
        held, transfer.held = transfer.held, None
        if held is not None:
            self._finish_transfer(transfer, held)

    def _abort_reply(self, reply: Reply) -> None:
        self.send_reply(reply)

    # Transfer timeout

    def _transfer_timed_out(self, transfer: Transfer) -> None:
        """
        The transfer outlasted C{transfer_timeout}: close both data connections, tell the
        client C{426}, and stop the backend with C{ABOR}, whose replies (and the transfer's
        final one) the client does not hear: it has its answer.  The next command waits until
        the backend has given them, so that replies stay paired with their commands.
        """
        transfer.timer = None
        if self._transfer is not transfer or self._closed:
            return
        self._transfer = None
        transfer.timed_out = True
        held, transfer.held = transfer.held, None
        timeout = self.factory.transfer_timeout
        log.info(
            "FTP: {verb} of {client} took longer than {timeout} s, stopping it",
            verb=transfer.command.verb,
            client=self.client_ip,
            timeout=timeout,
        )
        transfer.channel.close()
        self._last_activity = self.factory.clock.seconds()
        self.send_reply(Reply.of(426, f"Transfer timed out ({timeout:g} seconds)."))
        backend = self.backend
        if held is not None or backend is None:
            # The backend has finished already (only the client was still reading).
            self.command_done()
            return
        backend.send(Command("ABOR", ""), self._settled)
        self._settling = self.factory.clock.callLater(
            self.factory.data_timeout, self._backend_unsettled
        )

    def _settled(self, reply: Reply) -> None:
        """The backend answered the C{ABOR} that ended a timed-out transfer."""
        if reply.preliminary or self._settling is None:
            return
        self._stop_settling()
        self.command_done()

    def _backend_unsettled(self) -> None:
        self._settling = None
        log.warn(
            "FTP: backend did not answer ABOR for {client}, closing the session",
            client=self.client_ip,
        )
        self.reply_and_close(
            Reply.of(421, "Service not available, remote server does not respond.")
        )

    def _stop_settling(self) -> None:
        settling, self._settling = self._settling, None
        if settling is not None and settling.active():
            settling.cancel()
