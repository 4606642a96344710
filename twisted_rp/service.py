"""
Turning a validated L{Config} into running services.

L{build_service} is what C{twistd reverseproxy} runs.  The smaller functions map one part of
the configuration to the objects the proxy uses, for programs that build some of those objects
themselves (see C{docs/embedding.rst}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IResolver,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from twisted_rp.config import Config, ConfigError, ListenerConfig
from twisted_rp.config_pools import (
    BackendConfig,
    BackendTLSConfig,
    FTPBackendsConfig,
    HealthConfig,
    PoolConfig,
    make_stickiness,
)
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.redirect import HTTPSRedirectFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IBalancer, IHealthMonitor
from twisted_rp.pool import Backend, BackendPool, PassiveHealth
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import FTPMonitor, HealthChecker, HTTPMonitor, TCPMonitor, TLSMonitor
from twisted_rp.tcp.relay import TCPProxyFactory
from twisted_rp.tls import (
    INSECURE_WARNING,
    CertificateFiles,
    ServerTLS,
    SighupReloadService,
    TLSConfigError,
    client_tls,
)

__all__ = [
    "BALANCERS",
    "PerBackendMonitor",
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
DEFAULT_SOURCE = "<config>"

Creator = IOpenSSLClientConnectionCreator

_log = Logger()


def _tls_error(
    source: str,
    base: str,
    error: TLSConfigError,
    groups: Sequence[Sequence[tuple[str, str | None]]],
) -> ConfigError:
    """
    A L{ConfigError} at the key of the file C{error} is about.

    L{TLSConfigError} messages start with the file's path (after C{"bad CA file "} for CAs).
    A path may be given under several keys (one PEM holding certificate and key, one key for
    two certificates): the key chosen is the one whose neighbours the message names too (a key
    that does not match I{this} certificate), then, for messages about the private key, a
    C{key}, then the first.

    @param base: the key path of the table holding the files.
    @param groups: C{(key, path)} pairs, by certificate entry.
    """
    message = str(error)
    text = message.removeprefix("bad CA file ")
    matches: list[tuple[int, bool, str]] = []
    for group in groups:
        for key, path in group:
            if path is not None and text.startswith(f"{path}:"):
                named = sum(1 for _, other in group if other not in (None, path) and other in text)
                about_key = "private key" in text and key.endswith("key")
                matches.append((-named, not about_key, key))
    if matches:
        key = min(matches, key=lambda match: match[:2])[2]
    elif text.startswith("ciphers "):
        key = "ciphers"
    else:
        return ConfigError(source, base, message)
    return ConfigError(source, f"{base}.{key}", message)


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


def build_client_tls(pool: PoolConfig, host: str, source: str = DEFAULT_SOURCE) -> Creator:
    """
    Client TLS to C{host} with the settings of C{pool}'s C{tls} table (the defaults without
    one): the name sent and verified is C{server_name}, else C{host}.

    @raise ConfigError: a CA or client certificate file is unusable, naming its key.
    """
    tls = pool.tls or BackendTLSConfig()
    return _client_tls(pool, tls.server_name or host, source)


def _client_tls(pool: PoolConfig, server_name: str, source: str) -> Creator:
    tls = pool.tls or BackendTLSConfig()
    client_cert = None
    if tls.client_cert is not None and tls.client_key is not None:
        client_cert = CertificateFiles(tls.client_cert, tls.client_key)
    groups: list[list[tuple[str, str | None]]] = [
        [("client_cert", tls.client_cert), ("client_key", tls.client_key)]
    ]
    groups.extend([(f"ca_files[{i}]", path)] for i, path in enumerate(tls.ca_files))
    try:
        return client_tls(
            server_name,
            verify=tls.verify,
            ca_files=tls.ca_files,
            client_cert=client_cert,
        )
    except TLSConfigError as error:
        raise _tls_error(source, f"pool.{pool.name}.tls", error, groups) from None


class _ClientTLSCache:
    """
    The client TLS creators of one pool, one per server name, made when first asked for; the
    first one made for an unverified name logs L{INSECURE_WARNING}.
    """

    def __init__(self, pool: PoolConfig, source: str) -> None:
        self._pool = pool
        self._source = source
        self._creators: dict[str, Creator] = {}

    def for_host(self, host: str) -> Creator:
        """The creator for a backend on C{host}; raises L{ConfigError}."""
        tls = self._pool.tls or BackendTLSConfig()
        return self.for_name(tls.server_name or host)

    def for_name(self, name: str) -> Creator:
        """The creator sending and verifying C{name}; raises L{ConfigError}."""
        creator = self._creators.get(name)
        if creator is None:
            creator = self._creators[name] = _client_tls(self._pool, name, self._source)
            if self._pool.tls is not None and not self._pool.tls.verify:
                _log.warn(INSECURE_WARNING, server_name=name)
        return creator

    def check(self) -> None:
        """Read the pool's TLS files now, so that a bad one is reported at start-up."""
        tls = self._pool.tls
        if tls is not None and (tls.ca_files or tls.client_cert):
            hosts = [backend.host for backend in self._pool.backends] or ["localhost"]
            build_client_tls(self._pool, tls.server_name or hosts[0], self._source)


