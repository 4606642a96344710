"""
A worker process, started by the master (L{twisted_rp.workers.supervisor}); not for people to
run.  Its command line::

    python -m twisted_rp.workers.worker --slot N --listener NAME=FD ... -- TWISTD-OPTIONS

It builds the proxy from the same C{twistd reverseproxy} options as the master, without
health checkers, DNS lookups or the admin listener (the master keeps those), accepts on the
listening sockets it inherited, and follows the master's messages on its standard input
(L{twisted_rp.workers.control}); it answers on file descriptor 3 and logs on its standard
output, which the master logs.  It stops on SIGTERM (finishing what is in flight within
C{[server] grace_period}) and when its standard input closes: the master is gone.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TextIO

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rp.admin.stats import ProxyStats
from twisted_rp.admin.wiring import observe_listeners
from twisted_rp.config import Config, ConfigError, ListenerConfig, load_config
from twisted_rp.pool.peers import share
from twisted_rp.proxyservice import ReverseProxyService
from twisted_rp.service_pools import build_client_tls
from twisted_rp.workers.control import (
    Message,
    MessageReceiver,
    apply_backend,
    apply_pin,
    encode,
    leases,
    pin_message,
)
from twisted_rp.workers.sockets import AdoptingEndpoint

__all__ = ["CONTROL_FD", "LogLines", "Worker", "main", "parse_arguments"]

#: Where a worker writes its messages to the master.
CONTROL_FD = 3
#: Seconds between two statistics messages.
STATS_INTERVAL = 1.0
#: Connections a worker accepts per wake-up.  Twisted accepts up to 100 at once, which lets
#: the first worker awake take a whole burst from the shared socket; one at a time spreads
#: them over the workers (the idlest wins the race).
ACCEPT_BATCH = 1

_log = Logger(namespace="twisted_rp.workers")


@define
class WorkerArguments:
    """A worker's command line: its slot, inherited sockets by listener, twistd options."""

    slot: int
    listeners: dict[str, int]
    options: list[str]


