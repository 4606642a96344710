"""
Turning the C{[pool.NAME]} tables of a validated L{Config} into pools, their client TLS, health
checks and DNS membership.

The functions here are re-exported by L{twisted_rp.service}, which assembles the listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime, IResolver
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.config import Config, ConfigError
from twisted_rp.config_pools import (
    BackendConfig,
    BackendTLSConfig,
    HealthConfig,
    PoolConfig,
    make_stickiness,
)
from twisted_rp.interfaces import IBalancer, IHealthMonitor
from twisted_rp.pool import Backend, BackendPool, PassiveHealth
from twisted_rp.pool.balancers import BALANCERS
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import FTPMonitor, HealthChecker, HTTPMonitor, TCPMonitor, TLSMonitor
from twisted_rp.tls import INSECURE_WARNING, CertificateFiles, TLSConfigError, client_tls

__all__ = [
    "BALANCERS",
    "PerBackendMonitor",
    "build_backend",
    "build_balancer",
    "build_client_tls",
    "build_dns_membership",
    "build_health_checker",
    "build_monitor",
    "build_passive",
    "build_pool",
    "build_pools",
]

DEFAULT_SOURCE = "<config>"

Creator = IOpenSSLClientConnectionCreator

# Named after the module these warnings came from before the split, for log filters.
_log = Logger(namespace="twisted_rp.service")


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


def build_balancer(
    pool: PoolConfig, reactor: Any = None, source: str = DEFAULT_SOURCE
) -> IBalancer:
    """
    A new balancer of the kind C{pool.balance} names, for that pool alone.

    @param reactor: given to a balancer extension.
    @raise ConfigError: a balancer extension cannot be built.
    """
    if pool.balancer is not None:
        balancer: IBalancer = pool.balancer.build(reactor, source)
        return balancer
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
    tls = _backend_tls(pool, source)
    return BackendPool(
        pool.name,
        [build_backend(backend, tls[backend.name]) for backend in pool.backends],
        build_balancer(pool, clock, source),
        clock=clock,
        stickiness=None if pool.sticky is None else make_stickiness(pool.sticky, clock),
        slow_start=pool.slow_start,
        queue_size=pool.queue_size,
        queue_timeout=pool.queue_timeout,
        passive=build_passive(pool),
        retries=pool.retries,
    )


def build_passive(pool: PoolConfig) -> PassiveHealth | None:
    """The passive health C{[pool.NAME.passive]} describes, or L{None} without it."""
    passive = pool.passive
    if passive is None:
        return None
    return PassiveHealth(
        passive.consecutive_failures,
        passive.base_ejection,
        passive.max_ejection,
        passive.max_ejected_share,
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
    if health.extension is not None:
        monitor: IHealthMonitor = health.extension.build(reactor, source)
        return monitor
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
