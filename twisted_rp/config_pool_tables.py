"""
The sub-tables of C{[pool.NAME]}: C{sticky}, C{health}, C{passive}, C{dns}, C{tls} and
C{ftp}, read for L{twisted_rp.config_pools}.

Defaults are never written here: each comes from the signature of the class the setting is
eventually given to, so the file, the documentation and the library agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime

from twisted_rp.config_readers import (
    ConfigError,
    _boolean,
    _choice,
    _defaults,
    _expected,
    _host_name,
    _integer,
    _Invalid,
    _list_of,
    _number,
    _path_prefix,
    _Section,
    _string,
    _token,
)
from twisted_rp.extensions import ExtensionRef, read_extension
from twisted_rp.interfaces import IStickiness
from twisted_rp.pool import PassiveHealth
from twisted_rp.pool.dns import KINDS as DNS_KINDS
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import HealthChecker, HTTPMonitor
from twisted_rp.pool.sticky import STICKINESS

HEALTH_KINDS = ("tcp", "http", "tls", "ftp")
#: How the proxy speaks to a pool's FTP backends: plain, C{AUTH TLS} after the greeting, or
#: TLS from the first byte.
FTP_BACKEND_TLS = ("none", "explicit", "implicit")
SAME_SITE = ("Strict", "Lax", "None")
MIN_SECRET = 16

_PASSIVE = _defaults(PassiveHealth)
_CHECKER = _defaults(HealthChecker)
_HTTP_MONITOR = _defaults(HTTPMonitor)
_DNS = _defaults(DNSMembership)
_EXPECT_STATUS: frozenset[int] = _HTTP_MONITOR["expect_status"]


@frozen
class StickyConfig:
    """
    C{[pool.NAME.sticky]}: keeping a client on one backend.  Keys that do not apply to
    C{kind} are L{None}.

    @ivar kind: one of L{twisted_rp.pool.sticky.STICKINESS}, or the name of a stickiness
        extension (see L{twisted_rp.extensions}), whose options are in C{extension}.
    @ivar cookie: the cookie's name (C{cookie} and C{app_cookie}).
    @ivar secret: the key signing the cookie (C{cookie}), at least 16 bytes.
    @ivar max_age: the cookie's C{Max-Age}; 0 for a session cookie.
    @ivar expiry: seconds an idle entry is remembered (C{app_cookie}, C{source_ip} and
        C{user}).
    """

    kind: str
    strict: bool = False
    extension: ExtensionRef | None = None
    cookie: str | None = None
    secret: bytes | None = field(default=None, repr=False)
    path: str | None = None
    max_age: int | None = None
    secure: bool | None = None
    http_only: bool | None = None
    same_site: str | None = None
    expiry: float | None = None
    max_entries: int | None = None


@frozen
class HealthConfig:
    """
    C{[pool.NAME.health]}: the active health check.  Keys that do not apply to C{kind} are
    L{None}.

    @ivar kind: one of L{HEALTH_KINDS}, or the name of a health check extension (see
        L{twisted_rp.extensions}), whose options are in C{extension}.
    @ivar expect_status: the lowest and highest healthy HTTP status, inclusive.
    """

    kind: str
    extension: ExtensionRef | None = None
    interval: float = _CHECKER["interval"]
    timeout: float = _CHECKER["timeout"]
    jitter: float = _CHECKER["jitter"]
    rise: int = _CHECKER["rise"]
    fall: int = _CHECKER["fall"]
    path: str | None = None
    method: str | None = None
    host: str | None = None
    expect_status: tuple[int, int] | None = None
    body_regex: str | None = None
    server_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


@frozen
class PassiveConfig:
    """
    C{[pool.NAME.passive]}: ejecting backends that fail real traffic (see L{PassiveHealth}).
    """

    consecutive_failures: int = _PASSIVE["consecutive_failures"]
    base_ejection: float = _PASSIVE["base_ejection"]
    max_ejection: float = _PASSIVE["max_ejection"]
    max_ejected_share: float = _PASSIVE["max_ejected_share"]


@frozen
class DNSConfig:
    """
    C{[pool.NAME.dns]}: backends taken from DNS records (see L{DNSMembership}).

    @ivar port: the backends' port for address records; 0 for C{SRV} (records carry ports).
    """

    name: str
    port: int = 0
    kind: str = _DNS["kind"]
    interval: float = _DNS["interval"]


@frozen
class BackendTLSConfig:
    """
    C{[pool.NAME.tls]}: how the proxy connects to the pool's C{https://} backends and, with
    C{[pool.NAME.ftp] tls}, to its FTPS backends, and how its C{tls} health check (and an
    C{http} one, for C{https} backends) does (see L{twisted_rp.tls.client_tls}).

    @ivar verify: check the backend's certificate and name; L{False} only when set explicitly.
    @ivar ca_files: the CAs to trust; empty for the system trust store.
    @ivar server_name: the name sent (SNI) and verified; L{None} for each backend's host.
    @ivar client_cert: a certificate for mutual TLS, with C{client_key}.
    """

    verify: bool = True
    ca_files: tuple[str, ...] = ()
    server_name: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@frozen
class FTPBackendsConfig:
    """
    C{[pool.NAME.ftp]}: how C{ftp} listeners speak to the pool's backends.

    @ivar tls: one of L{FTP_BACKEND_TLS}; with TLS, the client settings of
        C{[pool.NAME.tls]} apply (verification, CAs, server name, client certificate).
    """

    tls: str = "none"


# Value checks specific to the sub-tables.


def _status_range(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in value)
        or not 100 <= value[0] <= value[1] <= 599
    ):
        raise _expected("[low, high]: two HTTP statuses from 100 to 599, low first", value)
    return (value[0], value[1])


def _regex(value: object) -> str:
    text = _string(value)
    try:
        re.compile(text.encode("utf-8"))
    except re.error as error:
        raise _Invalid(f"expected a regular expression, got {text!r} ({error})") from None
    return text


def _same_site(value: object) -> str:
    for name in SAME_SITE:
        if isinstance(value, str) and value.lower() == name.lower():
            return name
    raise _expected("one of 'Strict', 'Lax', 'None'", value)


_port = _integer(1, 65535)
_share = _number(0.0, 1.0)
_seconds = _number(0.0, open_low=True)


# Reading the sub-tables.


def _only_for(section: _Section, kind: str, allowed: Mapping[str, tuple[str, ...]]) -> None:
    """
    Reject keys that are known but belong to another C{kind}, naming the kinds they do belong
    to; unknown keys get the usual suggestion.
    """
    mine = ("kind", *allowed.get("", ()), *allowed[kind])
    every = {key for keys in allowed.values() for key in keys}
    for key in section.names():
        if key in every and key not in mine:
            owners = [repr(other) for other, keys in allowed.items() if other and key in keys]
            raise section.error(key, f"only used with kind = {' or '.join(owners)}, not {kind!r}")
    section.allow(*mine)


_STICKY_KEYS = {
    "": ("strict",),
    "cookie": (
        "cookie",
        "secret",
        "secret_file",
        "path",
        "max_age",
        "secure",
        "http_only",
        "same_site",
    ),
    "app_cookie": ("cookie", "expiry", "max_entries"),
    "source_ip": ("expiry", "max_entries"),
    "user": ("expiry", "max_entries"),
}


def _secret(section: _Section) -> bytes:
    if section.has("secret") and section.has("secret_file"):
        raise section.error("secret_file", "give either secret or secret_file, not both")
    if section.has("secret"):
        key, secret = "secret", section.required("secret", _string).encode("utf-8")
    elif section.has("secret_file"):
        key, path = "secret_file", section.required("secret_file", _string)
        try:
            # A trailing newline is what editors and "openssl rand -hex 32 >" leave.
            secret = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise section.error(key, f"cannot read {path!r}: {error.strerror or error}") from None
    else:
        raise section.error("secret", 'required with kind = "cookie" (or secret_file)')
    if len(secret) < MIN_SECRET:
        raise section.error(
            key, f"the secret must be at least {MIN_SECRET} bytes, got {len(secret)}"
        )
    return secret


def _sticky(section: _Section) -> StickyConfig:
    kind = section.required("kind", _string)
    if kind not in STICKINESS:
        return StickyConfig(
            kind=kind,
            strict=section.optional({"strict": _boolean}).get("strict", False),
            extension=_extension("stickiness", section, STICKINESS, ("strict",)),
        )
    _only_for(section, kind, _STICKY_KEYS)
    defaults = _defaults(STICKINESS[kind])
    options = section.optional(
        {
            "strict": _boolean,
            "cookie": _token,
            "path": _path_prefix,
            "max_age": _integer(0),
            "secure": _boolean,
            "http_only": _boolean,
            "same_site": _same_site,
            "expiry": _seconds,
            "max_entries": _integer(1),
        }
    )
    options.setdefault("strict", defaults["strict"])
    if kind == "cookie":
        options["secret"] = _secret(section)
        options.setdefault("cookie", defaults["name"])
        options.setdefault("max_age", defaults["max_age"] or 0)
        for key in ("path", "secure", "http_only", "same_site"):
            options.setdefault(key, defaults[key])
        if options["same_site"] == "None" and not options["secure"]:
            raise section.error("same_site", 'browsers reject "None" without secure = true')
    else:
        options.setdefault("expiry", defaults["expiry"])
        options.setdefault("max_entries", defaults["max_entries"])
        if kind == "app_cookie":
            options.setdefault("cookie", defaults["cookie"])
    sticky = StickyConfig(kind=kind, **options)
    try:
        # The class has the last word (e.g. on __Host- cookie names), at load time.
        make_stickiness(sticky, clock=None)
    except ValueError as error:
        raise ConfigError(section.source, section.path, str(error)) from None
    return sticky


def make_stickiness(sticky: StickyConfig, clock: IReactorTime | None) -> IStickiness:
    """
    The L{IStickiness} C{sticky} describes.

    @param clock: times the entries of the table-based kinds; L{None} for the global reactor.
    """
    if sticky.extension is not None:
        stickiness: IStickiness = sticky.extension.build(clock, "<config>")
        return stickiness
    factory = STICKINESS[sticky.kind]
    if sticky.kind == "cookie":
        return factory(
            sticky.secret,
            name=sticky.cookie,
            path=sticky.path,
            max_age=sticky.max_age or None,
            http_only=sticky.http_only,
            secure=sticky.secure,
            same_site=sticky.same_site,
            strict=sticky.strict,
        )
    options: dict[str, Any] = {
        "expiry": sticky.expiry,
        "max_entries": sticky.max_entries,
        "strict": sticky.strict,
    }
    if sticky.kind == "app_cookie":
        options["cookie"] = sticky.cookie
    return factory(clock=clock, **options)


_HEALTH_KEYS = {
    "": ("interval", "timeout", "jitter", "rise", "fall"),
    "tcp": (),
    "http": ("path", "method", "host", "expect_status", "body_regex"),
    "tls": ("server_name",),
    "ftp": ("user", "password"),
}


_CHECKER_KEYS = ("interval", "timeout", "jitter", "rise", "fall")


def _extension(
    kind: str, section: _Section, builtins: Iterable[str], reserved: tuple[str, ...]
) -> ExtensionRef:
    return read_extension(kind, section, "kind", reserved=reserved, also_built_in=builtins)


def _health(section: _Section) -> HealthConfig:
    kind = section.required("kind", _string)
    if kind not in HEALTH_KINDS:
        extension = _extension("health_check", section, HEALTH_KINDS, _CHECKER_KEYS)
        return HealthConfig(kind=kind, extension=extension, **_checker_options(section))
    _only_for(section, kind, _HEALTH_KEYS)
    options = _checker_options(section)
    options |= section.optional(
        {
            "path": _path_prefix,
            "method": _token,
            "host": _string,
            "expect_status": _status_range,
            "body_regex": _regex,
            "server_name": _host_name,
            "user": _string,
            "password": _string,
        }
    )
    if kind == "http":
        options.setdefault("path", _HTTP_MONITOR["path"])
        options.setdefault("method", _HTTP_MONITOR["method"])
        options.setdefault("expect_status", (min(_EXPECT_STATUS), max(_EXPECT_STATUS)))
    if "password" in options and "user" not in options:
        raise section.error("password", "needs user too")
    return HealthConfig(kind=kind, **options)


def _checker_options(section: _Section) -> dict[str, Any]:
    """The keys of C{[pool.NAME.health]} that the health checker reads, whatever the kind."""
    return section.optional(
        {
            "interval": _seconds,
            "timeout": _seconds,
            "jitter": _number(0.0, 1.0, open_high=True),
            "rise": _integer(1),
            "fall": _integer(1),
        }
    )


def _passive(section: _Section) -> PassiveConfig:
    section.allow(*(field.name for field in attrs.fields(PassiveConfig)))
    passive = PassiveConfig(
        **section.optional(
            {
                "consecutive_failures": _integer(1),
                "base_ejection": _seconds,
                "max_ejection": _seconds,
                "max_ejected_share": _share,
            }
        )
    )
    if passive.max_ejection < passive.base_ejection:
        raise section.error(
            "max_ejection",
            f"must not be less than base_ejection ({passive.base_ejection:g}), "
            f"got {passive.max_ejection:g}",
        )
    return passive


def _dns(section: _Section) -> DNSConfig:
    section.allow("name", "kind", "port", "interval")
    name = section.required("name", _host_name)
    options = section.optional({"kind": _choice(frozenset(DNS_KINDS)), "interval": _seconds})
    if options.get("kind", _DNS["kind"]) == "SRV":
        if section.has("port"):
            raise section.error("port", 'not used with kind = "SRV": the records give ports')
        return DNSConfig(name=name, **options)
    return DNSConfig(name=name, port=section.required("port", _port), **options)


def _tls(section: _Section) -> BackendTLSConfig:
    section.allow("verify", "ca_files", "server_name", "client_cert", "client_key")
    options = section.optional(
        {
            "verify": _boolean,
            "ca_files": _list_of(_string),
            "server_name": _host_name,
            "client_cert": _string,
            "client_key": _string,
        }
    )
    tls = BackendTLSConfig(**options)
    if tls.client_cert is None and tls.client_key is not None:
        raise section.error("client_cert", "required with client_key")
    if tls.client_key is None and tls.client_cert is not None:
        raise section.error("client_key", "required with client_cert")
    if not tls.verify and tls.ca_files:
        raise section.error("ca_files", "has no effect with verify = false")
    return tls


def _ftp(section: _Section) -> FTPBackendsConfig:
    section.allow("tls")
    return FTPBackendsConfig(**section.optional({"tls": _choice(frozenset(FTP_BACKEND_TLS))}))


__all__ = [
    "FTP_BACKEND_TLS",
    "HEALTH_KINDS",
    "BackendTLSConfig",
    "DNSConfig",
    "FTPBackendsConfig",
    "HealthConfig",
    "PassiveConfig",
    "StickyConfig",
    "make_stickiness",
]
