"""
The proxy in a child process, so that its memory can be measured apart from the tests'.

Run as a program (C{python -m tests.proxyproc BACKEND_PORT...}), it builds the proxy with the
library API, in front of backends on 127.0.0.1, listens on 127.0.0.1 on a port the system
picks, prints C{LISTENING <port>} and serves until SIGTERM.  In a test,
C{await ProxyProcess.start(reactor, [port])} runs it and L{ProxyProcess.stop} ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDERR_KEPT = 65536


@frozen
class Memory:
    """
    A process's memory, in bytes, from C{/proc/PID/status}.

    @ivar rss: resident now (C{VmRSS}).
    @ivar peak: the most it was ever resident (C{VmHWM}).
    """

    rss: int
    peak: int


def memory_of(pid: int) -> Memory:
    """The memory of process C{pid}."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                number, unit = rest.split()
                assert unit == "kB", line
                values[name] = int(number) * 1024
    return Memory(values["VmRSS"], values["VmHWM"])


class ProxyProcess(ProcessProtocol):
    """
    A running proxy child process.

    @ivar port: where it accepts connections, on 127.0.0.1.
    """

    transport: Any

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.port = 0
        self.pid = 0
        self._stdout = b""
        self._stderr = b""
        self._listening: Deferred[int] | None = Deferred()
        self._ended: Deferred[None] = Deferred()
        self.exit_reason: Failure | None = None

    @classmethod
    async def start(
        cls, reactor: Any, backend_ports: Sequence[int], timeout: float = 30
    ) -> ProxyProcess:
        """Start the proxy in front of C{backend_ports}; fires once it accepts connections."""
        process = cls(reactor)
        listening = process._listening
        assert listening is not None
        env = dict(os.environ, PYTHONPATH=_REPO, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "tests.proxyproc", *map(str, backend_ports)]
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env, path=_REPO)
        process.pid = transport.pid
        try:
            process.port = await listening.addTimeout(timeout, reactor)
        except BaseException:
            await process.stop()
            raise
        return process

    def memory(self) -> Memory:
        """The child's memory now."""
        return memory_of(self.pid)

    @property
    def stderr(self) -> str:
        """The last of what the child wrote on stderr (its warnings and errors)."""
        return self._stderr.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self._stdout += data
        if self._listening is not None and b"\n" in self._stdout:
            line = self._stdout.split(b"\n", 1)[0]
            d, self._listening = self._listening, None
            if line.startswith(b"LISTENING "):
                d.callback(int(line.split()[1]))
            else:
                d.errback(RuntimeError(f"unexpected output from the proxy: {line!r}"))

    def errReceived(self, data: bytes) -> None:
        self._stderr = (self._stderr + data)[-_STDERR_KEPT:]

    def processEnded(self, reason: Failure) -> None:
        self.exit_reason = reason
        if self._listening is not None:
            d, self._listening = self._listening, None
            d.errback(RuntimeError(f"the proxy exited before listening:\n{self.stderr}"))
        self._ended.callback(None)

    async def stop(self, timeout: float = 10) -> None:
        """End the child with SIGTERM (SIGKILL if it lingers) and wait until it has."""
        if self.exit_reason is None:
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess("TERM")
            killer = self.reactor.callLater(timeout, self._kill)
            await self._ended.addTimeout(timeout + 10, self.reactor)
            if killer.active():
                killer.cancel()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess("KILL")

    @property
    def exited_cleanly(self) -> bool:
        """Whether the child ended with status 0 (SIGTERM makes twisted exit cleanly)."""
        return self.exit_reason is not None and self.exit_reason.check(ProcessDone) is not None


#: What a twistd child started by L{TwistdProcess.launch} writes on stderr once its reactor runs.
_RUNNING = "twisted_rp tests: reactor running"
_RUNNING_LINE = _RUNNING.encode() + b"\n"


class TwistdProcess(ProxyProcess):
    """
    C{twistd -n reverseproxy --config FILE} in a child process, as an operator runs it.

    @ivar log: what twistd logged (on its standard output), the last 256 KiB of it.
    """

    log_kept = 1 << 18

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self._listening = None
        self._log = b""

    @staticmethod
    def free_port() -> int:
        """A TCP port below 32768 on 127.0.0.1 that nothing listens on just now."""
        from tests.servers import free_port

        return free_port()

    @classmethod
    async def launch(
        cls, reactor: Any, config_path: str, port: int, *twistd_options: str, timeout: float = 30
    ) -> TwistdProcess:
        """
        Run twistd on the file at C{config_path}, whose listener is on 127.0.0.1:C{port};
        fires once that port accepts connections.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol
        from twisted.internet.task import deferLater

        process = cls(reactor)
        process.port = port
        env = dict(os.environ, PYTHONPATH=_REPO, PYTHONUNBUFFERED="1")
        # Services listen before twistd's reactor runs, and until it does SIGTERM still kills
        # the process outright: it is ready once the reactor (and its handlers) run.  (On
        # file descriptor 2 itself: twistd logs what is written to sys.stderr.)
        run = (
            "import os; from twisted.internet import reactor; "
            f"reactor.callWhenRunning(os.write, 2, {_RUNNING_LINE!r}); "
            "from twisted.scripts.twistd import run; run()"
        )
        argv = [sys.executable, "-c", run, *twistd_options, "-n", "--pidfile="]
        argv += ["reverseproxy", "--config", config_path]
        directory = os.path.dirname(os.path.abspath(config_path))
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env, path=directory)
        process.pid = transport.pid
        deadline = reactor.seconds() + timeout
        while True:
            if process.exit_reason is not None:
                raise RuntimeError(f"twistd exited:\n{process.log}\n{process.stderr}")
            if _RUNNING not in process.stderr:
                if reactor.seconds() > deadline:
                    await process.stop()
                    raise RuntimeError(f"twistd's reactor did not start:\n{process.log}")
                await deferLater(reactor, 0.05)
                continue
            try:
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
                probe = await connectProtocol(endpoint, Protocol())
            except Exception:
                if reactor.seconds() > deadline:
                    await process.stop()
                    raise
                await deferLater(reactor, 0.05)
            else:
                probe.transport.loseConnection()
                return process

    @property
    def log(self) -> str:
        return self._log.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self._log = (self._log + data)[-self.log_kept :]

    async def ended(self, timeout: float = 60) -> None:
        """Fires once the process has exited."""
        await self._ended.addTimeout(timeout, self.reactor)


def begin_logging() -> None:
    """Send warnings and worse to stderr, in a proxy subprocess whose memory is measured."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Logging must begin, or every event would be kept in memory waiting for an observer.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )


def main(backend_ports: Sequence[int]) -> None:
    """Run the proxy with default settings in front of C{backend_ports} until SIGTERM."""
    from twisted.internet import reactor as global_reactor

    from twisted_rp.http.proxy import HTTPProxyFactory
    from twisted_rp.http.routing import Route, Router
    from twisted_rp.pool import Backend, BackendPool

    begin_logging()
    reactor: Any = global_reactor
    backends: list[Any] = [
        Backend(f"b{i}", "127.0.0.1", port) for i, port in enumerate(backend_ports, 1)
    ]
    pool = BackendPool("test", backends)
    factory = HTTPProxyFactory(reactor, Router([Route(pool)]))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    reactor.run()


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]])
