"""
The configuration file: TOML parsed into immutable, fully validated objects.

Every problem is reported as a L{ConfigError} naming the file and the key path, so a user can
fix the file without reading a traceback.  The file format is described in
C{docs/configuration.rst}.  The C{[pool.NAME]} tables are read by L{twisted_rp.config_pools},
which builds on the readers here.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from attrs import frozen
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_rp.ftp.control import BACKEND_PASSIVE_MODES, FTPProxyFactory
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.settings import (
    HeaderPolicy,
    Limits,
    LogSettings,
    Network,
    ProxySettings,
    Timeouts,
)
from twisted_rp.tcp.relay import TCPProxyFactory
from twisted_rp.tls import CertificateFiles, ServerTLS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

if TYPE_CHECKING:
    # config_pools builds on this module's readers, so this module imports it only when used.
    from twisted_rp.config_pools import BackendConfig, PoolConfig

PROTOCOLS = frozenset({"http", "https", "tcp", "ftp"})
TLS_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})
CLIENT_CERT_MODES = frozenset({"none", "optional", "required"})
SEND_PROXY = frozenset({"v1", "v2"})
ACCESS_FORMATS = frozenset({"off", "combined", "json"})
MAX_WEIGHT = 1000
COMMAND_LINE = "<command line>"
_TCP_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(TCPProxyFactory).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
_FTP_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(FTPProxyFactory).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
#: The lowest port a passive range may use: below are the privileged, well-known ports.
MIN_PASSIVE_PORT = 1024
_SERVER_TLS_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(ServerTLS).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}

T = TypeVar("T")
Check = Callable[[object], Any]

_HOST_NAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\Z", re.IGNORECASE)
_ADDRESS = re.compile(r"\[(?P<ipv6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_PATH_PREFIX = re.compile(r"/[^\s?#]*\Z")
_HSTS = re.compile(r"[\x20-\x7e]*\Z")
_HSTS_MAX_AGE = re.compile(r"(?:^|;)\s*max-age\s*=\s*\"?\d+\"?\s*(?:;|$)", re.IGNORECASE)


class ConfigError(Exception):
    """
    A problem with the configuration; C{str()} is C{"<source>: <key>: <message>"}.

    @ivar source: the file name, or C{"<command line>"}.
    @ivar key: the key path, like C{pool.web.backends[2].address}; empty when the problem is
        the whole file (unreadable, not TOML).
    @ivar message: what is wrong, including the offending value.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.message}"
        return f"{self.source}: {self.message}"


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

    @property
    def proxies_http(self) -> bool:
        """Whether the listener serves HTTP requests through the routes."""
        return self.protocol in ("http", "https") and self.redirect_to_https is None


@frozen
class RouteConfig:
    """
    Which HTTP requests go to which pool.

    @ivar hosts: lower-case host names the route matches (C{*.example.com} matches any
        subdomain); empty matches every host.
    @ivar strip_prefix: remove C{path_prefix} from the path sent to the backend.
    @ivar preserve_host: send the client's C{Host}; otherwise the backend's C{host:port}.
    @ivar listeners: names of the listeners the route applies to; empty means every HTTP
        and HTTPS listener (except those that only redirect to HTTPS).
    """

    pool: str
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    strip_prefix: bool = False
    preserve_host: bool = True
    listeners: tuple[str, ...] = ()


