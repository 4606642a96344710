"""
Sticky pins shared between processes, as HAProxy's peers share stick tables.

The table-backed stickiness kinds (C{source_ip}, C{app_cookie}, C{user}) remember which backend
each client went to; when several worker processes serve the same listeners, each must know
the pins the others made.  L{share} has a table report the pins made in this process (only new
or moved ones, so a pin confirmed on every request costs one comparison), L{learn} takes one
made elsewhere, and L{pins} lists them all for a process that starts late.  The proxy's own
cookie needs none of this: it carries the backend's name, sealed with the shared secret.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted_rp.interfaces import IStickiness
from twisted_rp.pool.sticky import _now, _TableAffinity

__all__ = ["Publish", "learn", "pins", "share"]

#: C{publish(key, backend, deadline)}; C{backend} is L{None} for a forgotten pin.
Publish = Callable[[str, str | None, float | None], None]


def share(stickiness: IStickiness | None, publish: Publish | None) -> bool:
    """
    Call C{publish} for every pin C{stickiness} makes, moves or forgets from now on (L{None}:
    stop); pins taken through L{learn} are not published again.

    @return: whether C{stickiness} keeps a table (the other kinds have nothing to share).
    """
    if not isinstance(stickiness, _TableAffinity):
        return False
    stickiness._table.publish = publish
    return True


def learn(
    stickiness: IStickiness | None, key: str, backend: str | None, deadline: float | None = None
) -> None:
    """Have C{stickiness} take a pin made elsewhere (C{backend} L{None}: forget C{key})."""
    if not isinstance(stickiness, _TableAffinity):
        return
    table = stickiness._table
    publish, table.publish = table.publish, None
    try:
        if backend is None:
            table.forget(key)
        else:
            table.remember(key, backend, _now(stickiness.clock), deadline)
    finally:
        table.publish = publish


def pins(stickiness: IStickiness | None) -> list[tuple[str, str, float | None]]:
    """Every live pin of C{stickiness} as C{(key, backend, deadline)}, oldest use first."""
    if not isinstance(stickiness, _TableAffinity):
        return []
    table, now = stickiness._table, _now(stickiness.clock)
    return [
        (key, entry.backend, entry.deadline)
        for key, entry in table._entries.items()
        if not table._expired(entry, now)
    ]
