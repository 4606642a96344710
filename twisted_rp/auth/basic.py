"""
HTTP Basic authentication (RFC 7617) against a twisted.cred checker, and an htpasswd checker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt  # type: ignore[import-untyped]
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from twisted_rp.auth import WatchedFile, quoted_string
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.interfaces import IAuthenticator

_log = Logger()

_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
_SHA256_CRYPT_PREFIX = b"$5$"
_SHA512_CRYPT_PREFIX = b"$6$"

#: Checked for unknown users, so that they cost as long as known ones (no user enumeration).
_DUMMY_BCRYPT = b"$2b$10$mIsNg2T.DOtIlNVm23xSQuFS8nL17iwphIW9Wdk81UIIRgCbllWl6"


def parse_basic(value: bytes) -> tuple[bytes, bytes] | None:
    """
    The user and password of an C{Authorization: Basic} value, or L{None} when it is not
    one, is not valid base64, has no colon, or the user name holds a control character.
    """
    scheme, _, token = value.strip(b" \t").partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(b" \t"), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon or any(c < 0x20 or c == 0x7F for c in user):
        return None
    return user, password


def verify_password(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} matches C{hashed}, a bcrypt (C{$2a$}, C{$2b$}, C{$2y$}) or SHA-256/512
    crypt (C{$5$}, C{$6$}) hash.  Slow by design: call it off the reactor thread.
    """
    try:
        if hashed.startswith(_BCRYPT_PREFIXES):
            return bcrypt.checkpw(password, hashed)
        if hashed.startswith(_SHA512_CRYPT_PREFIX):
            return bool(sha512_crypt.verify(password, hashed))
        if hashed.startswith(_SHA256_CRYPT_PREFIX):
            return bool(sha256_crypt.verify(password, hashed))
    except ValueError:
        # bcrypt refuses passwords over 72 bytes; a malformed hash is no match either.
        return False
    return False


def supported_hash(hashed: bytes) -> bool:
    """Whether L{verify_password} knows C{hashed}'s scheme."""
    return hashed.startswith((*_BCRYPT_PREFIXES, _SHA256_CRYPT_PREFIX, _SHA512_CRYPT_PREFIX))


