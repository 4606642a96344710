"""
Passive health: eject a backend that keeps failing real traffic, for a growing period.
"""

from __future__ import annotations

import math

from attrs import Attribute, define, field

from twisted_rp.pool.backend import Backend, Outcome

# Guards the share arithmetic against float error (0.29 * 100 is 28.999999999999996).
_SHARE_EPSILON = 1e-9


def _positive(instance: object, attribute: Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@define(eq=False)
class _History:
    """How often a backend was ejected, and when its last ejection ended."""

    ejections: int = 0
    last_end: float = 0.0


@define(eq=False)
class PassiveHealth:
    """
    The passive health policy of one pool, and what it remembers of each backend.

    A backend whose leases end with L{Outcome.failed} C{consecutive_failures} times in a row is
    ejected for C{base_ejection} seconds times the number of times it has been ejected, at
    most C{max_ejection}.  A backend that stayed in service for C{reset_after} seconds (by
    default C{max_ejection}) since its last ejection starts again from C{base_ejection}.

    Give each pool its own instance: it keeps state per backend.

    @ivar max_ejected_share: at most this fraction of the pool's backends (rounded down, but
        always 1 in a pool of two or more) may be ejected at once; C{0} never ejects.
    """

    consecutive_failures: int = 5
    base_ejection: float = field(default=30.0, validator=_positive)
    max_ejection: float = field(default=300.0, validator=_positive)
    max_ejected_share: float = 0.5
    reset_after: float | None = field(default=None, kw_only=True)
    _failures: dict[Backend, int] = field(factory=dict, init=False)
    _history: dict[Backend, _History] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection must not be less than base_ejection")
        if not 0.0 <= self.max_ejected_share <= 1.0:
            raise ValueError("max_ejected_share must be between 0 and 1")

    def record(self, backend: Backend, outcome: Outcome) -> bool:
        """
        Count one finished lease of C{backend}.

        @return: whether C{backend} has now failed often enough in a row to be ejected.
        """
        if outcome.failed:
            failures = self._failures.get(backend, 0) + 1
            self._failures[backend] = failures
            return failures >= self.consecutive_failures
        if outcome.kind == "ok":
            self._failures.pop(backend, None)
        # An aborted lease says nothing about the backend.
        return False

    def failures(self, backend: Backend) -> int:
        """The failures of C{backend} in a row so far."""
        return self._failures.get(backend, 0)

    def max_ejected(self, total: int) -> int:
        """How many of a pool's C{total} backends may be ejected at the same time."""
        if self.max_ejected_share <= 0:
            return 0
        allowed = math.floor(total * self.max_ejected_share + _SHARE_EPSILON)
        return max(allowed, 1) if total >= 2 else allowed

    def eject(self, backend: Backend, now: float) -> float:
        """
        Note that C{backend} is ejected at C{now}.

        @return: for how many seconds.
        """
        self._failures.pop(backend, None)
        history = self._history.setdefault(backend, _History())
        reset_after = self.max_ejection if self.reset_after is None else self.reset_after
        if history.ejections and now - history.last_end >= reset_after:
            history.ejections = 0
        history.ejections += 1
        duration = min(self.base_ejection * history.ejections, self.max_ejection)
        history.last_end = now + duration
        return duration

    def ejections(self, backend: Backend) -> int:
        """How many times C{backend} was ejected since its count was last reset."""
        history = self._history.get(backend)
        return 0 if history is None else history.ejections

    def forget(self, backend: Backend) -> None:
        """Drop what is known of C{backend} (it left the pool)."""
        self._failures.pop(backend, None)
        self._history.pop(backend, None)
