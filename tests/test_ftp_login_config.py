"""
The C{[listener.login]} table of ftp listeners (proxy-side FTP login, see
L{tests.test_ftp_login_proxy}): reading it, its errors at their key paths, building the
L{ProxyLogin} with its htpasswd file; and L{ProxyLogin}'s own checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import bcrypt
from twisted.cred.checkers import AllowAnonymousAccess, ICredentialsChecker
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.test_config import MINIMAL_FTP, parse
from tests.test_ftp_login_proxy import SERVICE, checker
from twisted_rp.config import ConfigError
from twisted_rp.config_listeners import FTPLoginConfig
from twisted_rp.ftp import BackendAccount, ProxyLogin
from twisted_rp.service import build_ftp_factory, build_pools, check_files


class ProxyLoginValidationTests(SynchronousTestCase):
    """L{ProxyLogin} and L{BackendAccount} refuse settings that cannot work."""

    def test_checker_must_check_passwords(self) -> None:
        self.assertRaises(ValueError, ProxyLogin, AllowAnonymousAccess(), account=SERVICE)

    def test_accounts(self) -> None:
        self.assertRaises(ValueError, ProxyLogin, checker())
        self.assertRaises(ValueError, ProxyLogin, checker(), account=SERVICE, pass_through=True)

    def test_limits(self) -> None:
        self.assertRaises(ValueError, ProxyLogin, checker(), account=SERVICE, failure_delay=-1)
        self.assertRaises(ValueError, ProxyLogin, checker(), account=SERVICE, max_failures=-1)

    def test_no_command_smuggling(self) -> None:
        for user, password in (("svc\r\nDELE x", "p"), ("svc", "p\nDELE x"), ("", "p")):
            self.assertRaises(ValueError, BackendAccount, user, password)

    def test_password_not_in_repr(self) -> None:
        self.assertNotIn("svc-pw", repr(SERVICE))
        self.assertNotIn("svc-pw", repr(FTPLoginConfig("f", account=SERVICE)))


def with_login(table: str, listener: str = MINIMAL_FTP) -> str:
    """C{listener} with C{[listener.login]} holding C{table}'s lines."""
    head, pools = listener.split("\n[pool.ftp]\n")
    return f"{head}\n[listener.login]\n{table}\n[pool.ftp]\n{pools}"


