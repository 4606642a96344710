"""
Flow control between two transports (the reading side pauses while the writing side is full),
and the one timer of a connection.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


@implementer(IPushProducer)
class Valve:
    """A push producer that calls C{pause} and C{resume}; used to link two transports."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self.pauseProducing = pause
        self.resumeProducing = resume

    def stopProducing(self) -> None:
        pass


class Deadline:
    """
    Calls C{expired} once the time given to the last L{restart} has passed.

    Most restarts move the deadline later (every request pushes a connection's timeout):
    those only note it, and the call re-arms itself for what is left when it fires.  Moving a
    Twisted C{DelayedCall} earlier costs a linear search of the reactor's timers, for every
    connection at every restart.
    """

    def __init__(self, clock: IReactorTime, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._expired = expired
        self._call: IDelayedCall | None = None
        # When the call is due, and when the deadline is.
        self._call_at = self._deadline = 0.0

    def restart(self, seconds: float) -> None:
        """Expire C{seconds} from now (and not at any earlier deadline)."""
        deadline = self._deadline = self._clock.seconds() + seconds
        call = self._call
        if call is None:
            self._call_at = deadline
            self._call = self._clock.callLater(seconds, self._fired)
        elif deadline < self._call_at:
            # _call is None whenever it is not pending, so reset() is always legal here.
            self._call_at = deadline
            call.reset(seconds)

    def stop(self) -> None:
        """Expire never (until the next L{restart})."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _fired(self) -> None:
        self._call = None
        left = self._deadline - self._clock.seconds()
        if left > 0:
            self._call_at = self._deadline
            self._call = self._clock.callLater(left, self._fired)
        else:
            self._expired()
