"""
Turning a validated L{Config} into running services.

L{build_service} is what C{twistd reverseproxy} runs.  The smaller functions map one part of
the configuration to the objects the proxy uses, for programs that build some of those objects
themselves (see C{docs/embedding.rst}).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime, IResolver

from twisted_rp.config import Config, ConfigError, ListenerConfig
from twisted_rp.config_pools import (
    BackendConfig,
    HealthConfig,
    PoolConfig,
    make_stickiness,
)
from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IBalancer, IHealthMonitor
from twisted_rp.pool import Backend, BackendPool, PassiveHealth
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import FTPMonitor, HealthChecker, HTTPMonitor, TCPMonitor, TLSMonitor
from twisted_rp.tcp.relay import TCPProxyFactory

__all__ = [
    "BALANCERS",
    "build_balancer",
    "build_dns_membership",
    "build_health_checker",
    "build_monitor",
    "build_pool",
    "build_pools",
    "build_router",
    "build_routes",
    "build_service",
    "build_tcp_factory",
    "open_access_log",
]

HTTP_PROTOCOLS = frozenset({"http", "https"})


def build_balancer(pool: PoolConfig) -> IBalancer:
    """A new balancer of the kind C{pool.balance} names, for that pool alone."""
    options = {} if pool.hash_key is None else {"key": pool.hash_key}
    return BALANCERS[pool.balance](**options)


def build_backend(backend: BackendConfig) -> Backend:
    """The L{Backend} C{backend} describes."""
    return Backend(
        backend.name,
        backend.host,
        backend.port,
        backend.weight,
        backend.backup,
        max_connections=backend.max_connections,
        ports=dict(backend.ports),
    )


def build_pool(pool: PoolConfig, clock: IReactorTime | None = None) -> BackendPool:
    """
    A L{BackendPool} with the backends of C{pool}, in order, and its balancing, stickiness,
    passive health, slow start, queue and retry settings.

    @param clock: times ejections, slow starts, queues and sticky tables; L{None} for the
        global reactor.
    """
    passive = pool.passive
    return BackendPool(
        pool.name,
        [build_backend(backend) for backend in pool.backends],
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
    return {pool.name: build_pool(pool, clock) for pool in config.pools}


def build_monitor(health: HealthConfig, reactor: Any) -> IHealthMonitor:
    """The L{IHealthMonitor} of the kind C{health.kind} names."""
    if health.kind == "http":
        assert health.expect_status is not None
        low, high = health.expect_status
        return HTTPMonitor(
            reactor,
            path=health.path or "/",
            method=health.method or "GET",
            host=health.host,
            # attrs' mypy plugin leaves frozenset's type variable unbound in the converter.
            expect_status=range(low, high + 1),  # type: ignore[arg-type]
            body_regex=health.body_regex,
        )
    if health.kind == "tls":
        return TLSMonitor(reactor, server_name=health.server_name)
    if health.kind == "ftp":
        return FTPMonitor(reactor, user=health.user, password=health.password)
    return TCPMonitor(reactor)


def build_health_checker(
    config: PoolConfig, pool: BackendPool, reactor: Any
) -> HealthChecker | None:
    """
    The service probing C{pool}'s backends as C{config.health} says, named C{health:NAME};
    L{None} without a health table.
    """
    health = config.health
    if health is None:
        return None
    checker = HealthChecker(
        pool,
        build_monitor(health, reactor),
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


def build_service(config: Config, reactor: Any, resolver: IResolver | None = None) -> MultiService:
    """
    Everything C{config} describes: a L{HealthChecker} (C{health:POOL}) and a L{DNSMembership}
    (C{dns:POOL}) for each pool that has one, then a L{StreamServerEndpointService} per
    listener, named after it, serving an L{HTTPProxyFactory} with that listener's routes or a
    L{TCPProxyFactory} relaying to its pool.  Listeners share the pools, the access log and the
    idle backend connections.

    @param reactor: provides TCP, time and whatever the listeners' endpoints need.
    @param resolver: where pools with a C{dns} table look names up; by default
        C{twisted.names.client.createResolver()} (the system's configuration), made only when
        some pool needs it.
    @raise ConfigError: something the configuration names cannot be set up (the access log
        file cannot be opened, a listener's protocol is not supported).
    """
    top = MultiService()
    access_log = open_access_log(config)
    if access_log is not None:
        _AccessLogCloser(access_log).setServiceParent(top)
    pools = build_pools(config, reactor)
    for pool_config in config.pools:
        pool = pools[pool_config.name]
        checker = build_health_checker(pool_config, pool, reactor)
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
        factory: HTTPProxyFactory | TCPProxyFactory
        if listener.protocol == "tcp":
            factory = build_tcp_factory(config, listener, pools, reactor)
        elif listener.protocol in HTTP_PROTOCOLS:
            factory = HTTPProxyFactory(
                reactor,
                build_router(config, listener, pools),
                config.proxy,
                scheme=listener.protocol,
                access_log=access_log,
                connections=connections,
            )
        else:
            raise ConfigError(
                config.source,
                f"listener[{index}].protocol",
                f"{listener.protocol!r} listeners are not supported yet",
            )
        listening = StreamServerEndpointService(
            serverFromString(reactor, listener.endpoint), factory
        )
        listening.setName(listener.name)
        listening.setServiceParent(top)
    return top
