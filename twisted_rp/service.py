"""
Turning a validated L{Config} into running services.

L{build_service} is what C{twistd reverseproxy} runs.  The smaller functions map one part of
the configuration to the objects the proxy uses, for programs that build some of those objects
themselves (see C{docs/embedding.rst}); those for pools live in L{twisted_rp.service_pools}
and are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IResolver
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_rp.auth.ipfilter import ClientFilterFactory
from twisted_rp.config import Config, ConfigError, ListenerConfig
from twisted_rp.config_pools import FTPBackendsConfig
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.redirect import HTTPSRedirectFactory
from twisted_rp.http.routing import Router
from twisted_rp.interfaces import IAccessLog
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
from twisted_rp.service_routes import (
    build_middlewares,
    build_router,
    build_routes,
    listener_filter,
)
from twisted_rp.tcp.relay import TCPProxyFactory
from twisted_rp.tls import ServerTLS, TLSConfigError

if TYPE_CHECKING:
    from twisted_rp.proxyservice import ReverseProxyService

__all__ = [
    "BALANCERS",
    "PerBackendMonitor",
    "build_backend",
    "build_balancer",
    "build_client_tls",
    "build_dns_membership",
    "build_ftp_factory",
    "build_health_checker",
    "build_listener_factory",
    "build_middlewares",
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
        # After a PROXY header, the client it names is the one allow/deny judge.
        client_filter=listener_filter(listener),
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
    C{[pool.NAME.tls]} (an C{https://} backend's own, if it has one).  With a
    C{[listener.login]} table the proxy checks logins against its htpasswd file itself.

    @raise ConfigError: a file of C{[pool.NAME.tls]} or the login's htpasswd is unusable.
    """
    assert listener.pool is not None and listener.ftp is not None
    ftp = listener.ftp
    login = None
    if ftp.login is not None:
        listeners = list(config.listeners)
        where = listeners.index(listener) if listener in listeners else listener.name
        login = ftp.login.build(reactor, config.source, f"listener[{where}].login")
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
        login=login,
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
    from twisted.internet import reactor

    # Building them reads their files (htpasswd, JWKS, keys) and starts nothing.
    build_middlewares(config, reactor)
    for index, listener in enumerate(config.listeners):
        if listener.ftp is not None and listener.ftp.login is not None:
            listener.ftp.login.build(reactor, config.source, f"listener[{index}].login")
    for pool in config.pools:
        if pool.balancer is not None:
            pool.balancer.build(reactor, config.source)


def build_listener_factory(
    config: Config,
    index: int,
    pools: Mapping[str, BackendPool],
    reactor: Any,
    *,
    connections: BackendConnections,
    access_log: IAccessLog | None,
    middlewares: Mapping[str, object],
    server_tls: ServerTLS | None = None,
    router: Router | None = None,
) -> IProtocolFactory:
    """
    The factory listener C{index} of C{config} serves: an L{HTTPProxyFactory} with that
    listener's routes (for C{https}, inside a C{TLSMemoryBIOFactory} with C{server_tls}), an
    L{HTTPSRedirectFactory} (C{redirect_to_https}), a L{TCPProxyFactory} relaying to its pool
    or an L{FTPProxyFactory} (L{build_ftp_factory}, which does its own TLS).

    @param connections: the idle backend connections HTTP listeners share.
    @param router: the HTTP routes, if already built (else built from C{config}).
    @raise ConfigError: the listener's protocol is not supported, or a file of its pool's
        C{[pool.NAME.tls]} is unusable.
    """
    listener = config.listeners[index]
    factory: IProtocolFactory
    tls = listener.tls
    if listener.protocol == "tcp":
        factory = build_tcp_factory(config, listener, pools, reactor)
    elif listener.protocol == "ftp":
        # Not wrapped in TLS even when implicit: the FTP proxy starts TLS on the connection
        # itself, and on its data connections with the same certificates.
        factory = build_ftp_factory(config, listener, pools, reactor, server_tls)
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
            router if router is not None else build_router(config, listener, pools, middlewares),
            config.proxy,
            scheme=listener.protocol,
            access_log=access_log,
            connections=connections,
            client_cert_headers=tls is not None and tls.client_certs != "none",
            hsts=None if tls is None else tls.hsts,
        )
        if tls is not None:
            assert server_tls is not None, f"{listener.name} needs its ServerTLS"
            factory = TLSMemoryBIOFactory(server_tls, False, factory)
    else:
        raise ConfigError(
            config.source,
            f"listener[{index}].protocol",
            f"{listener.protocol!r} listeners are not supported yet",
        )
    client_filter = listener_filter(listener)
    if client_filter is not None and listener.protocol == "ftp":
        # HTTP listeners answer 403 through their routes, TCP ones filter in the relay.
        factory = ClientFilterFactory(client_filter, factory)
    return factory


def build_service(
    config: Config, reactor: Any, resolver: IResolver | None = None
) -> ReverseProxyService:
    """
    Everything C{config} describes, as a L{ReverseProxyService}: a L{HealthChecker}
    (C{health:POOL}) and a L{DNSMembership} (C{dns:POOL}) for each pool that has one, a
    listening service per listener, named after it, serving L{build_listener_factory}'s
    factory; C{https} and FTPS listeners also get a service reloading their certificates when
    the files change (C{tls-watch:LISTENER}, unless C{reload_interval} is 0).  Listeners share
    the pools, the access log and the idle backend connections.  While it runs, SIGHUP reloads
    the configuration file (and every certificate) and SIGUSR1 rotates the access log file
    (the C{signals} service).

    @param reactor: provides TCP, time and whatever the listeners' endpoints need; its time is
        the one certificates' expiry is checked against.
    @param resolver: where pools with a C{dns} table look names up; by default
        C{twisted.names.client.createResolver()} (the system's configuration), made only when
        some pool needs it.
    @raise ConfigError: something the configuration names cannot be set up (the access log
        file cannot be opened, a certificate, key or CA file is missing or unusable, a
        listener's protocol is not supported).
    """
    from twisted_rp.proxyservice import ReverseProxyService

    top = ReverseProxyService(config, reactor, resolver)
    # The admin listener (issue #7): API, dashboard and metrics over the running service.
    if config.admin is not None:
        from twisted_rp.admin import ProxyStats, build_admin_service

        admin = build_admin_service(top, config.admin, reactor, ProxyStats(), listeners=top)
        admin.setServiceParent(top)
    return top
