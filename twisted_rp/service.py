"""
Turning a validated L{Config} into running services.

L{build_service} is what C{twistd reverseproxy} runs.  The smaller functions map one part of
the configuration to the objects the proxy uses, for programs that build some of those objects
themselves (see C{docs/embedding.rst}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString

from twisted_rp.config import Config, ConfigError, ListenerConfig, PoolConfig
from twisted_rp.http.accesslog import AccessLog, access_log_from_settings
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IBalancer
from twisted_rp.pool import Backend, BackendPool, RoundRobin

BALANCERS: Mapping[str, Callable[[], IBalancer]] = MappingProxyType({"round_robin": RoundRobin})
"""A new balancer for each C{balance} name a pool may have."""

HTTP_PROTOCOLS = frozenset({"http", "https"})


def build_pool(pool: PoolConfig) -> BackendPool:
    """
    A L{BackendPool} with the backends of C{pool}, in order.
    """
    backends = [
        Backend(backend.name, backend.host, backend.port, backend.weight, backend.backup)
        for backend in pool.backends
    ]
    return BackendPool(pool.name, backends, BALANCERS[pool.balance]())


def build_pools(config: Config) -> dict[str, BackendPool]:
    """
    One pool per C{[pool.NAME]} table, by name: every route naming a pool shares its object,
    so balancing and backend state are the same whichever listener a request arrives on.
    """
    return {pool.name: build_pool(pool) for pool in config.pools}


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


def build_service(config: Config, reactor: Any) -> MultiService:
    """
    Everything C{config} describes: a L{StreamServerEndpointService} per listener, named after
    it, serving an L{HTTPProxyFactory} with that listener's routes.  The listeners share the
    pools, the access log and the idle backend connections.

    @param reactor: provides TCP, time and whatever the listeners' endpoints need.
    @raise ConfigError: something the configuration names cannot be set up (the access log
        file cannot be opened, a listener's protocol is not supported).
    """
    top = MultiService()
    access_log = open_access_log(config)
    if access_log is not None:
        _AccessLogCloser(access_log).setServiceParent(top)
    pools = build_pools(config)
    connections = BackendConnections(reactor, reactor, config.proxy.timeouts, config.proxy.limits)
    for index, listener in enumerate(config.listeners):
        if listener.protocol not in HTTP_PROTOCOLS:
            raise ConfigError(
                config.source,
                f"listener[{index}].protocol",
                f"{listener.protocol!r} listeners are not supported yet",
            )
        factory = HTTPProxyFactory(
            reactor,
            build_router(config, listener, pools),
            config.proxy,
            scheme=listener.protocol,
            access_log=access_log,
            connections=connections,
        )
        listening = StreamServerEndpointService(
            serverFromString(reactor, listener.endpoint), factory
        )
        listening.setName(listener.name)
        listening.setServiceParent(top)
    return top
