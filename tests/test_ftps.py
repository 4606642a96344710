"""
Loopback integration tests of FTPS through L{twisted_rp.ftp}: Python's C{ftplib.FTP_TLS} (in a
thread) through the proxy to Twisted's FTP server in-process, plain or made FTPS here (explicit
or implicit, insisting on TLS session reuse for data connections like vsftpd), and to pyftpdlib
when it is installed.
"""

from __future__ import annotations

import ftplib
import io
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import trustme
from OpenSSL import SSL
from twisted.cred.checkers import AllowAnonymousAccess, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols import ftp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_ftp_integration import (
    CLIENT_TIMEOUT,
    USERS,
    _quietly_close,
    _Realm,
    _remove_tree,
    _RestFTP,
    sha256,
)
from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.ftp.tls import ResumingClientTLS
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.tls import CertificateFiles, ServerTLS, client_tls

T = TypeVar("T")

PAYLOAD_SIZE = 2 * 1024 * 1024 + 77


class Certificates:
    """A throw-away CA and a certificate for 127.0.0.1, as files."""

    def __init__(self, directory: str) -> None:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(directory, "ca.pem")
        self.server_file = os.path.join(directory, "server.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        issued.private_key_and_cert_chain_pem.write_to_path(self.server_file)

    def server_tls(self) -> ServerTLS:
        return ServerTLS([CertificateFiles(self.server_file, self.server_file)], alpn=())

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


@implementer(IOpenSSLServerConnectionCreator)
class RecordingServerTLS:
    """A L{ServerTLS} that keeps every connection it makes, to ask about resumption after."""

    def __init__(self, inner: ServerTLS) -> None:
        self.inner = inner
        self.connections: list[SSL.Connection] = []

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.inner.serverConnectionForTLS(tlsProtocol)
        self.connections.append(connection)
        return connection

    def reused(self) -> list[bool]:
        # pyOpenSSL has no wrapper for SSL_session_reused.
        from OpenSSL._util import lib  # type: ignore[attr-defined,unused-ignore]

        return [bool(lib.SSL_session_reused(c._ssl)) for c in self.connections]


class _FTPSServer(_RestFTP):
    """
    Twisted's FTP server with FTPS as vsftpd does it: no login in the clear, and data
    connections must resume the control connection's TLS session (checked by the test).
    """

    factory: FTPSFactory
    transport: Any
    PUBLIC_COMMANDS = [*ftp.FTP.PUBLIC_COMMANDS, "AUTH", "PBSZ", "PROT"]
    secure = False
    protected = False

    def connectionMade(self) -> None:
        self.secure = self.protected = self.factory.implicit
        super().connectionMade()

    def lineReceived(self, line: bytes) -> Any:
        self.factory.heard.append((line.split(b" ")[0].decode().upper(), self.secure))
        return super().lineReceived(line)

    def ftp_AUTH(self, mechanism: str) -> None:
        self.sendLine(b"234 Proceed with negotiation.")
        self.transport.startTLS(self.factory.control_tls)
        self.secure = True

    def ftp_PBSZ(self, size: str) -> None:
        self.sendLine(b"200 PBSZ=0")

    def ftp_PROT(self, level: str) -> None:
        self.protected = level.upper() == "P"
        self.sendLine(b"200 PROT now " + level.upper().encode())

    def ftp_USER(self, username: str) -> Any:
        if not self.secure:
            self.sendLine(b"530 Non-anonymous sessions must use encryption.")
            return None
        return super().ftp_USER(username)

    def ftp_QUIT(self) -> Any:
        result = super().ftp_QUIT()
        # Twisted's server stops reading for good after QUIT; over TLS it must still read the
        # peer's close_notify, or the connection never finishes closing.
        self.transport.resumeProducing()
        return result

    def getDTPPort(self, factory: Any, interface: str = "") -> Any:
        if self.protected:
            factory = TLSMemoryBIOFactory(self.factory.data_tls, False, factory)
        return super().getDTPPort(factory, interface)


class FTPSFactory(ftp.FTPFactory):
    protocol = _FTPSServer

    def __init__(self, portal: Portal, tls: ServerTLS, implicit: bool) -> None:
        super().__init__(portal)
        self.allowAnonymous = True
        self.implicit = implicit
        self.control_tls = RecordingServerTLS(tls)
        self.data_tls = RecordingServerTLS(tls)
        self.heard: list[tuple[str, bool]] = []


def start_backend(root: str, tls: ServerTLS | None = None, implicit: bool = False) -> Any:
    """Listen with Twisted's FTP server on C{root}: plain, or FTPS with C{tls}."""
    users = InMemoryUsernamePasswordDatabaseDontUse()
    for user, password in USERS.items():
        users.addUser(user, password)  # type: ignore[arg-type]
    portal = Portal(_Realm(root), [AllowAnonymousAccess(), users])
    factory: Any
    if tls is None:
        factory = ftp.FTPFactory(portal)
        factory.protocol = _RestFTP
        factory.allowAnonymous = True
        listened = factory
    else:
        factory = FTPSFactory(portal, tls, implicit)
        listened = TLSMemoryBIOFactory(factory.control_tls, False, factory) if implicit else factory
    port: IListeningPort = reactor.listenTCP(0, listened, interface="127.0.0.1")
    return factory, port


class ImplicitFTP_TLS(ftplib.FTP_TLS):
    """ftplib for implicit FTPS: TLS from the first byte."""

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: tuple[str, int] | None = None,
    ) -> str:
        raw = socket.create_connection((host, port), CLIENT_TIMEOUT)
        self.host, self.port, self.af = host, port, raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """ftplib that resumes the control connection's TLS session on data connections."""

    reused: list[bool]

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            control: Any = self.sock
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=control.session
            )
            self.reused.append(bool(conn.session_reused))
        return conn, size


