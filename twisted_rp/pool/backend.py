"""
Backends and the small value objects that travel between protocols and pools.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from attrs import define, field, frozen

if TYPE_CHECKING:
    from twisted_rp.interfaces import IBackendPool


def _no_value(name: str) -> str | None:
    return None


#: Admin states: C{enabled} takes traffic; C{draining} keeps its existing sticky clients and
#: sessions but gets no new ones; C{disabled} gets nothing.
ADMIN_STATES = ("enabled", "draining", "disabled")


@define(eq=False)
class Backend:
    """
    One server a pool can send traffic to, and its state.

    @ivar name: a stable identifier, unique in its pool (never shown to clients as an address).
    @ivar max_connections: at most this many leases at once; 0 for no limit.  Set it before
        the backend joins a pool, which notes whether any of its backends has a limit.
    @ivar ports: service ports by protocol (C{{"http": 8080, "ftp": 21}}) for a server that
        several protocols share, so that its health and stickiness are shared too;
        L{port_for} falls back to C{port}.
    @ivar active: leases currently held on this backend.
    @ivar admin_state: one of L{ADMIN_STATES}.
    @ivar healthy: the verdict of the active health monitor (C{True} until it says otherwise).
    @ivar ejected_until: passive health: no new traffic before this time (reactor seconds).
    @ivar effective_weight: the weight balancers use: C{weight}, ramped up after a recovery
        while slow start lasts.
    @ivar tls: for a backend reached over TLS, the client connection creator
        (C{IOpenSSLClientConnectionCreator}, see L{twisted_rp.tls.client_tls}); L{None} for
        plain TCP.  Opaque to the pool.
    """

    name: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    max_connections: int = 0
    ports: dict[str, int] = field(factory=dict)
    tls: object | None = None
    active: int = field(default=0, init=False)
    admin_state: str = field(default="enabled", init=False)
    healthy: bool = field(default=True, init=False)
    ejected_until: float = field(default=0.0, init=False)
    effective_weight: float = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.effective_weight = float(self.weight)

    @property
    def address(self) -> str:
        """C{host:port}, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def port_for(self, protocol: str) -> int:
        """The port serving C{protocol} on this backend."""
        return self.ports.get(protocol, self.port)


class StickyResponse:
    """
    What an L{twisted_rp.interfaces.IStickiness} may see of and do to a response.  This base
    has no headers (FTP, TCP); the HTTP proxy passes one backed by the response head.
    """

    def header_values(self, name: str) -> list[str]:
        """The values of response header C{name} (e.g. C{Set-Cookie}), in order."""
        return []

    def set_cookie(self, value: str) -> None:
        """Add a C{Set-Cookie} field with C{value} to the response; ignored without headers."""


# Not slotted: a frozen slotted attrs class sets each field through object.__setattr__, and
# every request builds a context; unslotted, attrs fills the instance dict directly, about a
# third cheaper (6,500 against 9,900 instructions for eight fields).
@frozen(slots=False)
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
    #: Names of backends that already failed this request: a retry goes elsewhere if it can.
    avoid: frozenset[str] = frozenset()


#: A context that describes no request: for a first try on a pool that does not read one
#: (L{twisted_rp.pool.BackendPool.reads_context}).
BLANK_CONTEXT = PickContext("", "")

#: The outcomes for which the backend, not the client, is to blame.
FAILED_KINDS = frozenset({"connect_failed", "timeout", "bad_response", "server_error"})


@frozen(slots=False)
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
        return self.kind in FAILED_KINDS


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
    pool: IBackendPool
    released: bool = field(default=False, init=False)

    def release(self, outcome: Outcome) -> None:
        """Give the backend back and tell the pool how it went; later calls do nothing."""
        if not self.released:
            self.released = True
            self.pool.release(self, outcome)


#: How many other backends a protocol may try when a pool does not say (HAProxy's and
#: nginx's tries: the first and two more).
DEFAULT_RETRIES = 2


def may_retry(pool: IBackendPool, attempts: int, failed: AbstractSet[str]) -> bool:
    """
    Whether another try is allowed after C{attempts}: within C{pool}'s retries, on a backend
    not among C{failed} (trying a lone dead backend again helps nobody).
    """
    if attempts >= 1 + int(getattr(pool, "retries", DEFAULT_RETRIES)):
        return False
    return any(backend.name not in failed for backend in pool.backends())
