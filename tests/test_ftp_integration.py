"""
Loopback integration tests of L{twisted_rp.ftp}: Python's C{ftplib} (in a thread) through the
proxy to Twisted's own FTP server, in-process, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.cred.checkers import AllowAnonymousAccess, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols import ftp
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from twisted_rp.ftp import FTPProxyFactory
from twisted_rp.interfaces import IStickiness
from twisted_rp.pool import Backend, BackendPool, PickContext, StickyResponse

T = TypeVar("T")

#: ftplib's socket timeout: a hung test fails rather than blocks.
CLIENT_TIMEOUT = 15
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
BIG = 3 * 1024 * 1024 + 123


class _RestShell(ftp.FTPShell):
    """Twisted's shell, plus the C{REST} offset for the next C{RETR}."""

    rest_offset = 0

    def openForReading(self, path: Any) -> Any:
        offset, self.rest_offset = self.rest_offset, 0

        def seek(reader: Any) -> Any:
            reader.fObj.seek(offset)
            return reader

        return super().openForReading(path).addCallback(seek)


class _RestFTP(ftp.FTP):
    """Twisted's FTP server (which lacks C{REST}) with C{REST} for downloads."""

    def ftp_REST(self, value: str) -> Any:
        self.shell.rest_offset = int(value)  # type: ignore[attr-defined]
        return (ftp.REQ_FILE_ACTN_PENDING_FURTHER_INFO,)


class _Realm(ftp.BaseFTPRealm):
    """Every user, anonymous included, gets the same writable root."""

    def getHomeDirectory(self, avatarId: Any) -> FilePath[str]:
        return self.anonymousRoot

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        return ftp.IFTPShell, _RestShell(self.anonymousRoot), lambda: None


@define
class FTPBackend:
    """One in-process Twisted FTP server over a temporary directory."""

    name: str
    root: str
    port: IListeningPort | None = None
    number: int = 0

    def start(self, number: int = 0) -> None:
        users = InMemoryUsernamePasswordDatabaseDontUse()
        for user, password in USERS.items():
            # FTP hands the checker text user names; the constructor would encode them.
            users.addUser(user, password)  # type: ignore[arg-type]
        portal = Portal(_Realm(self.root), [AllowAnonymousAccess(), users])
        factory = ftp.FTPFactory(portal)
        factory.protocol = _RestFTP
        factory.allowAnonymous = True
        self.port = reactor.listenTCP(number, factory, interface="127.0.0.1")
        self.number = self.port.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        port, self.port = self.port, None
        stopping = None if port is None else port.stopListening()
        if stopping is not None:
            await stopping


