"""
The master process of a proxy run with workers: L{build_master}.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.admin.stats import ProxyStats, Snapshot, merge_snapshots
from twisted_rp.config import COMMAND_LINE, Config, ConfigError, check_workers, load_config
from twisted_rp.interfaces import IPoolObserver
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.proxyservice import ListeningService, ReverseProxyService
from twisted_rp.workers.control import Message, apply_pin, backend_message, full_state
from twisted_rp.workers.sockets import ReservingEndpoint
from twisted_rp.workers.supervisor import Supervisor, WorkerProcess, worker_command

__all__ = ["MasterProxyService", "WorkerStats", "build_master"]

_log = Logger(namespace="twisted_rp.workers")

#: Snapshot counters that are gauges: a dead worker's are not carried over.
_GAUGES = {("ftp", "sessions_active")}


class WorkerStats(ProxyStats):
    """
    The master's statistics: its own (none, as it serves nothing) plus the latest snapshot
    of each worker, plus what the workers that exited had counted, so that counters never go
    back when a worker is restarted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.latest: dict[WorkerProcess, Snapshot] = {}
        self.gone: Snapshot = {}

    def update(self, worker: WorkerProcess, snapshot: Snapshot) -> None:
        self.latest[worker] = snapshot

    def exited(self, worker: WorkerProcess) -> None:
        last = self.latest.pop(worker, None)
        if last is not None:
            last = copy.deepcopy(last)
            for section, key in _GAUGES:
                if key in last.get(section, {}):
                    last[section][key] = 0
            self.gone = merge_snapshots(self.gone, last)

    def snapshot(self) -> Snapshot:
        return merge_snapshots(super().snapshot(), self.gone, *self.latest.values())