class _FTPSCase(TestCase):
    """A temporary backend root with a payload, certificates, and a proxy to start."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ftps-")
        self.addCleanup(_remove_tree, self.directory)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.payload = os.urandom(PAYLOAD_SIZE)
        with open(os.path.join(self.root, "big.bin"), "wb") as file:
            file.write(self.payload)
        self.certificates = Certificates(self.directory)
        self.factory: FTPProxyFactory | None = None

    def start_proxy(self, backend_port: int, **settings: Any) -> int:
        pool = BackendPool("ftp", [Backend("one", "127.0.0.1", backend_port)])
        self.factory = FTPProxyFactory(reactor, pool, banner="FTPS proxy", **settings)
        listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(self.sessions_closed)
        return listening.getHost().port  # type: ignore[attr-defined]

    def start_plain_backend(self) -> int:
        _, port = start_backend(self.root)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def sessions_closed(self) -> None:
        for _ in range(200):
            if self.factory is None or not self.factory.sessions:
                break
            await deferLater(reactor, 0.02)
        await deferLater(reactor, 0.05)

    def in_thread(self, work: Callable[[], T]) -> Deferred[T]:
        return deferToThread(work)

    def tls_client(self, port: int, kind: type[ftplib.FTP_TLS] = ftplib.FTP_TLS) -> Any:
        client = kind(context=self.certificates.client_context(), timeout=CLIENT_TIMEOUT)
        self.addCleanup(_quietly_close, client)
        client.connect("127.0.0.1", port)
        return client


class FrontFTPSTests(_FTPSCase):
    """FTPS between the client and the proxy, plain FTP to Twisted's FTP server."""

    def setUp(self) -> None:
        super().setUp()
        self.proxy_port = self.start_proxy(
            self.start_plain_backend(), tls=self.certificates.server_tls()
        )

    async def test_explicit_prot_p(self) -> None:
        """AUTH TLS, PBSZ, PROT P: LIST, RETR and STOR over TLS data connections, intact."""
        upload = os.urandom(PAYLOAD_SIZE)

        def session() -> tuple[str, str, bytes, bytes, bool]:
            client = self.tls_client(self.proxy_port)
            auth = client.auth()
            client.login("alice", USERS["alice"])
            prot = client.prot_p()
            listing: list[str] = []
            client.retrlines("LIST", listing.append)
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            client.storbinary("STOR up.bin", io.BytesIO(upload))
            again = io.BytesIO()
            client.retrbinary("RETR up.bin", again.write)
            secure = isinstance(client.sock, ssl.SSLSocket)
            client.quit()
            return auth, prot, data.getvalue(), again.getvalue(), secure

        auth, prot, data, again, secure = await self.in_thread(session)
        self.assertTrue(auth.startswith("234"), auth)
        self.assertTrue(prot.startswith("200"), prot)
        self.assertTrue(secure)
        self.assertEqual(sha256(data), sha256(self.payload))
        self.assertEqual(sha256(again), sha256(upload))
        with open(os.path.join(self.root, "up.bin"), "rb") as file:
            self.assertEqual(sha256(file.read()), sha256(upload))

    async def test_data_session_resumed(self) -> None:
        """A client that resumes the control session on data connections gets it resumed."""

        def session() -> tuple[list[bool], bytes]:
            client = self.tls_client(self.proxy_port, ResumingFTP_TLS)
            client.reused = []
            client.login("alice", USERS["alice"])
            client.prot_p()
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            client.retrlines("LIST", lambda line: None)
            client.quit()
            return client.reused, data.getvalue()

        reused, data = await self.in_thread(session)
        self.assertEqual(reused, [True, True])
        self.assertEqual(sha256(data), sha256(self.payload))

    async def test_prot_c(self) -> None:
        """After PROT C data connections are in the clear, the control connection still TLS."""

        def session() -> tuple[str, bytes]:
            client = self.tls_client(self.proxy_port)
            client.login("alice", USERS["alice"])
            client.prot_p()
            prot = client.prot_c()
            # Plain ftplib would wrap nothing either way: read the raw data connection.
            connection = ftplib.FTP.transfercmd(client, "RETR big.bin")
            with connection:
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
            client.voidresp()
            client.quit()
            return prot, b"".join(chunks)

        prot, data = await self.in_thread(session)
        self.assertTrue(prot.startswith("200"), prot)
        self.assertEqual(sha256(data), sha256(self.payload))

    async def test_prot_before_pbsz_and_tls_commands_without_tls(self) -> None:
        """PBSZ and PROT need AUTH first; PROT needs PBSZ; CCC is refused."""

        def session() -> list[str]:
            client = self.tls_client(self.proxy_port)
            replies = []
            for command in ("PBSZ 0", "PROT P"):
                try:
                    replies.append(client.sendcmd(command))
                except ftplib.error_perm as error:
                    replies.append(str(error))
            client.auth()
            for command in ("PROT P", "PBSZ 0", "PROT S", "CCC", "AUTH TLS"):
                try:
                    replies.append(client.sendcmd(command))
                except ftplib.error_perm as error:
                    replies.append(str(error))
            client.quit()
            return [reply[:3] for reply in replies]

        self.assertEqual(
            await self.in_thread(session), ["503", "503", "503", "200", "536", "534", "503"]
        )

    async def test_feat_lists_tls(self) -> None:
        """FEAT offers AUTH TLS, PBSZ and PROT when the listener has a certificate."""

        def session() -> str:
            client = self.tls_client(self.proxy_port)
            reply = client.sendcmd("FEAT")
            client.quit()
            return reply

        reply = await self.in_thread(session)
        for feature in (" AUTH TLS", " PBSZ", " PROT"):
            self.assertIn(feature, reply.splitlines())

    async def test_pipelined_after_auth_discarded(self) -> None:
        """A command in the same packet as AUTH TLS is thrown away, never run."""
        victim = os.path.join(self.root, "victim.txt")
        with open(victim, "w") as file:
            file.write("keep me")

        def session() -> tuple[str, str]:
            raw = socket.create_connection(("127.0.0.1", self.proxy_port), CLIENT_TIMEOUT)
            with raw:
                reader = raw.makefile("rb")
                reader.readline()
                raw.sendall(b"USER alice\r\n")
                reader.readline()
                raw.sendall(b"PASS alice-pw\r\n")
                reader.readline()
                raw.sendall(b"AUTH TLS\r\nDELE victim.txt\r\n")
                auth = reader.readline().decode()
                context = self.certificates.client_context()
                secured = context.wrap_socket(raw, server_hostname="127.0.0.1")
                with secured:
                    secured.sendall(b"NOOP\r\n")
                    after = secured.recv(1024).decode()
                    secured.sendall(b"QUIT\r\n")
                    secured.recv(1024)
            return auth, after

        auth, after = await self.in_thread(session)
        self.assertTrue(auth.startswith("234"), auth)
        # The first reply over TLS is NOOP's: DELE got none because it never ran.
        self.assertTrue(after.startswith("200"), after)
        self.assertTrue(os.path.exists(victim))


