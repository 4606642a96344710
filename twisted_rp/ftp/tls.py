"""
FTPS (RFC 4217): TLS on the client's control connection (C{AUTH TLS}, or implicit TLS from the
first byte), C{PBSZ}/C{PROT} for its data connections, and TLS toward backends, whose data
connections resume the control connection's TLS session (servers such as vsftpd refuse data
connections that do not: its C{require_ssl_reuse}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from twisted_rp.ftp.data import LegTLS
from twisted_rp.ftp.replies import Command, Reply

if TYPE_CHECKING:
    from twisted_rp.ftp.control import FTPProxyFactory
    from twisted_rp.ftp.upstream import BackendControl

#: How the proxy talks to backends: plain FTP, C{AUTH TLS} after the greeting, or TLS from the
#: first byte.
BACKEND_TLS_MODES = ("none", "explicit", "implicit")

#: C{AUTH} arguments that mean TLS (C{SSL} and C{TLS-C} are older names clients still send).
AUTH_MECHANISMS = frozenset({"TLS", "SSL", "TLS-C"})

#: Listed in C{FEAT} when the proxy offers FTPS.
TLS_FEATURES = ("AUTH TLS", "PBSZ", "PROT")

TLS_COMMANDS = frozenset({"AUTH", "PBSZ", "PROT", "CCC"})


def tls_session(transport: Any) -> SSL.Session | None:
    """
    The TLS session of a connection, to be resumed by another one.

    @param transport: a TCP transport after C{startTLS}, or a TLS protocol wrapper.
    @return: L{None} when C{transport} is not TLS or has no session yet.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = None if get_handle is None else get_handle()
    if not isinstance(handle, SSL.Connection):
        return None
    return handle.get_session()


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientTLS:
    """
    A client connection creator that offers to resume C{session}: what an FTPS backend's data
    connection must do when the server insists that it belongs to the control connection.

    The session came from a connection made by the same C{creator}, so from the same
    L{SSL.Context}, which OpenSSL requires for resumption.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator, session: SSL.Session | None):
        self.creator = creator
        self.session = session

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.creator.clientConnectionForTLS(tlsProtocol)
        if self.session is not None:
            connection.set_session(self.session)
        return connection


class FrontTLSMixin:
    """
    The client side of FTPS for an L{twisted_rp.ftp.control.FTPSession}.

    @ivar tls_active: the control connection is TLS.
    @ivar data_protected: data connections are TLS (C{PROT P}, or implicit FTPS).
    @ivar tls_pending: an accepted C{AUTH} waits in the queue; what the client sends until the
        handshake is thrown away (RFC 4217 forbids pipelining after C{AUTH}).
    """

    factory: FTPProxyFactory
    transport: Any
    backend: BackendControl | None
    logged_in: bool

    def send_reply(self, reply: Reply) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:
        # Only declared: a stub here would shadow the login mixin's, later in the MRO.
        def reset_login(self) -> None: ...

    def _init_tls(self) -> None:
        self.tls_active = False
        self.data_protected = False
        self.tls_pending = False
        self._pbsz_done = False

    def start_implicit_tls(self) -> None:
        """Wrap the new control connection in TLS (an implicit FTPS listener)."""
        tls = self.factory.tls
        assert tls is not None
        self.transport.startTLS(tls)
        self.tls_active = True
        self.data_protected = True
        self._pbsz_done = True

    def accepts_auth(self, command: Command) -> bool:
        """Whether C{command} is an C{AUTH} that will switch the connection to TLS."""
        return (
            command.verb == "AUTH"
            and self.factory.tls is not None
            and not self.tls_active
            and not self.tls_pending
            and command.argument.strip().upper() in AUTH_MECHANISMS
        )

    def tls_refuses(self, command: Command) -> Reply | None:
        """The refusal of C{command} under C{require_tls} before TLS, if it is refused."""
        if (
            self.factory.require_tls
            and not self.tls_active
            and command.verb in ("USER", "PASS")
            and not self.logged_in
        ):
            return Reply.of(534, "Request denied for policy reasons: use AUTH TLS first.")
        return None

    def tls_command(self, command: Command) -> None:
        """Answer C{AUTH}, C{PBSZ}, C{PROT} or C{CCC}: the proxy's, never relayed."""
        tls = self.factory.tls
        verb, argument = command.verb, command.argument.strip().upper()
        if tls is None:
            self.send_reply(Reply.of(502, "Command not implemented."))
        elif verb == "AUTH":
            self._auth(argument)
        elif verb == "CCC":
            self.send_reply(Reply.of(534, "Request denied for policy reasons."))
        elif not self.tls_active:
            self.send_reply(Reply.of(503, f"{verb} needs AUTH TLS first."))
        elif verb == "PBSZ":
            if not argument.isdigit():
                self.send_reply(Reply.of(501, "PBSZ needs a number."))
            else:
                self._pbsz_done = True
                self.send_reply(Reply.of(200, "PBSZ=0"))
        elif not self._pbsz_done:
            self.send_reply(Reply.of(503, "PROT needs PBSZ first."))
        elif argument == "P":
            self.data_protected = True
            self.send_reply(Reply.of(200, "Protection level set to P."))
        elif argument == "C":
            self.data_protected = False
            self.send_reply(Reply.of(200, "Protection level set to C."))
        elif argument in ("S", "E"):
            self.send_reply(Reply.of(536, f"Protection level {argument} not supported."))
        else:
            self.send_reply(Reply.of(504, "PROT takes C or P."))

    def _auth(self, mechanism: str) -> None:
        tls = self.factory.tls
        assert tls is not None
        if not self.tls_pending:
            if self.tls_active:
                self.send_reply(Reply.of(503, "Already using TLS."))
            else:
                self.send_reply(Reply.of(504, f"AUTH {mechanism} not supported; use AUTH TLS."))
            return
        if not self.logged_in:
            # RFC 2228: AUTH resets the login in progress; the client starts again with USER.
            self.reset_login()
        self.send_reply(Reply.of(234, f"AUTH {mechanism} ok, starting TLS."))
        self.transport.startTLS(tls)
        self.tls_pending = False
        self.tls_active = True

    def client_leg_tls(self) -> LegTLS | None:
        """TLS for the client's next data connection, if C{PROT P}."""
        tls = self.factory.tls
        if not self.data_protected or tls is None:
            return None
        return LegTLS(tls, client=False)


__all__ = [
    "AUTH_MECHANISMS",
    "BACKEND_TLS_MODES",
    "TLS_FEATURES",
    "FrontTLSMixin",
    "ResumingClientTLS",
    "tls_session",
]