@implementer(IPoolObserver)
class MasterProxyService(ReverseProxyService):
    """
    A L{ReverseProxyService} that listens for its workers: it opens every listener's socket
    without accepting on it, runs the health checkers and DNS lookups, and keeps the workers
    (its C{workers} service) in step with its pools.

    @ivar stats: the whole proxy's statistics, from the workers.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        workers: int | None,
        options: Sequence[str],
        resolver: IResolver | None = None,
    ) -> None:
        """
        @param workers: how many workers to run, whatever C{[server] workers} says (as
            C{--workers} does); L{None} to follow it, across reloads too.
        @param options: the C{twistd reverseproxy} options the workers are started with.
        """
        self.stats = WorkerStats()
        self._fixed_workers = workers
        self._watched: weakref.WeakSet[BackendPool] = weakref.WeakSet()
        super().__init__(
            config,
            reactor,
            resolver,
            endpoint_for=lambda listener: ReservingEndpoint(reactor, listener.endpoint),
        )
        self.supervisor = Supervisor(
            reactor,
            workers or config.server.workers,
            worker_command(list(options)),
            self.sockets,
            lambda: full_state(self.pools),
            self._received,
            lambda: self.config.server.grace_period,
            on_exit=self.stats.exited,
        )
        self.supervisor.setServiceParent(self)
        self._watch_pools()

    # The sockets

    def sockets(self) -> dict[str, int]:
        """The file descriptor of each listener's socket, by listener name."""
        found = {}
        for listener in self.config.listeners:
            service = self.namedServices.get(listener.name)
            port = getattr(service, "port", None) if isinstance(service, ListeningService) else None
            if port is not None and hasattr(port, "fileno"):
                found[listener.name] = port.fileno()
        return found

    def privilegedStartService(self) -> None:
        # Workers without a socket would be useless: a listener that cannot listen stops the
        # start (twistd reports it) rather than being logged.
        for service in self:
            if isinstance(service, ListeningService):
                service._raiseSynchronously = True
        super().privilegedStartService()

    # Pools to workers

    def _watch_pools(self) -> None:
        for pool in self.pools.values():
            if pool not in self._watched:
                self._watched.add(pool)
                pool.add_observer(self)

    def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
        current = self.pools.get(pool)
        present = current is not None and current.backend(backend.name) is backend
        self.supervisor.broadcast(backend_message(pool, backend, present, reason))

    def _received(self, worker: WorkerProcess, message: Message) -> None:
        kind = message["type"]
        if kind == "pin":
            apply_pin(self.pools, message)
            self.supervisor.broadcast(message, but=worker)
        elif kind == "stats":
            self.stats.update(worker, message["snapshot"])
            self._count_leases()
        elif kind == "reloaded":
            if message.get("ok"):
                _log.info("worker {slot} reloaded", slot=worker.slot)
            else:
                _log.error(
                    "worker {slot} could not reload: {error}",
                    slot=worker.slot,
                    error=message.get("error"),
                )

    def _count_leases(self) -> None:
        """Show the workers' leases and retries on the master's backends (the API reads them)."""
        active: dict[str, dict[str, int]] = {}
        retried: dict[str, int] = {}
        for worker in self.supervisor.workers.values():
            last = worker.last_stats
            if last is None:
                continue
            for pool, backends in last.get("active", {}).items():
                totals = active.setdefault(pool, {})
                for name, count in backends.items():
                    totals[name] = totals.get(name, 0) + count
            for pool, count in last.get("retried", {}).items():
                retried[pool] = retried.get(pool, 0) + count
        for name, pool in self.pools.items():
            for backend in pool.backends():
                backend.active = active.get(name, {}).get(backend.name, 0)
            pool.retried = retried.get(name, pool.retried)

    def rotate_logs(self) -> None:
        """Rotate the access log file, here and in the workers (SIGUSR1)."""
        super().rotate_logs()
        self.supervisor.broadcast({"type": "rotate"})

    # Reloading

    async def reload(self, config: Config | None = None) -> None:
        """
        Reload here, then in the workers: they read the file again, or, when listeners were
        added, removed or moved, new workers replace them (with the sockets as they are now)
        while the old ones finish what they serve.
        """
        try:
            if config is None:
                if self.config.source == COMMAND_LINE:
                    raise ConfigError(COMMAND_LINE, "", "not from a file: nothing to re-read")
                config = load_config(self.config.source)
            check_workers(config, self._fixed_workers or config.server.workers)
        except ConfigError as error:
            _log.error("reload rejected: {error}", error=str(error))
            raise
        before = self.sockets()
        await super().reload(config)
        self._watch_pools()
        count = self._fixed_workers or self.config.server.workers
        if self.sockets() != before:
            _log.info("listeners changed: replacing the workers")
            self.supervisor.replace_all()
        else:
            self.supervisor.broadcast({"type": "reload"})
        if count != self.supervisor.count:
            _log.info("now running {count} workers", count=count)
            self.supervisor.resize(count)


def build_master(
    config: Config,
    reactor: Any,
    workers: int | None,
    options: Sequence[str],
    resolver: IResolver | None = None,
) -> MasterProxyService:
    """
    The master of C{workers} worker processes (L{None}: C{[server] workers}), each started
    with the C{twistd reverseproxy} C{options} (the configuration file or quick-mode options,
    see L{master_options}), and the admin listener if the configuration has one, reporting on
    the whole proxy.

    @raise ConfigError: a listener cannot be shared (not C{tcp:}/C{tcp6:}), or anything
        L{twisted_rp.service.build_service} would raise.
    """
    check_workers(config, workers or config.server.workers)
    top = MasterProxyService(config, reactor, workers, options, resolver)
    if config.admin is not None:
        from twisted_rp.admin import build_admin_service

        admin = build_admin_service(top, config.admin, reactor, top.stats, listeners=top)
        admin.setServiceParent(top)
    return top


def master_options(options: Mapping[str, Any]) -> list[str]:
    """
    The C{twistd reverseproxy} options workers are started with, from the master's parsed
    options: the configuration file (by absolute path, as twistd may change directory) or
    the quick-mode options.
    """
    import os

    if options.get("config") is not None:
        return ["--config", os.path.abspath(options["config"])]
    argv: list[str] = []
    for endpoint in options.get("listen") or ():
        argv += ["--listen", endpoint]
    for backend in options.get("backend") or ():
        argv += ["--backend", backend]
    if options.get("balance") is not None:
        argv += ["--balance", options["balance"]]
    return argv