class RequireTLSTests(_FTPSCase):
    """C{require_tls}: no USER or PASS in the clear."""

    async def test_user_refused_before_auth(self) -> None:
        port = self.start_proxy(
            self.start_plain_backend(), tls=self.certificates.server_tls(), require_tls=True
        )

        def session() -> tuple[str, str]:
            client = self.tls_client(port)
            try:
                client.sendcmd("USER alice")
            except ftplib.error_perm as error:
                refused = str(error)
            else:
                refused = "accepted"
            accepted = client.login("alice", USERS["alice"])  # AUTH TLS first, then USER
            client.quit()
            return refused, accepted

        refused, accepted = await self.in_thread(session)
        self.assertTrue(refused.startswith("534"), refused)
        self.assertTrue(accepted.startswith("230"), accepted)


class ImplicitFTPSTests(_FTPSCase):
    """An implicit FTPS listener: TLS from the first byte, data protected by default."""

    async def test_implicit_retr_without_prot(self) -> None:
        port = self.start_proxy(
            self.start_plain_backend(), tls=self.certificates.server_tls(), implicit=True
        )

        def session() -> tuple[str, bytes]:
            client = self.tls_client(port, ImplicitFTP_TLS)
            welcome = client.getwelcome()
            client.login("alice", USERS["alice"])
            client._prot_p = True  # No PROT sent: implicit FTPS protects data already.
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            client.quit()
            return welcome, data.getvalue()

        welcome, data = await self.in_thread(session)
        self.assertEqual(welcome, "220 FTPS proxy")
        self.assertEqual(sha256(data), sha256(self.payload))

    def test_implicit_needs_a_certificate(self) -> None:
        pool = BackendPool("ftp", [Backend("one", "127.0.0.1", 21)])
        with self.assertRaises(ValueError):
            FTPProxyFactory(reactor, pool, implicit=True)
        with self.assertRaises(ValueError):
            FTPProxyFactory(reactor, pool, backend_tls="sometimes")