def build_balancer(pool: PoolConfig) -> IBalancer:
    """A new balancer of the kind C{pool.balance} names, for that pool alone."""
    options = {} if pool.hash_key is None else {"key": pool.hash_key}
    return BALANCERS[pool.balance](**options)


def build_backend(backend: BackendConfig, tls: Creator | None = None) -> Backend:
    """
    The L{Backend} C{backend} describes.

    @param tls: the client TLS of an C{https} backend (see L{build_client_tls}).
    """
    return Backend(
        backend.name,
        backend.host,
        backend.port,
        backend.weight,
        backend.backup,
        max_connections=backend.max_connections,
        ports=dict(backend.ports),
        tls=tls,
    )


def _backend_tls(pool: PoolConfig, source: str) -> dict[str, Creator | None]:
    """
    The client TLS of each of C{pool}'s backends, by name: one creator per server name, shared
    by the backends with that name and reused by their pooled connections; L{None} for plain
    backends.
    """
    creators = _ClientTLSCache(pool, source)
    creators.check()
    return {
        backend.name: creators.for_host(backend.host) if backend.scheme == "https" else None
        for backend in pool.backends
    }


def build_pool(
    pool: PoolConfig, clock: IReactorTime | None = None, source: str = DEFAULT_SOURCE
) -> BackendPool:
    """
    A L{BackendPool} with the backends of C{pool}, in order, and its balancing, stickiness,
    passive health, slow start, queue and retry settings; C{https} backends get their client
    TLS (L{Backend.tls}), and a warning is logged for those not verified.

    @param clock: times ejections, slow starts, queues and sticky tables; L{None} for the
        global reactor.
    @param source: the configuration file, for errors.
    @raise ConfigError: a file of C{[pool.NAME.tls]} is unusable.
    """
    passive = pool.passive
    tls = _backend_tls(pool, source)
    return BackendPool(
        pool.name,
        [build_backend(backend, tls[backend.name]) for backend in pool.backends],
        build_balancer(pool),
        clock=clock,
        stickiness=None if pool.sticky is None else make_stickiness(pool.sticky, clock),
        slow_start=pool.slow_start,
        queue_size=pool.queue_size,
        queue_timeout=pool.queue_timeout,
        passive=None
        if passive is None
        else PassiveHealth(
            passive.consecutive_failures,
            passive.base_ejection,
            passive.max_ejection,
            passive.max_ejected_share,
        ),
        retries=pool.retries,
    )


def build_pools(config: Config, clock: IReactorTime | None = None) -> dict[str, BackendPool]:
    """
    One pool per C{[pool.NAME]} table, by name: every route and listener naming a pool shares
    its object, so balancing and backend state are the same whichever listener a request or
    connection arrives on.
    """
    return {pool.name: build_pool(pool, clock, config.source) for pool in config.pools}


@implementer(IHealthMonitor)
class PerBackendMonitor:
    """
    Probes each backend with the client TLS it needs, by a monitor made for that TLS.

    @ivar creator_for: the client TLS for a backend (L{None} for none); may raise.
    @ivar make: a monitor using the given client TLS; made once per distinct one.
    """

    def __init__(
        self,
        creator_for: Callable[[Backend], Creator | None],
        make: Callable[[Creator | None], IHealthMonitor],
    ) -> None:
        self.creator_for = creator_for
        self.make = make
        # Keyed by identity; the creator is kept so that its id is not reused.
        self._monitors: dict[int, tuple[Creator | None, IHealthMonitor]] = {}

    def check(self, backend: Backend) -> Deferred[None]:
        try:
            creator = self.creator_for(backend)
        except ConfigError as error:
            return fail(error)
        entry = self._monitors.get(id(creator))
        if entry is None:
            entry = self._monitors[id(creator)] = (creator, self.make(creator))
        result: Deferred[None] = entry[1].check(backend)
        return result


