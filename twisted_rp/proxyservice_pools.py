"""
The pool side of a reload of L{twisted_rp.proxyservice.ReverseProxyService}: which pools,
backends, health checkers and DNS memberships change, worked out before anything changes.

A pool that keeps its name keeps its object.  Its backends are matched by name: one whose
settings are all the same keeps its object, and so its health, ejection, leases and sticky
clients; one whose weight alone changed keeps it too, with the new weight; any other change
replaces it (keeping its health and admin state when its address is the same), and one no
longer configured is removed, which lets its leases finish while it takes nothing new.
Backends the pool got from DNS are left alone, but the file decides the others: one added
through the admin API is removed, one removed through it comes back.  Runtime state of a kept
backend (its admin state, a weight the file did not change) stays.  Balancing, stickiness
and passive health get new objects only when their settings changed (a new sticky table
forgets the clients pinned so far); a health checker is replaced only when its settings did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, field
from twisted.application.service import IService
from twisted.internet.interfaces import IResolver

from twisted_rp.config import Config, PoolConfig
from twisted_rp.config_pools import make_stickiness
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.pool.dns import DNSMembership
from twisted_rp.pool.health import HealthChecker
from twisted_rp.service_pools import (
    _backend_tls,
    build_backend,
    build_balancer,
    build_dns_membership,
    build_health_checker,
    build_passive,
    build_pool,
)

__all__ = ["PoolStates", "ReloadPlan", "plan_pools"]


@define(eq=False)
class PoolState:
    """One configured pool and the services that keep it up to date."""

    config: PoolConfig
    pool: BackendPool
    checker: HealthChecker | None = None
    membership: DNSMembership | None = None


@define(eq=False)
class PoolStates:
    """Every configured pool, by name."""

    states: dict[str, PoolState] = field(factory=dict)
    pools: dict[str, BackendPool] = field(factory=dict)

    def add(self, state: PoolState) -> None:
        self.states[state.config.name] = state
        self.pools[state.config.name] = state.pool


@define(eq=False)
class ReloadPlan:
    """What a reload changes, prepared before anything is changed."""

    config: Config
    pools: PoolStates = field(factory=PoolStates)
    listeners: dict[str, Any] = field(factory=dict)
    routers: dict[str, Any] = field(factory=dict)
    #: Run in order once nothing can fail any more.
    actions: list[Callable[[], object]] = field(factory=list)
    start: list[IService] = field(factory=list)
    stop: list[IService] = field(factory=list)
    changes: dict[str, list[int]] = field(factory=dict)

    def count(self, what: str, added: int = 0, removed: int = 0, changed: int = 0) -> None:
        counts = self.changes.setdefault(what, [0, 0, 0])
        counts[0] += added
        counts[1] += removed
        counts[2] += changed

    def summary(self) -> str:
        """Like C{listeners +1 -0 ~0, backends +2 -1 ~0}: added, removed, changed."""
        order = ["listeners", "routes", "pools", "backends"]
        parts = [
            f"{what} +{added} -{removed} ~{changed}"
            for what, (added, removed, changed) in sorted(
                self.changes.items(), key=lambda item: order.index(item[0])
            )
            if added or removed or changed
        ]
        return ", ".join(parts) or "nothing changed"


def _health_key(pool: PoolConfig) -> tuple[object, ...]:
    """What a pool's health checker is built from."""
    return (pool.health, pool.tls, pool.ftp, tuple(b.scheme for b in pool.backends))


