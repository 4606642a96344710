"""
Proxy-side login: the proxy answers C{USER} and C{PASS} itself, checks them with a
twisted.cred checker, and only for a login the checker accepts picks a backend and logs in
there with the account the user is mapped to (L{ProxyLogin}).

A refused login never reaches a backend: it is answered C{530} after a delay, and a session
with too many of them is closed, as FTP servers do.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from twisted_rp.ftp.login import LoginMixin
from twisted_rp.ftp.replies import Command, Reply

log = Logger()

#: The user names of anonymous FTP (RFC 1635), compared without regard to case.
ANONYMOUS_USERS = frozenset({"anonymous", "ftp"})
#: Commands that would change the backend's login behind the proxy's back once logged in.
RELOGIN_COMMANDS = frozenset({"USER", "PASS", "ACCT", "REIN"})


def _printable(text: str) -> bool:
    return not any(ord(character) < 0x20 or ord(character) == 0x7F for character in text)


@frozen
class BackendAccount:
    """
    A user name and password a backend accepts.

    @raise ValueError: C{user} is empty, or either holds a control character (which could end
        the command line and smuggle another one to the backend).
    """

    user: str
    password: str = field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.user or not _printable(self.user) or not _printable(self.password):
            raise ValueError("backend user names and passwords are text without control characters")


@frozen(eq=False)
class ProxyLogin:
    """
    How an FTP listener logs clients in itself (L{twisted_rp.ftp.FTPProxyFactory}'s C{login}).

    The backend account of an accepted user is the first of: its entry in C{users}, the
    shared C{account}, or (C{pass_through}) the user name and password the client gave.  A
    user the checker accepts but who has none of these is refused like a wrong password.

    @ivar checker: checks L{IUsernamePassword} credentials (C{bytes}, UTF-8); its avatar id
        (C{bytes} or C{str}) names the user for the mapping, stickiness and logs.
    @ivar account: the backend account of users without one in C{users}: a shared service
        account.
    @ivar users: backend accounts by proxy user name.
    @ivar pass_through: users without an entry in C{users} log in to the backend with the
        user name and password they gave the proxy; excludes C{account}.
    @ivar allow_anonymous: pass anonymous logins (L{ANONYMOUS_USERS}) on unchecked, as given,
        for the backend to decide; otherwise they are refused.
    @ivar failure_delay: seconds before a refused login is answered C{530}; the session waits.
    @ivar max_failures: refused logins after which the session is closed; 0 for no limit.
    """

    checker: ICredentialsChecker
    account: BackendAccount | None = None
    users: Mapping[str, BackendAccount] = field(factory=dict)
    pass_through: bool = False
    allow_anonymous: bool = False
    failure_delay: float = 1.0
    max_failures: int = 3

    def __attrs_post_init__(self) -> None:
        """
        @raise ValueError: the checker does not take user names and passwords, C{account}
            and C{pass_through} are both given, no user could ever get a backend account, or
            a limit is negative.
        """
        if IUsernamePassword not in self.checker.credentialInterfaces:
            raise ValueError(f"{self.checker!r} does not check user names and passwords")
        if self.account is not None and self.pass_through:
            raise ValueError("account and pass_through exclude each other")
        if self.account is None and not self.users and not self.pass_through:
            raise ValueError("give backend accounts: account, users or pass_through")
        if not 0 <= self.failure_delay < float("inf") or self.max_failures < 0:
            raise ValueError("failure_delay and max_failures must not be negative")

    def account_for(self, user: str, given_user: str, given_password: str) -> BackendAccount | None:
        """
        The backend account of C{user} (the checker's name for it), who logged in to the proxy
        as C{given_user} with C{given_password}; L{None} when it has none.
        """
        mapped = self.users.get(user)
        if mapped is not None:
            return mapped
        if self.account is not None:
            return self.account
        if self.pass_through:
            return BackendAccount(given_user, given_password)
        return None


def is_anonymous(user: str) -> bool:
    """Whether C{user} asks for anonymous FTP."""
    return user.lower() in ANONYMOUS_USERS


class ProxyLoginMixin(LoginMixin):
    """
    L{LoginMixin} with the proxy's own login, used when the factory has a L{ProxyLogin}.

    @ivar login_failures: the session's refused logins so far.
    """

    def _init_login(self) -> None:
        super()._init_login()
        self.login_failures = 0
        self._given_user: str | None = None
        self._failure_wait: Deferred[None] | None = None

    def reset_login(self) -> None:
        self._given_user = None
        super().reset_login()

    def stop_login(self) -> None:
        """The client is gone: stop waiting to refuse its login."""
        wait, self._failure_wait = self._failure_wait, None
        if wait is not None:
            wait.cancel()

    def relogin_refusal(self, command: Command) -> Reply:
        """The answer to C{USER}, C{PASS}, C{ACCT} or C{REIN} after a proxy-side login."""
        if command.verb == "USER":
            return Reply.of(530, "Can't change to another user.")
        if command.verb == "PASS":
            return Reply.of(503, "Already logged in.")
        if command.verb == "ACCT":
            return Reply.of(202, "ACCT not needed.")
        return Reply.of(502, "REIN not implemented.")

    async def proxy_login_command(self, command: Command) -> None:
        """Answer C{USER} or C{PASS} before login, the proxy checking the credentials."""
        login = self.factory.login
        assert login is not None
        if command.verb == "USER":
            self._given_user = command.argument
            self.send_reply(Reply.of(331, "Please specify the password."))
            return
        given_user, self._given_user = self._given_user, None
        if given_user is None:
            self.send_reply(Reply.of(503, "Login with USER first."))
            return
        checked = await self._check(login, given_user, command.argument)
        if self._closed:
            return
        if checked is None:
            await self._refuse(login, given_user)
            return
        user, account = checked
        self.user = user
        self._login_commands = [Command("USER", account.user), Command("PASS", account.password)]
        reply = await self._open_session(frozenset())
        if reply is None:
            return
        lease = self.lease
        backend = "?" if lease is None else lease.backend.name
        if reply.code == 230:
            self._logged_in()
            log.info(
                "FTP: {user} from {client} logged in on {backend} as {account}",
                user=user,
                client=self.client_ip,
                backend=backend,
                account=account.user,
            )
            self.send_reply(Reply.of(230, "Login successful."))
            return
        # The client's credentials were right: a configuration problem, not a failure to count.
        log.warn(
            "FTP: backend {backend} refused the login of {user} as {account}: {reply}",
            backend=backend,
            user=user,
            account=account.user,
            reply=reply.text[:120],
        )
        self.reset_login()
        self.send_reply(Reply.of(530, "Login incorrect."))

    async def _check(
        self, login: ProxyLogin, given_user: str, password: str
    ) -> tuple[str, BackendAccount] | None:
        """The user's name and backend account, or L{None} for a refused login."""
        if is_anonymous(given_user):
            if not login.allow_anonymous:
                return None
            # Every anonymous client is one user to stickiness, whatever the spelling.
            return "anonymous", BackendAccount(given_user, password)
        credentials = UsernamePassword(
            given_user.encode("utf-8", "surrogateescape"),
            password.encode("utf-8", "surrogateescape"),
        )
        try:
            avatar = await maybeDeferred(login.checker.requestAvatarId, credentials)
        except LoginFailed:
            return None
        if isinstance(avatar, bytes):
            user = avatar.decode("utf-8", "surrogateescape")
        else:
            user = avatar if isinstance(avatar, str) else given_user
        account = login.account_for(user, given_user, password)
        if account is None:
            log.warn(
                "FTP: {user} from {client} has no backend account: refused",
                user=user,
                client=self.client_ip,
            )
        return None if account is None else (user, account)

    async def _refuse(self, login: ProxyLogin, given_user: str) -> None:
        self.login_failures += 1
        limit = login.max_failures
        log.info(
            "FTP: refused the login of {user!r} from {client} ({failures} of {limit})",
            user=given_user[:64],
            client=self.client_ip,
            failures=self.login_failures,
            limit=limit or "no limit",
        )
        if login.failure_delay > 0:
            wait: Deferred[None] = deferLater(self.factory.clock, login.failure_delay)
            self._failure_wait = wait
            try:
                await wait
            except CancelledError:
                return
            finally:
                self._failure_wait = None
        if self._closed:
            return
        refusal = Reply.of(530, "Login incorrect.")
        if limit and self.login_failures >= limit:
            log.warn(
                "FTP: closing the session of {client} after {failures} refused logins",
                client=self.client_ip,
                failures=self.login_failures,
            )
            self.reply_and_close(refusal)
            return
        self.send_reply(refusal)


__all__ = [
    "ANONYMOUS_USERS",
    "RELOGIN_COMMANDS",
    "BackendAccount",
    "ProxyLogin",
    "ProxyLoginMixin",
    "is_anonymous",
]