class LoginConfigTests(SynchronousTestCase):
    """The C{[listener.login]} table of an ftp listener."""

    def test_round_trip(self) -> None:
        text = with_login(
            'htpasswd = "ftp.htpasswd"\nbackend_user = "svc"\nbackend_password = "svc-pw"\n'
            "allow_anonymous = true\nfailure_delay = 0.5\nmax_failures = 5\n"
            '[listener.login.users.dave]\nuser = "dave-files"\npassword = "d"\n'
            '[listener.login.users.erin]\npassword = ""\n'
        )
        (listener,) = parse(text).listeners
        assert listener.ftp is not None
        self.assertEqual(
            listener.ftp.login,
            FTPLoginConfig(
                "ftp.htpasswd",
                account=SERVICE,
                users=(
                    ("dave", BackendAccount("dave-files", "d")),
                    ("erin", BackendAccount("erin", "")),
                ),
                allow_anonymous=True,
                failure_delay=0.5,
                max_failures=5,
            ),
        )

    def test_defaults_are_proxy_logins(self) -> None:
        (listener,) = parse(with_login('htpasswd = "f"\npass_through = true\n')).listeners
        login = listener.ftp.login if listener.ftp is not None else None
        assert login is not None
        default = ProxyLogin(checker(), pass_through=True)
        self.assertEqual(
            (login.allow_anonymous, login.failure_delay, login.max_failures, login.account),
            (default.allow_anonymous, default.failure_delay, default.max_failures, None),
        )
        self.assertEqual((default.failure_delay, default.max_failures), (1.0, 3))
        self.assertFalse(default.allow_anonymous)
        (plain,) = parse(MINIMAL_FTP).listeners
        self.assertIsNone(plain.ftp.login if plain.ftp is not None else "no ftp")

    def assertError(self, text: str, key: str, message: str | None = None) -> ConfigError:
        error = self.assertRaises(ConfigError, parse, text)
        self.assertEqual((error.source, error.key), ("test.toml", key), str(error))
        if message is not None:
            self.assertIn(message, error.message)
        return error

    def test_errors_name_the_key(self) -> None:
        key = "listener[0].login"
        shared = 'backend_user = "svc"\nbackend_password = "p"\n'
        cases = [
            ("pass_through = true\n", f"{key}.htpasswd", "required"),
            ('htpasswd = "f"\n', key, "no backend account"),
            ('htpasswd = "f"\nbackend_user = "svc"\n', f"{key}.backend_user", "backend_password"),
            ('htpasswd = "f"\nbackend_password = "p"\n', f"{key}.backend_password", "backend_user"),
            (f'htpasswd = "f"\n{shared}pass_through = true\n', f"{key}.pass_through", "excludes"),
            ('htpasswd = "f"\nbackend_user = "a\\r\\nDELE x"\nbackend_password = "p"\n',
             f"{key}.backend_user", "control"),
            ('htpasswd = "f"\nbackend_user = "s"\nbackend_password = 1\n',
             f"{key}.backend_password", None),
            (f'htpasswd = "f"\n{shared}failure_delay = -1\n', f"{key}.failure_delay", None),
            (f'htpasswd = "f"\n{shared}max_failures = 1.5\n', f"{key}.max_failures", None),
            (f'htpassword = "f"\n{shared}', f"{key}.htpassword", "did you mean 'htpasswd'"),
            ('htpasswd = "f"\n[listener.login.users.dave]\nuser = "d"\n',
             f"{key}.users.dave.password", "required"),
            ('htpasswd = "f"\n[listener.login.users.dave]\nusr = "d"\npassword = "p"\n',
             f"{key}.users.dave.usr", "unknown key"),
            ('htpasswd = "f"\nusers = { dave = "x" }\n', f"{key}.users.dave", "table"),
        ]  # fmt: skip
        for table, error_key, message in cases:
            with self.subTest(table=table):
                self.assertError(with_login(table), error_key, message)

    def test_documentation_example(self) -> None:
        """The example of docs/ftp.rst's "Proxy-side login" is valid and maps as it says."""
        text = (Path(__file__).resolve().parent.parent / "docs" / "ftp.rst").read_text()
        section = text.split("Proxy-side login\n----------------\n", 1)[1]
        match = re.search(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", section)
        assert match is not None
        block = "\n".join(line[3:] for line in match[1].splitlines())
        (listener,) = parse(block + "\n[[pool.files.backends]]\naddress = 'a:21'\n").listeners
        login = listener.ftp.login if listener.ftp is not None else None
        assert login is not None
        self.assertEqual(login.account, BackendAccount("svc-upload", "s3rvice-secret"))
        self.assertEqual(
            login.users, (("auditor", BackendAccount("svc-readonly", "r3adonly-secret")),)
        )

    def test_not_a_table(self) -> None:
        text = MINIMAL_FTP.replace('pool = "ftp"\n', 'pool = "ftp"\nlogin = "yes"\n', 1)
        self.assertError(text, "listener[0].login", "expected a table")

    def test_only_for_ftp(self) -> None:
        text = MINIMAL_FTP.replace('protocol = "ftp"', 'protocol = "tcp"')
        text = with_login('htpasswd = "f"\npass_through = true\n', text)
        self.assertError(text, "listener[0].login", 'only used with protocol = "ftp"')


class LoginServiceTests(SynchronousTestCase):
    """The htpasswd file is read when the factory is built, and by --check-config."""

    def config_text(self, htpasswd: str) -> str:
        return with_login(
            f"htpasswd = {htpasswd!r}\nbackend_user = 'svc'\nbackend_password = 'svc-pw'\n"
            "failure_delay = 0.25\n[listener.login.users.dave]\npassword = 'd'\n"
        )

    def test_factory_gets_the_login(self) -> None:
        path = self.mktemp()
        FilePath(path).setContent(b"carol:" + bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(4)))
        config = parse(self.config_text(path))
        check_files(config)
        clock = MemoryReactorClock()
        factory = build_ftp_factory(config, config.listeners[0], build_pools(config, clock), clock)
        login = factory.login
        assert login is not None
        self.assertEqual((login.account, login.failure_delay), (SERVICE, 0.25))
        self.assertEqual(login.users, {"dave": BackendAccount("dave", "d")})
        verifyObject(ICredentialsChecker, login.checker)

    def test_missing_or_bad_htpasswd(self) -> None:
        missing = self.mktemp()
        bad = self.mktemp()
        FilePath(bad).setContent(b"no colon here\n")
        for path in (missing, bad):
            config = parse(self.config_text(path))
            error = self.assertRaises(ConfigError, check_files, config)
            self.assertEqual(error.key, "listener[0].login.htpasswd")
            self.assertIn(repr(path), error.message)
