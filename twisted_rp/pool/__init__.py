"""
Protocol-agnostic backend pools: backends, balancing, and the leases protocols take on them.

Nothing in this package imports a protocol module.
"""

from __future__ import annotations

from twisted_rp.pool.backend import (
    ADMIN_STATES,
    BLANK_CONTEXT,
    Backend,
    Lease,
    NoBackendAvailable,
    Outcome,
    PickContext,
    StickyResponse,
)
from twisted_rp.pool.passive import PassiveHealth
from twisted_rp.pool.pool import BackendPool, RoundRobin

__all__ = [
    "ADMIN_STATES",
    "BLANK_CONTEXT",
    "Backend",
    "BackendPool",
    "Lease",
    "NoBackendAvailable",
    "Outcome",
    "PassiveHealth",
    "PickContext",
    "RoundRobin",
    "StickyResponse",
]
