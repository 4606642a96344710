"""
The admin side: a JSON API, a live dashboard and Prometheus metrics on a listener of their own
(see C{docs/operations.rst}).  It reads the pools and subscribes to what they and the
listeners report; nothing under L{twisted_rp.pool} imports it.
"""

from __future__ import annotations

from twisted_rp.admin.service import admin_resource, build_admin_service
from twisted_rp.admin.state import ProxyState
from twisted_rp.admin.stats import ProxyStats, merge_snapshots
from twisted_rp.admin.wiring import observe_listeners, observe_tls

__all__ = [
    "ProxyState",
    "ProxyStats",
    "admin_resource",
    "build_admin_service",
    "merge_snapshots",
    "observe_listeners",
    "observe_tls",
]
