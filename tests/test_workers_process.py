"""
Tests for worker processes with real processes: C{twistd -n reverseproxy} with
C{[server] workers = 2}, real backends and curl, on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.proxyproc import TwistdProcess
from tests.servers import BackendServer, run_curl, wait_until
from tests.test_drain import shut_down

PROCESS_CONFIG = """
[server]
workers = 2
grace_period = 3

[log]
access = "combined"

[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:{port}:interface=127.0.0.1"

[[route]]
pool = "app"

[pool.app.sticky]
kind = "source_ip"

[pool.app.health]
kind = "http"
path = "/health"
interval = 0.2
timeout = 1
rise = 1
fall = 1
body_regex = '"backend": "up'

[[pool.app.backends]]
name = "a"
address = "127.0.0.1:{a}"

[[pool.app.backends]]
name = "b"
address = "127.0.0.1:{b}"

[admin]
endpoint = "tcp:{admin}:interface=127.0.0.1"
"""


def served_by(log: str, prefix: str = "/app") -> dict[int, int]:
    """How many requests for paths starting with C{prefix} each worker logged."""
    served = re.compile(rf'\[worker (\d)\] 127\.0\.0\.1 .*"GET {re.escape(prefix)}')
    counts: dict[int, int] = {}
    for match in served.finditer(log):
        slot = int(match[1])
        counts[slot] = counts.get(slot, 0) + 1
    return counts


def gone(pid: int) -> bool:
    """Whether process C{pid} has exited (a zombie nobody reaped yet counts)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


def app_requests(server: BackendServer) -> int:
    return sum(1 for request in server.requests if request.target.startswith("/app"))


class WorkersProcessTests(TestCase):
    """C{twistd -n reverseproxy} with C{[server] workers = 2}, as an operator runs it."""

    timeout = 180

    async def start(self, log: str = "") -> TwistdProcess:
        """Run the proxy and two backends; C{log}: more keys for the C{[log]} table."""
        self.reactor: Any = global_reactor
        self.servers = []
        for _ in range(2):
            server = BackendServer(self.reactor, "up")
            server.start()
            self.servers.append(server)
            self.addCleanup(server.stop)
        self.admin = TwistdProcess.free_port()
        port = TwistdProcess.free_port()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = self.path = os.path.join(directory, "proxy.toml")
        text = PROCESS_CONFIG.format(
            port=port, a=self.servers[0].port, b=self.servers[1].port, admin=self.admin
        )
        with open(path, "w") as file:
            file.write(text.replace('access = "combined"\n', f'access = "combined"\n{log}\n'))
        process = await TwistdProcess.launch(self.reactor, path, port, timeout=60)
        # Every access line is kept: the tests count them.
        process.log_kept = 1 << 24
        self.process = process
        self.addCleanup(process.stop)
        await wait_until(
            self.reactor,
            lambda: all(f"[worker {n}] worker serving" in process.log for n in (1, 2)),
            timeout=60,
            what="both workers serving",
        )
        return process

    async def get(self, path: str = "/app") -> int:
        result = await run_curl(
            self.reactor,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{self.process.port}{path}",
        )
        return int(result.out or b"0")

    async def burst(self, count: int, parallel: int = 6, prefix: str = "/app") -> list[int]:
        statuses: list[int] = []
        for start in range(0, count, parallel):
            batch = [self.get(f"{prefix}/{start + i}") for i in range(min(parallel, count - start))]
            statuses += await gatherResults([Deferred.fromCoroutine(c) for c in batch])
        return statuses

    async def api(self, path: str) -> Any:
        result = await run_curl(self.reactor, f"http://127.0.0.1:{self.admin}/api/{path}")
        return json.loads(result.out)

    def worker_pids(self) -> dict[int, int]:
        found = re.findall(r"worker (\d) started: pid (\d+)", self.process.log)
        return {int(slot): int(pid) for slot, pid in found}

    async def test_shared_state(self) -> None:
        """
        Both workers serve; the client's source_ip pin holds in both; once the master finds a
        backend unhealthy no worker sends it requests; the admin API counts every request;
        SIGTERM stops every process.
        """
        process = await self.start()
        self.assertEqual(await self.get("/app/first"), 200)
        await deferLater(self.reactor, 0.5)  # The pin travels to the other worker.
        statuses = await self.burst(40)
        self.assertEqual(statuses, [200] * 40)
        counts = sorted(app_requests(server) for server in self.servers)
        self.assertEqual(counts, [0, 41], "every request on the pinned backend")
        await wait_until(
            self.reactor, lambda: sum(served_by(process.log).values()) == 41, what="access log"
        )
        self.assertEqual(sorted(served_by(process.log)), [1, 2], "both workers served")

        pinned, other = sorted(self.servers, key=app_requests, reverse=True)
        pinned.name = "down"  # Its health checks fail from now on; requests still work.

        async def marked_down() -> bool:
            pool = await self.api("pools/app")
            return [b["healthy"] for b in pool["backends"]].count(False) == 1

        for _ in range(100):
            if await marked_down():
                break
            await deferLater(self.reactor, 0.1)
        self.assertTrue(await marked_down())
        before = app_requests(pinned)
        self.assertEqual(await self.burst(20), [200] * 20)
        self.assertEqual(app_requests(pinned), before, "no worker used the unhealthy backend")
        self.assertEqual(app_requests(other), 20)

        async def counted() -> int:
            pool = await self.api("pools/app")
            return int(pool["requests"])

        for _ in range(50):
            if await counted() == 61:
                break
            await deferLater(self.reactor, 0.2)
        self.assertEqual(await counted(), 61, "the admin API counts both workers' requests")

        pids = list(self.worker_pids().values())
        await process.stop(timeout=20)
        self.assertTrue(shut_down(process), f"{process.exit_reason}\n{process.log[-3000:]}")
        for pid in pids:
            await wait_until(self.reactor, lambda pid=pid: gone(pid), what="exit")

    async def test_worker_killed(self) -> None:
        """
        A worker killed with SIGKILL is restarted; meanwhile the other serves every request,
        and afterwards the new one serves too.  Killing the master stops the workers.
        """
        process = await self.start()
        killed = self.worker_pids()[1]
        statuses: list[int] = []
        running = [True]

        async def client() -> None:
            while running[0] and len(statuses) < 2000:
                statuses.append(await self.get())

        loop = Deferred.fromCoroutine(client())
        await deferLater(self.reactor, 0.3)
        os.kill(killed, signal.SIGKILL)
        await wait_until(
            self.reactor,
            lambda: (
                self.worker_pids()[1] != killed
                and process.log.count("[worker 1] worker serving") == 2
            ),
            timeout=60,
            what="worker 1 restarted",
        )
        running[0] = False
        await loop
        self.assertIn(f"worker 1 (pid {killed}) died (killed by signal 9)", process.log)
        failures = [status for status in statuses if status != 200]
        self.assertLessEqual(len(failures), 1, "only the killed worker's own request may fail")
        self.assertGreater(len(statuses), 5)
        self.assertEqual(await self.burst(40, prefix="/app/after"), [200] * 40)
        await wait_until(
            self.reactor,
            lambda: sum(served_by(process.log, "/app/after").values()) == 40,
            what="access log",
        )
        self.assertEqual(sorted(served_by(process.log, "/app/after")), [1, 2])

        # Workers whose master is gone (even killed) stop by themselves.
        pids = list(self.worker_pids().values())
        process.transport.signalProcess("KILL")
        await process.ended()
        for pid in pids:
            await wait_until(
                self.reactor,
                lambda pid=pid: gone(pid),
                timeout=30,
                what=f"worker {pid} gone",
            )

    async def test_reload(self) -> None:
        """
        SIGHUP to the master: a new listener gets new workers, which serve both listeners
        while the old ones stop once they do; other changes (a route) are reloaded by the workers.
        """
        process = await self.start()
        old = self.worker_pids()
        port = TwistdProcess.free_port()
        with open(self.path, "a") as file:
            file.write(
                f'\n[[listener]]\nname = "more"\nprotocol = "http"\n'
                f'endpoint = "tcp:{port}:interface=127.0.0.1"\n'
            )
        process.transport.signalProcess("HUP")
        await wait_until(
            self.reactor,
            lambda: (
                process.log.count("worker serving") == 4
                and all(f"(pid {pid}) stopped" in process.log for pid in old.values())
            ),
            timeout=60,
            what="the workers replaced",
        )
        self.assertIn("listeners changed: replacing the workers", process.log)
        self.assertEqual(await self.get(), 200)
        result = await run_curl(
            self.reactor, "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/app"
        )
        self.assertEqual(result.out, b"200")
        before = [app_requests(server) for server in self.servers]
        with open(self.path, "a") as file:
            file.write(
                f'\n[[route]]\npath_prefix = "/app/b"\npool = "b"\n\n'
                f'[[pool.b.backends]]\naddress = "127.0.0.1:{self.servers[1].port}"\n'
            )
        process.transport.signalProcess("HUP")
        await wait_until(
            self.reactor,
            lambda: all(f"worker {n} reloaded" in process.log for n in (1, 2)),
            what="the workers reloaded",
        )
        self.assertEqual(await self.burst(30, prefix="/app/b"), [200] * 30)
        after = [app_requests(server) for server in self.servers]
        self.assertEqual(after, [before[0], before[1] + 30], "the new route in every worker")
        await wait_until(
            self.reactor,
            lambda: sum(served_by(process.log, "/app/b").values()) == 30,
            what="access log",
        )
        self.assertEqual(sorted(served_by(process.log, "/app/b")), [1, 2])

    async def test_access_file(self) -> None:
        """
        Both workers append whole lines to one access log file; SIGUSR1 to the master rotates
        it once (the master renames it, the workers open the new one).
        """
        await self.start('access_file = "access.log"\nrotate_length = 0')
        path = os.path.join(os.path.dirname(self.path), "access.log")

        def lines(name: str) -> list[str]:
            try:
                with open(name) as file:
                    return file.read().splitlines()
            except FileNotFoundError:
                return []

        self.assertEqual(await self.burst(60, parallel=10), [200] * 60)
        await wait_until(self.reactor, lambda: len(lines(path)) >= 60, what="60 lines")
        written = lines(path)
        self.assertEqual(len(written), 60)
        paths = sorted(re.search(r'"GET (\S+) ', line)[1] for line in written)  # type: ignore[index]
        self.assertEqual(paths, sorted(f"/app/{n}" for n in range(60)))
        self.process.transport.signalProcess(signal.SIGUSR1)
        await wait_until(self.reactor, lambda: os.path.exists(path + ".1"), what="rotation")
        await deferLater(self.reactor, 0.5)  # The workers hear of it.
        self.assertEqual(await self.burst(10, prefix="/app/new"), [200] * 10)
        await wait_until(self.reactor, lambda: len(lines(path)) >= 10, what="10 new lines")
        self.assertEqual(len(lines(path + ".1")), 60)
        self.assertEqual(len(lines(path)), 10)
