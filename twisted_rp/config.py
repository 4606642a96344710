"""
The configuration file: TOML parsed into immutable, fully validated objects.

Every problem is reported as a L{ConfigError} naming the file and the key path, so a user can
fix the file without reading a traceback.  The file format is described in
C{docs/configuration.rst}.  The parts of the file are read by L{twisted_rp.config_listeners},
L{twisted_rp.config_pools} and L{twisted_rp.config_pool_tables}, with the readers of
L{twisted_rp.config_readers}; every public name of those is importable from here too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import attrs
from attrs import frozen

from twisted_rp.config_listeners import (
    CLIENT_CERT_MODES,
    MIN_PASSIVE_PORT,
    PROTOCOLS,
    SEND_PROXY,
    TLS_VERSIONS,
    FTPListenerConfig,
    ListenerConfig,
    ListenerTLSConfig,
    read_listener,
)
from twisted_rp.config_pools import MAX_WEIGHT, BackendConfig, PoolConfig, read_pool
from twisted_rp.config_readers import (
    Check,
    ConfigError,
    T,
    _backend_url,
    _boolean,
    _choice,
    _format_address,
    _integer,
    _Invalid,
    _list_of,
    _listen,
    _network,
    _path_prefix,
    _positive_number,
    _route_host,
    _Section,
    _string,
    _token,
)
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.settings import (
    HeaderPolicy,
    Limits,
    LogSettings,
    ProxySettings,
    Timeouts,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


ACCESS_FORMATS = frozenset({"off", "combined", "json"})
COMMAND_LINE = "<command line>"


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
        listener = read_listener(table)
        if listener.name in listeners:
            raise table.error("name", f"duplicate listener name {listener.name!r}")
        listeners[listener.name] = listener
    if not listeners:
        raise top.error("listener", "at least one [[listener]] is required")

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


__all__ = [
    "ACCESS_FORMATS",
    "CLIENT_CERT_MODES",
    "COMMAND_LINE",
    "MAX_WEIGHT",
    "MIN_PASSIVE_PORT",
    "PROTOCOLS",
    "SEND_PROXY",
    "TLS_VERSIONS",
    "BackendConfig",
    "Check",
    "Config",
    "ConfigError",
    "FTPListenerConfig",
    "ListenerConfig",
    "ListenerTLSConfig",
    "PoolConfig",
    "RouteConfig",
    "T",
    "load_config",
    "parse_config",
    "quick_config",
]
