"""
Backends and the small value objects that travel between protocols and pools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from attrs import define, field, frozen

if TYPE_CHECKING:
    from twisted_rp.pool.pool import BackendPool


def _no_value(name: str) -> str | None:
    return None


@define(eq=False)
class Backend:
    """
    One server a pool can send traffic to.

    @ivar name: a stable identifier, unique in its pool (never shown to clients as an address).
    @ivar active: connections or requests currently leased to this backend.
    """

    name: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    active: int = field(default=0, init=False)

    @property
    def address(self) -> str:
        """C{host:port}, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@frozen
class PickContext:
    """
    What a protocol knows of a client and its request when it asks a pool for a backend.

    C{header} and C{cookie} look up a request header or cookie by name (case-insensitive for
    headers) and return L{None} when absent; protocols without such things leave the defaults.
    """

    protocol: str
    client_ip: str
    host: str | None = None
    path: str | None = None
    user: str | None = None
    header: Callable[[str], str | None] = _no_value
    cookie: Callable[[str], str | None] = _no_value


@frozen
class Outcome:
    """
    How one use of a backend ended, reported to the pool when a lease is released.

    @ivar kind: C{"ok"}, C{"connect_failed"}, C{"timeout"}, C{"bad_response"},
        C{"server_error"} (an HTTP 5xx) or C{"aborted"} (the client went away).
    @ivar elapsed: seconds from sending to the end of the response (or failure).
    """

    kind: str = "ok"
    elapsed: float = 0.0

    @property
    def failed(self) -> bool:
        """Whether the backend, not the client, is to blame."""
        return self.kind in ("connect_failed", "timeout", "bad_response", "server_error")


class NoBackendAvailable(Exception):
    """
    A pool has no backend to offer; C{str(exc)} says why.
    """


@define(eq=False)
class Lease:
    """
    The right to use C{backend} once; release it exactly once with the outcome.
    """

    backend: Backend
    pool: BackendPool
    released: bool = field(default=False, init=False)

    def release(self, outcome: Outcome) -> None:
        """Give the backend back and tell the pool how it went; later calls do nothing."""
        if not self.released:
            self.released = True
            self.pool.release(self, outcome)