def plan_pools(
    plan: ReloadPlan,
    current: PoolStates,
    reactor: Any,
    resolver: Callable[[], IResolver],
    health_checks: bool = True,
    dns: bool = True,
) -> None:
    """
    Fill C{plan.pools} with the pools of C{plan.config}, and C{plan} with what changes them.

    @param current: the pools in use (none at first).
    @param resolver: gives the resolver of DNS memberships; called only when one is needed.
    @param health_checks: whether pools get their active health checkers.
    @param dns: whether pools get their DNS memberships.
    @raise ConfigError: a file of a pool's C{[pool.NAME.tls]} is unusable, or a balancer
        extension cannot be built.
    """
    config = plan.config
    for pool_config in config.pools:
        old = current.states.get(pool_config.name)
        if old is None:
            pool = build_pool(pool_config, reactor, config.source)
            state = PoolState(pool_config, pool)
            plan.count("pools", added=1)
            plan.count("backends", added=len(pool.backends()))
        else:
            state = PoolState(pool_config, old.pool, old.checker, old.membership)
            if old.config != pool_config:
                plan.count("pools", changed=1)
                _plan_settings(plan, old, pool_config, reactor)
            _plan_backends(plan, old, pool_config)
        if health_checks and (old is None or _health_key(old.config) != _health_key(pool_config)):
            state.checker = build_health_checker(pool_config, state.pool, reactor, config.source)
            if old is not None and old.checker is not None:
                plan.stop.append(old.checker)
            if state.checker is not None:
                plan.start.append(state.checker)
        if dns and (old is None or old.config.dns != pool_config.dns):
            state.membership = None
            if pool_config.dns is not None:
                state.membership = build_dns_membership(
                    pool_config, state.pool, reactor, resolver()
                )
                assert state.membership is not None
                plan.start.append(state.membership)
            if old is not None and old.membership is not None:
                plan.stop.append(old.membership)
                if state.membership is not None:
                    # Members found so far stay the new membership's to remove.
                    state.membership.members = dict(old.membership.members)
        plan.pools.add(state)
    for name, gone in current.states.items():
        if name not in plan.pools.states:
            plan.count("pools", removed=1)
            plan.stop.extend(s for s in (gone.checker, gone.membership) if s is not None)


def _plan_settings(plan: ReloadPlan, old: PoolState, new: PoolConfig, reactor: Any) -> None:
    """The pool-wide settings: new objects only for what changed."""
    pool, before = old.pool, old.config
    source = plan.config.source
    balancer = None
    if (before.balance, before.hash_key, before.balancer) != (
        new.balance,
        new.hash_key,
        new.balancer,
    ):
        balancer = build_balancer(new, reactor, source)
    sticky_changed = before.sticky != new.sticky
    stickiness = None
    if sticky_changed and new.sticky is not None:
        stickiness = make_stickiness(new.sticky, reactor)
    passive_changed = before.passive != new.passive
    passive = build_passive(new) if passive_changed else None

    def apply() -> None:
        if balancer is not None:
            pool.balancer = balancer
        if sticky_changed:
            pool.stickiness = stickiness
        if passive_changed:
            pool.passive = passive
        pool.slow_start = new.slow_start
        pool.queue_size = new.queue_size
        pool.queue_timeout = new.queue_timeout
        pool.retries = new.retries

    plan.actions.append(apply)


def _plan_backends(plan: ReloadPlan, old: PoolState, new: PoolConfig) -> None:
    """Configured backends: kept, re-weighted, replaced, added or removed."""
    pool, before = old.pool, old.config
    # Read (and checked) even when no backend changes, like a first start would.
    tls = _backend_tls(new, plan.config.source)
    previous = {backend.name: backend for backend in before.backends}
    tls_changed = before.tls != new.tls
    remove: list[str] = []
    add: list[Backend] = []
    reweight: list[tuple[str, int]] = []
    for backend in new.backends:
        was = previous.get(backend.name)
        current = pool.backend(backend.name)
        if (
            was is not None
            and current is not None
            and not (tls_changed and backend.scheme == "https")
        ):
            if was == backend:
                continue
            if attrs.evolve(was, weight=backend.weight) == backend:
                reweight.append((backend.name, backend.weight))
                continue
        made = build_backend(backend, tls[backend.name])
        if current is not None:
            remove.append(backend.name)
            if (current.host, current.port) == (made.host, made.port):
                # The same server: what is known of it still holds.
                made.healthy = current.healthy
                made.admin_state = current.admin_state
        add.append(made)
    names = {backend.name for backend in new.backends}
    found_in_dns = old.membership.members if old.membership is not None else {}
    remove.extend(
        b.name for b in pool.backends() if b.name not in names and b.name not in found_in_dns
    )
    replaced = len({b.name for b in add} & set(remove))
    plan.count(
        "backends",
        added=len(add) - replaced,
        removed=len(remove) - replaced,
        changed=replaced + len(reweight),
    )

    if not (remove or add or reweight):
        return

    def apply() -> None:
        for name in remove:
            pool.remove_backend(name)
        for backend in add:
            pool.add_backend(backend)
        for name, weight in reweight:
            pool.set_weight(name, weight)

    plan.actions.append(apply)
