"""
The master's side of its workers: starting them with the listening sockets, restarting those
that die, talking to them, stopping them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from twisted_rp.workers.control import Message, MessageReceiver, encode

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "STABLE_AFTER", "Supervisor", "WorkerProcess"]

#: Seconds before restarting a worker that died; doubled at each death in a row ...
FIRST_BACKOFF = 1.0
#: ... up to this ...
MAX_BACKOFF = 30.0
#: ... and back to the first once a worker has run this long.
STABLE_AFTER = 60.0
#: Seconds a stopping worker gets beyond the grace period before it is killed.
KILL_MARGIN = 5.0
#: Seconds a replaced worker keeps serving at most while its replacement starts.
REPLACE_TIMEOUT = 60.0

_log = Logger(namespace="twisted_rp.workers")
_LINE = re.compile(r"(debug|info|warn|error|critical)\|([^|]*)\|(.*)", re.DOTALL)


class WorkerProcess(ProcessProtocol):
    """
    One worker process: its control pipe (fd 3) goes to L{Supervisor.received}, its output
    to the master's log.

    @ivar slot: which of the N workers it is (kept by its replacements).
    @ivar retiring: being replaced or stopped: its exit is not a crash.
    """

    transport: Any

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid = 0
        self.started = supervisor.reactor.seconds()
        self.retiring = False
        self.exit: Failure | None = None
        self.ended: Deferred[None] = Deferred()
        self.last_stats: Message | None = None
        self._control = MessageReceiver(lambda message: supervisor.received(self, message))
        self._output = {1: b"", 2: b""}
        self._level = {1: LogLevel.info, 2: LogLevel.error}
        self._namespace = {1: "twisted_rp.workers", 2: "twisted_rp.workers"}

    def __repr__(self) -> str:
        return f"<worker {self.slot} pid {self.pid}>"

    def send(self, data: bytes) -> None:
        if self.exit is None:
            with contextlib.suppress(Exception):
                self.transport.writeToChild(0, data)

    def signal(self, name: str) -> None:
        with contextlib.suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self._control.feed(data)
        elif childFD in self._output:
            *lines, self._output[childFD] = (self._output[childFD] + data).split(b"\n")
            for line in lines:
                self._log_line(childFD, line.decode("utf-8", "replace"))

    def _log_line(self, fd: int, line: str) -> None:
        match = _LINE.fullmatch(line)
        if match is not None:
            self._level[fd] = LogLevel.levelWithName(match[1])
            self._namespace[fd] = match[2]
            line = match[3]
        Logger(namespace=self._namespace[fd]).emit(
            self._level[fd], "[worker {slot}] {line}", slot=self.slot, line=line
        )

    def processEnded(self, reason: Failure) -> None:
        self.exit = reason
        for fd, rest in self._output.items():
            if rest:
                self._log_line(fd, rest.decode("utf-8", "replace"))
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


@define(eq=False)
class Supervisor(Service):
    """
    Keeps C{count} workers running.

    @ivar command: the worker's command line, given its slot and listening sockets (listener
        name to file descriptor).
    @ivar sockets: gives the listening sockets to pass, at each start.
    @ivar greeting: the messages a starting worker gets first (the master's state).
    @ivar received: called with each message a worker sends, and the worker.
    @ivar grace_period: gives the seconds a stopping worker has before it is killed.
    """

    reactor: Any
    count: int
    command: Callable[[int, Mapping[str, int]], list[str]]
    sockets: Callable[[], Mapping[str, int]]
    greeting: Callable[[], Iterable[Message]]
    on_message: Callable[[WorkerProcess, Message], object]
    grace_period: Callable[[], float]
    on_exit: Callable[[WorkerProcess], object] = lambda worker: None
    env: Mapping[str, str] | None = None
    workers: dict[int, WorkerProcess] = field(factory=dict)
    retiring: list[WorkerProcess] = field(factory=list)
    #: Workers that go once their replacement (same slot) serves.
    replaced: dict[int, WorkerProcess] = field(factory=dict)
    _backoff: dict[int, float] = field(factory=dict)
    _restarts: dict[int, IDelayedCall] = field(factory=dict)
    _stopping: bool = False

    def __attrs_post_init__(self) -> None:
        self.setName("workers")

    # Starting

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for slot in range(1, self.count + 1):
            self.spawn(slot)

    def spawn(self, slot: int) -> WorkerProcess:
        """Start the worker of C{slot}, with the master's state as its first messages."""
        self._restarts.pop(slot, None)
        sockets = dict(self.sockets())
        worker = WorkerProcess(self, slot)
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", 3: "r"}
        child_fds.update({fd: fd for fd in sockets.values()})
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = self.command(slot, sockets)
        transport = self.reactor.spawnProcess(
            worker, argv[0], argv, env=env, path=os.getcwd(), childFDs=child_fds
        )
        worker.pid = transport.pid
        self.workers[slot] = worker
        _log.info("worker {slot} started: pid {pid}", slot=slot, pid=worker.pid)
        for message in self.greeting():
            worker.send(encode(message))
        return worker

    def resize(self, count: int) -> None:
        """Run C{count} workers from now on: start the missing ones, retire the extra ones."""
        old, self.count = self.count, count
        if not self.running:
            return
        for slot in range(old + 1, count + 1):
            self.spawn(slot)
        for slot in range(count + 1, old + 1):
            self._retire_replaced(slot)
            call = self._restarts.pop(slot, None)
            if call is not None and call.active():
                call.cancel()
            worker = self.workers.pop(slot, None)
            if worker is not None:
                self._retire(worker)

    def replace_all(self) -> None:
        """
        Start a new worker in each slot (with the listening sockets as they are now); once it
        serves, stop the old one gracefully: what it is serving finishes.
        """
        for slot, old in sorted(self.workers.items()):
            self._retire_replaced(slot)
            self.replaced[slot] = old
            self.spawn(slot)
            self.reactor.callLater(REPLACE_TIMEOUT, self._retire_replaced, slot, old)

    def _retire_replaced(self, slot: int, only: WorkerProcess | None = None) -> None:
        old = self.replaced.get(slot)
        if old is not None and (only is None or old is only):
            del self.replaced[slot]
            self._retire(old)

    def _retire(self, worker: WorkerProcess) -> None:
        if worker.retiring or worker.exit is not None:
            return
        worker.retiring = True
        self.retiring.append(worker)
        worker.signal("TERM")
        self.reactor.callLater(self.grace_period() + KILL_MARGIN, worker.signal, "KILL")

    # Talking

    def broadcast(self, message: Message, but: WorkerProcess | None = None) -> None:
        """Send C{message} to every worker (except C{but})."""
        data = encode(message)
        for worker in self.workers.values():
            if worker is not but:
                worker.send(data)

    def received(self, worker: WorkerProcess, message: Message) -> None:
        if message["type"] == "stats":
            worker.last_stats = message
        elif message["type"] == "serving" and self.workers.get(worker.slot) is worker:
            self._retire_replaced(worker.slot)
        self.on_message(worker, message)

    # Deaths

    def ended(self, worker: WorkerProcess, reason: Failure) -> None:
        status = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        how = f"killed by signal {signal}" if signal else f"exit status {status}"
        if worker in self.retiring:
            self.retiring.remove(worker)
        self.on_exit(worker)
        if worker.retiring or self._stopping or self.workers.get(worker.slot) is not worker:
            _log.info(
                "worker {slot} (pid {pid}) stopped: {how}",
                slot=worker.slot,
                pid=worker.pid,
                how=how,
            )
            return
        del self.workers[worker.slot]
        ran = self.reactor.seconds() - worker.started
        delay = self._backoff.get(worker.slot, FIRST_BACKOFF)
        if ran >= STABLE_AFTER:
            delay = FIRST_BACKOFF
        self._backoff[worker.slot] = min(delay * 2, MAX_BACKOFF)
        _log.error(
            "worker {slot} (pid {pid}) died ({how}) after {ran:.1f}s: restarting it in {delay:g}s",
            slot=worker.slot,
            pid=worker.pid,
            how=how,
            ran=ran,
            delay=delay,
        )
        self._restarts[worker.slot] = self.reactor.callLater(delay, self._restart, worker.slot)

    def _restart(self, slot: int) -> None:
        if self.running and not self._stopping and slot <= self.count:
            self.spawn(slot)

    # Stopping

    def stopService(self) -> Deferred[Any]:
        """SIGTERM every worker; fires once all have exited (killed after the grace period)."""
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        self.replaced.clear()
        running = [*self.workers.values(), *self.retiring]
        if not running:
            return succeed(None)
        _log.info("stopping {count} workers", count=len(running))
        for worker in running:
            if worker.exit is None:
                worker.signal("TERM")
        killer = self.reactor.callLater(self.grace_period() + KILL_MARGIN, self._kill, running)
        done = DeferredList([worker.ended for worker in running], consumeErrors=True)

        def finished(result: object) -> None:
            if killer.active():
                killer.cancel()

        return done.addCallback(finished)

    def _kill(self, workers: Iterable[WorkerProcess]) -> None:
        for worker in workers:
            if worker.exit is None:
                _log.warn(
                    "worker {slot} (pid {pid}) still running: killing it",
                    slot=worker.slot,
                    pid=worker.pid,
                )
                worker.signal("KILL")


def worker_command(options: list[str]) -> Callable[[int, Mapping[str, int]], list[str]]:
    """The command line of a worker run with C{options} (the master's twistd options)."""

    def command(slot: int, sockets: Mapping[str, int]) -> list[str]:
        argv = [sys.executable, "-m", "twisted_rp.workers.worker", "--slot", str(slot)]
        for name, fd in sockets.items():
            argv += ["--listener", f"{name}={fd}"]
        return [*argv, "--", *options]

    return command