def parse_htpasswd(content: bytes) -> dict[bytes, bytes]:
    """
    The C{user: hash} entries of an htpasswd file.  Blank lines and C{#} comments are
    skipped; so are entries with schemes L{verify_password} does not know (Apache MD5
    C{$apr1$}, C{{SHA}}, DES crypt, plain text), with a warning naming the line: those users
    cannot log in.

    @raise ValueError: for a line that is not C{user:hash}.
    """
    entries: dict[bytes, bytes] = {}
    for number, raw_line in enumerate(content.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, colon, hashed = line.partition(b":")
        if not colon or not user or not hashed:
            raise ValueError(f"line {number} is not user:hash")
        if not supported_hash(hashed):
            _log.warn(
                "htpasswd line {number} ({user}): unsupported hash scheme, use bcrypt "
                "(htpasswd -B) or SHA-256/512 crypt",
                number=number,
                user=user.decode("utf-8", "replace"),
            )
            continue
        entries[user] = hashed
    return entries


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Checks user names and passwords against an htpasswd file.

    The file is reloaded when it changes (see L{WatchedFile}).  Hashes are checked in the
    reactor's thread pool, since bcrypt takes on the order of 100 ms.  Since browsers send the
    same credentials with every request, a successful check is remembered for C{cache_ttl}
    seconds (keyed by a keyed hash of user, password and stored hash, so that changing a
    password in the file takes effect at once); set it to 0 to check every time.

    @ivar credentialInterfaces: L{IUsernamePassword} only.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        path: str | FilePath[str],
        reactor: Any = None,
        check_interval: float = 1.0,
        cache_ttl: float = 300.0,
        cache_size: int = 1024,
    ) -> None:
        """
        @param path: the htpasswd file.
        @param reactor: provides C{IReactorTime} and C{IReactorThreads}; the global reactor
            by default.
        @param check_interval: how often at most to look whether the file changed, seconds.
        @raise OSError: the file cannot be read.
        @raise ValueError: the file does not parse.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._file = WatchedFile(path, parse_htpasswd, reactor, check_interval)
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache_key = os.urandom(32)
        self._verified: dict[bytes, float] = {}

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        """
        @return: a L{Deferred} firing with the user name (C{bytes}), or failing with
            L{UnauthorizedLogin}.
        """
        user: bytes = credentials.username
        password: bytes = credentials.password
        hashed = self._file.current().get(user)
        if hashed is None:
            verifying = self._verify(password, _DUMMY_BCRYPT)
            return verifying.addCallback(lambda _: self._refuse())
        cache_key = hmac.new(
            self._cache_key, b"\0".join((user, password, hashed)), hashlib.sha256
        ).digest()
        now = self._reactor.seconds()
        expiry = self._verified.get(cache_key)
        if expiry is not None:
            if now < expiry:
                return succeed(user)
            del self._verified[cache_key]

        def checked(matches: bool) -> bytes | tuple[()]:
            if not matches:
                self._refuse()
            self._remember(cache_key)
            return user

        return self._verify(password, hashed).addCallback(checked)

    def _verify(self, password: bytes, hashed: bytes) -> Deferred[bool]:
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), verify_password, password, hashed
        )

    def _refuse(self) -> bytes:
        raise UnauthorizedLogin("wrong user name or password")

    def _remember(self, cache_key: bytes) -> None:
        if self._cache_ttl <= 0 or self._cache_size <= 0:
            return
        verified = self._verified
        while len(verified) >= self._cache_size:
            del verified[next(iter(verified))]
        verified[cache_key] = self._reactor.seconds() + self._cache_ttl


@implementer(IAuthenticator)
class BasicAuthenticator:
    """
    HTTP Basic authentication: the user name of the credentials a checker accepts becomes
    C{request.identity}; missing or refused credentials get 401 with a
    C{WWW-Authenticate: Basic} challenge for C{realm}.

    @ivar realm: the protection space the browser shows and keys its saved passwords by.
    """

    def __init__(
        self, realm: str, checker: ICredentialsChecker, remove_header: bool = False
    ) -> None:
        """
        @param checker: any twisted.cred checker of L{IUsernamePassword} credentials; its
            avatar id (C{bytes} or C{str}) is the identity.
        @param remove_header: drop C{Authorization} before the request goes to the backend
            (keep it when the backend checks it again).
        @raise ValueError: C{realm} holds a control character, or C{checker} does not take
            user names and passwords.
        """
        if IUsernamePassword not in checker.credentialInterfaces:
            raise ValueError(f"{checker!r} does not check user names and passwords")
        self.realm = realm
        self._challenge = b"Basic realm=" + quoted_string(realm) + b', charset="UTF-8"'
        self._checker = checker
        self._remove_header = remove_header

    def __repr__(self) -> str:
        return f"BasicAuthenticator(realm={self.realm!r}, checker={self._checker!r})"

    def challenge(self) -> ErrorResponse:
        """The 401 response asking for credentials."""
        return ErrorResponse(
            401, b"401 Unauthorized\n", Headers.of((b"WWW-Authenticate", self._challenge))
        )

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | Deferred[ErrorResponse | None]:
        headers = request.head.headers
        values = headers.get_all(b"authorization")
        credentials = parse_basic(values[0]) if len(values) == 1 else None
        if credentials is None:
            return self.challenge()
        user, password = credentials
        checking = maybeDeferred(self._checker.requestAvatarId, UsernamePassword(user, password))

        def accepted(avatar_id: bytes | str) -> None:
            if isinstance(avatar_id, bytes):
                avatar_id = avatar_id.decode("utf-8", "replace")
            request.identity = avatar_id
            if self._remove_header:
                headers.remove(b"authorization")

        def refused(failure: Failure) -> ErrorResponse:
            failure.trap(LoginFailed)
            _log.info(
                "basic auth refused {user} from {client}",
                user=user.decode("utf-8", "replace"),
                client=request.client_ip,
            )
            return self.challenge()

        return checking.addCallbacks(accepted, refused)
