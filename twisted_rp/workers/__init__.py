"""
Worker processes: C{twistd reverseproxy --workers N} (or C{[server] workers = N}) runs N
processes accepting on the same listening sockets, supervised by the twistd process.

The master (the twistd process) opens every listener's socket without accepting on it, runs
the health checkers, DNS lookups and the admin listener, and starts the workers
(L{twisted_rp.workers.worker}) with the sockets as inherited file descriptors.  It tells them
every change of its pools' backends (health, admin state, weight, members), relays the sticky
pins each makes to the others, and merges their statistics, so that the admin API and the
metrics describe the whole proxy.  A worker that dies is restarted (after 1 s, doubling up to
30 s while it keeps dying).  See C{docs/operations.rst}.
"""

from __future__ import annotations

from twisted_rp.workers.master import MasterProxyService, WorkerStats, build_master, master_options

__all__ = ["MasterProxyService", "WorkerStats", "build_master", "master_options"]
