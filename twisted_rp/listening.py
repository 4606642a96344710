"""
Two services a running proxy (L{twisted_rp.proxyservice.ReverseProxyService}) is made of:
listening that a reload can make listen at once or give another factory, and signal handlers
that run in the reactor.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

__all__ = ["ListeningService", "SignalService", "serving_factory"]


def serving_factory(factory: object) -> Any:
    """The protocol factory inside C{factory}'s wrappers (TLS, address filters)."""
    for _ in range(5):
        if hasattr(factory, "live"):
            break
        inner = getattr(factory, "wrappedFactory", None)
        if inner is None:
            break
        factory = inner
    return factory


class ListeningService(StreamServerEndpointService):
    """
    Listens on one listener's endpoint.  A reload may make it listen at once, to learn then
    whether it can (L{listen_now}), and may give the listening socket another factory
    (L{swap_factory}).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        super().__init__(endpoint, factory)
        self.port: Any = None

    def privilegedStartService(self) -> None:
        if self._waitingForPort is not None:
            return  # Listening already: listen_now() was called.
        super().privilegedStartService()
        waiting: Deferred[Any] = self._waitingForPort  # type: ignore[assignment]
        waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        return port

    def listen_now(self) -> None:
        """
        Listen now.

        @raise Exception: why it cannot (C{CannotListenError}: the address is in use...).
        """
        self._raiseSynchronously = True
        self.privilegedStartService()

    def swap_factory(self, factory: IProtocolFactory) -> bool:
        """
        Make the listening socket build its new connections with C{factory}; those it accepted
        before keep theirs.  C{False} when the port does not allow it (not listening yet, or
        not a Twisted port with a C{factory}).
        """
        port = self.port
        if port is None or not hasattr(port, "factory"):
            return False
        factory.doStart()
        old, port.factory = port.factory, factory
        self.factory = factory
        old.doStop()
        return True

    def stopService(self) -> Deferred[None]:
        if self._waitingForPort is None:
            Service.stopService(self)
            return succeed(None)
        self.port = None
        stopped: Deferred[None] = super().stopService()
        self._waitingForPort = None
        return stopped


class SignalService(Service):
    """
    While running, calls an action in the reactor's thread on each signal it handles, and the
    handler that was installed before it (twistd's SIGUSR1 log rotation, say).
    """

    def __init__(self, reactor: Any, actions: Mapping[int, Callable[[], object]]) -> None:
        self._reactor = reactor
        self._actions = dict(actions)
        self._installed: dict[int, tuple[Any, Any]] = {}

    def startService(self) -> None:
        super().startService()
        for number, action in self._actions.items():
            previous = signal.getsignal(number)

            def handler(
                signum: int,
                frame: FrameType | None,
                action: Callable[[], object] = action,
                previous: Any = previous,
            ) -> None:
                # Stopped but still chained from a handler installed later: pass it on only.
                if self.running:
                    self._reactor.callFromThread(action)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(number, handler)
            self._installed[number] = (handler, previous)

    def stopService(self) -> None:
        for number, (handler, previous) in self._installed.items():
            if signal.getsignal(number) is handler:
                signal.signal(number, previous)
        self._installed.clear()
        super().stopService()
