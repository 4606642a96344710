"""
Protocol-agnostic backend pools: backends, balancing, and the leases protocols take on them.

Nothing in this package imports a protocol module.
"""

from __future__ import annotations

from twisted_rp.pool.backend import Backend, Lease, NoBackendAvailable, Outcome, PickContext
from twisted_rp.pool.pool import BackendPool, RoundRobin

__all__ = [
    "Backend",
    "BackendPool",
    "Lease",
    "NoBackendAvailable",
    "Outcome",
    "PickContext",
    "RoundRobin",
]
