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

from twisted_rp.config_admin import AdminConfig, read_admin
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
    _number,
    _positive_number,
    _Section,
    _string,
    _token,
)
from twisted_rp.config_routes import (
    IDENTITY_HEADER,
    MiddlewareConfig,
    RouteConfig,
    read_middleware,
    read_route,
)
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.settings import (
    HeaderPolicy,
    Limits,
    LogSettings,
    ProxySettings,
    ServerSettings,
    Timeouts,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


ACCESS_FORMATS = frozenset({"off", "combined", "json"})
COMMAND_LINE = "<command line>"
#: The most worker processes C{[server] workers} and C{--workers} allow.
MAX_WORKERS = 256
#: The endpoint types whose sockets worker processes can share.
WORKER_ENDPOINTS = frozenset({"tcp", "tcp6"})


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
    middlewares: tuple[MiddlewareConfig, ...] = ()
    #: The process's own settings (C{[server]}).
    server: ServerSettings = attrs.field(factory=ServerSettings)
    #: The admin listener (C{[admin]}), or L{None} for none.
    admin: AdminConfig | None = None

    def pool(self, name: str) -> PoolConfig:
        """The pool called C{name}; L{KeyError} if there is none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


_SettingsT = TypeVar("_SettingsT", Timeouts, Limits, HeaderPolicy, LogSettings, ServerSettings)


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
    top.allow(
        "listener",
        "route",
        "pool",
        "middleware",
        "timeouts",
        "limits",
        "headers",
        "log",
        "server",
        "admin",
    )

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
    middlewares = {
        name: read_middleware(name, table) for name, table in top.named_tables("middleware")
    }
    routes = tuple(
        read_route(table, pools, listeners, middlewares) for table in top.tables("route")
    )
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
        {
            "access": _choice(ACCESS_FORMATS),
            "access_file": _string,
            "rotate_length": _integer(0),
            "max_rotated_files": _integer(0),
        },
    )
    if log.access_file is not None and log.access == "off":
        raise log_table.error("access_file", 'has no effect while log.access is "off"')
    config = Config(
        tuple(listeners.values()),
        routes,
        tuple(pools.values()),
        proxy,
        log,
        source,
        tuple(middlewares.values()),
        server=_settings(
            top.table("server"),
            ServerSettings,
            {"grace_period": _number(0.0), "workers": _integer(1, MAX_WORKERS)},
        ),
        admin=read_admin(top.table("admin")) if top.has("admin") else None,
    )
    check_workers(config, config.server.workers)
    return config


def check_workers(config: Config, workers: int) -> None:
    """
    Check that C{workers} processes can share every listener of C{config}: only C{tcp} and
    C{tcp6} endpoints can be handed to other processes.

    @raise ConfigError: naming the first listener's C{endpoint} that cannot.
    """
    if workers <= 1:
        return
    for index, listener in enumerate(config.listeners):
        kind = listener.endpoint.split(":", 1)[0].strip().lower()
        if kind not in WORKER_ENDPOINTS:
            raise ConfigError(
                config.source,
                f"listener[{index}].endpoint",
                f"with {workers} workers, listeners must use tcp: or tcp6: endpoints "
                f"(worker processes share the listening socket), not {kind}:",
            )


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
    "IDENTITY_HEADER",
    "MAX_WEIGHT",
    "MAX_WORKERS",
    "MIN_PASSIVE_PORT",
    "PROTOCOLS",
    "SEND_PROXY",
    "TLS_VERSIONS",
    "WORKER_ENDPOINTS",
    "AdminConfig",
    "BackendConfig",
    "Check",
    "Config",
    "ConfigError",
    "FTPListenerConfig",
    "ListenerConfig",
    "ListenerTLSConfig",
    "MiddlewareConfig",
    "PoolConfig",
    "RouteConfig",
    "T",
    "check_workers",
    "load_config",
    "parse_config",
    "quick_config",
]