@frozen
class Config:
    """
    A whole, validated configuration.

    @ivar source: the file it was read from, for messages.
    """

    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    pools: tuple[PoolConfig, ...]
    proxy: ProxySettings
    log: LogSettings
    source: str = "<config>"

    def pool(self, name: str) -> PoolConfig:
        """The pool called C{name}; L{KeyError} if there is none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


# Value checks: each takes a raw TOML value and returns the converted value or raises _Invalid.


class _Invalid(Exception):
    """A value is wrong; C{suffix} locates it inside the value (C{"[2]"} for an array item)."""

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.suffix = suffix


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return repr(value)


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_describe(value)}")


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _expected("a non-empty string", value)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false", value)
    return value


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise _expected("a positive number", value)
    return float(value)


def _number(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[object], float]:
    """A finite number from C{low} to C{high}, each bound excluded when C{open_...}."""
    if math.isinf(high):
        bounds = f"> {low:g}" if open_low else f">= {low:g}"
    else:
        excluded = [
            f"{bound:g}" for bound, is_open in ((low, open_low), (high, open_high)) if is_open
        ]
        bounds = f"from {low:g} to {high:g}"
        bounds += f" ({' and '.join(excluded)} excluded)" if excluded else ""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise _expected(f"a number {bounds}", value)
        above = value > low if open_low else value >= low
        below = value < high if open_high or math.isinf(high) else value <= high
        if not (above and below):
            raise _expected(f"a number {bounds}", value)
        return float(value)

    return check


def _integer(minimum: int, maximum: int = sys.maxsize) -> Callable[[object], int]:
    bounds = f"from {minimum} to {maximum}" if maximum < sys.maxsize else f">= {minimum}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise _expected(f"an integer {bounds}", value)
        return value

    return check


def _choice(choices: frozenset[str]) -> Callable[[object], str]:
    expected = "one of " + ", ".join(repr(choice) for choice in sorted(choices))

    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _expected(expected, value)
        return value

    return check


def _list_of(check: Callable[[object], T]) -> Callable[[object], tuple[T, ...]]:
    def check_all(value: object) -> tuple[T, ...]:
        if not isinstance(value, (list, tuple)):
            raise _expected("an array", value)
        result = []
        for index, item in enumerate(value):
            try:
                result.append(check(item))
            except _Invalid as invalid:
                raise _Invalid(invalid.message, f"[{index}]{invalid.suffix}") from None
        return tuple(result)

    return check_all


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise _expected(what, value)
        return value

    return check


_token = _matching(_TOKEN, "an HTTP token (letters, digits and !#$%&'*+-.^_`|~, no spaces)")
_path_prefix = _matching(_PATH_PREFIX, "a path starting with '/', without spaces or a query")
_host_name = _matching(_HOST_NAME, "a host name like 'app.example.com'")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(text: object, lowest_port: int = 1) -> tuple[str, int]:
    """C{host:port} or C{[ipv6]:port} into its parts."""
    match = _ADDRESS.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        if isinstance(text, str) and text.count(":") > 1 and "[" not in text:
            raise _expected("host:port, with an IPv6 host in brackets like '[::1]:8080'", text)
        raise _expected("host:port", text)
    if match["ipv6"] is not None:
        host, port = match["ipv6"], int(match["port6"])
        if not _is_ipv6(host):
            raise _expected("an IPv6 address between the brackets", text)
    else:
        host, port = match["host"], int(match["port"])
        if not _HOST_NAME.match(host):
            raise _expected("host:port", text)
    if not lowest_port <= port <= 65535:
        raise _expected(f"a port from {lowest_port} to 65535", text)
    return host, port


def _backend_url(value: object) -> tuple[str, int]:
    """A quick-mode backend: C{host:port} or C{http://host:port}."""
    text = _string(value)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return _address(text)
    if scheme.lower() != "http":
        raise _expected("host:port or http://host:port (only http backends)", text)
    address, _, path = rest.partition("/")
    if path:
        raise _expected("a backend URL without a path", text)
    return _address(address)


def _route_host(value: object) -> str:
    text = _string(value).lower().rstrip(".")
    if text.startswith("[") and text.endswith("]") and _is_ipv6(text[1:-1]):
        return text
    if ":" in text:
        raise _expected("a host name without a port", value)
    wildcard, name = ("*.", text[2:]) if text.startswith("*.") else ("", text)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise _expected("a host name", value) from None
    if not _HOST_NAME.match(name):
        raise _expected("a host name like 'example.com' or '*.example.com'", value)
    return wildcard + name


def _network(value: object) -> Network:
    try:
        if isinstance(value, str):
            return ipaddress.ip_network(value, strict=False)
    except ValueError:
        pass
    raise _expected("an IP address or CIDR network like '10.0.0.0/8'", value)


def _endpoint(value: object, what: str = "a Twisted server endpoint like 'tcp:8080'") -> str:
    text = _string(value)
    try:
        # A memory reactor makes parsing check the syntax without listening anywhere.
        serverFromString(MemoryReactor(), text)
    except Exception as error:
        raise _Invalid(f"expected {what}, got {text!r} ({error})") from None
    return text


def _listen(value: object) -> str:
    """A quick-mode listener: an endpoint string, C{port} or C{host:port}."""
    text = _string(value)
    if text.isdigit():
        if int(text) > 65535:
            raise _expected("a port from 0 to 65535", text)
        text = f"tcp:{text}"
    try:
        return _endpoint(text, "a port, host:port or Twisted server endpoint like 'tcp:8080'")
    except _Invalid:
        if not _ADDRESS.fullmatch(text):
            raise
    host, port = _address(text, lowest_port=0)
    return _endpoint(f"tcp:{port}:interface={quoteStringArgument(host)}")


# Reading tables.


class _Section:
    """A TOML table being read, which knows its key path so errors can name the exact key."""

    def __init__(self, source: str, path: str, data: Mapping[str, object]) -> None:
        self.source = source
        self.path = path
        self._data = data

    def key(self, key: str) -> str:
        """The full path of C{key} in this table."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(key), message)

    def has(self, key: str) -> bool:
        return key in self._data

    def names(self) -> list[str]:
        """The keys present, in file order."""
        return list(self._data)

    def allow(self, *names: str) -> None:
        """Reject any key not in C{names}, suggesting the closest known one."""
        for key in self._data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "expected " + ", ".join(names)
                raise self.error(key, f"unknown key ({hint})")

    def _check(self, key: str, check: Callable[[object], T]) -> T:
        try:
            return check(self._data[key])
        except _Invalid as invalid:
            raise ConfigError(
                self.source, self.key(key) + invalid.suffix, invalid.message
            ) from None

    def required(self, key: str, check: Callable[[object], T]) -> T:
        if key not in self._data:
            raise self.error(key, "required key is missing")
        return self._check(key, check)

    def optional(self, checks: Mapping[str, Check]) -> dict[str, Any]:
        """The checked values of those of C{checks}' keys present, to pass as keywords."""
        return {key: self._check(key, check) for key, check in checks.items() if key in self._data}

    def _as_table(self, path: str, value: object) -> _Section:
        if not isinstance(value, Mapping):
            raise ConfigError(self.source, path, f"expected a table, got {_describe(value)}")
        return _Section(self.source, path, value)

    def table(self, key: str) -> _Section:
        """A sub-table; an absent one reads as empty."""
        return self._as_table(self.key(key), self._data.get(key, {}))

    def tables(self, key: str) -> list[_Section]:
        """An array of tables (C{[[key]]}); an absent one reads as empty."""
        value = self._data.get(key, [])
        if not isinstance(value, (list, tuple)):
            raise self.error(key, f"expected an array of tables [[{key}]], got {_describe(value)}")
        return [self._as_table(f"{self.key(key)}[{i}]", item) for i, item in enumerate(value)]

    def named_tables(self, key: str) -> list[tuple[str, _Section]]:
        """A table of tables (C{[key.NAME]}) as (name, table) pairs."""
        table = self.table(key)
        return [(name, table.table(name)) for name in table._data]


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
    return ListenerConfig(
        name=name,
        protocol="ftp",
        endpoint=endpoint,
        pool=section.required("pool", _string),
        idle_timeout=idle.get("idle_timeout", _FTP_DEFAULTS["idle_timeout"]),
        tls=tls,
        ftp=FTPListenerConfig(**options),
    )


def _listener(section: _Section) -> ListenerConfig:
    protocol = section.required("protocol", _choice(PROTOCOLS))
    mine = _KEYS_BY_PROTOCOL[protocol]
    for key in section.names():
        owners = [f'"{other}"' for other, keys in _KEYS_BY_PROTOCOL.items() if key in keys]
        if owners and key not in mine:
            raise section.error(
                key, f"only used with protocol = {' or '.join(owners)}, not {protocol!r}"
            )
    section.allow("name", "protocol", "endpoint", *mine)
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


def _route(
    section: _Section, pools: Mapping[str, PoolConfig], listeners: Mapping[str, ListenerConfig]
) -> RouteConfig:
    section.allow("hosts", "path_prefix", "strip_prefix", "pool", "preserve_host", "listeners")
    pool = section.required("pool", _string)
    if pool not in pools:
        defined = ", ".join(pools) or "none"
        raise section.error("pool", f"no pool named {pool!r} (defined: {defined})")
    options = section.optional(
        {
            "hosts": _list_of(_route_host),
            "path_prefix": _path_prefix,
            "strip_prefix": _boolean,
            "preserve_host": _boolean,
            "listeners": _list_of(_string),
        }
    )
    for index, name in enumerate(options.get("listeners", ())):
        listener = listeners.get(name)
        if listener is None:
            raise section.error(f"listeners[{index}]", f"no listener named {name!r}")
        if listener.protocol not in ("http", "https"):
            raise section.error(f"listeners[{index}]", f"not an http listener named {name!r}")
        if listener.redirect_to_https is not None:
            raise section.error(
                f"listeners[{index}]",
                f"listener {name!r} only redirects to HTTPS (redirect_to_https): no route "
                "applies to it",
            )
    return RouteConfig(pool=pool, **options)


_SettingsT = TypeVar("_SettingsT", Timeouts, Limits, HeaderPolicy, LogSettings)


def _settings(
    section: _Section, cls: type[_SettingsT], special: Mapping[str, Check] | None = None
) -> _SettingsT:
    """
    Read a settings class from a table: every field is an optional key whose default is the
    class's own, checked by C{special} or else according to the type of that default.
    """
    special = special or {}
    checks: dict[str, Check] = {}
    for field in attrs.fields(cls):
        if field.name in special:
            checks[field.name] = special[field.name]
        elif isinstance(field.default, bool):
            checks[field.name] = _boolean
        elif isinstance(field.default, float):
            checks[field.name] = _positive_number
        elif isinstance(field.default, int):
            checks[field.name] = _integer(1)
        else:
            raise TypeError(f"no configuration check for {cls.__name__}.{field.name}")
    section.allow(*checks)
    return cls(**section.optional(checks))


def parse_config(data: Mapping[str, object], source: str) -> Config:
    """
    Validate a parsed TOML document.

    @param source: the file name used in error messages.
    @raise ConfigError: anything is wrong.
    """
    top = _Section(source, "", data)
    top.allow("listener", "route", "pool", "timeouts", "limits", "headers", "log")

    listeners: dict[str, ListenerConfig] = {}
    for table in top.tables("listener"):
        listener = _listener(table)
        if listener.name in listeners:
            raise table.error("name", f"duplicate listener name {listener.name!r}")
        listeners[listener.name] = listener
    if not listeners:
        raise top.error("listener", "at least one [[listener]] is required")

    from twisted_rp.config_pools import read_pool

    pools = {name: read_pool(name, table) for name, table in top.named_tables("pool")}
    for table, listener in zip(top.tables("listener"), listeners.values(), strict=True):
        if listener.pool is not None and listener.pool not in pools:
            defined = ", ".join(pools) or "none"
            raise table.error("pool", f"no pool named {listener.pool!r} (defined: {defined})")
    ftp_pools = {listener.pool for listener in listeners.values() if listener.protocol == "ftp"}
    for name, pool in pools.items():
        if pool.ftp is not None and name not in ftp_pools:
            raise top.error(
                f"pool.{name}.ftp",
                f'has no effect: no protocol = "ftp" listener uses pool {name!r}',
            )
    routes = tuple(_route(table, pools, listeners) for table in top.tables("route"))
    http_listeners = [listener for listener in listeners.values() if listener.proxies_http]
    if http_listeners and not routes:
        raise top.error(
            "route", "at least one [[route]] is required for the http and https listeners"
        )
    if routes and not http_listeners:
        raise top.error(
            "route",
            'routes need a [[listener]] with protocol = "http" (not only redirecting) or "https"',
        )

    proxy = ProxySettings(
        timeouts=_settings(top.table("timeouts"), Timeouts),
        limits=_settings(
            top.table("limits"),
            Limits,
            {"max_body": _integer(0), "backend_idle_connections": _integer(0)},
        ),
        headers=_settings(
            top.table("headers"),
            HeaderPolicy,
            {
                "via_name": _token,
                "request_id_header": _token,
                "trusted_proxies": _list_of(_network),
            },
        ),
    )
    log_table = top.table("log")
    log = _settings(
        log_table,
        LogSettings,
        {"access": _choice(ACCESS_FORMATS), "access_file": _string},
    )
    if log.access_file is not None and log.access == "off":
        raise log_table.error("access_file", 'has no effect while log.access is "off"')
    return Config(tuple(listeners.values()), routes, tuple(pools.values()), proxy, log, source)


def load_config(path: str) -> Config:
    """
    Read and validate a TOML configuration file.

    @raise ConfigError: the file cannot be read, is not TOML, or anything in it is wrong.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(path, "", f"cannot read the file: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 text (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"invalid TOML: {error}") from None
    return parse_config(data, path)


def _command_line(option: str, check: Callable[[object], T], value: object) -> T:
    try:
        return check(value)
    except _Invalid as invalid:
        raise ConfigError(COMMAND_LINE, option, invalid.message) from None


def quick_config(
    listen: Sequence[str], backends: Sequence[str], balance: str = "round_robin"
) -> Config:
    """
    The configuration of the command line's quick mode: every request to one pool.

    @param listen: endpoint strings, ports or C{host:port}; the listeners are named
        C{http-1}, C{http-2}...
    @param backends: C{host:port} or C{http://host:port}, in pool C{"default"}.
    @raise ConfigError: with source C{"<command line>"} and the option as key.
    """
    from twisted_rp.config_pools import BackendConfig, PoolConfig

    if not listen:
        raise ConfigError(COMMAND_LINE, "--listen", "at least one is required")
    if not backends:
        raise ConfigError(COMMAND_LINE, "--backend", "at least one is required")
    endpoints = [_command_line("--listen", _listen, text) for text in listen]
    listeners = tuple(ListenerConfig(f"http-{n}", "http", e) for n, e in enumerate(endpoints, 1))
    pool_backends: dict[str, BackendConfig] = {}
    for text in backends:
        host, port = _command_line("--backend", _backend_url, text)
        backend = BackendConfig(name=_format_address(host, port), host=host, port=port)
        if backend.name in pool_backends:
            raise ConfigError(COMMAND_LINE, "--backend", f"{backend.name} is given twice")
        pool_backends[backend.name] = backend
    pool = PoolConfig(
        name="default",
        backends=tuple(pool_backends.values()),
        balance=_command_line("--balance", _choice(frozenset(BALANCERS)), balance),
    )
    routes = (RouteConfig(pool=pool.name),)
    return Config(listeners, routes, (pool,), ProxySettings(), LogSettings(), COMMAND_LINE)


def __getattr__(name: str) -> Any:
    # The pool classes live in config_pools since it grew; old imports from here still work.
    if name in ("BackendConfig", "PoolConfig"):
        from twisted_rp import config_pools

        return getattr(config_pools, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
