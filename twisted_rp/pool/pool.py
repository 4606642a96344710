"""
Backend pools: which backends may take a request now, and the leases protocols hold on them.

A pool answers L{BackendPool.pick} in this order: the client's sticky backend when it still
serves (draining backends keep their sticky clients), else the balancer's choice among the
usable primaries, else among the usable backups.  When every usable backend is at
C{max_connections}, a pool with a queue makes the caller wait for a released lease.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.interfaces import (
    IBackendPool,
    IBalancer,
    IOutcomeObserver,
    IPoolObserver,
    IStickiness,
)
from twisted_rp.pool.backend import (
    ADMIN_STATES,
    Backend,
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    StickyResponse,
)
from twisted_rp.pool.balancers import RoundRobin
from twisted_rp.pool.passive import PassiveHealth

__all__ = ["BackendPool", "RoundRobin"]

#: A slow start begins at this fraction of the backend's weight ...
_SLOW_START_FRACTION = 0.1
#: ... and never below this, so that a ramping backend still gets some traffic.
_SLOW_START_FLOOR = 0.01


class _AllBusy(NoBackendAvailable):
    """
    Backends are up but all at C{max_connections}: a reason to wait rather than give up.
    """


@define(eq=False)
class _Waiter:
    """One caller queued for a lease."""

    context: PickContext
    deferred: Deferred[Lease]
    timeout: IDelayedCall | None = None


def _full(backend: Backend) -> bool:
    return bool(backend.max_connections) and backend.active >= backend.max_connections


@implementer(IBackendPool)
class BackendPool:
    """
    A named set of backends shared by every listener and route that names it.

    @ivar name: the pool's name.
    @ivar slow_start: seconds over which a backend that becomes usable again ramps its
        C{effective_weight} from a tenth of its weight up to its weight.
    @ivar queue_size: how many callers may wait when every usable backend is full (0: none).
    @ivar queue_timeout: seconds a caller waits before L{NoBackendAvailable}.
    @ivar retries: how many other backends a protocol tries after a connect failure.
    @ivar retried: how many leases were taken for a retry (C{context.avoid} not empty).
    """

    def __init__(
        self,
        name: str,
        backends: Iterable[Backend],
        balancer: IBalancer | None = None,
        *,
        clock: IReactorTime | None = None,
        stickiness: IStickiness | None = None,
        slow_start: float = 0.0,
        queue_size: int = 0,
        queue_timeout: float = 10.0,
        passive: PassiveHealth | None = None,
        retries: int = 2,
    ) -> None:
        """
        @param backends: the backends, in configuration order; names must be unique.
        @param balancer: chooses among usable backends; round-robin by default.
        @param clock: the reactor's clock; the global reactor when L{None}.
        @param stickiness: keeps clients on the backend they used before, if given.
        @param passive: ejects backends that fail real traffic, if given.
        """
        if slow_start < 0:
            raise ValueError("slow_start must not be negative")
        if queue_size < 0:
            raise ValueError("queue_size must not be negative")
        if queue_size and queue_timeout <= 0:
            raise ValueError("queue_timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.name = name
        self._balancer: IBalancer
        self._balancer_observe: Callable[[Backend, Outcome], None] | None
        self.balancer = RoundRobin() if balancer is None else balancer
        self._clock = clock
        self.stickiness = stickiness
        self.slow_start = slow_start
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.passive = passive
        self.retries = retries
        self._log = Logger(namespace=f"twisted_rp.pool.{name}", source=self)
        self._backends: list[Backend] = []
        self._by_name: dict[str, Backend] = {}
        # Enabled, healthy and not ejected, in configuration order; rebuilt on every change.
        self._primaries: tuple[Backend, ...] = ()
        self._backups: tuple[Backend, ...] = ()
        # A dict rather than a set, so that ejections end in a repeatable order.
        self._ejected: dict[Backend, None] = {}
        self._next_ejection_end = float("inf")
        # Backend -> when its slow start began.
        self._ramping: dict[Backend, float] = {}
        self._waiting: deque[_Waiter] = deque()
        # While callers wait, an ejection ending is looked for on time rather than lazily.
        self._wake: IDelayedCall | None = None
        self._serving = False
        self._serve_again = False
        self._observers: list[IPoolObserver] = []
        self._outcome_observers: list[IOutcomeObserver] = []
        self.retried = 0
        for backend in backends:
            self._add(backend)
        self._refresh()

    def __repr__(self) -> str:
        return f"<BackendPool {self.name!r} ({len(self._backends)} backends)>"

    @property
    def balancer(self) -> IBalancer:
        """The pool's L{IBalancer}; replacing it (a reload) drops the old one's state."""
        return self._balancer

    @balancer.setter
    def balancer(self, balancer: IBalancer) -> None:
        self._balancer = balancer
        self._balancer_observe = getattr(balancer, "observe", None)
        cls = type(self)
        #: Whether L{pick} may look at what its L{PickContext} says of the request besides
        #: C{avoid}; when not, and without C{stickiness}, a protocol may describe a first try
        #: with L{BLANK_CONTEXT} and save making one per request.  A balancer tells by a
        #: C{reads_context = False} attribute; a subclass overriding L{pick} reads it.
        self.reads_context = (
            getattr(balancer, "reads_context", True)
            or cls.pick is not BackendPool.pick
            or cls._select is not BackendPool._select
        )

    @property
    def clock(self) -> IReactorTime:
        """The clock the pool times ejections, slow starts and queue waits with."""
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    # Reading

    def backends(self) -> Sequence[Backend]:
        """All backends, in configuration order (added ones last)."""
        return tuple(self._backends)

    def backend(self, name: str) -> Backend | None:
        """The backend called C{name}, or L{None}."""
        return self._by_name.get(name)

    def usable(self, context: PickContext | None = None) -> list[Backend]:
        """
        The backends a new, non-sticky request may go to now: enabled, healthy, not ejected and
        below C{max_connections}; the primaries, or the backups when no primary is usable.

        L{pick} balances over this list (after stickiness had its say), so a subclass may
        narrow it.

        @param context: unused; accepted so that callers may describe the request.
        """
        if self._ejected or self._ramping:
            self._advance()
        if self._unlimited:
            return list(self._primaries or self._backups)
        candidates = [
            b for b in self._primaries if not b.max_connections or b.active < b.max_connections
        ]
        return candidates or [
            b for b in self._backups if not b.max_connections or b.active < b.max_connections
        ]

    # Picking

    def pick(self, context: PickContext) -> Lease | Deferred[Lease]:
        """
        Lease a backend for one request or session; one named in C{context.avoid} (it failed
        this request already) only when no other is usable.

        @return: a L{Lease}, or a L{Deferred} firing with one after waiting in the queue.
        @raise NoBackendAvailable: when no backend can be offered, saying why.
        """
        try:
            backend = self._select(context)
        except _AllBusy as busy:
            return self._wait(context, busy)
        backend.active += 1
        if context.avoid:
            self.retried += 1
        return Lease(backend, self)

    def release(self, lease: Lease, outcome: Outcome) -> None:
        """
        Take back C{lease} (called by L{Lease.release}): count the outcome for passive health
        and the balancer, and hand the freed capacity to the first queued caller.
        """
        backend = lease.backend
        backend.active -= 1
        if self._by_name.get(backend.name) is backend:
            if self._balancer_observe is not None:
                self._balancer_observe(backend, outcome)
            if self.passive is not None:
                self._passive_outcome(backend, outcome)
        for observer in self._outcome_observers:
            observer.outcome(self.name, backend, outcome)
        if self._waiting:
            self._serve_waiting()

    def sticky_response_done(
        self, context: PickContext, backend: Backend, response: StickyResponse
    ) -> None:
        """
        Tell the stickiness that C{backend} answered C{context}'s client; protocols call this
        once per answered request or session.
        """
        if self.stickiness is not None and self._by_name.get(backend.name) is backend:
            self.stickiness.pin(context, backend, response)

    def _select(self, context: PickContext) -> Backend:
        # First, as it also brings ejections and slow starts up to date.
        candidates = self.usable()
        stickiness = self.stickiness
        if stickiness is not None:
            name = stickiness.pinned(context)
            if name is not None:
                pinned = self._by_name.get(name)
                if pinned is not None and _serves_sticky(pinned) and name not in context.avoid:
                    if not _full(pinned):
                        return pinned
                    if stickiness.strict:
                        raise _AllBusy(f"pool {self.name!r}: sticky backend at max_connections")
                elif stickiness.strict:
                    raise NoBackendAvailable(f"pool {self.name!r}: sticky backend unavailable")
        if candidates:
            if context.avoid:
                # A retry: another backend if there is one, else the same again.
                others = [b for b in candidates if b.name not in context.avoid]
                candidates = others or candidates
            return self._balancer.choose(candidates, context)
        if any(map(_full, self._primaries)) or any(map(_full, self._backups)):
            raise _AllBusy(f"pool {self.name!r}: all backends at max_connections")
        raise NoBackendAvailable(f"pool {self.name!r} has no usable backend")

    # Queue

    def _wait(self, context: PickContext, busy: _AllBusy) -> Deferred[Lease]:
        if not self.queue_size:
            raise busy
        if len(self._waiting) >= self.queue_size:
            raise NoBackendAvailable(
                f"pool {self.name!r}: all backends at max_connections and the queue is full"
            )

        def cancel(deferred: Deferred[Lease]) -> None:
            self._unqueue(waiter)

        waiter = _Waiter(context, Deferred(cancel))
        self._waiting.append(waiter)
        self._watch_ejections()
        waiter.timeout = self.clock.callLater(self.queue_timeout, self._queue_timeout, waiter)
        return waiter.deferred

    def _unqueue(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        if waiter.timeout is not None and waiter.timeout.active():
            waiter.timeout.cancel()
        if not self._waiting:
            self._watch_ejections()

    def _queue_timeout(self, waiter: _Waiter) -> None:
        waiter.timeout = None
        self._unqueue(waiter)
        waiter.deferred.errback(NoBackendAvailable(f"pool {self.name!r}: queue timeout"))

    def _watch_ejections(self) -> None:
        """
        Have the pool wake up when the next ejection ends if callers are waiting, so that
        they get the backend as soon as it is back; stop when nobody waits.
        """
        wake = self._wake
        if not (self._waiting and self._ejected):
            if wake is not None:
                self._wake = None
                wake.cancel()
            return
        delay = max(0.0, self._next_ejection_end - self.clock.seconds())
        if wake is None:
            self._wake = self.clock.callLater(delay, self._wake_up)
        elif wake.getTime() > self._next_ejection_end:
            wake.reset(delay)

    def _wake_up(self) -> None:
        self._wake = None
        self._advance()
        self._watch_ejections()

    def _serve_waiting(self) -> None:
        """
        Give waiting callers, oldest first, whatever the pool can offer them now; fail those
        it never will.
        """
        # A waiter's callback may release or pick again; finish this pass, then look again.
        if self._serving:
            self._serve_again = True
            return
        self._serving = True
        try:
            again = True
            while again and self._waiting:
                self._serve_again = False
                for waiter in tuple(self._waiting):
                    if waiter not in self._waiting:
                        continue
                    try:
                        backend = self._select(waiter.context)
                    except _AllBusy:
                        continue
                    except NoBackendAvailable as unavailable:
                        self._unqueue(waiter)
                        waiter.deferred.errback(unavailable)
                        continue
                    self._unqueue(waiter)
                    backend.active += 1
                    waiter.deferred.callback(Lease(backend, self))
                again = self._serve_again
        finally:
            self._serving = False

    # State changes

    def set_health(self, backend: Backend, healthy: bool, reason: str) -> None:
        """
        Record the active health monitor's verdict on C{backend}; does nothing when it is not
        (or no longer) in the pool or the verdict did not change.
        """
        if self._by_name.get(backend.name) is not backend or backend.healthy == healthy:
            return
        was_eligible = _eligible(backend)
        backend.healthy = healthy
        if healthy and backend in self._ejected:
            # The active checks just saw it recover (a restarted server): that is better news
            # than the failures that ejected it, so the ejection ends too (as Envoy does).
            del self._ejected[backend]
            backend.ejected_until = 0.0
            reason += "; passive ejection lifted"
        self._changed(backend, was_eligible, reason)

    def set_admin_state(self, name: str, state: str) -> None:
        """
        Enable, drain or disable the backend called C{name}.

        @raise KeyError: no such backend.
        @raise ValueError: C{state} is not one of L{ADMIN_STATES}.
        """
        if state not in ADMIN_STATES:
            raise ValueError(f"admin state must be one of {', '.join(ADMIN_STATES)}")
        backend = self._by_name[name]
        old = backend.admin_state
        if old == state:
            return
        was_eligible = _eligible(backend)
        backend.admin_state = state
        self._changed(backend, was_eligible, f"admin state {old} -> {state}")

    def set_weight(self, name: str, weight: int) -> None:
        """
        Change the weight of the backend called C{name} (a slow start in progress goes on
        towards the new weight).

        @raise KeyError: no such backend.
        @raise ValueError: C{weight} is negative.
        """
        if weight < 0:
            raise ValueError("weight must not be negative")
        backend = self._by_name[name]
        old = backend.weight
        if old == weight:
            return
        was_eligible = _eligible(backend)
        backend.weight = weight
        if _eligible(backend) != was_eligible:
            self._refresh()
        if backend in self._ramping:
            self._advance()
        else:
            backend.effective_weight = float(weight)
        self._notify(backend, f"weight {old} -> {weight}")

    def add_backend(self, backend: Backend) -> None:
        """
        Add C{backend} after the others; it slow-starts when other backends already serve.

        @raise ValueError: the pool already has a backend of that name.
        """
        if backend.name in self._by_name:
            raise ValueError(f"pool {self.name!r} already has a backend {backend.name!r}")
        others_serve = bool(self._primaries or self._backups)
        self._add(backend)
        if others_serve and _eligible(backend):
            self._start_slow_start(backend)
        self._refresh()
        self._notify(backend, "added to pool")
        if self._waiting:
            self._serve_waiting()

    def remove_backend(self, name: str) -> None:
        """
        Take the backend called C{name} out of the pool: it gets no new requests, sticky or
        not, while the leases already out on it finish normally.

        @raise KeyError: no such backend.
        """
        backend = self._by_name.pop(name)
        self._backends.remove(backend)
        self._ejected.pop(backend, None)
        self._ramping.pop(backend, None)
        if self.passive is not None:
            self.passive.forget(backend)
        self._refresh()
        self._notify(backend, "removed from pool")
        if self._waiting:
            self._serve_waiting()

    def add_observer(self, observer: IPoolObserver) -> None:
        """Tell C{observer} of every later health and admin change."""
        self._observers.append(observer)

    def remove_observer(self, observer: IPoolObserver) -> None:
        """Stop telling C{observer}; it must have been added."""
        self._observers.remove(observer)

    def add_outcome_observer(self, observer: IOutcomeObserver) -> None:
        """Tell C{observer} the outcome of every later released lease."""
        self._outcome_observers.append(observer)

    def _add(self, backend: Backend) -> None:
        if backend.name in self._by_name:
            raise ValueError(f"pool {self.name!r} has two backends called {backend.name!r}")
        self._backends.append(backend)
        self._by_name[backend.name] = backend

    def _refresh(self) -> None:
        """Rebuild the eligible primaries and backups after a change."""
        self._primaries = tuple(b for b in self._backends if not b.backup and _eligible(b))
        self._backups = tuple(b for b in self._backends if b.backup and _eligible(b))
        # Most pools set no max_connections: every eligible backend is usable.
        self._unlimited = not any(b.max_connections for b in self._backends)
        self._next_ejection_end = min(
            (b.ejected_until for b in self._ejected), default=float("inf")
        )
        if self._waiting or self._wake is not None:
            self._watch_ejections()

    def _changed(self, backend: Backend, was_eligible: bool, reason: str) -> None:
        is_eligible = _eligible(backend)
        if is_eligible and not was_eligible:
            self._start_slow_start(backend)
        elif was_eligible and not is_eligible:
            self._ramping.pop(backend, None)
        self._refresh()
        self._notify(backend, reason, lost=was_eligible and not is_eligible)
        if self._waiting:
            self._serve_waiting()

    def _notify(self, backend: Backend, reason: str, lost: bool = False) -> None:
        """
        Log a change of C{backend} and tell the observers; C{lost}: it no longer takes new
        requests, which deserves a warning.
        """
        emit = self._log.warn if lost else self._log.info
        emit(
            "pool {pool}: backend {backend} ({address}): {reason}",
            pool=self.name,
            backend=backend.name,
            address=backend.address,
            reason=reason,
        )
        for observer in tuple(self._observers):
            try:
                observer.backend_changed(self.name, backend, reason)
            except Exception:
                self._log.failure("pool observer {observer!r} failed", observer=observer)

    # Time: ejections ending and slow starts, both noticed lazily when the pool is used.

    def _advance(self) -> None:
        if not (self._ejected or self._ramping):
            return
        now = self.clock.seconds()
        if now >= self._next_ejection_end:
            for backend in [b for b in self._ejected if b.ejected_until <= now]:
                was_eligible = _eligible(backend)
                del self._ejected[backend]
                backend.ejected_until = 0.0
                self._changed(backend, was_eligible, "ejection over")
        for backend, started in list(self._ramping.items()):
            progress = (now - started) / self.slow_start
            if progress >= 1.0:
                del self._ramping[backend]
                backend.effective_weight = float(backend.weight)
            else:
                start = _slow_start_weight(backend)
                backend.effective_weight = start + (backend.weight - start) * progress

    def _start_slow_start(self, backend: Backend) -> None:
        if self.slow_start > 0 and backend.weight > 0:
            self._ramping[backend] = self.clock.seconds()
            backend.effective_weight = _slow_start_weight(backend)

    def _passive_outcome(self, backend: Backend, outcome: Outcome) -> None:
        passive = self.passive
        assert passive is not None
        if self._ejected:
            self._advance()
            # Leases taken before an ejection say nothing new.
            if backend in self._ejected:
                return
        if not passive.record(backend, outcome):
            return
        if len(self._ejected) >= passive.max_ejected(len(self._backends)):
            if passive.failures(backend) > passive.consecutive_failures:
                return  # Said so already in this run of failures.
            self._log.warn(
                "pool {pool}: backend {backend} failed {failures} times in a row but stays:"
                " {ejected} of {total} backends are ejected already",
                pool=self.name,
                backend=backend.name,
                failures=passive.failures(backend),
                ejected=len(self._ejected),
                total=len(self._backends),
            )
            return
        failures = passive.failures(backend)
        now = self.clock.seconds()
        duration = passive.eject(backend, now)
        was_eligible = _eligible(backend)
        backend.ejected_until = now + duration
        self._ejected[backend] = None
        self._changed(
            backend,
            was_eligible,
            f"ejected for {duration:g}s after {failures} failures in a row ({outcome.kind})",
        )


def _eligible(backend: Backend) -> bool:
    """
    Whether C{backend} may get new, non-sticky requests (capacity aside).  Weight 0 gets none
    (as in HAProxy), whatever the balancer, but keeps its sticky clients.
    """
    return (
        backend.admin_state == "enabled"
        and backend.healthy
        and not backend.ejected_until
        and backend.weight > 0
    )


def _serves_sticky(backend: Backend) -> bool:
    """Whether C{backend} may get requests from clients pinned to it (capacity aside)."""
    return backend.admin_state != "disabled" and backend.healthy and not backend.ejected_until


def _slow_start_weight(backend: Backend) -> float:
    return max(backend.weight * _SLOW_START_FRACTION, _SLOW_START_FLOOR)
