"""
Proxy-side FTP login (L{twisted_rp.ftp.proxylogin}): the proxy checks C{USER} and C{PASS}
itself and logs in to the backend with a mapped account.

In memory (a L{MemoryReactorClock} and L{StringTransport}s, see L{tests.test_ftp_control}),
then Python's C{ftplib} through a proxy built from a configuration file to Twisted's FTP
server over real sockets.  The configuration table is tested in
L{tests.test_ftp_login_config}.
"""

from __future__ import annotations

import ftplib
import io
import shutil
import tempfile
import time
from typing import Any, cast

import bcrypt
from twisted.cred.checkers import (
    AllowAnonymousAccess,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols import ftp
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.test_config import parse
from tests.test_ftp_control import Harness, Peer
from twisted_rp.ftp import BackendAccount, FTPProxyFactory, ProxyLogin
from twisted_rp.service import build_ftp_factory, build_pools
from twisted_rp.tls import ServerTLS

SERVICE = BackendAccount("svc", "svc-pw")
WELCOME = "230 Login successful."
REFUSED = "530 Login incorrect."


def checker() -> InMemoryUsernamePasswordDatabaseDontUse:
    users = InMemoryUsernamePasswordDatabaseDontUse()
    users.addUser(b"carol", b"carol-pw")
    users.addUser(b"dave", b"dave-pw")
    return users


def proxy(**options: Any) -> Harness:
    """A harness whose factory logs clients in itself (shared account C{svc} by default)."""
    factory_options = {key: options.pop(key) for key in ("tls", "require_tls") if key in options}
    settings: dict[str, Any] = {"account": SERVICE, "failure_delay": 1.0}
    settings.update(options)
    return Harness(login=ProxyLogin(checker(), **settings), **factory_options)


def log_in(
    harness: Harness,
    user: str = "carol",
    password: str = "carol-pw",
    account: tuple[str, str] = ("svc", "svc-pw"),
    index: int = -1,
) -> Peer:
    """Log C{user} in through the proxy; the backend must be asked for C{account}."""
    harness.replies()
    harness.send(f"USER {user}")
    assert harness.replies() == ["331 Please specify the password."]
    dialled = len(harness.reactor.tcpClients)
    harness.send(f"PASS {password}")
    assert len(harness.reactor.tcpClients) == dialled + 1
    backend = harness.accept(index)
    backend.say("220 backend ready")
    assert backend.heard() == [f"USER {account[0]}"]
    backend.say("331 Password please")
    assert backend.heard() == [f"PASS {account[1]}"]
    backend.say(f"230 User {account[0]} logged in")
    return backend


def fake_tls() -> ServerTLS:
    # The control session only asks whether there is one; the handshake is not under test.
    return cast(ServerTLS, object())


@implementer(ICredentialsChecker)
class CaseFoldingChecker:
    """Accepts any spelling of C{carol} with her password; the avatar id is lower case."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        if credentials.username.lower() == b"carol" and credentials.password == b"carol-pw":
            return succeed(b"carol")
        return fail(UnauthorizedLogin())


class ProxyLoginTests(SynchronousTestCase):
    """The proxy answers USER and PASS, and a backend sees only accepted logins."""

    def test_user_answered_by_the_proxy(self) -> None:
        harness = proxy()
        harness.replies()
        harness.send("USER carol")
        self.assertEqual(harness.replies(), ["331 Please specify the password."])
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_shared_account(self) -> None:
        """The backend gets the service account; the client never sees its name."""
        harness = proxy()
        backend = log_in(harness)
        self.assertEqual(harness.replies(), [WELCOME])
        self.assertEqual(harness.session.user, "carol")
        self.assertEqual(harness.stickiness.pins, [("carol", "a")])
        harness.send("PWD")
        self.assertEqual(backend.heard(), ["PWD"])
        backend.say('257 "/" is the current directory')
        self.assertEqual(harness.replies(), ['257 "/" is the current directory'])

    def test_per_user_account_before_shared(self) -> None:
        harness = proxy(users={"dave": BackendAccount("dave-files", "d-secret")})
        log_in(harness, "dave", "dave-pw", ("dave-files", "d-secret"))
        self.assertEqual(harness.replies(), [WELCOME])
        other = proxy(users={"dave": BackendAccount("dave-files", "d-secret")})
        log_in(other, "carol", "carol-pw", ("svc", "svc-pw"))
        self.assertEqual(other.replies(), [WELCOME])

    def test_pass_through(self) -> None:
        """The backend gets the very USER and PASS the proxy checked."""
        harness = proxy(account=None, pass_through=True)
        log_in(harness, "carol", "carol-pw", ("carol", "carol-pw"))
        self.assertEqual(harness.replies(), [WELCOME])

    def test_user_without_backend_account(self) -> None:
        """A right password but no mapping: refused like a wrong one, no backend contacted."""
        harness = proxy(account=None, users={"dave": BackendAccount("d", "p")})
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        harness.reactor.advance(1.0)
        self.assertEqual(harness.replies(), ["331 Please specify the password.", REFUSED])
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_avatar_id_names_the_user(self) -> None:
        """The checker's name for the user picks the mapping and the sticky key."""
        verifyObject(ICredentialsChecker, CaseFoldingChecker())
        login = ProxyLogin(
            CaseFoldingChecker(), account=SERVICE, users={"carol": BackendAccount("c", "cp")}
        )
        harness = Harness(login=login)
        log_in(harness, "CAROL", "carol-pw", ("c", "cp"))
        self.assertEqual(harness.replies(), [WELCOME])
        self.assertEqual(harness.stickiness.pins, [("carol", "a")])


@implementer(ICredentialsChecker)
class BrokenChecker:
    """A checker that fails for another reason than refusing (its database is down)."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        return fail(RuntimeError("user database unreachable"))


class RefusalTests(SynchronousTestCase):
    """Wrong passwords: a delayed 530, counted, never a backend connection."""

    def test_wrong_password_answered_after_the_delay(self) -> None:
        harness = proxy()
        harness.replies()
        harness.send("USER carol", "PASS nope")
        self.assertEqual(harness.replies(), ["331 Please specify the password."])
        harness.reactor.advance(0.99)
        self.assertEqual(harness.replies(), [])
        harness.reactor.advance(0.01)
        self.assertEqual(harness.replies(), [REFUSED])
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(harness.session.login_failures, 1)
        self.assertFalse(harness.client.transport.disconnecting)

    def test_unknown_user_like_wrong_password(self) -> None:
        harness = proxy()
        harness.replies()
        harness.send("USER mallory", "PASS carol-pw")
        harness.reactor.advance(1.0)
        self.assertEqual(harness.replies(), ["331 Please specify the password.", REFUSED])
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_commands_wait_for_the_refusal(self) -> None:
        """Pipelined commands are not answered before the delayed 530."""
        harness = proxy()
        harness.replies()
        harness.send("USER carol", "PASS nope", "NOOP")
        self.assertEqual(harness.replies(), ["331 Please specify the password."])
        harness.reactor.advance(1.0)
        self.assertEqual(harness.replies(), [REFUSED, "200 NOOP ok."])

    def test_closed_after_max_failures(self) -> None:
        harness = proxy(max_failures=3)
        harness.replies()
        for attempt in range(1, 4):
            self.assertFalse(harness.client.transport.disconnecting, attempt)
            harness.send("USER carol", "PASS wrong")
            harness.reactor.advance(1.0)
            self.assertEqual(
                harness.replies(), ["331 Please specify the password.", REFUSED], attempt
            )
        self.assertTrue(harness.client.transport.disconnecting)
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_no_limit(self) -> None:
        harness = proxy(max_failures=0, failure_delay=0)
        harness.replies()
        for _ in range(5):
            harness.send("USER carol", "PASS wrong")
        self.assertEqual(harness.replies().count(REFUSED), 5)
        self.assertFalse(harness.client.transport.disconnecting)

    def test_pass_needs_user_again_after_a_refusal(self) -> None:
        harness = proxy(failure_delay=0)
        harness.replies()
        harness.send("PASS carol-pw", "USER carol", "PASS wrong", "PASS carol-pw")
        self.assertEqual(
            harness.replies(),
            [
                "503 Login with USER first.",
                "331 Please specify the password.",
                REFUSED,
                "503 Login with USER first.",
            ],
        )
        self.assertEqual(harness.session.login_failures, 1)

    def test_client_gone_during_the_delay(self) -> None:
        harness = proxy()
        harness.replies()
        harness.send("USER carol", "PASS wrong")
        harness.client.transport.close_from_peer()
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        harness.reactor.advance(5)
        self.assertEqual(harness.replies(), ["331 Please specify the password."])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_anonymous_refused_by_default(self) -> None:
        harness = proxy()
        harness.replies()
        harness.send("USER anonymous", "PASS guest@example.com", "USER FTP", "PASS x")
        harness.reactor.advance(1.0)
        harness.reactor.advance(1.0)
        self.assertEqual(harness.replies().count(REFUSED), 2)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(harness.session.login_failures, 2)

    def test_anonymous_allowed_goes_to_the_backend_as_given(self) -> None:
        harness = proxy(allow_anonymous=True)
        log_in(harness, "Anonymous", "guest@example.com", ("Anonymous", "guest@example.com"))
        self.assertEqual(harness.replies(), [WELCOME])
        self.assertEqual(harness.stickiness.pins, [("anonymous", "a")])

    def test_backend_refusing_the_account(self) -> None:
        """
        A backend refusing the mapped account: 530 at once (not counted: the client's
        password was right), its connection closed, and the next login starts afresh.
        """
        harness = proxy()
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        backend = harness.accept()
        backend.say("220 hi")
        backend.say("331 pw")
        backend.say("530 Login incorrect for svc")
        self.assertEqual(harness.replies(), ["331 Please specify the password.", REFUSED])
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(harness.session.login_failures, 0)
        self.assertEqual(harness.stickiness.pins, [])
        harness.reactor.advance(0)
        self.assertEqual([b.active for b in harness.backends], [0, 0])
        log_in(harness, index=-1)
        self.assertEqual(harness.replies(), [WELCOME])

    def test_checker_failing(self) -> None:
        """A checker that breaks: 421, the session closed, nothing counted as a refusal."""
        verifyObject(ICredentialsChecker, BrokenChecker())
        harness = Harness(login=ProxyLogin(BrokenChecker(), account=SERVICE))
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        self.assertEqual(
            harness.replies(),
            [
                "331 Please specify the password.",
                "421 Service not available, closing control connection.",
            ],
        )
        self.assertTrue(harness.client.transport.disconnecting)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AfterLoginTests(SynchronousTestCase):
    """The backend account is fixed once the proxy logged in."""

    def test_relogin_commands_not_relayed(self) -> None:
        harness = proxy()
        backend = log_in(harness)
        harness.replies()
        harness.send("USER dave", "PASS dave-pw", "ACCT x", "REIN")
        self.assertEqual(
            harness.replies(),
            [
                "530 Can't change to another user.",
                "503 Already logged in.",
                "202 ACCT not needed.",
                "502 REIN not implemented.",
            ],
        )
        self.assertEqual(backend.heard(), [])
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_failover_after_the_check(self) -> None:
        """A backend that is down is skipped silently, as without proxy-side login."""
        harness = proxy()
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        harness.refuse()
        self.assertEqual(harness.dialled(), ("10.0.0.2", 2121))
        backend = harness.accept()
        backend.say("220 hi")
        self.assertEqual(backend.heard(), ["USER svc"])
        backend.say("230 no password needed")
        self.assertEqual(harness.replies(), ["331 Please specify the password.", WELCOME])

    def test_no_backend(self) -> None:
        harness = proxy(max_failures=1)
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        for _ in range(3):
            harness.refuse()
        self.assertEqual(
            harness.replies(),
            [
                "331 Please specify the password.",
                "421 Service not available, closing control connection.",
            ],
        )


class FTPSRulesTests(SynchronousTestCase):
    """require_tls and AUTH TLS apply to the proxy's own login."""

    def test_user_before_auth_tls_refused(self) -> None:
        harness = proxy(tls=fake_tls(), require_tls=True)
        harness.replies()
        harness.send("USER carol", "PASS carol-pw")
        refusal = "534 Request denied for policy reasons: use AUTH TLS first."
        self.assertEqual(harness.replies(), [refusal, refusal])
        self.assertEqual(harness.session.login_failures, 0)
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_auth_after_user_resets_it(self) -> None:
        harness = proxy(tls=fake_tls())
        harness.client.transport.startTLS = lambda *args: None  # type: ignore[attr-defined]
        harness.replies()
        harness.send("USER carol")
        harness.send("AUTH TLS")
        harness.send("PASS carol-pw")
        self.assertEqual(
            harness.replies(),
            [
                "331 Please specify the password.",
                "234 AUTH TLS ok, starting TLS.",
                "503 Login with USER first.",
            ],
        )
        self.assertEqual(harness.reactor.tcpClients, [])


# Over real sockets.

BACKEND_USERS = {"svc": "svc-pw"}
CLIENT_TIMEOUT = 15


@implementer(IRealm)
class RecordingRealm:
    """Every user gets the same directory; the names logged in as are kept."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.avatars: list[Any] = []

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        self.avatars.append(avatarId)
        return ftp.IFTPShell, ftp.FTPShell(FilePath(self.root)), lambda: None


class CountingFTPFactory(ftp.FTPFactory):
    """Twisted's FTP server, counting the connections it gets."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class LoginThroughProxyTests(TestCase):
    """
    ftplib through a proxy built from a configuration with a login table, to a Twisted FTP
    server that knows only the service account (and would take anonymous logins).
    """

    timeout = 60

    def setUp(self) -> None:
        root = tempfile.mkdtemp(prefix="ftp-login-")
        self.addCleanup(shutil.rmtree, root, True)
        FilePath(root).child("whoami.txt").setContent(b"backend")
        self.realm = RecordingRealm(root)
        users = InMemoryUsernamePasswordDatabaseDontUse()
        for user, password in BACKEND_USERS.items():
            users.addUser(user, password)  # type: ignore[arg-type]
        self.backend = CountingFTPFactory(Portal(self.realm, [AllowAnonymousAccess(), users]))
        self.backend.allowAnonymous = True
        backend_port = reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        self.addCleanup(backend_port.stopListening)
        backend_number = backend_port.getHost().port  # type: ignore[attr-defined]
        htpasswd = self.mktemp()
        with open(htpasswd, "wb") as file:
            file.write(b"carol:" + bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(4)) + b"\n")
        text = f"""
[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:0:interface=127.0.0.1"
pool = "ftp"

[listener.login]
htpasswd = {htpasswd!r}
backend_user = "svc"
backend_password = "svc-pw"
failure_delay = 0.2
max_failures = 2

[pool.ftp]
[[pool.ftp.backends]]
address = "127.0.0.1:{backend_number}"
"""
        config = parse(text)
        self.factory: FTPProxyFactory = build_ftp_factory(
            config, config.listeners[0], build_pools(config, reactor), reactor
        )
        listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port  # type: ignore[attr-defined]
        self.addCleanup(self.sessions_closed)

    async def sessions_closed(self) -> None:
        for _ in range(200):
            if not self.factory.sessions:
                break
            await deferLater(reactor, 0.02)
        await deferLater(reactor, 0.05)

    def client(self) -> ftplib.FTP:
        client = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        client.connect("127.0.0.1", self.port)
        return client

    async def test_right_password(self) -> None:
        """carol logs in to the backend as svc, lists and downloads."""

        def session() -> tuple[str, list[str], bytes]:
            client = self.client()
            try:
                reply = client.login("carol", "carol-pw")
                names = client.nlst(".")
                data = io.BytesIO()
                client.retrbinary("RETR whoami.txt", data.write)
                client.quit()
            finally:
                client.close()
            return reply, names, data.getvalue()

        reply, names, data = await deferToThread(session)
        self.assertEqual(reply, WELCOME)
        self.assertEqual(names, ["whoami.txt"])
        self.assertEqual(data, b"backend")
        self.assertEqual(self.realm.avatars, ["svc"])

    async def test_wrong_password(self) -> None:
        """A wrong password gets 530 after the delay; the backend never hears of it."""

        def session() -> tuple[str, float]:
            client = self.client()
            started = time.monotonic()
            try:
                client.login("carol", "wrong")
            except ftplib.error_perm as error:
                return str(error), time.monotonic() - started
            finally:
                client.close()
            return "logged in", 0.0

        reply, elapsed = await deferToThread(session)
        self.assertEqual(reply, REFUSED)
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertEqual(self.backend.connections, 0)

    async def test_closed_after_too_many_failures(self) -> None:
        def session() -> list[str]:
            client = self.client()
            outcomes = []
            try:
                for password in ("wrong", "carol-pw"):
                    try:
                        outcomes.append(client.login("carol", password))
                    except ftplib.error_perm as error:
                        outcomes.append(str(error))
            finally:
                client.close()
            return outcomes

        # One failure, then the right password: under the limit.
        self.assertEqual(await deferToThread(session), [REFUSED, WELCOME])

        def twice_wrong() -> list[str]:
            client = self.client()
            outcomes = []
            try:
                for _ in range(2):
                    try:
                        client.login("carol", "wrong")
                    except ftplib.error_perm as error:
                        outcomes.append(str(error))
                try:
                    client.sendcmd("NOOP")
                    outcomes.append("open")
                except (EOFError, OSError, ftplib.Error) as error:
                    outcomes.append(type(error).__name__)
            finally:
                client.close()
            return outcomes

        outcomes = await deferToThread(twice_wrong)
        self.assertEqual(outcomes[:2], [REFUSED, REFUSED])
        self.assertIn(outcomes[2], ("EOFError", "ConnectionResetError", "BrokenPipeError"))
        self.assertEqual(self.realm.avatars, ["svc"])

    async def test_anonymous_refused(self) -> None:
        """The backend would take anonymous logins; the proxy refuses them."""

        def session() -> str:
            client = self.client()
            try:
                client.login()
            except ftplib.error_perm as error:
                return str(error)
            finally:
                client.close()
            return "logged in"

        self.assertEqual(await deferToThread(session), REFUSED)
        self.assertEqual(self.backend.connections, 0)