def build_monitor(
    health: HealthConfig,
    reactor: Any,
    pool: PoolConfig | None = None,
    source: str = DEFAULT_SOURCE,
) -> IHealthMonitor:
    """
    The L{IHealthMonitor} of the kind C{health.kind} names.

    With C{pool}, the C{tls} kind uses the client TLS of C{[pool.NAME.tls]} (verification, CAs,
    client certificate; C{health.server_name}, else the pool's, else the backend's host is
    verified) and reuses an C{https} backend's own; the C{http} kind speaks HTTPS, with the
    backend's client TLS, to C{https} backends.
    """
    if health.kind == "http":
        assert health.expect_status is not None
        low, high = health.expect_status

        def http_monitor(creator: Creator | None = None) -> HTTPMonitor:
            return HTTPMonitor(
                reactor,
                path=health.path or "/",
                method=health.method or "GET",
                host=health.host,
                # attrs' mypy plugin leaves frozenset's type variable unbound in the converter.
                expect_status=range(low, high + 1),  # type: ignore[arg-type]
                body_regex=health.body_regex,
                scheme="http" if creator is None else "https",
                tls_options=creator,
            )

        if pool is None or all(backend.scheme == "http" for backend in pool.backends):
            return http_monitor()
        return PerBackendMonitor(lambda backend: cast(Creator | None, backend.tls), http_monitor)
    if health.kind == "tls":
        if pool is None:
            return TLSMonitor(reactor, server_name=health.server_name)
        creators = _ClientTLSCache(pool, source)
        creators.check()
        server_name = health.server_name

        def tls_for(backend: Backend) -> Creator:
            if server_name is not None:
                return creators.for_name(server_name)
            if backend.tls is not None:
                return cast(Creator, backend.tls)
            return creators.for_host(backend.host)

        return PerBackendMonitor(tls_for, lambda creator: TLSMonitor(reactor, tls_options=creator))
    if health.kind == "ftp":
        mode = pool.ftp.tls if pool is not None and pool.ftp is not None else "none"
        if pool is None or mode == "none":
            return FTPMonitor(reactor, user=health.user, password=health.password)
        # FTPS backends are checked over FTPS, with the pool's client TLS settings.
        ftps = _ClientTLSCache(pool, source)
        ftps.check()
        ftps_name = pool.tls.server_name if pool.tls is not None else None

        def ftps_for(backend: Backend) -> Creator:
            return ftps.for_name(ftps_name) if ftps_name else ftps.for_host(backend.host)

        return PerBackendMonitor(
            ftps_for,
            lambda creator: FTPMonitor(
                reactor, user=health.user, password=health.password, tls=mode, tls_creator=creator
            ),
        )
    return TCPMonitor(reactor)


def build_health_checker(
    config: PoolConfig, pool: BackendPool, reactor: Any, source: str = DEFAULT_SOURCE
) -> HealthChecker | None:
    """
    The service probing C{pool}'s backends as C{config.health} says, named C{health:NAME};
    L{None} without a health table.

    @raise ConfigError: a file of C{[pool.NAME.tls]} is unusable.
    """
    health = config.health
    if health is None:
        return None
    checker = HealthChecker(
        pool,
        build_monitor(health, reactor, config, source),
        reactor,
        interval=health.interval,
        timeout=health.timeout,
        jitter=health.jitter,
        rise=health.rise,
        fall=health.fall,
    )
    checker.setName(f"health:{config.name}")
    return checker


def build_dns_membership(
    config: PoolConfig, pool: BackendPool, reactor: Any, resolver: IResolver
) -> DNSMembership | None:
    """
    The service keeping C{pool}'s members in step with C{config.dns}, named C{dns:NAME};
    L{None} without a DNS table.
    """
    dns = config.dns
    if dns is None:
        return None
    membership = DNSMembership(
        pool, resolver, dns.name, dns.port, dns.kind, dns.interval, clock=reactor
    )
    membership.setName(f"dns:{config.name}")
    return membership


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


def _ftps_backend_creator(pool: PoolConfig, source: str) -> Creator:
    """
    The one client TLS of a pool's FTPS backends: its server name is C{server_name}, else the
    backends' one host (the configuration requires one or the other when verifying).
    """
    creators = _ClientTLSCache(pool, source)
    creators.check()
    tls = pool.tls or BackendTLSConfig()
    hosts = sorted({backend.host for backend in pool.backends}) or ["localhost"]
    return creators.for_name(tls.server_name or hosts[0])


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
