"""
Turning a validated L{Config} into running services.

L{build_service} is what C{twistd reverseproxy} runs.  The smaller functions map one part of
the configuration to the objects the proxy uses, for programs that build some of those objects
themselves (see C{docs/embedding.rst}); those for pools live in L{twisted_rp.service_pools}
and are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IResolver
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_rp.config import Config, ConfigError, ListenerConfig
from twisted_rp.config_pools import FTPBackendsConfig
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.redirect import HTTPSRedirectFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import BackendPool
from twisted_rp.service_pools import (
    BALANCERS,
    DEFAULT_SOURCE,
    PerBackendMonitor,
    _backend_tls,
    _ftps_backend_creator,
    _tls_error,
    build_backend,
    build_balancer,
    build_client_tls,
    build_dns_membership,
    build_health_checker,
    build_monitor,
    build_pool,
    build_pools,
)
from twisted_rp.tcp.relay import TCPProxyFactory
from twisted_rp.tls import ServerTLS, SighupReloadService, TLSConfigError

__all__ = [
    "BALANCERS",
    "PerBackendMonitor",
    "build_backend",
    "build_balancer",
    "build_client_tls",
    "build_dns_membership",
    "build_ftp_factory",
    "build_health_checker",
    "build_monitor",
    "build_pool",
    "build_pools",
    "build_router",
    "build_routes",
    "build_server_tls",
    "build_service",
    "build_tcp_factory",
    "check_files",
    "open_access_log",
]

HTTP_PROTOCOLS = frozenset({"http", "https"})
#: The ALPN protocols TLS listeners offer, by listener protocol.
ALPN = {"https": (b"http/1.1",), "ftp": (b"ftp",)}


def build_server_tls(
    listener: ListenerConfig,
    key: str,
    source: str = DEFAULT_SOURCE,
    clock: IReactorTime | None = None,
) -> ServerTLS:
    """
    The L{ServerTLS} of an C{https} listener or an FTPS one, its files read and checked; it
    offers ALPN's name for the listener's protocol.

    @param key: the listener's key path, like C{listener[1]}, for errors.
    @param clock: for expiry checks, ticket key rotation and the file watcher; L{None} for the
        system time and the global reactor.
    @raise ConfigError: a file is missing or unusable, a key does not match its certificate, a
        certificate has expired; naming the key, like C{listener[1].certificates[0].cert}.
    """
    tls = listener.tls
    assert tls is not None, f"{listener.name} has no TLS settings"
    groups: list[list[tuple[str, str | None]]] = [
        [
            (f"certificates[{index}].cert", certificate.cert),
            (f"certificates[{index}].key", certificate.key),
            (f"certificates[{index}].chain", certificate.chain),
        ]
        for index, certificate in enumerate(tls.certificates)
    ]
    groups.extend([(f"client_ca_files[{i}]", path)] for i, path in enumerate(tls.client_ca_files))
    try:
        return ServerTLS(
            tls.certificates,
            min_version=tls.min_version,
            max_version=tls.max_version,
            ciphers=tls.ciphers,
            client_certs=tls.client_certs,
            client_ca_files=tls.client_ca_files,
            alpn=ALPN.get(listener.protocol, ()),
            clock=clock,
        )
    except TLSConfigError as error:
        raise _tls_error(source, key, error, groups) from None


def build_routes(
    config: Config, listener: ListenerConfig, pools: Mapping[str, BackendPool]
) -> list[Route]:
    """
    The routes that apply to C{listener}, in configuration order, using C{pools}.

    Each route is named after its place in the file (C{route[0]}, ...) so logs can point at it.
    """
    routes = []
    for index, route in enumerate(config.routes):
        if route.listeners and listener.name not in route.listeners:
            continue
        routes.append(
            Route(
                pools[route.pool],
                hosts=route.hosts,
                path_prefix=route.path_prefix,
                strip_prefix=route.strip_prefix,
                preserve_host=route.preserve_host,
                name=f"route[{index}]",
            )
        )
    return routes


def build_router(
    config: Config, listener: ListenerConfig, pools: Mapping[str, BackendPool]
) -> Router:
    """
    The L{Router} of one listener.
    """
    return Router(build_routes(config, listener, pools))


def open_access_log(config: Config) -> AccessLog | None:
    """
    The access log C{config.log} asks for, or L{None}.

    @raise ConfigError: the access log file cannot be opened.
    """
    try:
        return access_log_from_settings(config.log)
    except OSError as error:
        raise ConfigError(
            config.source, "log.access_file", f"cannot open the file: {error.strerror or error}"
        ) from None


class _AccessLogCloser(Service):
    """
    Closes the access log file when the application stops, after the listeners (which are
    stopped first, being added later).
    """

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    def stopService(self) -> None:
        super().stopService()
        self.access_log.close()


def build_tcp_factory(
    config: Config, listener: ListenerConfig, pools: Mapping[str, BackendPool], reactor: Any
) -> TCPProxyFactory:
    """
    The factory of a C{tcp} listener, relaying to its pool; connecting to a backend may take
    C{[timeouts] backend_connect}.
    """
    assert listener.pool is not None
    return TCPProxyFactory(
        reactor,
        pools[listener.pool],
        connect_timeout=config.proxy.timeouts.backend_connect,
        idle_timeout=listener.idle_timeout,
        send_proxy=listener.send_proxy,
        accept_proxy=listener.accept_proxy,
        trusted_proxies=[str(network) for network in listener.trusted_proxies],
    )


def build_ftp_factory(
    config: Config,
    listener: ListenerConfig,
    pools: Mapping[str, BackendPool],
    reactor: Any,
    server_tls: ServerTLS | None = None,
) -> FTPProxyFactory:
    """
    The factory of an C{ftp} listener, sending sessions to its pool; connecting to a backend
    may take C{[timeouts] backend_connect}.

    With C{server_tls} (built from the listener's certificates), clients may use explicit
    FTPS, or must (C{require_tls}), or use implicit FTPS (C{implicit}); the factory starts TLS
    itself, on control and data connections alike.  The pool's C{[pool.NAME.ftp] tls} chooses
    plain, explicit or implicit FTPS towards backends, with one client TLS made from
    C{[pool.NAME.tls]} (an C{https://} backend's own, if it has one).

    @raise ConfigError: a file of C{[pool.NAME.tls]} is unusable.
    """
    assert listener.pool is not None and listener.ftp is not None
    ftp = listener.ftp
    pool_config = config.pool(listener.pool)
    backend_tls = (pool_config.ftp or FTPBackendsConfig()).tls
    creator = None
    if backend_tls != "none":
        creator = _ftps_backend_creator(pool_config, config.source)
    passive_ports = None
    if ftp.passive_ports is not None:
        low, high = ftp.passive_ports
        passive_ports = range(low, high + 1)
    return FTPProxyFactory(
        reactor,
        pools[listener.pool],
        banner=ftp.banner,
        passive_ports=passive_ports,
        masquerade_address=ftp.masquerade_address,
        idle_timeout=listener.idle_timeout,
        data_timeout=ftp.data_timeout,
        transfer_timeout=ftp.transfer_timeout,
        connect_timeout=config.proxy.timeouts.backend_connect,
        max_sessions_per_ip=ftp.max_sessions_per_ip,
        backend_passive=ftp.backend_passive,
        show_backend_features=ftp.show_backend_features,
        tls=server_tls,
        implicit=ftp.implicit,
        require_tls=ftp.require_tls,
        backend_tls=backend_tls,
        backend_tls_creator=creator,
    )


def check_files(config: Config) -> None:
    """
    Read every file C{config} names that is only read when the service is built (the
    certificates, keys and CAs of C{https} and FTPS listeners and of C{[pool.NAME.tls]}), as
    C{--check-config} does, without starting anything.

    @raise ConfigError: the first unusable file, naming its key.
    """
    for index, listener in enumerate(config.listeners):
        if listener.tls is not None:
            build_server_tls(listener, f"listener[{index}]", config.source)
    for pool in config.pools:
        _backend_tls(pool, config.source)


def build_service(config: Config, reactor: Any, resolver: IResolver | None = None) -> MultiService:
    """
    Everything C{config} describes: a L{HealthChecker} (C{health:POOL}) and a L{DNSMembership}
    (C{dns:POOL}) for each pool that has one, then a L{StreamServerEndpointService} per
    listener, named after it, serving an L{HTTPProxyFactory} with that listener's routes (for
    C{https}, inside a C{TLSMemoryBIOFactory} with the listener's L{ServerTLS}), an
    L{HTTPSRedirectFactory} (C{redirect_to_https}), a L{TCPProxyFactory} relaying to its
    pool or an L{FTPProxyFactory} (L{build_ftp_factory}, which does its own TLS).  Listeners
    share the pools, the access log and the idle backend connections.

    C{https} and FTPS listeners also get a service reloading their certificates when the files
    change
    (C{tls-watch:LISTENER}, unless C{reload_interval} is 0) and, all together, one reloading
    them on SIGHUP (C{tls-sighup}).

    @param reactor: provides TCP, time and whatever the listeners' endpoints need; its time is
        the one certificates' expiry is checked against.
    @param resolver: where pools with a C{dns} table look names up; by default
        C{twisted.names.client.createResolver()} (the system's configuration), made only when
        some pool needs it.
    @raise ConfigError: something the configuration names cannot be set up (the access log
        file cannot be opened, a certificate, key or CA file is missing or unusable, a
        listener's protocol is not supported).
    """
    top = MultiService()
    server_tls_list: list[ServerTLS] = []
    server_tls_by_listener: dict[int, ServerTLS] = {}
    for index, listener in enumerate(config.listeners):
        if listener.tls is not None:
            # Before anything is opened: a bad certificate is the likeliest mistake.
            server_tls = build_server_tls(listener, f"listener[{index}]", config.source, reactor)
            server_tls_by_listener[index] = server_tls
            server_tls_list.append(server_tls)
    access_log = open_access_log(config)
    if access_log is not None:
        _AccessLogCloser(access_log).setServiceParent(top)
    pools = build_pools(config, reactor)
    for pool_config in config.pools:
        pool = pools[pool_config.name]
        checker = build_health_checker(pool_config, pool, reactor, config.source)
        if checker is not None:
            checker.setServiceParent(top)
        if pool_config.dns is not None:
            if resolver is None:
                from twisted.names.client import createResolver

                resolver = createResolver()
            membership = build_dns_membership(pool_config, pool, reactor, resolver)
            assert membership is not None
            membership.setServiceParent(top)
    connections = BackendConnections(reactor, reactor, config.proxy.timeouts, config.proxy.limits)
    for index, listener in enumerate(config.listeners):
        factory: IProtocolFactory
        tls = listener.tls
        if listener.protocol == "tcp":
            factory = build_tcp_factory(config, listener, pools, reactor)
        elif listener.protocol == "ftp":
            # Not wrapped in TLS even when implicit: the FTP proxy starts TLS on the connection
            # itself, and on its data connections with the same certificates.
            factory = build_ftp_factory(
                config, listener, pools, reactor, server_tls_by_listener.get(index)
            )
        elif listener.redirect_to_https is not None:
            factory = HTTPSRedirectFactory(
                reactor,
                listener.redirect_to_https,
                limits=config.proxy.limits,
                timeout=config.proxy.timeouts.client_header,
            )
        elif listener.protocol in HTTP_PROTOCOLS:
            factory = HTTPProxyFactory(
                reactor,
                build_router(config, listener, pools),
                config.proxy,
                scheme=listener.protocol,
                access_log=access_log,
                connections=connections,
                client_cert_headers=tls is not None and tls.client_certs != "none",
                hsts=None if tls is None else tls.hsts,
            )
            if tls is not None:
                factory = TLSMemoryBIOFactory(server_tls_by_listener[index], False, factory)
        else:
            raise ConfigError(
                config.source,
                f"listener[{index}].protocol",
                f"{listener.protocol!r} listeners are not supported yet",
            )
        if tls is not None and tls.reload_interval > 0:
            watcher = server_tls_by_listener[index].watch(tls.reload_interval)
            watcher.setName(f"tls-watch:{listener.name}")
            watcher.setServiceParent(top)
        listening = StreamServerEndpointService(
            serverFromString(reactor, listener.endpoint), factory
        )
        listening.setName(listener.name)
        listening.setServiceParent(top)
    if server_tls_list:
        sighup = SighupReloadService(server_tls_list, reactor)
        sighup.setName("tls-sighup")
        sighup.setServiceParent(top)
    return top
