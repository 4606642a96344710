"""
Active health checks: the service that runs monitors against a pool's backends.

A monitor (an L{IHealthMonitor}, from L{twisted_rp.pool.monitors}) answers one question,
"does this backend work right now?", with a L{Deferred} that fires with L{None} or fails with
an exception whose message says what was wrong.  L{HealthChecker} runs a monitor against every
backend of a pool on a jittered schedule, enforces the timeout by cancelling the probe, and
tells the pool about a change only after C{fall} failures or C{rise} successes in a row.

The monitors are re-exported here, so that C{twisted_rp.pool.health} keeps offering them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol as TypingProtocol

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.interfaces import IHealthMonitor
from twisted_rp.pool.backend import Backend
from twisted_rp.pool.monitors import (
    DEFAULT_BODY_LIMIT,
    FTP_TLS_MODES,
    FTPMonitor,
    HealthCheckFailed,
    HTTPMonitor,
    TCPMonitor,
    TLSMonitor,
    describe_error,
)

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "FTP_TLS_MODES",
    "FTPMonitor",
    "HTTPMonitor",
    "HealthCheckFailed",
    "HealthChecker",
    "HealthTarget",
    "TCPMonitor",
    "TLSMonitor",
    "describe_error",
]


class HealthTarget(TypingProtocol):
    """
    What L{HealthChecker} needs of a pool (L{twisted_rp.pool.pool.BackendPool} has it).
    """

    def backends(self) -> Sequence[Backend]: ...

    def set_health(self, backend: Backend, healthy: bool, reason: str) -> None: ...


@define(eq=False)
class _Watch:
    """The checker's record of one backend."""

    backend: Backend
    healthy: bool
    successes: int = 0
    failures: int = 0
    probe: Deferred[None] | None = None
    next_probe: IDelayedCall | None = None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class HealthChecker(Service):
    """
    Probes every backend of a pool with one monitor, for as long as the service runs.

    Each backend is probed when the checker starts (or first sees it), then every C{interval}
    seconds, start to start, each wait varied by up to C{jitter} times C{interval} either way
    so that checks spread out.  A probe still running after C{timeout} seconds is cancelled and
    counts as a failure; a backend never has two probes at once (a probe that outlasts the
    interval delays the next one).  After C{fall} failures in a row a healthy backend is
    reported with C{pool.set_health(backend, False, reason)}; after C{rise} successes in a row
    an unhealthy one with C{pool.set_health(backend, True, reason)}.  The pool's membership is
    re-read every C{interval}: added backends start being probed, removed ones stop.

    The checker's verdict starts from each backend's C{healthy} when first seen and changes
    only through its own counts, so that two checkers sharing a pool do not undo each other.
    """

    _log = Logger()

    def __init__(
        self,
        pool: HealthTarget,
        monitor: IHealthMonitor,
        clock: IReactorTime,
        interval: float = 5.0,
        timeout: float = 2.0,
        jitter: float = 0.1,
        rise: int = 2,
        fall: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("health check jitter must be at least 0 and less than 1")
        if rise < 1 or fall < 1:
            raise ValueError("health check rise and fall must be at least 1")
        self._pool = pool
        self._monitor = monitor
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._jitter = jitter
        self._rise = rise
        self._fall = fall
        self._rng = rng if rng is not None else random.Random()
        self._watches: dict[Backend, _Watch] = {}
        self._next_refresh: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._refresh()

    def stopService(self) -> None:
        super().stopService()
        if self._next_refresh is not None and self._next_refresh.active():
            self._next_refresh.cancel()
        self._next_refresh = None
        for watch in list(self._watches.values()):
            self._forget(watch)

    def _refresh(self) -> None:
        self._next_refresh = None
        current = list(self._pool.backends())
        present = set(current)
        for watch in [w for backend, w in self._watches.items() if backend not in present]:
            self._forget(watch)
        for backend in current:
            if backend not in self._watches:
                watch = _Watch(backend, healthy=backend.healthy)
                self._watches[backend] = watch
                self._probe(watch)
        if self.running:
            self._next_refresh = self._clock.callLater(self._interval, self._refresh)

    def _forget(self, watch: _Watch) -> None:
        self._watches.pop(watch.backend, None)
        if watch.next_probe is not None and watch.next_probe.active():
            watch.next_probe.cancel()
        watch.next_probe = None
        probe, watch.probe = watch.probe, None
        if probe is not None:
            probe.cancel()

    def _probe(self, watch: _Watch) -> None:
        watch.next_probe = None
        started = self._clock.seconds()
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            probe.cancel()

        def finished(result: object) -> None:
            if deadline.active():
                deadline.cancel()
            if watch.probe is not probe:
                # Stopped or removed meanwhile: the result no longer matters.
                return
            watch.probe = None
            if isinstance(result, Failure):
                if timed_out and result.check(CancelledError):
                    reason = f"timed out after {self._timeout:g}s"
                else:
                    reason = describe_error(result.value)
                self._failed(watch, reason)
            else:
                self._succeeded(watch)
            self._schedule(watch, started)

        probe: Deferred[None] = maybeDeferred(self._monitor.check, watch.backend)
        watch.probe = probe
        deadline = self._clock.callLater(self._timeout, time_out)
        probe.addBoth(finished)

    def _schedule(self, watch: _Watch, started: float) -> None:
        if not self.running or self._watches.get(watch.backend) is not watch:
            return
        spread = self._rng.uniform(-self._jitter, self._jitter)
        due = started + self._interval * (1 + spread)
        delay = max(0.0, due - self._clock.seconds())
        watch.next_probe = self._clock.callLater(delay, self._probe, watch)

    def _failed(self, watch: _Watch, reason: str) -> None:
        watch.successes = 0
        watch.failures += 1
        if watch.healthy and watch.failures < self._fall:
            # As HAProxy does: failures of a backend still in service, counted towards `fall`;
            # a backend already down is not logged again at every probe.
            self._log.info(
                "health check of {backend} failed ({failures}/{fall}): {reason}",
                backend=watch.backend.name,
                failures=watch.failures,
                fall=self._fall,
                reason=reason,
            )
        if watch.healthy and watch.failures >= self._fall:
            watch.healthy = False
            self._report(watch.backend, False, f"{_plural(self._fall, 'failed check')}: {reason}")

    def _succeeded(self, watch: _Watch) -> None:
        watch.failures = 0
        watch.successes += 1
        if not watch.healthy and watch.successes >= self._rise:
            watch.healthy = True
            self._report(watch.backend, True, _plural(self._rise, "successful check"))

    def _report(self, backend: Backend, healthy: bool, reason: str) -> None:
        try:
            self._pool.set_health(backend, healthy, reason)
        except Exception:
            # The schedule must survive a faulty pool or observer.
            self._log.failure("while reporting the health of {backend}", backend=backend.name)
