"""
Choosing a backend for an FTP session: C{USER} (and C{PASS}) are replayed on the next backend
of the pool when one is down, refuses us (C{421}) or drops the connection, so that a client
sees one failure at most: the C{421} it gets when every attempt failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.ftp.replies import Command, Reply, feat_reply, feature_lines
from twisted_rp.ftp.tls import TLS_FEATURES
from twisted_rp.ftp.upstream import BackendControl, BackendGone, dial_backend
from twisted_rp.pool.backend import Lease, NoBackendAvailable, Outcome, PickContext, StickyResponse

if TYPE_CHECKING:
    from twisted_rp.ftp.control import FTPProxyFactory

log = Logger()

#: What the proxy lists for C{FEAT} before login (and adds to a backend's list after).
PROXY_FEATURES = ("EPRT", "EPSV", "MDTM", "PASV", "REST STREAM", "SIZE", "UTF8")
#: Backend features relayed after login: ones that reveal nothing and that the proxy passes on.
RELAYED_FEATURES = ("MDTM", "MLST", "REST", "SIZE", "TVFS", "UTF8", "LANG")
#: Never listed from a backend: the proxy answers these itself (TLS ones only when it offers
#: FTPS, see L{TLS_FEATURES}).
_OWN_FEATURES = ("AUTH", "PBSZ", "PROT", "CCC", "EPRT", "EPSV", "PASV", "LPSV", "LPRT")


class _Failed(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class LoginMixin:
    """
    The backend side of an L{twisted_rp.ftp.control.FTPSession}.

    @ivar backend: the control connection to the session's backend, once chosen.
    @ivar lease: the lease on that backend.
    @ivar logged_in: whether the backend accepted the login (a C{230}).
    @ivar user: the user name of the last C{USER}; with a proxy-side login, the name the
        checker accepted (L{twisted_rp.ftp.proxylogin}).
    """

    factory: FTPProxyFactory
    client_ip: str
    _closed: bool

    def send_reply(self, reply: Reply) -> None:
        raise NotImplementedError

    def reply_and_close(self, reply: Reply) -> None:
        raise NotImplementedError

    def backend_unsolicited(self, reply: Reply) -> None:
        raise NotImplementedError

    def backend_connection_lost(self, reason: Failure) -> None:
        raise NotImplementedError

    def _init_login(self) -> None:
        self.backend: BackendControl | None = None
        self.lease: Lease | None = None
        self.logged_in = False
        self.user: str | None = None
        self._login_commands: list[Command] = []
        self._context: PickContext | None = None
        self._connect_elapsed = 0.0

    async def login_command(self, command: Command) -> None:
        """Run C{USER} or C{PASS} before login, failing over to another backend as needed."""
        if command.verb == "USER":
            self.user = command.argument
            self._login_commands = [command]
        elif not self._login_commands:
            self.send_reply(Reply.of(503, "Login with USER first."))
            return
        else:
            self._login_commands = [self._login_commands[0], command]
        if self.backend is None:
            reply = await self._open_session(frozenset())
        else:
            reply = await self._ask_or_fail_over(command)
        if reply is None:
            return
        if reply.code == 230:
            self._logged_in()
        self.send_reply(reply)

    def _logged_in(self) -> None:
        self.logged_in = True
        # The password is not kept a moment longer than needed for failing over.
        self._login_commands = []
        lease, context = self.lease, self._context
        if lease is not None and context is not None:
            self.factory.pool.sticky_response_done(context, lease.backend, StickyResponse())

    async def _ask_or_fail_over(self, command: Command) -> Reply | None:
        backend, lease = self.backend, self.lease
        assert backend is not None and lease is not None
        try:
            reply: Reply | None = await backend.ask(command)
        except BackendGone:
            reply = None
        if reply is not None and reply.code != 421:
            return reply
        failed = lease.backend.name
        log.info(
            "FTP: backend {backend} failed the login of {client}, trying another",
            backend=failed,
            client=self.client_ip,
        )
        self.end_backend("bad_response")
        return await self._open_session(frozenset([failed]))

    async def _open_session(self, avoid: frozenset[str]) -> Reply | None:
        """
        Lease backends until one accepts the login commands so far; answer C{421} and close
        when none does.

        @return: the reply to the last login command, or L{None} when the session is over.
        """
        factory = self.factory
        pool = factory.pool
        clock = factory.clock
        failed = set(avoid)
        attempts = 1 + max(0, int(getattr(pool, "retries", 2)))
        for attempt in range(1, attempts + 1):
            context = PickContext("ftp", self.client_ip, user=self.user, avoid=frozenset(failed))
            try:
                picked = pool.pick(context)
                lease = await picked if isinstance(picked, Deferred) else picked
            except NoBackendAvailable as error:
                log.warn(
                    "FTP: no backend for {client}: {reason}", client=self.client_ip, reason=error
                )
                break
            started = clock.seconds()
            try:
                control, reply = await self._try_backend(lease)
            except _Failed as failure:
                lease.release(Outcome(failure.kind, clock.seconds() - started))
                failed.add(lease.backend.name)
                log.info(
                    "FTP: backend {backend} unusable for {client} (attempt {attempt} of "
                    "{attempts}): {reason}",
                    backend=lease.backend.name,
                    client=self.client_ip,
                    attempt=attempt,
                    attempts=attempts,
                    reason=failure,
                )
                continue
            if self._closed:
                control.close()
                lease.release(Outcome("aborted", clock.seconds() - started))
                return None
            self.backend, self.lease, self._context = control, lease, context
            self._connect_elapsed = clock.seconds() - started
            control.on_unsolicited = self.backend_unsolicited
            control.on_lost = self._backend_lost
            return reply
        self.reply_and_close(Reply.of(421, "Service not available, closing control connection."))
        return None

    async def _try_backend(self, lease: Lease) -> tuple[BackendControl, Reply]:
        factory = self.factory
        backend = lease.backend
        mode = factory.backend_tls
        creator = factory.backend_creator(backend)
        if mode != "none" and creator is None:
            raise _Failed("connect_failed", f"backend_tls {mode!r} but no client TLS configured")
        try:
            control = await dial_backend(
                factory.reactor,
                backend.host,
                backend.port_for("ftp"),
                factory.connect_timeout,
                tls=creator if mode == "implicit" else None,
            )
        except Exception as error:
            raise _Failed("connect_failed", f"connect: {error}") from error
        try:
            greeting = await control.greeting.addTimeout(factory.connect_timeout, factory.clock)
            if greeting.code != 220:
                raise _Failed("bad_response", f"greeting {greeting.text[:80]!r}")
            if mode != "none":
                assert creator is not None
                securing = Deferred.fromCoroutine(_secure_backend(control, creator, mode))
                await securing.addTimeout(factory.connect_timeout, factory.clock)
            reply = greeting
            for command in self._login_commands:
                reply = await control.ask(command)
                if reply.code == 421:
                    raise _Failed("bad_response", f"{command.verb}: {reply.text[:80]!r}")
                if not 300 <= reply.code < 400:
                    break
        except DeferredTimeout as error:
            control.transport.abortConnection()
            raise _Failed("timeout", "no greeting (or TLS set-up) in time") from error
        except BackendGone as error:
            raise _Failed("bad_response", str(error)) from error
        except _Failed:
            control.transport.abortConnection()
            raise
        return control, reply

    def reset_login(self) -> None:
        """Forget the login in progress (C{USER} sent, no C{230} yet) and its backend."""
        self._login_commands = []
        self.user = None
        self.end_backend("ok")

    def _backend_lost(self, reason: Failure) -> None:
        if self.logged_in:
            self.backend_connection_lost(reason)
            return
        # Before login the next USER or PASS fails over; a command waiting answers itself.
        self.end_backend("bad_response")

    def end_backend(self, kind: str) -> None:
        """Close the backend connection and release its lease, if any."""
        control, self.backend = self.backend, None
        lease, self.lease = self.lease, None
        if control is not None:
            control.on_lost = lambda reason: None
            control.close()
        if lease is not None:
            lease.release(Outcome(kind, self._connect_elapsed))

    # FEAT

    def proxy_features(self) -> Reply:
        """The C{FEAT} reply the proxy gives before a backend is chosen."""
        return feat_reply(self._tls_features() + list(PROXY_FEATURES))

    def _tls_features(self) -> list[str]:
        return list(TLS_FEATURES) if self.factory.tls is not None else []

    async def features(self) -> None:
        """Answer C{FEAT} from the backend's list, filtered (see L{RELAYED_FEATURES})."""
        backend = self.backend
        assert backend is not None
        try:
            reply = await backend.ask(Command("FEAT", ""))
        except BackendGone:
            self.send_reply(self.proxy_features())
            return
        self.send_reply(feat_reply(self.filter_features(feature_lines(reply))))

    def filter_features(self, backend_features: list[str]) -> list[str]:
        """The features to list given the backend's."""
        listed = [*self._tls_features(), "EPRT", "EPSV", "PASV"]
        for feature in backend_features:
            name = feature.split(" ", 1)[0].upper()
            if name in _OWN_FEATURES:
                continue
            if self.factory.show_backend_features or name in RELAYED_FEATURES:
                listed.append(feature)
        return listed


async def _secure_backend(
    control: BackendControl, creator: IOpenSSLClientConnectionCreator, mode: str
) -> None:
    """
    Make a backend session FTPS before login: C{AUTH TLS} and the handshake (explicit mode),
    then C{PBSZ 0} and C{PROT P}, so that data connections are TLS too.

    @raise _Failed: the backend refused; L{BackendGone} when it closed (a failed handshake).
    """
    if mode == "explicit":
        reply = await control.ask(Command("AUTH", "TLS"))
        if reply.code != 234:
            raise _Failed("bad_response", f"AUTH TLS refused: {reply.text[:80]!r}")
        control.start_tls(creator)
    for command in (Command("PBSZ", "0"), Command("PROT", "P")):
        reply = await control.ask(command)
        if reply.code != 200:
            raise _Failed("bad_response", f"{command.verb} refused: {reply.text[:80]!r}")


__all__ = ["PROXY_FEATURES", "RELAYED_FEATURES", "LoginMixin"]