class BackendFTPSTests(_FTPSCase):
    """FTPS between the proxy and an FTPS backend that insists on session reuse."""

    def start_ftps_backend(self, implicit: bool) -> tuple[FTPSFactory, int]:
        factory, port = start_backend(self.root, self.certificates.server_tls(), implicit)
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def backend_creator(self) -> Any:
        return client_tls("127.0.0.1", ca_files=[self.certificates.ca_file])

    async def transfers(self, proxy_port: int, prot: str) -> tuple[bytes, bytes, list[str]]:
        upload = os.urandom(PAYLOAD_SIZE)

        def session() -> tuple[bytes, bytes, list[str]]:
            client = self.tls_client(proxy_port)
            client.login("alice", USERS["alice"])
            if prot == "P":
                client.prot_p()
            listing: list[str] = []
            client.retrlines("LIST", listing.append)
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            client.storbinary("STOR up.bin", io.BytesIO(upload))
            client.quit()
            return data.getvalue(), upload, listing

        return await self.in_thread(session)

    async def test_explicit_backend(self) -> None:
        """
        PROT P from the client to an explicit FTPS backend: AUTH TLS before USER, and every
        data connection to the backend resumes the control session.
        """
        backend, backend_port = self.start_ftps_backend(implicit=False)
        proxy_port = self.start_proxy(
            backend_port,
            tls=self.certificates.server_tls(),
            backend_tls="explicit",
            backend_tls_creator=self.backend_creator(),
        )
        data, upload, listing = await self.transfers(proxy_port, "P")
        self.assertEqual(sha256(data), sha256(self.payload))
        with open(os.path.join(self.root, "up.bin"), "rb") as file:
            self.assertEqual(sha256(file.read()), sha256(upload))
        self.assertTrue(any("big.bin" in line for line in listing))
        verbs = [verb for verb, _ in backend.heard]
        self.assertEqual(verbs[:4], ["AUTH", "PBSZ", "PROT", "USER"])
        self.assertTrue(all(secure for verb, secure in backend.heard if verb != "AUTH"))
        self.assertEqual(backend.data_tls.reused(), [True, True, True])

    async def test_plain_client_to_implicit_backend(self) -> None:
        """A plain FTP client (PROT C) reaches an implicit FTPS backend through the proxy."""
        backend, backend_port = self.start_ftps_backend(implicit=True)
        proxy_port = self.start_proxy(
            backend_port,
            tls=self.certificates.server_tls(),
            backend_tls="implicit",
            backend_tls_creator=self.backend_creator(),
        )
        data, upload, _ = await self.transfers(proxy_port, "C")
        self.assertEqual(sha256(data), sha256(self.payload))
        with open(os.path.join(self.root, "up.bin"), "rb") as file:
            self.assertEqual(sha256(file.read()), sha256(upload))
        self.assertEqual(backend.data_tls.reused(), [True, True, True])

    async def test_backend_certificate_not_trusted(self) -> None:
        """A backend whose certificate does not verify is never sent the login: 421."""
        backend, backend_port = self.start_ftps_backend(implicit=False)
        other_ca = os.path.join(self.directory, "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(other_ca)
        proxy_port = self.start_proxy(
            backend_port,
            backend_tls="explicit",
            backend_tls_creator=client_tls("127.0.0.1", ca_files=[other_ca]),
        )

        def session() -> str:
            client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            self.addCleanup(_quietly_close, client)
            client.connect("127.0.0.1", proxy_port)
            try:
                return client.login("alice", USERS["alice"])
            except ftplib.error_temp as error:
                return str(error)

        self.assertTrue((await self.in_thread(session)).startswith("421"))
        self.assertNotIn("USER", [verb for verb, _ in backend.heard])


class PyftpdlibBackendTests(_FTPSCase):
    """Explicit FTPS through to pyftpdlib's TLS_FTPHandler, TLS required on both channels."""

    def start_pyftpdlib(self) -> int:
        import logging
        import threading

        from pyftpdlib.authorizers import (  # type: ignore[import-not-found,unused-ignore]
            DummyAuthorizer,
        )
        from pyftpdlib.handlers import TLS_FTPHandler  # type: ignore[import-not-found,unused-ignore]
        from pyftpdlib.servers import FTPServer  # type: ignore[import-not-found,unused-ignore]

        # Its own logging to stderr would otherwise be set up; trial's log is enough.
        quiet = logging.NullHandler()
        library_logger = logging.getLogger("pyftpdlib")
        library_logger.addHandler(quiet)
        self.addCleanup(library_logger.removeHandler, quiet)
        authorizer = DummyAuthorizer()
        authorizer.add_user("alice", USERS["alice"], self.root, perm="elradfmw")
        handler: Any = type("Handler", (TLS_FTPHandler,), {})
        handler.authorizer = authorizer
        handler.certfile = self.certificates.server_file
        handler.tls_control_required = True
        handler.tls_data_required = True
        handler.passive_ports = None
        server = FTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1})
        thread.daemon = True
        thread.start()

        def stop() -> None:
            server.close_all()
            thread.join(5)

        self.addCleanup(stop)
        number: int = server.address[1]
        return number

    async def test_explicit_to_pyftpdlib(self) -> None:
        proxy_port = self.start_proxy(
            self.start_pyftpdlib(),
            tls=self.certificates.server_tls(),
            backend_tls="explicit",
            backend_tls_creator=client_tls("127.0.0.1", ca_files=[self.certificates.ca_file]),
        )
        upload = os.urandom(PAYLOAD_SIZE)

        def session() -> tuple[bytes, bytes]:
            client = self.tls_client(proxy_port)
            client.login("alice", USERS["alice"])
            client.prot_p()
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            client.storbinary("STOR up.bin", io.BytesIO(upload))
            again = io.BytesIO()
            client.retrbinary("RETR up.bin", again.write)
            client.quit()
            return data.getvalue(), again.getvalue()

        data, again = await self.in_thread(session)
        self.assertEqual(sha256(data), sha256(self.payload))
        self.assertEqual(sha256(again), sha256(upload))


class ResumingClientTLSTests(SynchronousTestCase):
    """L{ResumingClientTLS} on its own."""

    def test_sets_the_session(self) -> None:
        """The connection it makes offers the session it was given."""
        made: list[Any] = []

        @implementer(IOpenSSLClientConnectionCreator)
        class Inner:
            def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
                connection = _FakeConnection()
                made.append(connection)
                return connection

        session = object()
        creator = ResumingClientTLS(Inner(), session)  # type: ignore[arg-type]
        verifyObject(IOpenSSLClientConnectionCreator, creator)
        connection = creator.clientConnectionForTLS(None)
        self.assertIs(connection, made[0])
        self.assertIs(made[0].session, session)


class _FakeConnection:
    session: object = None

    def set_session(self, session: object) -> None:
        self.session = session
