"""
Backend pools and the round-robin balancer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.interfaces import IBackendPool, IBalancer
from twisted_rp.pool.backend import Backend, Lease, NoBackendAvailable, Outcome, PickContext


@implementer(IBalancer)
@define
class RoundRobin:
    """
    Each usable backend in turn.
    """

    _next: int = 0

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        backend = candidates[self._next % len(candidates)]
        self._next += 1
        return backend


def _backend_list(backends: Iterable[Backend]) -> list[Backend]:
    return list(backends)


@implementer(IBackendPool)
@define(eq=False)
class BackendPool:
    """
    A named set of backends with a balancer; primaries first, backups when no primary is usable.
    """

    name: str
    _backends: list[Backend] = field(converter=_backend_list)
    balancer: IBalancer = field(factory=RoundRobin)
    _log = Logger()

    def backends(self) -> Sequence[Backend]:
        return tuple(self._backends)

    def usable(self) -> list[Backend]:
        """The backends a new request may go to now."""
        primaries = [b for b in self._backends if not b.backup]
        return primaries or [b for b in self._backends if b.backup]

    def pick(self, context: PickContext) -> Lease | Deferred[Lease]:
        candidates = self.usable()
        if not candidates:
            raise NoBackendAvailable(f"pool {self.name!r} has no usable backend")
        backend = self.balancer.choose(candidates, context)
        backend.active += 1
        return Lease(backend, self)

    def release(self, lease: Lease, outcome: Outcome) -> None:
        """Called by L{Lease.release}."""
        lease.backend.active -= 1
