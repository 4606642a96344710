"""
Listening sockets shared by worker processes.

The master opens each listener's socket (L{ReservingEndpoint}: bound and listening, but never
accepting) and hands it to every worker as an inherited file descriptor; each worker accepts
on it (L{AdoptingEndpoint}), as nginx's workers share one socket.  The kernel queues new
connections on the socket itself, so a worker that dies loses none but its own.
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["AdoptingEndpoint", "ReservedPort", "ReservingEndpoint", "socket_family"]


def socket_family(fd: int) -> int:
    """The address family of the socket at file descriptor C{fd}."""
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


@implementer(IListeningPort)
@define(eq=False)
class ReservedPort:
    """
    A listening socket that this process keeps open for others to accept on.

    @ivar factory: kept only so that a reload may swap it, like a real port's.
    """

    socket: socket.socket
    factory: IProtocolFactory | None = None
    _closed: bool = field(default=False, init=False)

    def fileno(self) -> int:
        return self.socket.fileno()

    def startListening(self) -> None:
        """Listening already."""

    def stopListening(self) -> Deferred[None]:
        if not self._closed:
            self._closed = True
            self.socket.close()
        return succeed(None)

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.socket.getsockname()[:2]
        if self.socket.family == socket.AF_INET6:
            return IPv6Address("TCP", host, port)
        return IPv4Address("TCP", host, port)


@implementer(IStreamServerEndpoint)
@define
class ReservingEndpoint:
    """
    Opens a listener's TCP socket like the endpoint string says (port, interface, backlog) and
    keeps it, inheritable, without accepting.
    """

    reactor: Any
    description: str

    def _parts(self) -> tuple[int, str, int, int]:
        endpoint = serverFromString(self.reactor, self.description)
        if isinstance(endpoint, TCP6ServerEndpoint):
            family = socket.AF_INET6
        elif isinstance(endpoint, TCP4ServerEndpoint):
            family = socket.AF_INET
        else:
            raise ValueError(f"{self.description!r} is not a tcp: or tcp6: endpoint")
        interface = endpoint._interface or ("::" if family == socket.AF_INET6 else "")
        return family, interface, endpoint._port, endpoint._backlog

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            family, interface, port, backlog = self._parts()
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((interface, port))
                sock.listen(backlog)
            except OSError as error:
                sock.close()
                raise CannotListenError(interface, port, error) from None
        except Exception as error:
            return fail(error)
        sock.setblocking(False)
        sock.set_inheritable(True)
        return succeed(ReservedPort(sock, protocolFactory))


@implementer(IStreamServerEndpoint)
@define
class AdoptingEndpoint:
    """Accepts connections on a listening socket inherited as file descriptor C{fd}."""

    reactor: Any
    fd: int

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            port = self.reactor.adoptStreamPort(self.fd, socket_family(self.fd), protocolFactory)
        except Exception as error:
            return fail(error)
        result: Deferred[IListeningPort] = succeed(port)
        return result