def parse_arguments(argv: Sequence[str]) -> WorkerArguments:
    """Read a worker's command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m twisted_rp.workers.worker")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listener", action="append", default=[], metavar="NAME=FD")
    parser.add_argument("options", nargs="*")
    parsed = parser.parse_args(list(argv))
    listeners = {}
    for item in parsed.listener:
        name, _, fd = item.rpartition("=")
        listeners[name] = int(fd)
    return WorkerArguments(parsed.slot, listeners, list(parsed.options))


def config_from_options(options: Sequence[str]) -> Config:
    """The configuration the C{twistd reverseproxy} options describe."""
    from twisted_rp.tap import Options

    parsed = Options()
    parsed.parseOptions(list(options))
    if parsed.quick is not None:
        return parsed.quick
    return load_config(parsed["config"])


def _fair(port: Any) -> Any:
    """Make C{port} accept L{ACCEPT_BATCH} connections per wake-up, whatever it learnt."""
    read = port.doRead

    def doRead() -> Any:
        try:
            return read()
        finally:
            port.numberAccepts = ACCEPT_BATCH

    port.numberAccepts = ACCEPT_BATCH
    port.doRead = doRead
    return port


@implementer(IStreamServerEndpoint)
@define
class _FairEndpoint:
    endpoint: AdoptingEndpoint

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(protocolFactory).addCallback(_fair)


def adopting(reactor: Any, fds: dict[str, int]) -> Callable[[ListenerConfig], Any]:
    """C{endpoint_for}: each listener accepts on the socket inherited for its name."""

    def endpoint_for(listener: ListenerConfig) -> IStreamServerEndpoint:
        fd = fds.get(listener.name)
        if fd is None:
            # The master restarts the workers when listeners change; a reload of a worker
            # alone cannot open a socket.
            raise ConfigError(
                "<worker>", f"listener {listener.name!r}", "no socket from the master for it"
            )
        return _FairEndpoint(AdoptingEndpoint(reactor, fd))

    return endpoint_for


@define(eq=False)
class Worker:
    """
    The worker side of the control channel: applies the master's messages to C{service},
    publishes its sticky pins, sends its statistics, starts serving once synced.
    """

    reactor: Any
    service: ReverseProxyService
    send: Callable[[bytes], object]
    stats: ProxyStats = field(factory=ProxyStats)
    synced: bool = False
    #: Muted while the master's news is applied: the master logged it already.
    log: LogLines | None = None
    _ticker: LoopingCall | None = None

    def handle(self, message: Message) -> None:
        kind = message["type"]
        if kind == "backend":
            if self.log is not None:
                self.log.muted = True
            try:
                apply_backend(self.service.pools, message, self._client_tls)
            finally:
                if self.log is not None:
                    self.log.muted = False
        elif kind == "pin":
            apply_pin(self.service.pools, message)
        elif kind == "synced":
            self._start()
        elif kind == "reload":
            Deferred.fromCoroutine(self._reload())
        elif kind == "rotate":
            self.service.rotate_logs()
        else:
            _log.warn("unknown message from the master: {type}", type=kind)

    def _client_tls(self, pool: str, host: str) -> object:
        return build_client_tls(self.service.config.pool(pool), host, self.service.config.source)

    def _start(self) -> None:
        if self.synced:
            return
        self.synced = True
        self._adjust()
        self.service.startService()
        if self.service.config.admin is not None:
            self._ticker = LoopingCall(self.send_stats)
            self._ticker.clock = self.reactor
            self._ticker.start(STATS_INTERVAL, now=False)
        self.send(encode({"type": "serving"}))
        _log.info("worker serving")

    def _adjust(self) -> None:
        """
        Every pin made here is published (DNS membership stays the master's: the service is
        built without it, and its backends come as C{backend} messages).
        """
        for name, pool in self.service.pools.items():
            share(pool.stickiness, partial(self._publish, name))
        # Counting costs a little on every request: only for the master's admin listener.
        if self.service.config.admin is not None:
            self.stats.watch_pools(self.service.pools.values())
            observe_listeners(self.stats, self.service)

    def _publish(self, pool: str, key: str, backend: str | None, deadline: float | None) -> None:
        self.send(encode(pin_message(pool, key, backend, deadline)))

    async def _reload(self) -> None:
        try:
            await self.service.reload()
        except ConfigError as error:
            self.send(encode({"type": "reloaded", "ok": False, "error": str(error)}))
        else:
            self._adjust()
            self.send(encode({"type": "reloaded", "ok": True}))

    def send_stats(self) -> None:
        active, retried = leases(self.service.pools.values())
        self.send(
            encode(
                {
                    "type": "stats",
                    "snapshot": self.stats.snapshot(),
                    "active": active,
                    "retried": retried,
                }
            )
        )

    def stop(self) -> Deferred[None] | None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self.service.running:
            stopped: Deferred[None] = self.service.stopService()
            return stopped
        return None


@implementer(ILogObserver)
@define
class LogLines:
    """
    Writes each log event as a C{LEVEL|NAMESPACE|TEXT} line (a traceback after it) for the
    master to log again, with its own time stamps.
    """

    stream: TextIO
    #: Drops info and warnings (not errors) while true.
    muted: bool = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        if self.muted and event.get("log_level") in (LogLevel.info, LogLevel.warn):
            return
        level = getattr(event.get("log_level"), "name", "info")
        text = formatEvent(dict(event))
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            text += "\n" + failure.getTraceback()
        self.stream.write(f"{level}|{event.get('log_namespace', '-')}|{text}\n")
        self.stream.flush()


def run(reactor: Any, arguments: WorkerArguments, log: LogLines | None = None) -> None:
    """Run a worker until the master tells it to stop, or is gone."""
    from twisted.internet import stdio

    # The POSIX one, which can write elsewhere than standard output.
    StandardIO: Any = stdio.StandardIO

    config = config_from_options(arguments.options)
    service = ReverseProxyService(
        config,
        reactor,
        health_checks=False,
        dns=False,
        signals=False,
        endpoint_for=adopting(reactor, arguments.listeners),
    )
    worker: Worker

    def send(data: bytes) -> None:
        channel.write(data)

    def master_gone(reason: Failure) -> None:
        if reactor.running and not stopping:
            stopping.append(0)
            _log.info("the master is gone: stopping")
            reactor.stop()

    def stop_once(number: int, frame: object) -> None:
        # SIGTERM may come from the master and from a terminal's Ctrl-C (the process group):
        # Twisted's own handler would try to stop the reactor twice.
        if reactor.running and not stopping:
            stopping.append(number)
            reactor.callFromThread(reactor.stop)

    def install_handlers() -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, stop_once)
        # Reloading and log rotation come from the master; these signals may still reach a
        # worker sent to the whole process group (a terminal, timeout(1)).
        for number in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(number, signal.SIG_IGN)

    stopping: list[int] = []
    worker = Worker(reactor, service, send, log=log)
    channel = StandardIO(MessageReceiver(worker.handle, master_gone), stdout=CONTROL_FD)
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    reactor.callWhenRunning(install_handlers)
    reactor.run()


def append_only_log_files() -> None:
    """
    Make the log files this process opens (the access log) append-only.  Twisted's C{LogFile}
    opens an existing file for writing at its end, at an offset of its own: the workers that
    share the file would write over each other's lines.
    """
    from twisted.python.logfile import BaseLogFile

    open_file = BaseLogFile._openFile

    def _openFile(self: BaseLogFile) -> None:
        open_file(self)
        fd = self._file.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)

    BaseLogFile._openFile = _openFile  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    log = LogLines(sys.stdout)
    globalLogBeginner.beginLoggingTo([log], redirectStandardIO=False)
    # Only in a worker process, which is started for this.
    append_only_log_files()
    from twisted.internet import reactor

    try:
        run(reactor, arguments, log)
    except ConfigError as error:
        _log.error("cannot start: {error}", error=str(error))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