@implementer(IStickiness)
@define
class UserStickiness:
    """Pins each FTP user name to the backend that took its login."""

    strict: bool = False
    table: dict[str, str] = field(factory=dict)

    def pinned(self, context: PickContext) -> str | None:
        return None if context.user is None else self.table.get(context.user)

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        if context.user is not None:
            self.table[context.user] = backend.name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FTPThroughProxyTests(TestCase):
    """ftplib to two Twisted FTP servers through an L{FTPProxyFactory}."""

    timeout = 60

    def setUp(self) -> None:
        self.addCleanup(self.sessions_closed)
        self.payload = os.urandom(BIG)
        self.backends: list[FTPBackend] = []
        for name in ("one", "two"):
            root = tempfile.mkdtemp(prefix=f"ftp-{name}-")
            self.addCleanup(_remove_tree, root)
            with open(os.path.join(root, "big.bin"), "wb") as file:
                file.write(self.payload)
            with open(os.path.join(root, "whoami.txt"), "w") as file:
                file.write(name)
            backend = FTPBackend(name, root)
            backend.start()
            self.addCleanup(backend.stop)
            self.backends.append(backend)
        self.stickiness = UserStickiness()
        self.pool = BackendPool(
            "ftp",
            [Backend(b.name, "127.0.0.1", b.number) for b in self.backends],
            stickiness=self.stickiness,
        )
        self.factory = FTPProxyFactory(reactor, self.pool, banner="Welcome to the proxy")
        listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.proxy_port = listening.getHost().port  # type: ignore[attr-defined]

    async def sessions_closed(self) -> None:
        """Wait for the proxy to see every client go, and the backends to see it go."""
        for _ in range(200):
            if not self.factory.sessions:
                break
            await deferLater(reactor, 0.02)
        await deferLater(reactor, 0.05)

    def in_thread(self, work: Callable[[], T]) -> Deferred[T]:
        return deferToThread(work)

    def connect(self, user: str = "alice") -> ftplib.FTP:
        client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        self.addCleanup(_quietly_close, client)
        client.connect("127.0.0.1", self.proxy_port)
        client.login(user, USERS.get(user, "x@example.com"))
        return client

    async def test_banner_and_login(self) -> None:
        """The client sees the proxy's banner, never the backend's, and logs in."""

        def session() -> tuple[str, str]:
            client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            client.connect("127.0.0.1", self.proxy_port)
            welcome = client.getwelcome()
            reply = client.login("alice", "alice-pw")
            client.quit()
            return welcome, reply

        welcome, reply = await self.in_thread(session)
        self.assertEqual(welcome, "220 Welcome to the proxy")
        self.assertTrue(reply.startswith("230"), reply)

    async def test_wrong_password(self) -> None:
        """A refused login is relayed as the backend's 530."""

        def session() -> str:
            client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            client.connect("127.0.0.1", self.proxy_port)
            try:
                client.login("alice", "wrong")
            except ftplib.error_perm as error:
                return str(error)
            finally:
                client.close()
            return "logged in"

        self.assertTrue((await self.in_thread(session)).startswith("530"))

    async def test_list_and_retr_pasv(self) -> None:
        """LIST, NLST and a multi-MiB RETR over PASV arrive intact."""

        def session() -> tuple[list[str], str, bytes]:
            client = self.connect()
            names = client.nlst(".")  # Twisted needs the argument
            listing: list[str] = []
            client.retrlines("LIST", listing.append)
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write)
            return names, "\n".join(listing), data.getvalue()

        names, listing, data = await self.in_thread(session)
        self.assertEqual(sorted(names), ["big.bin", "whoami.txt"])
        self.assertIn("big.bin", listing)
        self.assertEqual(sha256(data), sha256(self.payload))

    async def test_stor_and_retr_epsv(self) -> None:
        """A multi-MiB STOR then RETR over EPSV round-trips byte for byte."""
        upload = os.urandom(BIG)

        def session() -> bytes:
            client = self.connect()
            # ftplib uses EPSV when its address family is not IPv4.
            client.af = 0
            client.storbinary("STOR up.bin", io.BytesIO(upload))
            data = io.BytesIO()
            client.retrbinary("RETR up.bin", data.write)
            return data.getvalue()

        self.assertEqual(sha256(await self.in_thread(session)), sha256(upload))
        stored = [os.path.join(b.root, "up.bin") for b in self.backends]
        self.assertEqual(sum(os.path.exists(path) for path in stored), 1)

    async def test_active_port_and_eprt(self) -> None:
        """PORT and EPRT: the proxy connects out to the client for both directions."""
        upload = os.urandom(512 * 1024)

        def session() -> tuple[bytes, bytes]:
            client = self.connect()
            client.set_pasv(False)
            client.storbinary("STOR active.bin", io.BytesIO(upload))
            data = io.BytesIO()
            client.retrbinary("RETR active.bin", data.write)
            # ftplib sends EPRT only over IPv6: by hand, for IPv4.
            with socket.create_server(("127.0.0.1", 0)) as listener:
                listener.settimeout(CLIENT_TIMEOUT)
                port = listener.getsockname()[1]
                client.sendcmd(f"EPRT |1|127.0.0.1|{port}|")
                preliminary = client.sendcmd("RETR big.bin")
                assert preliminary.startswith("1"), preliminary
                connection, _ = listener.accept()
                with connection:
                    eprt = _read_all(connection)
                client.voidresp()
            return data.getvalue(), eprt

        via_port, via_eprt = await self.in_thread(session)
        self.assertEqual(sha256(via_port), sha256(upload))
        self.assertEqual(sha256(via_eprt), sha256(self.payload))

    async def test_rest_resume(self) -> None:
        """REST then RETR resumes a download at the offset."""
        offset = 1_000_000

        def session() -> bytes:
            client = self.connect()
            data = io.BytesIO()
            client.retrbinary("RETR big.bin", data.write, rest=offset)
            return data.getvalue()

        self.assertEqual(sha256(await self.in_thread(session)), sha256(self.payload[offset:]))

    async def test_sticky_per_user(self) -> None:
        """Each user keeps landing on the backend of its first login."""

        def whoami(user: str) -> str:
            client = self.connect(user)
            data = io.BytesIO()
            client.retrbinary("RETR whoami.txt", data.write)
            client.quit()
            return data.getvalue().decode()

        alice = [await self.in_thread(lambda: whoami("alice")) for _ in range(3)]
        bob = [await self.in_thread(lambda: whoami("bob")) for _ in range(3)]
        self.assertEqual(len(set(alice)), 1)
        self.assertEqual(len(set(bob)), 1)
        self.assertNotEqual(alice[0], bob[0])

    async def test_backend_killed_between_sessions(self) -> None:
        """With its backend gone, a user's next session fails over to the other one."""

        def whoami() -> str:
            client = self.connect("alice")
            data = io.BytesIO()
            client.retrbinary("RETR whoami.txt", data.write)
            client.quit()
            return data.getvalue().decode()

        first = await self.in_thread(whoami)
        dead = next(b for b in self.backends if b.name == first)
        await dead.stop()
        second = await self.in_thread(whoami)
        self.assertNotEqual(second, first)

    async def test_all_backends_down(self) -> None:
        """With no backend up, USER gets 421 and the connection closes."""
        for backend in self.backends:
            await backend.stop()

        def session() -> str:
            client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
            client.connect("127.0.0.1", self.proxy_port)
            try:
                client.login("alice", "alice-pw")
            except ftplib.error_temp as error:
                return str(error)
            finally:
                client.close()
            return "logged in"

        self.assertTrue((await self.in_thread(session)).startswith("421"))

    async def test_session_limit(self) -> None:
        """Over the per-address limit, a new session gets 421 at once."""
        self.factory.max_sessions_per_ip = 1

        def sessions() -> str:
            first = self.connect()
            try:
                second = ftplib.FTP(timeout=CLIENT_TIMEOUT)
                try:
                    second.connect("127.0.0.1", self.proxy_port)
                except ftplib.error_temp as error:
                    return str(error)
                finally:
                    second.close()
                return "accepted"
            finally:
                first.quit()

        self.assertTrue((await self.in_thread(sessions)).startswith("421"))


def _quietly_close(client: ftplib.FTP) -> None:
    client.close()


def _remove_tree(root: str) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
