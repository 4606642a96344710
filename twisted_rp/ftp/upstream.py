"""
The proxy's control connection to a backend FTP server.

Commands are sent in order and each waits for its final reply in a FIFO: a reply goes to the
oldest command still waiting (preliminary C{1xx} replies too, without ending its wait).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.error import NotConnectingError
from twisted.internet.interfaces import IAddress, IConnector, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.ftp.data import LegTLS
from twisted_rp.ftp.replies import Command, Reply, ReplyError, ReplyReader
from twisted_rp.ftp.tls import ResumingClientTLS, tls_session

log = Logger()

ReplyHandler = Callable[[Reply], None]


class BackendGone(Exception):
    """The backend's control connection closed (or broke protocol) before a final reply."""


@define
class _Waiting:
    command: Command | None
    handler: ReplyHandler
    on_lost: Callable[[Failure], None] | None = None


class BackendControl(Protocol):
    """
    A control connection to a backend.

    @ivar greeting: fires with the backend's first final reply (its C{220}, or the C{421}
        refusing us), or fails with L{BackendGone}.
    @ivar on_unsolicited: called with a reply no command waits for (a backend's C{421}
        timeout notice), and with the failure when the connection is lost.
    @ivar tls_creator: the client TLS creator of a control connection that is TLS (FTPS);
        its data connections use it too (L{data_tls}).
    """

    transport: Any

    def __init__(self) -> None:
        self._reader = ReplyReader()
        self._waiting: deque[_Waiting] = deque()
        self.greeting: Deferred[Reply] = Deferred()
        self._waiting.append(_Waiting(None, self._greeted, self._greeting_lost))
        self.on_unsolicited: Callable[[Reply], None] = lambda reply: None
        self.on_lost: Callable[[Failure], None] = lambda reason: None
        self.lost = False
        self.tls_creator: IOpenSSLClientConnectionCreator | None = None
        self._dial: _BackendDial | None = None

    def _greeted(self, reply: Reply) -> None:
        if not reply.preliminary and not self.greeting.called:
            self.greeting.callback(reply)

    def _greeting_lost(self, reason: Failure) -> None:
        if not self.greeting.called:
            self.greeting.errback(BackendGone(f"closed before its greeting: {reason.value}"))

    def connectionMade(self) -> None:
        if self._dial is not None:
            if self._dial.tls is not None:
                # Implicit FTPS: TLS from the first byte; the greeting comes through it.
                self.start_tls(self._dial.tls)
            self._dial.connected(self)

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> None:
        """Switch the connection to TLS, as the client (after the backend's C{234})."""
        self.transport.startTLS(creator)
        self.tls_creator = creator

    def data_tls(self) -> LegTLS | None:
        """
        TLS for a data connection to the backend: the control connection's creator, resuming
        its session; L{None} when the control connection is not TLS.
        """
        if self.tls_creator is None:
            return None
        return LegTLS(ResumingClientTLS(self.tls_creator, tls_session(self.transport)), client=True)

    @property
    def waiting(self) -> int:
        """How many commands (and the greeting) still wait for their final reply."""
        return len(self._waiting)

    def send(
        self,
        command: Command,
        handler: ReplyHandler,
        on_lost: Callable[[Failure], None] | None = None,
    ) -> None:
        """
        Send C{command}; C{handler} gets its replies, preliminary ones included, the final one
        last; C{on_lost} is told if the connection goes before that.
        """
        self._waiting.append(_Waiting(command, handler, on_lost))
        self.transport.write(command.encode())

    def ask(self, command: Command) -> Deferred[Reply]:
        """
        Send C{command} for the proxy itself.

        @return: a L{Deferred} firing with its final reply, or failing with L{BackendGone}.
        """
        answer: Deferred[Reply] = Deferred()

        def handle(reply: Reply) -> None:
            if not reply.preliminary:
                answer.callback(reply)

        def lost(reason: Failure) -> None:
            answer.errback(BackendGone(str(reason.value)))

        self.send(command, handle, lost)
        return answer

    def dataReceived(self, data: bytes) -> None:
        try:
            for reply in self._reader.feed(data):
                self._deliver(reply)
                if self.lost:
                    return
        except ReplyError as error:
            log.warn("FTP: backend broke protocol: {error}", error=error)
            self.transport.abortConnection()

    def _deliver(self, reply: Reply) -> None:
        if not self._waiting:
            self.on_unsolicited(reply)
            return
        waiting = self._waiting[0]
        if not reply.preliminary:
            self._waiting.popleft()
        waiting.handler(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, deque()
        for entry in waiting:
            if entry.on_lost is not None:
                entry.on_lost(reason)
        self.on_lost(reason)

    def close(self) -> None:
        """Close the connection (say C{QUIT} first if it is idle)."""
        if self.lost:
            return
        if not self._waiting:
            self.transport.write(b"QUIT\r\n")
        self.transport.loseConnection()


class _BackendDial(ClientFactory):
    noisy = False

    def __init__(self, tls: IOpenSSLClientConnectionCreator | None = None) -> None:
        self.tls = tls
        self.connector: IConnector | None = None
        self.deferred: Deferred[BackendControl] = Deferred(self._cancel)

    def _cancel(self, deferred: Deferred[BackendControl]) -> None:
        if self.connector is not None:
            with contextlib.suppress(NotConnectingError):
                self.connector.stopConnecting()

    def buildProtocol(self, addr: IAddress | None) -> BackendControl:
        control = BackendControl()
        control._dial = self
        return control

    def connected(self, control: BackendControl) -> None:
        if self.deferred.called:
            control.transport.abortConnection()
        else:
            self.deferred.callback(control)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


def dial_backend(
    reactor: Any,
    host: str,
    port: int,
    timeout: float,
    tls: IOpenSSLClientConnectionCreator | None = None,
) -> Deferred[BackendControl]:
    """
    Open a control connection to C{host}:C{port}.

    @param tls: TLS from the first byte (implicit FTPS) with this creator.
    @return: a cancellable L{Deferred} firing with the L{BackendControl} once connected
        (its C{greeting} may still be on its way, after the TLS handshake if any).
    """
    dial = _BackendDial(tls)
    dial.connector = reactor.connectTCP(host, port, dial, timeout=timeout)
    return dial.deferred
