"""
The running proxy: L{ReverseProxyService}, which a configuration reload changes in place and
which stops gracefully.

A reload (SIGHUP, or L{ReverseProxyService.reload}) first prepares everything the new
configuration needs that could fail (reading it, certificates and keys, the access log file,
middlewares, factories, listening on new endpoints) and changes nothing if any of it does; then
it applies the changes, which cannot fail: pools keep their objects and their unchanged
backends (health, ejections, leases, sticky tables), routers are replaced (new requests take
the new routes, requests in flight keep theirs), listeners are added, removed or given a new
factory on the same listening socket.  Connections already open are never closed by a reload.

Stopping (SIGTERM under twistd) stops listening, lets what is in flight finish for up to
C{[server] grace_period} seconds while idle connections are closed, then closes the rest.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from attrs import define
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredLock, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IResolver, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.config import COMMAND_LINE, Config, ConfigError, ListenerConfig, load_config
from twisted_rp.http.accesslog import AccessLog, AccessLogSwitch
from twisted_rp.http.backend import BackendConnections
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Router
from twisted_rp.listening import ListeningService, SignalService, serving_factory
from twisted_rp.pool import BackendPool
from twisted_rp.proxyservice_pools import PoolStates, ReloadPlan, plan_pools
from twisted_rp.service import (
    build_listener_factory,
    build_middlewares,
    build_router,
    build_server_tls,
    open_access_log,
)
from twisted_rp.tls import ServerTLS, TLSConfigError

__all__ = ["ListeningService", "ReverseProxyService", "SignalService"]

_log = Logger(namespace="twisted_rp.service")

#: How often a stopping proxy looks whether its connections are done.
_DRAIN_POLL = 0.05


@define(eq=False)
class _Listener:
    """One running listener: what it was built from and what serves it."""

    config: ListenerConfig
    key: tuple[object, ...]
    factory: IProtocolFactory
    service: ListeningService
    server_tls: ServerTLS | None = None
    watcher: IService | None = None


def _factory_key(config: Config, listener: ListenerConfig) -> tuple[object, ...]:
    """
    What a listener's factory is built from, routes aside (a router is replaced in place): a
    reload that changes any of it builds a new factory.
    """
    key: list[object] = [listener, config.proxy, config.log.access != "off"]
    if listener.pool is not None:
        pool = config.pool(listener.pool)
        key.extend((pool.tls, pool.ftp))
    return tuple(key)


def _inherit_observers(
    old: _Listener, factory: IProtocolFactory, server_tls: ServerTLS | None
) -> None:
    """Give a listener's new factory (and certificates) the observers of those it replaces."""
    pairs = [(serving_factory(old.factory), serving_factory(factory))]
    if server_tls is not None and old.server_tls is not None:
        pairs.append((old.server_tls, server_tls))
    for before, after in pairs:
        for name in ("request_observers", "observers"):
            theirs, mine = getattr(before, name, None), getattr(after, name, None)
            if isinstance(theirs, list) and isinstance(mine, list) and mine is not theirs:
                mine.extend(observer for observer in theirs if observer not in mine)


