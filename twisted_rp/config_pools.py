"""
The C{[pool.NAME]} part of the configuration file: backends, balancing, stickiness, health
checks, passive health, DNS membership, client TLS and how FTP backends are spoken to.

This is the pool part of L{twisted_rp.config}, which reads the rest of the file; the pool's
sub-tables are read by L{twisted_rp.config_pool_tables}, whose names are importable from here
too.  Defaults are never written here: each comes from the signature of the class the setting
is eventually given to, so the file, the documentation and the library agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen

from twisted_rp.config_pool_tables import (
    FTP_BACKEND_TLS,
    HEALTH_KINDS,
    MIN_SECRET,
    SAME_SITE,
    BackendTLSConfig,
    DNSConfig,
    FTPBackendsConfig,
    HealthConfig,
    PassiveConfig,
    StickyConfig,
    _dns,
    _ftp,
    _health,
    _passive,
    _port,
    _seconds,
    _sticky,
    _tls,
    make_stickiness,
)
from twisted_rp.config_readers import (
    ConfigError,
    _address,
    _boolean,
    _defaults,
    _expected,
    _format_address,
    _integer,
    _Invalid,
    _number,
    _Section,
    _string,
)
from twisted_rp.extensions import ExtensionOptions, ExtensionRef, find_extension
from twisted_rp.pool import BackendPool
from twisted_rp.pool.balancers import BALANCERS, HashBalancer

BACKEND_SCHEMES = ("http", "https")
MAX_WEIGHT = 1000

_PORT_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")

_POOL = _defaults(BackendPool)


@frozen
class BackendConfig:
    """
    One server of a pool.

    @ivar host: a host name or IP address, without brackets for IPv6.
    @ivar weight: share of the traffic relative to the pool's other backends; 0 sends none.
    @ivar backup: only used when no non-backup backend is available.
    @ivar max_connections: at most this many requests or sessions at once; 0 for no limit.
    @ivar ports: C{(protocol, port)} pairs for a server several protocols share.
    @ivar scheme: C{"https"} for a backend reached over TLS (an C{https://} address), with
        the pool's L{BackendTLSConfig}; else C{"http"}.
    """

    name: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    max_connections: int = 0
    ports: tuple[tuple[str, int], ...] = ()
    scheme: str = "http"

    @property
    def address(self) -> str:
        """C{host:port}, with brackets around an IPv6 host."""
        return _format_address(self.host, self.port)


@frozen
class PoolConfig:
    """
    A named group of interchangeable backends.

    @ivar balance: one of L{twisted_rp.pool.balancers.BALANCERS}, or the name of a balancer
        extension (a plugin or a dotted name; see L{twisted_rp.extensions}).
    @ivar balancer: the extension C{balance} names with its C{balance_options}, for a
        balancer that is not built in; L{None} otherwise.
    @ivar hash_key: with C{balance = "hash"}, what is hashed; L{None} for the balancer's
        default.
    """

    name: str
    backends: tuple[BackendConfig, ...]
    balance: str = "round_robin"
    hash_key: str | None = None
    retries: int = _POOL["retries"]
    slow_start: float = _POOL["slow_start"]
    queue_size: int = _POOL["queue_size"]
    queue_timeout: float = _POOL["queue_timeout"]
    sticky: StickyConfig | None = None
    health: HealthConfig | None = None
    passive: PassiveConfig | None = None
    dns: DNSConfig | None = None
    tls: BackendTLSConfig | None = None
    ftp: FTPBackendsConfig | None = None
    balancer: ExtensionRef | None = None


# Value checks specific to pools.


def _hash_key(value: object) -> str:
    text = _string(value)
    try:
        HashBalancer.from_spec(text)
    except ValueError:
        raise _expected("'source_ip', 'uri', 'header:NAME' or 'cookie:NAME'", value) from None
    return text


def _port_name(value: object) -> str:
    if not isinstance(value, str) or not _PORT_NAME.match(value):
        raise _expected("a protocol name like 'http' or 'ftp'", value)
    return value


_seconds_or_zero = _number(0.0)


# Reading the tables.


def _ports(section: _Section) -> tuple[tuple[str, int], ...]:
    ports = []
    for name in section.names():
        try:
            _port_name(name)
        except _Invalid as invalid:
            raise section.error(name, invalid.message) from None
        ports.append((name, section.required(name, _port)))
    return tuple(ports)


def _backend_address(value: object) -> tuple[str, str, int]:
    """C{host:port}, C{http://host:port} or C{https://host:port} into scheme, host and port."""
    if not isinstance(value, str) or "://" not in value:
        return ("http", *_address(value))
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in BACKEND_SCHEMES:
        raise _expected("host:port, http://host:port or https://host:port", value)
    if "/" in rest:
        raise _expected("a backend address without a path", value)
    return (scheme.lower(), *_address(rest))


def _backend(section: _Section) -> BackendConfig:
    section.allow("address", "name", "weight", "backup", "max_connections", "ports")
    scheme, host, port = section.required("address", _backend_address)
    options = section.optional(
        {
            "name": _string,
            "weight": _integer(0, MAX_WEIGHT),
            "backup": _boolean,
            "max_connections": _integer(0),
        }
    )
    options.setdefault("name", _format_address(host, port))
    return BackendConfig(
        host=host, port=port, ports=_ports(section.table("ports")), scheme=scheme, **options
    )


def _check_ftps_name(
    name: str, section: _Section, options: Mapping[str, Any], backends: Mapping[str, BackendConfig]
) -> None:
    """
    FTPS backends share one client TLS (the FTP proxy resumes its sessions on data
    connections), so one name is verified for all of them: C{server_name}, or the one host
    they all have.
    """
    ftp = options.get("ftp")
    tls = options.get("tls") or BackendTLSConfig()
    if ftp is None or ftp.tls == "none" or not tls.verify or tls.server_name is not None:
        return
    hosts = {backend.host for backend in backends.values()}
    if "dns" in options or len(hosts) > 1:
        raise ConfigError(
            section.source,
            section.key("tls.server_name"),
            f"required with FTPS backends ([pool.{name}.ftp] tls = {ftp.tls!r}) on "
            f"{'DNS-discovered' if 'dns' in options else 'different'} hosts: the one name "
            "their certificates are verified against",
        )


def _balancer_extension(section: _Section, name: str) -> ExtensionRef:
    """A balancer extension: a plugin or dotted name, its options in C{balance_options}."""
    try:
        extension = find_extension("balancer", name, also_built_in=BALANCERS)
    except LookupError as error:
        raise section.error("balance", str(error.args[0])) from None
    options = section.table("balance_options")
    settings = extension.parse(ExtensionOptions(options))
    return ExtensionRef(options.path, name, extension, settings)


def read_pool(name: str, section: _Section) -> PoolConfig:
    """
    The pool C{[pool.NAME]} describes.

    @raise ConfigError: naming the exact key that is wrong.
    """
    section.allow(
        "balance",
        "balance_options",
        "hash_key",
        "retries",
        "slow_start",
        "queue_size",
        "queue_timeout",
        "backends",
        "sticky",
        "health",
        "passive",
        "dns",
        "tls",
        "ftp",
    )
    backends: dict[str, BackendConfig] = {}
    for table in section.tables("backends"):
        backend = _backend(table)
        if backend.name in backends:
            key = "name" if table.has("name") else "address"
            raise table.error(key, f"duplicate backend name {backend.name!r} in pool {name!r}")
        backends[backend.name] = backend
    options = section.optional(
        {
            "balance": _string,
            "hash_key": _hash_key,
            "retries": _integer(0),
            "slow_start": _seconds_or_zero,
            "queue_size": _integer(0),
            "queue_timeout": _seconds,
        }
    )
    balance = options.get("balance", "round_robin")
    if balance not in BALANCERS:
        options["balancer"] = _balancer_extension(section, balance)
    elif section.has("balance_options"):
        raise section.error("balance_options", f"the built-in {balance!r} takes none")
    if "hash_key" in options and options.get("balance") != "hash":
        raise section.error("hash_key", 'only used with balance = "hash"')
    tables: dict[str, Callable[[_Section], Any]] = {
        "sticky": _sticky,
        "health": _health,
        "passive": _passive,
        "dns": _dns,
        "tls": _tls,
        "ftp": _ftp,
    }
    for key, read in tables.items():
        if section.has(key):
            options[key] = read(section.table(key))
    _check_ftps_name(name, section, options, backends)
    if not backends and "dns" not in options:
        raise section.error(
            "backends", f"at least one [[pool.{name}.backends]] or a [pool.{name}.dns] is required"
        )
    return PoolConfig(name=name, backends=tuple(backends.values()), **options)


__all__ = [
    "BACKEND_SCHEMES",
    "FTP_BACKEND_TLS",
    "HEALTH_KINDS",
    "MAX_WEIGHT",
    "MIN_SECRET",
    "SAME_SITE",
    "BackendConfig",
    "BackendTLSConfig",
    "DNSConfig",
    "FTPBackendsConfig",
    "HealthConfig",
    "PassiveConfig",
    "PoolConfig",
    "StickyConfig",
    "make_stickiness",
    "read_pool",
]
