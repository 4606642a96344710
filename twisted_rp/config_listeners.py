"""
The C{[[listener]]} tables of the configuration file: HTTP, HTTPS (with their TLS settings),
TCP and FTP listeners.

Defaults come from the signatures of the classes the settings are given to, so the file, the
documentation and the library agree.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import attrs
from attrs import frozen

from twisted_rp.config_readers import (
    ConfigError,
    _boolean,
    _choice,
    _defaults,
    _endpoint,
    _expected,
    _integer,
    _Invalid,
    _list_of,
    _network,
    _number,
    _Section,
    _string,
)
from twisted_rp.ftp.control import BACKEND_PASSIVE_MODES, FTPProxyFactory
from twisted_rp.ftp.proxylogin import BackendAccount, ProxyLogin, _printable
from twisted_rp.settings import Network
from twisted_rp.tcp.relay import TCPProxyFactory
from twisted_rp.tls import CertificateFiles, ServerTLS

PROTOCOLS = frozenset({"http", "https", "tcp", "ftp"})
TLS_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})
CLIENT_CERT_MODES = frozenset({"none", "optional", "required"})
SEND_PROXY = frozenset({"v1", "v2"})
_TCP_DEFAULTS = _defaults(TCPProxyFactory)
_FTP_DEFAULTS = _defaults(FTPProxyFactory)
_FTP_LOGIN_DEFAULTS = _defaults(ProxyLogin)
#: The lowest port a passive range may use: below are the privileged, well-known ports.
MIN_PASSIVE_PORT = 1024
_SERVER_TLS_DEFAULTS = _defaults(ServerTLS)

_HSTS = re.compile(r"[\x20-\x7e]*\Z")
_HSTS_MAX_AGE = re.compile(r"(?:^|;)\s*max-age\s*=\s*\"?\d+\"?\s*(?:;|$)", re.IGNORECASE)


@frozen
class ListenerTLSConfig:
    """
    The TLS settings of an C{https} listener (see L{twisted_rp.tls.ServerTLS}).  Only their
    form is checked when the file is read; the files themselves are read when the service is
    built (L{twisted_rp.service.check_files}).

    @ivar certificates: the first is the default, for clients without SNI.
    @ivar min_version: one of L{TLS_VERSIONS}.
    @ivar max_version: one of L{TLS_VERSIONS}, or L{None} for the newest.
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2.
    @ivar client_certs: one of L{CLIENT_CERT_MODES}.
    @ivar client_ca_files: the CAs client certificates must chain to.
    @ivar hsts: the C{Strict-Transport-Security} value added to responses; L{None} for none.
    @ivar reload_interval: seconds between checks of the files for changes; 0 reloads only on
        SIGHUP.
    """

    certificates: tuple[CertificateFiles, ...]
    min_version: str = _SERVER_TLS_DEFAULTS["min_version"]
    max_version: str | None = _SERVER_TLS_DEFAULTS["max_version"]
    ciphers: str = _SERVER_TLS_DEFAULTS["ciphers"]
    client_certs: str = _SERVER_TLS_DEFAULTS["client_certs"]
    client_ca_files: tuple[str, ...] = ()
    hsts: str | None = None
    reload_interval: float = 5.0


@frozen
class FTPLoginConfig:
    """
    The proxy-side login of an C{ftp} listener (C{[listener.login]}, see
    L{twisted_rp.ftp.ProxyLogin}, whose defaults these are).  The file is read when the
    service is built (L{twisted_rp.service.check_files}).

    @ivar htpasswd: the htpasswd file of the users who may log in to the proxy.
    @ivar account: the shared backend account (C{backend_user}, C{backend_password}).
    @ivar users: backend accounts by proxy user name (C{[listener.login.users.NAME]}).
    @ivar pass_through: users without an entry in C{users} log in to the backend as they
        logged in to the proxy.
    @ivar allow_anonymous: pass anonymous logins on to the backend unchecked.
    @ivar failure_delay: seconds before a refused login is answered C{530}.
    @ivar max_failures: refused logins after which a session is closed; 0 for no limit.
    """

    htpasswd: str
    account: BackendAccount | None = None
    users: tuple[tuple[str, BackendAccount], ...] = ()
    pass_through: bool = False
    allow_anonymous: bool = _FTP_LOGIN_DEFAULTS["allow_anonymous"]
    failure_delay: float = _FTP_LOGIN_DEFAULTS["failure_delay"]
    max_failures: int = _FTP_LOGIN_DEFAULTS["max_failures"]

    def build(self, reactor: Any, source: str, key: str) -> ProxyLogin:
        """
        The L{ProxyLogin} these settings describe, checking logins against the htpasswd file.

        @param key: the table's key path, like C{listener[1].login}, for errors.
        @raise ConfigError: the htpasswd file cannot be read or does not parse.
        """
        from twisted_rp.auth.basic import HtpasswdChecker

        try:
            checker = HtpasswdChecker(self.htpasswd, reactor)
        except (OSError, ValueError) as error:
            raise ConfigError(source, f"{key}.htpasswd", f"{self.htpasswd!r}: {error}") from None
        return ProxyLogin(
            checker,
            account=self.account,
            users=dict(self.users),
            pass_through=self.pass_through,
            allow_anonymous=self.allow_anonymous,
            failure_delay=self.failure_delay,
            max_failures=self.max_failures,
        )


@frozen
class FTPListenerConfig:
    """
    The settings of an C{ftp} listener beyond its pool, TLS and idle timeout (see
    L{twisted_rp.ftp.FTPProxyFactory}, whose defaults these are).

    @ivar banner: the text of the proxy's C{220} greeting; several lines allowed.
    @ivar passive_ports: the lowest and highest port (inclusive) of the passive data range;
        L{None} for any free port.
    @ivar masquerade_address: the IPv4 address announced in passive replies, for a proxy behind
        NAT; L{None} for the address the client connected to.
    @ivar data_timeout: seconds a passive port waits for the client, and a data connection may
        go without a byte.
    @ivar transfer_timeout: the longest a whole transfer may take (then C{426}); 0 for none.
    @ivar max_sessions_per_ip: the most sessions one client address may hold; 0 for no limit.
    @ivar backend_passive: C{"epsv"} or C{"pasv"}: how backends are asked for data
        connections.
    @ivar show_backend_features: relay the backend's whole C{FEAT} list after login.
    @ivar implicit: implicit FTPS: TLS from the first byte (port 990 style); needs the
        listener's certificates.
    @ivar require_tls: refuse logins and transfers outside TLS (explicit FTPS, C{AUTH TLS});
        needs the listener's certificates.
    @ivar login: the proxy checks logins itself and logs in to backends with mapped
        accounts; L{None} relays each client's login to its backend.
    """

    banner: str = _FTP_DEFAULTS["banner"]
    passive_ports: tuple[int, int] | None = None
    masquerade_address: str | None = None
    data_timeout: float = _FTP_DEFAULTS["data_timeout"]
    transfer_timeout: float = _FTP_DEFAULTS["transfer_timeout"]
    max_sessions_per_ip: int = _FTP_DEFAULTS["max_sessions_per_ip"]
    backend_passive: str = _FTP_DEFAULTS["backend_passive"]
    show_backend_features: bool = _FTP_DEFAULTS["show_backend_features"]
    implicit: bool = False
    require_tls: bool = False
    login: FTPLoginConfig | None = None


@frozen
class ListenerConfig:
    """
    Where the proxy accepts connections.  The keys after C{endpoint} are for C{tcp} and
    C{ftp} listeners (see L{twisted_rp.tcp.TCPProxyFactory}); C{ftp} listeners have more in
    C{ftp}.

    @ivar protocol: one of L{PROTOCOLS}.
    @ivar endpoint: a Twisted server endpoint string such as C{tcp:8080:interface=127.0.0.1}.
    @ivar tls: the TLS settings of an C{https} listener, or of an C{ftp} listener offering
        FTPS; L{None} for the others.
    @ivar redirect_to_https: for an C{http} listener that only redirects every request to
        HTTPS, the port of the HTTPS URLs; L{None} for a listener that proxies.
    @ivar pool: the pool a C{tcp} or C{ftp} listener sends every connection to.
    @ivar send_proxy: C{"v1"} or C{"v2"} to send backends a PROXY header; L{None} for none.
    @ivar accept_proxy: clients send a PROXY header first; only C{trusted_proxies} may connect.
    @ivar idle_timeout: seconds without traffic before a session is closed; 0 for no limit.
        An C{ftp} listener's default is the FTP proxy's (a control connection is idle outside
        transfers).
    @ivar ftp: the FTP settings of an C{ftp} listener; L{None} for the others.
    @ivar allow: client networks allowed to use the listener (empty: all).
    @ivar deny: client networks refused, whatever C{allow} says.
    """

    name: str
    protocol: str
    endpoint: str
    pool: str | None = None
    send_proxy: str | None = None
    accept_proxy: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    idle_timeout: float = _TCP_DEFAULTS["idle_timeout"]
    tls: ListenerTLSConfig | None = None
    redirect_to_https: int | None = None
    ftp: FTPListenerConfig | None = None
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @property
    def proxies_http(self) -> bool:
        """Whether the listener serves HTTP requests through the routes."""
        return self.protocol in ("http", "https") and self.redirect_to_https is None


_TCP_KEYS = ("pool", "send_proxy", "accept_proxy", "trusted_proxies", "idle_timeout")
_TLS_KEYS = (
    "certificates",
    "min_version",
    "max_version",
    "ciphers",
    "client_certs",
    "client_ca_files",
    "hsts",
    "reload_interval",
)
_FTP_KEYS = (
    "pool",
    "idle_timeout",
    "banner",
    "passive_ports",
    "masquerade_address",
    "data_timeout",
    "transfer_timeout",
    "max_sessions_per_ip",
    "backend_passive",
    "show_backend_features",
    "implicit",
    "require_tls",
    "login",
    # HSTS is an HTTP header; the rest of the TLS keys apply to FTPS as they are.
    *(key for key in _TLS_KEYS if key != "hsts"),
)
_KEYS_BY_PROTOCOL = {
    "tcp": _TCP_KEYS,
    "https": _TLS_KEYS,
    "http": ("redirect_to_https",),
    "ftp": _FTP_KEYS,
}


def _ciphers(value: object) -> str:
    text = _string(value)
    from OpenSSL import SSL

    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise _expected("an OpenSSL cipher string OpenSSL knows", value) from None
    return text


def _hsts(value: object) -> str:
    text = _string(value)
    if not _HSTS.match(text) or not _HSTS_MAX_AGE.search(text):
        raise _expected("a Strict-Transport-Security value like 'max-age=31536000'", value)
    return text


def _certificate_files(section: _Section) -> CertificateFiles:
    section.allow("cert", "key", "chain")
    cert = section.required("cert", _string)
    key = section.required("key", _string)
    return CertificateFiles(cert, key, **section.optional({"chain": _string}))


def _banner(value: object) -> str:
    text = _string(value)
    if any(ord(character) < 32 and character != "\n" for character in text):
        raise _expected("text without control characters (lines separated by \\n)", value)
    return text


def _passive_ports(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(port, int) and not isinstance(port, bool) for port in value)
        or not MIN_PASSIVE_PORT <= value[0] <= value[1] <= 65535
    ):
        raise _expected(
            f"[low, high]: two ports from {MIN_PASSIVE_PORT} to 65535, low first", value
        )
    return (value[0], value[1])


def _ipv4_address(value: object) -> str:
    try:
        if isinstance(value, str):
            return str(ipaddress.IPv4Address(value))
    except ValueError:
        pass
    # Passive replies (227) carry IPv4 addresses only; EPSV replies carry no address at all.
    raise _expected("an IPv4 address like '203.0.113.10'", value)


def _login_name(value: object) -> str:
    text = _string(value)
    if not _printable(text):
        raise _expected("a user name without control characters", value)
    return text


def _login_password(value: object) -> str:
    # Backends may have accounts without a password, so an empty one is allowed.
    if not isinstance(value, str) or not _printable(value):
        raise _Invalid("expected a string without control characters")
    return value


def _ftp_login(section: _Section) -> FTPLoginConfig:
    section.allow(
        "htpasswd",
        "backend_user",
        "backend_password",
        "users",
        "pass_through",
        "allow_anonymous",
        "failure_delay",
        "max_failures",
    )
    htpasswd = section.required("htpasswd", _string)
    options = section.optional(
        {
            "pass_through": _boolean,
            "allow_anonymous": _boolean,
            "failure_delay": _number(0.0),
            "max_failures": _integer(0),
        }
    )
    account = None
    if section.has("backend_user") or section.has("backend_password"):
        for key, other in (
            ("backend_user", "backend_password"),
            ("backend_password", "backend_user"),
        ):
            if not section.has(other):
                raise section.error(key, f"needs {other}: the two make the shared backend account")
        account = BackendAccount(
            section.required("backend_user", _login_name),
            section.required("backend_password", _login_password),
        )
        if options.get("pass_through"):
            raise section.error(
                "pass_through",
                "excludes backend_user and backend_password (the client's own login, or the "
                "shared account: choose one)",
            )
    users_table = section.table("users")
    users = []
    for name, table in section.named_tables("users"):
        if not name or not _printable(name):
            raise users_table.error(name, "expected a user name without control characters")
        table.allow("user", "password")
        user = table.optional({"user": _login_name}).get("user", name)
        users.append((name, BackendAccount(user, table.required("password", _login_password))))
    if account is None and not users and not options.get("pass_through"):
        raise ConfigError(
            section.source,
            section.path,
            "no backend account for anyone: give backend_user and backend_password, "
            "[users.NAME] tables, or pass_through = true",
        )
    return FTPLoginConfig(htpasswd, account=account, users=tuple(users), **options)


def _listener_tls(section: _Section) -> ListenerTLSConfig:
    if not section.has("certificates"):
        raise section.error("certificates", 'required with protocol = "https"')
    certificates = tuple(_certificate_files(table) for table in section.tables("certificates"))
    if not certificates:
        raise section.error("certificates", "at least one { cert = ..., key = ... } is required")
    options = section.optional(
        {
            "min_version": _choice(TLS_VERSIONS),
            "max_version": _choice(TLS_VERSIONS),
            "ciphers": _ciphers,
            "client_certs": _choice(CLIENT_CERT_MODES),
            "client_ca_files": _list_of(_string),
            "hsts": _hsts,
            "reload_interval": _number(0.0),
        }
    )
    tls = ListenerTLSConfig(certificates=certificates, **options)
    # Version names sort in order.
    if tls.max_version is not None and tls.max_version < tls.min_version:
        raise section.error(
            "max_version", f"{tls.max_version} is below min_version {tls.min_version}"
        )
    if tls.client_certs != "none" and not tls.client_ca_files:
        raise section.error(
            "client_ca_files",
            f"required with client_certs = {tls.client_certs!r}: the CAs client certificates "
            "must chain to",
        )
    if tls.client_certs == "none" and section.has("client_ca_files"):
        raise section.error(
            "client_ca_files", 'has no effect with client_certs = "none" (the default)'
        )
    return tls


def _ftp_listener(section: _Section, name: str, endpoint: str) -> ListenerConfig:
    tls = _listener_tls(section) if section.has("certificates") else None
    options = section.optional(
        {
            "banner": _banner,
            "passive_ports": _passive_ports,
            "masquerade_address": _ipv4_address,
            "data_timeout": _number(0.0, open_low=True),
            "transfer_timeout": _number(0.0),
            "max_sessions_per_ip": _integer(0),
            "backend_passive": _choice(frozenset(BACKEND_PASSIVE_MODES)),
            "show_backend_features": _boolean,
            "implicit": _boolean,
            "require_tls": _boolean,
        }
    )
    for key in ("implicit", "require_tls"):
        if options.get(key) and tls is None:
            raise section.error(key, "needs certificates: the proxy's FTPS certificates")
    if options.get("implicit") and section.has("require_tls"):
        raise section.error(
            "require_tls", "has no effect with implicit = true: every session is TLS"
        )
    if tls is None:
        for key in _TLS_KEYS:
            if section.has(key):
                raise section.error(key, "has no effect without certificates (FTPS)")
    idle = section.optional({"idle_timeout": _number(0.0)})
    login = _ftp_login(section.table("login")) if section.has("login") else None
    return ListenerConfig(
        name=name,
        protocol="ftp",
        endpoint=endpoint,
        pool=section.required("pool", _string),
        idle_timeout=idle.get("idle_timeout", _FTP_DEFAULTS["idle_timeout"]),
        tls=tls,
        ftp=FTPListenerConfig(**options, login=login),
    )


def read_listener(section: _Section) -> ListenerConfig:
    """A C{[[listener]]} table; C{allow} and C{deny} apply to every protocol."""
    access = section.optional({"allow": _list_of(_network), "deny": _list_of(_network)})
    return attrs.evolve(_read_listener(section), **access)


def _read_listener(section: _Section) -> ListenerConfig:
    protocol = section.required("protocol", _choice(PROTOCOLS))
    mine = _KEYS_BY_PROTOCOL[protocol]
    for key in section.names():
        owners = [f'"{other}"' for other, keys in _KEYS_BY_PROTOCOL.items() if key in keys]
        if owners and key not in mine:
            raise section.error(
                key, f"only used with protocol = {' or '.join(owners)}, not {protocol!r}"
            )
    section.allow("name", "protocol", "endpoint", "allow", "deny", *mine)
    name = section.required("name", _string)
    endpoint = section.required("endpoint", _endpoint)
    if protocol == "http":
        redirect = section.optional({"redirect_to_https": _integer(1, 65535)})
        return ListenerConfig(name=name, protocol=protocol, endpoint=endpoint, **redirect)
    if protocol == "https":
        tls = _listener_tls(section)
        return ListenerConfig(name=name, protocol=protocol, endpoint=endpoint, tls=tls)
    if protocol == "ftp":
        return _ftp_listener(section, name, endpoint)
    options = section.optional(
        {
            "send_proxy": _choice(SEND_PROXY),
            "accept_proxy": _boolean,
            "trusted_proxies": _list_of(_network),
            "idle_timeout": _number(0.0),
        }
    )
    if options.get("accept_proxy"):
        if not options.get("trusted_proxies"):
            raise section.error(
                "trusted_proxies", "accept_proxy needs the addresses of the balancers in front"
            )
    elif "trusted_proxies" in options:
        raise section.error("trusted_proxies", "has no effect without accept_proxy = true")
    pool = section.required("pool", _string)
    return ListenerConfig(name=name, protocol=protocol, endpoint=endpoint, pool=pool, **options)


__all__ = [
    "CLIENT_CERT_MODES",
    "MIN_PASSIVE_PORT",
    "PROTOCOLS",
    "SEND_PROXY",
    "TLS_VERSIONS",
    "FTPListenerConfig",
    "FTPLoginConfig",
    "ListenerConfig",
    "ListenerTLSConfig",
    "read_listener",
]
