"""
Tests for L{twisted_rp.auth.basic} and L{twisted_rp.auth.WatchedFile}.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import bcrypt
from passlib.hash import sha512_crypt  # type: ignore[import-untyped]
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IAnonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.auth import WatchedFile
from twisted_rp.auth.basic import (
    BasicAuthenticator,
    HtpasswdChecker,
    parse_basic,
    parse_htpasswd,
    verify_password,
)
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IAuthenticator

#: The test vectors of the SHA-crypt specification ("Hello world!", salt "saltstring").
SHA256_VECTOR = b"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
SHA512_VECTOR = (
    b"$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcb"
    b"YEdFCoEOfaS35inz1"
)


def basic(user: bytes, password: bytes) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Basic " + base64.b64encode(user + b":" + password))


def make_request(*headers: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"app.example"), *headers))
    return ProxyRequest(
        head=head, client_ip="192.0.2.1", client_port=40000, scheme="https", host="app.example"
    )


def bcrypt_hash(password: bytes, prefix: bytes = b"$2b$") -> bytes:
    # Cost 4, the lowest, keeps the tests fast; checking is the same code at any cost.
    return prefix + bcrypt.hashpw(password, bcrypt.gensalt(4))[4:]


class ParseTests(SynchronousTestCase):
    def test_parse_basic(self) -> None:
        self.assertEqual(parse_basic(basic(b"alice", b"s:e:c")[1]), (b"alice", b"s:e:c"))
        self.assertEqual(parse_basic(b"bAsIc  " + base64.b64encode(b"a:")), (b"a", b""))
        self.assertIsNone(parse_basic(b"Bearer abc"))
        self.assertIsNone(parse_basic(b"Basic !!notbase64"))
        self.assertIsNone(parse_basic(b"Basic " + base64.b64encode(b"no colon")))
        self.assertIsNone(parse_basic(b"Basic " + base64.b64encode(b"a\r\nb:pw")))

    def test_parse_htpasswd(self) -> None:
        entries = parse_htpasswd(
            b"# users\n\nalice:"
            + SHA512_VECTOR
            + b"\r\nbob:$apr1$abc$def\ncarol:"
            + SHA256_VECTOR
            + b"\n"
        )
        self.assertEqual(entries, {b"alice": SHA512_VECTOR, b"carol": SHA256_VECTOR})
        self.assertRaises(ValueError, parse_htpasswd, b"alice\n")

    def test_verify_password(self) -> None:
        self.assertTrue(verify_password(b"Hello world!", SHA256_VECTOR))
        self.assertTrue(verify_password(b"Hello world!", SHA512_VECTOR))
        self.assertFalse(verify_password(b"Hello world?", SHA512_VECTOR))
        hashed = bcrypt_hash(b"pw")
        self.assertTrue(verify_password(b"pw", hashed))
        self.assertTrue(verify_password(b"pw", b"$2y$" + hashed[4:]))
        self.assertFalse(verify_password(b"pW", hashed))
        self.assertFalse(verify_password(b"x" * 100, hashed))
        self.assertFalse(verify_password(b"pw", b"$2b$04$broken"))
        self.assertFalse(verify_password(b"pw", b"pw"))


class WatchedFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(b"one")
        self.clock = Clock()
        self.watched = WatchedFile(self.path, self.parse, self.clock, check_interval=1.0)

    def write(self, content: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(content)

    @staticmethod
    def parse(content: bytes) -> str:
        if content == b"broken":
            raise ValueError("broken")
        return content.decode()

    def test_reload_after_interval(self) -> None:
        self.write(b"two!")
        self.assertEqual(self.watched.current(), "one")
        self.clock.advance(1)
        self.assertEqual(self.watched.current(), "two!")

    def test_replaced_by_rename(self) -> None:
        other = self.path + ".new"
        with open(other, "wb") as f:
            f.write(b"new")
        os.replace(other, self.path)
        self.clock.advance(1)
        self.assertEqual(self.watched.current(), "new")

    def test_bad_or_missing_file_keeps_content(self) -> None:
        self.write(b"broken")
        self.clock.advance(1)
        self.assertEqual(self.watched.current(), "one")
        os.remove(self.path)
        self.clock.advance(1)
        self.assertEqual(self.watched.current(), "one")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_initial_errors_raise(self) -> None:
        self.write(b"broken")
        self.assertRaises(ValueError, WatchedFile, self.path, self.parse, self.clock)
        self.assertRaises(OSError, WatchedFile, self.path + ".missing", self.parse, self.clock)


class CountingReactor:
    """The real reactor, counting thread pool use, with time from a L{Clock}."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.threaded = 0

    def seconds(self) -> float:
        return self.clock.seconds()

    def getThreadPool(self) -> Any:
        self.threaded += 1
        return reactor.getThreadPool()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class HtpasswdCheckerTests(TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write(
            b"alice:" + bcrypt_hash(b"alice pw", b"$2y$") + b"\n"
            b"bob:" + sha512_crypt.using(rounds=1000).hash("bob pw").encode() + b"\n"
            b"carol:" + SHA256_VECTOR + b"\n"
            b"dave:$apr1$Q6ZYh...$RV.fJ2rM5hg4m2bJmuLdR/\n"
        )
        self.reactor = CountingReactor(Clock())
        self.checker = HtpasswdChecker(self.path, self.reactor, check_interval=0)

    def write(self, content: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(content)

    def check(self, user: bytes, password: bytes) -> Deferred[Any]:
        return self.checker.requestAvatarId(UsernamePassword(user, password))

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    async def test_accepts_each_scheme(self) -> None:
        self.assertEqual(await self.check(b"alice", b"alice pw"), b"alice")
        self.assertEqual(await self.check(b"bob", b"bob pw"), b"bob")
        self.assertEqual(await self.check(b"carol", b"Hello world!"), b"carol")

    async def test_refuses(self) -> None:
        for user, password in [
            (b"alice", b"bob pw"),
            (b"bob", b"alice pw"),
            (b"nobody", b"alice pw"),
            (b"dave", b"dave pw"),
            (b"alice", b"alice pw" * 20),
        ]:
            with self.assertRaises(UnauthorizedLogin):
                await self.check(user, password)

    async def test_success_remembered(self) -> None:
        await self.check(b"alice", b"alice pw")
        self.assertEqual(self.reactor.threaded, 1)
        await self.check(b"alice", b"alice pw")
        self.assertEqual(self.reactor.threaded, 1)
        # A wrong password is checked again, every time.
        with self.assertRaises(UnauthorizedLogin):
            await self.check(b"alice", b"alice pW")
        self.assertEqual(self.reactor.threaded, 2)
        self.reactor.clock.advance(300)
        await self.check(b"alice", b"alice pw")
        self.assertEqual(self.reactor.threaded, 3)

    async def test_file_changes_take_effect(self) -> None:
        await self.check(b"alice", b"alice pw")
        self.write(
            b"alice:" + bcrypt_hash(b"new alice pw") + b"\nerin:" + bcrypt_hash(b"e") + b"\n"
        )
        with self.assertRaises(UnauthorizedLogin):
            await self.check(b"alice", b"alice pw")
        self.assertEqual(await self.check(b"alice", b"new alice pw"), b"alice")
        self.assertEqual(await self.check(b"erin", b"e"), b"erin")
        with self.assertRaises(UnauthorizedLogin):
            await self.check(b"bob", b"bob pw")


@implementer(ICredentialsChecker)
class BrokenChecker:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: object) -> Deferred[bytes]:
        return fail(RuntimeError("database down"))


@implementer(ICredentialsChecker)
class AnonymousChecker:
    credentialInterfaces = (IAnonymous,)

    def requestAvatarId(self, credentials: object) -> Deferred[bytes]:
        raise NotImplementedError()


class BasicAuthenticatorTests(TestCase):
    def setUp(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.auth = BasicAuthenticator('Staff "only"', checker)

    def assertChallenged(self, verdict: object) -> None:
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 401)
        self.assertEqual(
            verdict.headers.get(b"www-authenticate"),
            b'Basic realm="Staff \\"only\\"", charset="UTF-8"',
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthenticator, self.auth))

    def test_missing_or_malformed_credentials_challenged(self) -> None:
        self.assertChallenged(self.auth.authenticate(make_request()))
        self.assertChallenged(self.auth.authenticate(make_request((b"Authorization", b"Basic"))))
        self.assertChallenged(
            self.auth.authenticate(make_request(basic(b"alice", b"secret"), basic(b"a", b"b")))
        )

    async def test_accepted(self) -> None:
        request = make_request(basic(b"alice", b"secret"))
        self.assertIsNone(await self.auth.authenticate(request))
        self.assertEqual(request.identity, "alice")
        self.assertIn(b"Authorization", request.head.headers)

    async def test_remove_header(self) -> None:
        auth = BasicAuthenticator(
            "r", InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"), remove_header=True
        )
        request = make_request(basic(b"alice", b"secret"))
        self.assertIsNone(await auth.authenticate(request))
        self.assertNotIn(b"Authorization", request.head.headers)

    async def test_wrong_password_challenged(self) -> None:
        request = make_request(basic(b"alice", b"guess"))
        self.assertChallenged(await self.auth.authenticate(request))
        self.assertIsNone(request.identity)

    async def test_checker_error_fails(self) -> None:
        auth = BasicAuthenticator("r", BrokenChecker())
        with self.assertRaises(RuntimeError):
            await auth.authenticate(make_request(basic(b"alice", b"secret")))

    def test_checker_must_take_passwords(self) -> None:
        self.assertRaises(ValueError, BasicAuthenticator, "r", AnonymousChecker())

    def test_realm_with_line_break(self) -> None:
        self.assertRaises(
            ValueError, BasicAuthenticator, "a\r\nb", InMemoryUsernamePasswordDatabaseDontUse()
        )

    async def test_with_htpasswd(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"zo\xc3\xab:" + bcrypt_hash(b"pa\xc3\x9f") + b"\n")
        auth = BasicAuthenticator('Staff "only"', HtpasswdChecker(path))
        request = make_request(basic("zoë".encode(), "paß".encode()))
        self.assertIsNone(await auth.authenticate(request))
        self.assertEqual(request.identity, "zoë")
        self.assertChallenged(await auth.authenticate(make_request(basic(b"zo\xc3\xab", b"pass"))))