class ReverseProxyService(MultiService):
    """
    Everything one configuration describes, running; see L{twisted_rp.service.build_service}.

    @ivar config: the configuration in use.
    @ivar pools: the pools by name; a pool keeps its object across reloads while its name is
        in the configuration.
    @ivar routers: the L{Router} of each HTTP listener, by listener name.
    @ivar health_checks: whether active health checkers run here; without them, backend
        states come from elsewhere (L{set_backend_health}), as in a worker process.
    @ivar dns: whether DNS memberships run here; without them, the members of DNS pools come
        from elsewhere, as in a worker process.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        resolver: IResolver | None = None,
        *,
        health_checks: bool = True,
        dns: bool = True,
        signals: bool = True,
        endpoint_for: Callable[[ListenerConfig], IStreamServerEndpoint] | None = None,
    ) -> None:
        """
        @param signals: handle SIGHUP (reload) and SIGUSR1 (rotate the access log) while
            running.
        @param endpoint_for: where a listener listens; by default its C{endpoint} string,
            parsed with C{serverFromString} (a worker may adopt an inherited socket instead).
        @raise ConfigError: something C{config} names cannot be set up.
        """
        super().__init__()
        self.reactor = reactor
        self.health_checks = health_checks
        self.dns = dns
        self._resolver = resolver
        self._endpoint_for = endpoint_for or (
            lambda listener: serverFromString(reactor, listener.endpoint)
        )
        self._reload_lock = DeferredLock()
        self._listeners: dict[str, _Listener] = {}
        self._pool_states = PoolStates()
        self._retired: list[object] = []
        self._middlewares: dict[str, object] = {}
        self._retired_middlewares: list[object] = []
        self._access_log: AccessLogSwitch | None = None
        self._connections: BackendConnections | None = None
        self._stopping: Deferred[None] | None = None
        # Listening services opened while preparing a reload: closed again if it is given up.
        self._opening: list[ListeningService] = []
        self._opened_log: AccessLog | None = None
        #: Called after every reload that changed something (the admin side attaches its
        #: observers to new pools and listeners); factories and certificates that replace
        #: others inherit their observers.
        self.after_reload: list[Callable[[], object]] = []
        self.config = config
        self.routers: dict[str, Router] = {}
        self._commit(self._prepare(config, initial=True))
        if signals:
            handlers = SignalService(
                reactor, {signal.SIGHUP: self._on_sighup, signal.SIGUSR1: self.rotate_logs}
            )
            handlers.setName("signals")
            handlers.setServiceParent(self)

    @property
    def pools(self) -> dict[str, BackendPool]:
        return self._pool_states.pools

    def _get_resolver(self) -> IResolver:
        if self._resolver is None:
            from twisted.names.client import createResolver

            self._resolver = createResolver()
        return self._resolver

    # Reloading

    async def reload(self, config: Config | None = None) -> None:
        """
        Change to C{config}, or to the configuration file read again.  The outcome is logged.

        @raise ConfigError: the configuration is invalid or cannot be set up (a certificate,
            the access log file, an endpoint already in use); the one in use is kept.
        """
        await self._reload_lock.acquire()
        try:
            await self._reload(config)
        finally:
            self._reload_lock.release()

    async def _reload(self, config: Config | None) -> None:
        try:
            if config is None:
                source = self.config.source
                if source == COMMAND_LINE:
                    raise ConfigError(source, "", "not from a file: there is nothing to re-read")
                config = load_config(source)
            plan = self._prepare(config)
        except ConfigError as error:
            _log.error("reload rejected: {error}", error=str(error))
            raise
        stopping = self._commit(plan)
        _log.info("reloaded {source}: {summary}", source=config.source, summary=plan.summary())
        for hook in self.after_reload:
            try:
                hook()
            except Exception:
                _log.failure("after-reload hook {hook!r} failed", hook=hook)
        await gatherResults(stopping, consumeErrors=True)

    def _on_sighup(self) -> None:
        if self.config.source == COMMAND_LINE:
            # Nothing to re-read; the certificates may still have been renewed.
            self.reload_certificates()
            return

        def failed(failure: Failure) -> None:
            if not failure.check(ConfigError):  # Logged already.
                _log.failure("reload failed", failure)
            # A renewal hook's SIGHUP still renews the certificates of the listeners in use.
            self.reload_certificates()

        Deferred.fromCoroutine(self.reload()).addErrback(failed)

    def reload_certificates(self) -> None:
        """Read every listener's certificates again (a failing one keeps those in use)."""
        for listener in self._listeners.values():
            if listener.server_tls is not None:
                self._reload_tls(listener)

    def rotate_logs(self) -> None:
        """Rotate the access log file, as SIGUSR1 does twistd's own log."""
        if self._access_log is not None:
            self._access_log.rotate()

    def _prepare(self, config: Config, initial: bool = False) -> ReloadPlan:
        try:
            return self._prepare_all(config, initial)
        except BaseException:
            for opened in self._opening:
                opened.stopService()
            if self._opened_log is not None:
                self._opened_log.close()
            raise
        finally:
            self._opening = []
            self._opened_log = None

    def _prepare_all(self, config: Config, initial: bool) -> ReloadPlan:
        reactor = self.reactor
        old = None if initial else self.config
        plan = ReloadPlan(config)
        plan_pools(
            plan, self._pool_states, reactor, self._get_resolver, self.health_checks, self.dns
        )
        # Files first: a bad certificate is the likeliest mistake.
        new_tls: dict[str, ServerTLS] = {}
        for index, listener in enumerate(config.listeners):
            if listener.tls is not None:
                new_tls[listener.name] = build_server_tls(
                    listener, f"listener[{index}]", config.source, reactor
                )
        access_log = self._access_log
        if old is None or old.log != config.log:
            opened = self._opened_log = open_access_log(config)
            if access_log is None and opened is not None:
                access_log = AccessLogSwitch(None)
            switch = access_log
            if switch is not None:
                plan.actions.append(lambda: switch.replace(opened))
        elif access_log is not None:
            plan.actions.append(access_log.reopen)
        if old is None or old.middlewares != config.middlewares:
            before = () if old is None else old.middlewares
            keep = {m.name: self._middlewares[m.name] for m in config.middlewares if m in before}
            middlewares = build_middlewares(config, reactor, keep)
        else:
            middlewares = self._middlewares
        connections = self._connections
        if connections is None or old is None or old.proxy != config.proxy:
            connections = BackendConnections(
                reactor, reactor, config.proxy.timeouts, config.proxy.limits
            )
        if old is not None:
            plan.count(
                "routes",
                added=len([r for r in config.routes if r not in old.routes]),
                removed=len([r for r in old.routes if r not in config.routes]),
            )
        pools = plan.pools.pools
        for index, listener in enumerate(config.listeners):
            if listener.proxies_http:
                plan.routers[listener.name] = build_router(config, listener, pools, middlewares)
            self._plan_listener(
                plan, index, new_tls.get(listener.name), access_log, connections, middlewares
            )
        for name, gone in self._listeners.items():
            if name not in plan.listeners:
                plan.count("listeners", removed=1)
                plan.stop.append(gone.service)
                if gone.watcher is not None:
                    plan.stop.append(gone.watcher)
                plan.actions.append(partial(self._retire, gone.factory, shutdown=True))

        def swap_state() -> None:
            if middlewares is not self._middlewares:
                # Requests in flight may still use them: closed when the proxy stops.
                kept = {id(m) for m in middlewares.values()}
                self._retired_middlewares.extend(
                    m for m in self._middlewares.values() if id(m) not in kept
                )
            self._middlewares = middlewares
            self._access_log = access_log
            if connections is not self._connections and self._connections is not None:
                self._connections.close_idle()
            self._connections = connections

        plan.actions.insert(0, swap_state)
        return plan

    def _plan_listener(
        self,
        plan: ReloadPlan,
        index: int,
        server_tls: ServerTLS | None,
        access_log: AccessLogSwitch | None,
        connections: BackendConnections,
        middlewares: Mapping[str, object],
    ) -> None:
        config = plan.config
        listener = config.listeners[index]
        key = _factory_key(config, listener)
        old = self._listeners.get(listener.name)
        router = plan.routers.get(listener.name)
        if old is not None and old.key == key:
            plan.listeners[listener.name] = old
            if router is not None:
                inner = serving_factory(old.factory)
                plan.actions.append(lambda: setattr(inner, "router", router))
            if old.server_tls is not None:
                # Same settings, perhaps renewed files (checked above with server_tls).
                plan.actions.append(partial(self._reload_tls, old))
            return
        factory = build_listener_factory(
            config,
            index,
            plan.pools.pools,
            self.reactor,
            connections=connections,
            access_log=access_log if config.log.access != "off" else None,
            middlewares=middlewares,
            server_tls=server_tls,
            router=router,
        )
        if old is not None:
            _inherit_observers(old, factory, server_tls)
        watcher = None
        tls = listener.tls
        if tls is not None and server_tls is not None and tls.reload_interval > 0:
            watcher = server_tls.watch(tls.reload_interval)
            watcher.setName(f"tls-watch:{listener.name}")
            plan.start.append(watcher)
        if old is not None and old.config.endpoint == listener.endpoint and self.running:
            plan.count("listeners", changed=1)
            record = _Listener(listener, key, factory, old.service, server_tls, watcher)
            plan.actions.append(lambda: self._swap(old, record, router))
        else:
            service = ListeningService(self._endpoint_for(listener), factory)
            service.setName(listener.name)
            record = _Listener(listener, key, factory, service, server_tls, watcher)
            if self.running:
                self._opening.append(service)
                try:
                    service.listen_now()
                except Exception as error:
                    raise ConfigError(
                        config.source, f"listener[{index}].endpoint", f"cannot listen: {error}"
                    ) from None
            plan.start.append(service)
            if old is None:
                plan.count("listeners", added=1)
            else:
                plan.count("listeners", changed=1)
                plan.stop.append(old.service)
                plan.actions.append(lambda: self._retire(old.factory, router=router))
        if old is not None and old.watcher is not None:
            plan.stop.append(old.watcher)
        plan.listeners[listener.name] = record

    def _reload_tls(self, listener: _Listener) -> None:
        """Read C{listener}'s certificates again; a failure keeps those in use."""
        assert listener.server_tls is not None
        try:
            listener.server_tls.reload()
        except TLSConfigError as error:
            _log.error(
                "{listener}: TLS reload failed, keeping the certificates in use: {error}",
                listener=listener.config.name,
                error=error,
            )

    def _swap(self, old: _Listener, new: _Listener, router: Router | None) -> None:
        """Serve C{new}'s factory on C{old}'s listening socket."""
        self._retire(old.factory, router=router)
        if not new.service.swap_factory(new.factory):
            # Not a port whose factory can change: listen again once the old one is closed.
            replacement = ListeningService(self._endpoint_for(new.config), new.factory)
            replacement.setName(new.config.name)
            new.service = replacement
            stopped = maybeDeferred(old.service.disownServiceParent)
            stopped.addCallback(lambda _: replacement.setServiceParent(self))
            stopped.addErrback(lambda failure: _log.failure("re-listening failed", failure))

    def _retire(
        self, factory: object, router: Router | None = None, shutdown: bool = False
    ) -> None:
        """
        Keep C{factory} while its connections last, so that a stop waits for them; its
        keep-alive connections take the listener's new routes (C{router}), or are closed once
        idle (C{shutdown}, for a listener that is gone).
        """
        inner = serving_factory(factory)
        if router is not None and isinstance(inner, HTTPProxyFactory):
            inner.router = router
        if shutdown:
            for protocol in list(getattr(inner, "live", ())):
                if isinstance(inner, HTTPProxyFactory):
                    protocol.shutdown()
        self._retired.append(inner)

    def _commit(self, plan: ReloadPlan) -> list[Deferred[Any]]:
        """Apply C{plan}; nothing here may fail.  @return: the stops of what was removed."""
        self._pool_states = plan.pools
        for action in plan.actions:
            action()
        stopping: list[Deferred[Any]] = []
        for service in plan.stop:
            if service.parent is self:
                stopping.append(maybeDeferred(service.disownServiceParent))
        for service in plan.start:
            service.setServiceParent(self)
        self._listeners = plan.listeners
        self.routers = plan.routers
        self.config = plan.config
        self._retired = [f for f in self._retired if getattr(f, "live", None)]
        return stopping

    # Backend state from elsewhere (workers)

    def server_tls(self) -> list[ServerTLS]:
        """The TLS servers of the C{https} and FTPS listeners now running."""
        return [
            listener.server_tls
            for listener in self._listeners.values()
            if listener.server_tls is not None
        ]

    def set_backend_health(self, pool: str, backend: str, healthy: bool, reason: str) -> None:
        """
        Record a health verdict made elsewhere (a supervisor's checker, for a worker built
        with C{health_checks=False}); unknown pools and backends are ignored.
        """
        target = self.pools.get(pool)
        found = target.backend(backend) if target is not None else None
        if target is not None and found is not None:
            target.set_health(found, healthy, reason)

    # Stopping

    def _live(self) -> list[Any]:
        factories: Iterable[object] = [
            *(serving_factory(listener.factory) for listener in self._listeners.values()),
            *self._retired,
        ]
        seen: dict[int, Any] = {}
        for factory in factories:
            for protocol in getattr(factory, "live", ()):
                seen[id(protocol)] = protocol
        return list(seen.values())

    def startService(self) -> None:
        self._stopping = None
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, let what is in flight finish within C{[server] grace_period} seconds
        (idle connections are closed at once, busy HTTP ones after their response), close the
        rest, then stop everything else.
        """
        if self._stopping is None:
            Service.stopService(self)
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        signals = self.namedServices.get("signals")
        if signals is not None and signals.running:
            signals.stopService()
        listening = [listener.service for listener in self._listeners.values()]
        await self._stop_all(service for service in listening if service.running)
        await self._drain(self.config.server.grace_period)
        await self._stop_all(service for service in reversed(list(self)) if service.running)
        closing = [
            maybeDeferred(close)
            for close in (
                getattr(middleware, "close", None)
                for middleware in [*self._middlewares.values(), *self._retired_middlewares]
            )
            if callable(close)
        ]
        await gatherResults(closing, consumeErrors=True)
        if self._access_log is not None:
            self._access_log.close()
        if self._connections is not None:
            self._connections.close_idle()

    async def _stop_all(self, services: Iterable[IService]) -> None:
        stopping = [maybeDeferred(service.stopService) for service in services]
        results = await gatherResults(stopping, consumeErrors=True).addErrback(
            lambda failure: _log.failure("while stopping", failure)
        )
        del results

    async def _drain(self, grace: float) -> None:
        live = self._live()
        if not live:
            return
        _log.info(
            "stopping: waiting up to {grace:g}s for {count} connections to finish",
            grace=grace,
            count=len(live),
        )
        for protocol in live:
            protocol.shutdown()
        clock = self.reactor
        deadline = clock.seconds() + grace
        while self._live() and clock.seconds() < deadline:
            await deferLater(clock, min(_DRAIN_POLL, max(0.0, deadline - clock.seconds())))
        left = self._live()
        if left:
            _log.warn(
                "grace period of {grace:g}s over: closing {count} connections still busy",
                grace=grace,
                count=len(left),
            )
            for protocol in left:
                protocol.transport.abortConnection()
        else:
            _log.info("stopping: every connection finished")
