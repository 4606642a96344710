"""
Tests for worker processes (L{twisted_rp.workers}) in memory: the control messages, the state
the master pushes, pin sharing, supervision; C{tests.test_workers_process} runs them for real.
"""

from __future__ import annotations

import io
import json
import os
import signal
from typing import Any

from attrs import define, field
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.test_service import config_from
from twisted_rp.config import ConfigError, load_config
from twisted_rp.interfaces import IPoolObserver
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.pool.backend import PickContext, StickyResponse
from twisted_rp.pool.peers import learn, pins, share
from twisted_rp.pool.sticky import AppCookieStickiness, CookieStickiness, SourceIPStickiness
from twisted_rp.proxyservice import ReverseProxyService
from twisted_rp.tap import Options
from twisted_rp.workers import MasterProxyService, WorkerStats, control, master_options
from twisted_rp.workers.control import MessageReceiver, apply_backend, backend_message, encode
from twisted_rp.workers.supervisor import FIRST_BACKOFF, Supervisor, WorkerProcess
from twisted_rp.workers.worker import LogLines, Worker, parse_arguments

CONFIG = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[route]]
pool = "app"

[pool.app.sticky]
kind = "source_ip"

[pool.app.health]
kind = "tcp"

[[pool.app.backends]]
address = "10.0.0.1:8000"

[[pool.app.backends]]
address = "10.0.0.2:8000"
"""

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def decode(data: list[bytes]) -> list[dict[str, Any]]:
    """The messages in what was sent, in order."""
    return [json.loads(line) for chunk in data for line in chunk.splitlines() if line]


def pool_of(*names: str, stickiness: Any = None, clock: Any = None) -> BackendPool:
    backends = []
    for name in names:
        host, port = name.split(":")
        backends.append(Backend(name, host, int(port)))
    return BackendPool("app", backends, stickiness=stickiness, clock=clock or Clock())


class ControlChannelTests(SynchronousTestCase):
    """Messages are JSON objects, one a line."""

    def test_lines_across_chunks(self) -> None:
        """A message cut anywhere arrives whole, once its line ends."""
        got: list[dict[str, Any]] = []
        receiver = MessageReceiver(got.append)
        data = encode({"type": "a", "n": 1}) + encode({"type": "b", "text": "x\ny"})
        for index in range(len(data)):
            receiver.feed(data[index : index + 1])
        self.assertEqual(got, [{"type": "a", "n": 1}, {"type": "b", "text": "x\ny"}])

    def test_bad_lines_skipped(self) -> None:
        """Lines that are not messages are skipped; a failing handler does not stop the rest."""
        got: list[dict[str, Any]] = []

        def handle(message: dict[str, Any]) -> None:
            if message["type"] == "boom":
                raise ZeroDivisionError()
            got.append(message)

        MessageReceiver(handle).feed(b'nope\n[1]\n{"no": "type"}\n{"type":"boom"}\n{"type":"ok"}\n')
        self.assertEqual(got, [{"type": "ok"}])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_lost(self) -> None:
        """The end of the channel is reported (a worker stops when its master is gone)."""
        lost: list[Failure] = []
        MessageReceiver(lambda message: None, lost.append).connectionLost()
        self.assertEqual(len(lost), 1)


class BackendStateTests(SynchronousTestCase):
    """A worker's pools follow the master's through C{backend} messages."""

    def setUp(self) -> None:
        self.master = pool_of(A, B)
        self.worker = pool_of(A, B)
        self.sent: list[dict[str, Any]] = []
        forward = self

        class Forward:
            def backend_changed(self, pool: str, backend: Backend, reason: str) -> None:
                present = forward.master.backend(backend.name) is backend
                forward.sent.append(backend_message(pool, backend, present, reason))

        self.master.add_observer(Forward())
        self.tls: list[tuple[str, str]] = []

    def make_tls(self, pool: str, host: str) -> object:
        self.tls.append((pool, host))
        return object()

    def push(self) -> None:
        for message in self.sent:
            apply_backend({"app": self.worker}, message, self.make_tls)
        self.sent.clear()

    def state(self, pool: BackendPool) -> list[tuple[Any, ...]]:
        return [
            (b.name, b.host, b.port, b.weight, b.healthy, b.admin_state, b.tls is not None)
            for b in pool.backends()
        ]

    def test_health_admin_weight(self) -> None:
        """Health, admin state and weight changes reach the worker, which then avoids it."""
        first = self.master.backends()[0]
        self.master.set_health(first, False, "3 probes failed")
        self.master.set_admin_state(B, "draining")
        self.master.set_weight(B, 7)
        self.push()
        self.assertEqual(self.state(self.worker), self.state(self.master))
        self.assertEqual(self.worker.usable(), [])
        self.master.set_health(first, True, "2 probes passed")
        self.push()
        self.assertEqual([b.name for b in self.worker.usable()], [A])

    def test_members(self) -> None:
        """Backends added (with client TLS made by the worker) and removed."""
        added = Backend("c", "10.0.0.3", 8443, tls=object())
        self.master.add_backend(added)
        self.master.remove_backend(A)
        self.push()
        self.assertEqual([b.name for b in self.worker.backends()], [B, "c"])
        self.assertEqual(self.tls, [("app", "10.0.0.3")])
        self.assertEqual(self.state(self.worker), self.state(self.master))

    def test_moved(self) -> None:
        """A backend whose name stays but whose address changed is replaced."""
        message = backend_message("app", Backend(A, "10.0.0.9", 9000), True)
        apply_backend({"app": self.worker}, message)
        moved = self.worker.backend(A)
        assert moved is not None
        self.assertEqual(moved.address, "10.0.0.9:9000")

    def test_unknown_pool(self) -> None:
        """A pool the worker does not have (yet) is ignored."""
        apply_backend({"app": self.worker}, backend_message("x", Backend("x", "h", 1), True))
        self.assertEqual(len(self.worker.backends()), 2)

    def test_full_state(self) -> None:
        """A starting worker learns every backend's state and every pin, then C{synced}."""
        clock = Clock()
        master = pool_of(A, B, stickiness=SourceIPStickiness(clock=clock), clock=clock)
        master.set_health(master.backends()[1], False, "down")
        master.set_admin_state(A, "draining")
        learn(master.stickiness, "192.0.2.7", A)
        worker = pool_of(A, B, stickiness=SourceIPStickiness(clock=clock), clock=clock)
        messages = list(control.full_state({"app": master}))
        self.assertEqual(messages[-1], {"type": "synced"})
        for message in messages:
            if message["type"] == "backend":
                apply_backend({"app": worker}, message)
            elif message["type"] == "pin":
                learn(worker.stickiness, message["key"], message["backend"], message["deadline"])
        self.assertEqual(self.state(worker), self.state(master))
        self.assertEqual(pins(worker.stickiness), [("192.0.2.7", A, None)])


class PinSharingTests(SynchronousTestCase):
    """The table kinds of stickiness publish new pins and learn the others'."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.published: list[tuple[str, str | None, float | None]] = []

    def test_source_ip(self) -> None:
        """Only new or moved pins are published; learnt ones are used but not published."""
        sticky = SourceIPStickiness(clock=self.clock)
        self.assertTrue(share(sticky, lambda *pin: self.published.append(pin)))
        pool = pool_of(A, B, stickiness=sticky)
        client = PickContext("http", "192.0.2.1")
        first, second = pool.backends()
        for _ in range(3):
            pool.sticky_response_done(client, first, StickyResponse())
        self.assertEqual(self.published, [("192.0.2.1", A, None)])
        pool.sticky_response_done(client, second, StickyResponse())
        self.assertEqual(self.published[-1], ("192.0.2.1", B, None))
        learn(sticky, "192.0.2.2", A)
        self.assertEqual(len(self.published), 2)
        self.assertEqual(sticky.pinned(PickContext("http", "192.0.2.2")), A)
        learn(sticky, "192.0.2.2", None)
        self.assertIsNone(sticky.pinned(PickContext("http", "192.0.2.2")))

    def test_app_cookie_forgotten(self) -> None:
        """A session the backend deletes is published as forgotten."""

        class Response(StickyResponse):
            def __init__(self, *cookies: str) -> None:
                self.cookies = list(cookies)

            def header_values(self, name: str) -> list[str]:
                return self.cookies

        sticky = AppCookieStickiness(clock=self.clock)
        share(sticky, lambda *pin: self.published.append(pin))
        backend = Backend(A, "10.0.0.1", 8000)
        context = PickContext("http", "192.0.2.1", cookie=lambda name: "s1")
        sticky.pin(context, backend, Response("JSESSIONID=s1; Max-Age=60"))
        sticky.pin(context, backend, Response("JSESSIONID=; Max-Age=0"))
        self.assertEqual(self.published, [("s1", A, 60.0), ("s1", None, None)])

    def test_cookie_has_nothing_to_share(self) -> None:
        """The proxy's own cookie carries the backend: nothing to share."""
        sticky = CookieStickiness(b"0123456789abcdef0123456789abcdef")
        self.assertFalse(share(sticky, lambda *pin: None))
        self.assertEqual(pins(sticky), [])
        learn(sticky, "k", A)  # Ignored.


class WorkerStatsTests(SynchronousTestCase):
    """The master's statistics are the sum of its workers'."""

    def test_merged_and_kept(self) -> None:
        stats = WorkerStats()
        one, two = object(), object()
        snapshot = {"backends": {"app": {A: {"requests": 3}}}, "ftp": {"sessions_active": 2}}
        for worker in (one, two):
            stats.update(worker, snapshot)  # type: ignore[arg-type]
        self.assertEqual(stats.snapshot()["backends"]["app"][A]["requests"], 6)
        stats.exited(one)  # type: ignore[arg-type]
        merged = stats.snapshot()
        self.assertEqual(merged["backends"]["app"][A]["requests"], 6, "counters never go back")
        self.assertEqual(merged["ftp"]["sessions_active"], 2, "a dead worker has no sessions")


@define
class FakeTransport:
    pid: int
    written: list[bytes] = field(factory=list)
    signals: list[str] = field(factory=list)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeProcessReactor(Clock):
    """A clock that also records the processes it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list[str], dict[int, Any], FakeTransport]] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], env: Any, path: Any, childFDs: Any
    ) -> FakeTransport:
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.transport = transport
        self.spawned.append((protocol, args, childFDs, transport))
        return transport


def died(worker: WorkerProcess, signal_number: int | None = 9) -> None:
    why = ProcessDone(0) if signal_number is None else ProcessTerminated(signal=signal_number)
    worker.processEnded(Failure(why))


class SupervisorTests(SynchronousTestCase):
    """Starting, restarting and stopping workers."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.supervisor = Supervisor(
            self.reactor,
            2,
            lambda slot, sockets: ["python", f"--slot={slot}", *map(str, sockets.values())],
            lambda: {"web": 7},
            lambda: [{"type": "backend"}, {"type": "synced"}],
            lambda worker, message: self.messages.append((worker.slot, message)),
            lambda: 10.0,
        )
        self.supervisor.startService()

    def test_started_with_sockets_and_state(self) -> None:
        """Each worker inherits the sockets and is told the master's state first."""
        self.assertEqual(len(self.reactor.spawned), 2)
        for slot, (_, args, fds, transport) in enumerate(self.reactor.spawned, 1):
            self.assertEqual(args, ["python", f"--slot={slot}", "7"])
            self.assertEqual(fds, {0: "w", 1: "r", 2: "r", 3: "r", 7: 7})
            self.assertEqual(decode(transport.written), [{"type": "backend"}, {"type": "synced"}])

    def test_control_and_logs(self) -> None:
        """Messages on fd 3 reach the master; output lines are logged with their level."""
        worker = self.reactor.spawned[0][0]
        worker.childDataReceived(3, encode({"type": "pin", "key": "k"}))
        self.assertEqual(self.messages, [(1, {"type": "pin", "key": "k"})])
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        worker.childDataReceived(1, b"warn|twisted_rp.pool.app|backend down\ncontin")
        worker.childDataReceived(1, b"ued\n")
        lines = [(e["log_level"].name, e["log_namespace"], e["line"]) for e in logged]
        self.assertEqual(
            lines,
            [
                ("warn", "twisted_rp.pool.app", "backend down"),
                ("warn", "twisted_rp.pool.app", "continued"),
            ],
        )

    def test_restart_with_backoff(self) -> None:
        """A worker that dies is restarted after 1 s, 2 s... and 1 s again once it was stable."""
        worker = self.reactor.spawned[0][0]
        died(worker)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(FIRST_BACKOFF)
        self.assertEqual(len(self.reactor.spawned), 3)
        again = self.reactor.spawned[-1][0]
        self.assertEqual(again.slot, 1)
        self.assertIs(self.supervisor.workers[1], again)
        died(again)
        self.reactor.advance(FIRST_BACKOFF)
        self.assertEqual(len(self.reactor.spawned), 3, "waits 2 s the second time")
        self.reactor.advance(FIRST_BACKOFF)
        self.assertEqual(len(self.reactor.spawned), 4)
        third = self.reactor.spawned[-1][0]
        self.reactor.advance(120)
        died(third, None)
        self.reactor.advance(FIRST_BACKOFF)
        self.assertEqual(len(self.reactor.spawned), 5, "back to 1 s after a minute of running")

    def test_stop(self) -> None:
        """Stopping sends SIGTERM, then SIGKILL after the grace period; nothing restarts."""
        stopped = self.supervisor.stopService()
        first, second = (entry[0] for entry in self.reactor.spawned)
        self.assertEqual([w.transport.signals for w in (first, second)], [["TERM"], ["TERM"]])
        died(first, signal.SIGTERM)
        self.assertNoResult(stopped)
        self.reactor.advance(15)
        self.assertEqual(second.transport.signals, ["TERM", "KILL"])
        died(second)
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_replace_and_resize(self) -> None:
        """
        Replaced workers stop once their replacement serves (or after a minute); extra ones
        stop without a restart.
        """
        old = [entry[0] for entry in self.reactor.spawned]
        self.supervisor.replace_all()
        self.assertEqual(len(self.reactor.spawned), 4)
        new = [entry[0] for entry in self.reactor.spawned[2:]]
        self.assertEqual([w.transport.signals for w in old], [[], []])
        new[0].childDataReceived(3, encode({"type": "serving"}))
        self.assertEqual([w.transport.signals for w in old], [["TERM"], []])
        died(old[0], signal.SIGTERM)
        self.reactor.advance(60)
        self.assertEqual(old[1].transport.signals, ["TERM"], "replacement never served")
        died(old[1], signal.SIGTERM)
        self.supervisor.resize(1)
        self.assertEqual(new[1].transport.signals, ["TERM"])
        died(new[1], signal.SIGTERM)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertEqual(list(self.supervisor.workers), [1])


class MasterTests(SynchronousTestCase):
    """The master pushes its pools' changes to the workers and relays their pins and stats."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.master = MasterProxyService(config_from(CONFIG), self.reactor, 2, ["--config", "x"])
        self.transports = []
        for slot in (1, 2):
            worker = WorkerProcess(self.master.supervisor, slot)
            worker.transport = FakeTransport(slot)
            self.transports.append(worker.transport)
            self.master.supervisor.workers[slot] = worker
        self.pool = self.master.pools["app"]

    def received(self, slot: int) -> list[dict[str, Any]]:
        return decode(self.transports[slot - 1].written)

    def test_master_checks(self) -> None:
        """The master runs the health checks and observes its pools."""
        self.assertTrue(verifyObject(IPoolObserver, self.master))
        self.assertIsNotNone(self.master.namedServices.get("health:app"))

    def test_changes_pushed(self) -> None:
        """Health, admin and membership changes go to every worker."""
        self.pool.set_health(self.pool.backends()[0], False, "refused")
        self.pool.set_admin_state(B, "disabled")
        self.pool.remove_backend(B)
        for slot in (1, 2):
            got = [
                (m["name"], m["healthy"], m["admin_state"], m["present"])
                for m in self.received(slot)
            ]
            self.assertEqual(
                got,
                [
                    (A, False, "enabled", True),
                    (B, True, "disabled", True),
                    (B, True, "disabled", False),
                ],
            )

    def test_pins_relayed(self) -> None:
        """A pin from one worker is learnt by the master and sent to the others only."""
        one = self.master.supervisor.workers[1]
        pin = {"type": "pin", "pool": "app", "key": "192.0.2.9", "backend": B, "deadline": None}
        self.master.supervisor.received(one, pin)
        self.assertEqual(self.received(1), [])
        self.assertEqual(self.received(2), [pin])
        self.assertEqual(pins(self.pool.stickiness), [("192.0.2.9", B, None)])

    def test_stats(self) -> None:
        """The workers' statistics and leases add up on the master."""
        for slot, active in ((1, 2), (2, 3)):
            worker = self.master.supervisor.workers[slot]
            message = {
                "type": "stats",
                "snapshot": {"backends": {"app": {A: {"requests": 10}}}},
                "active": {"app": {A: active, B: 0}},
                "retried": {"app": 1},
            }
            self.master.supervisor.received(worker, message)
        self.assertEqual(self.master.stats.snapshot()["backends"]["app"][A]["requests"], 20)
        self.assertEqual([b.active for b in self.pool.backends()], [5, 0])
        self.assertEqual(self.pool.retried, 2)

    def test_non_tcp_listener_refused(self) -> None:
        """With workers, a listener must be shareable: the error names its endpoint key."""
        text = CONFIG.replace('"tcp:8080:interface=127.0.0.1"', '"unix:/tmp/x.sock"')
        config = config_from(text)
        from twisted_rp.workers import build_master

        error = self.assertRaises(ConfigError, build_master, config, self.reactor, 2, [])
        self.assertEqual(error.key, "listener[0].endpoint")
        error = self.assertRaises(ConfigError, config_from, "[server]\nworkers = 2\n" + text)
        self.assertEqual(error.key, "listener[0].endpoint")

    def test_options(self) -> None:
        """Workers get the file by absolute path, or the quick-mode options; not --workers."""
        options = Options()
        options.parseOptions(["--workers", "2", "--listen", "tcp:8080", "--backend", A])
        self.assertEqual(options["workers"], 2)
        self.assertEqual(master_options(options), ["--listen", "tcp:8080", "--backend", A])
        options = Options()
        options.parseOptions(["--config", "proxy.toml", "--workers", "3"])
        self.assertEqual(master_options(options), ["--config", os.path.abspath("proxy.toml")])
        arguments = parse_arguments(["--slot", "2", "--listener", "web=5", "--", "--config", "p"])
        self.assertEqual((arguments.slot, arguments.listeners), (2, {"web": 5}))
        self.assertEqual(arguments.options, ["--config", "p"])


class WorkersOptionTests(SynchronousTestCase):
    """C{[server] workers} and C{--workers}."""

    def test_config_key(self) -> None:
        self.assertEqual(config_from(CONFIG).server.workers, 1)
        self.assertEqual(config_from("[server]\nworkers = 3\n" + CONFIG).server.workers, 3)
        error = self.assertRaises(ConfigError, config_from, "[server]\nworkers = 0\n" + CONFIG)
        self.assertEqual(error.key, "server.workers")

    def test_command_line(self) -> None:
        from twisted.python.usage import UsageError

        for bad in (["--workers", "0", "--backend", A], ["--demo", "--workers", "2"]):
            self.assertRaises(UsageError, Options().parseOptions, bad)

    def test_check_config(self) -> None:
        """C{--check-config --workers 2} refuses a listener workers cannot share."""
        path = os.path.join(self.mktemp())
        with open(path, "w") as file:
            file.write(CONFIG.replace('"tcp:8080:interface=127.0.0.1"', '"unix:/tmp/x.sock"'))
        options = Options()
        error = self.assertRaises(
            SystemExit, options.parseOptions, ["--config", path, "--check-config", "--workers", "2"]
        )
        self.assertEqual(error.code, 1)


class WorkerSideTests(SynchronousTestCase):
    """What a worker does with the master's messages."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "proxy.toml")
        with open(self.path, "w") as file:
            file.write(CONFIG + '[admin]\nendpoint = "tcp:9000:interface=127.0.0.1"\n')
        self.service = ReverseProxyService(
            load_config(self.path), self.reactor, health_checks=False, signals=False
        )
        self.sent: list[bytes] = []
        self.worker = Worker(self.reactor, self.service, self.sent.append)
        self.addCleanup(self.worker.stop)
        self.pool = self.service.pools["app"]

    def test_no_checker_no_echo(self) -> None:
        """No health checks here; the master's news is not logged again."""
        self.assertIsNone(self.service.namedServices.get("health:app"))
        stream = io.StringIO()
        self.worker.log = log = LogLines(stream)
        globalLogPublisher.addObserver(log)
        self.addCleanup(globalLogPublisher.removeObserver, log)
        self.worker.handle(backend_message("app", Backend(B, "10.0.0.2", 8000, weight=3), True))
        self.assertEqual(self.pool.backends()[1].weight, 3)
        self.assertEqual(stream.getvalue(), "")
        self.pool.set_weight(B, 4)
        self.assertIn("info|twisted_rp.pool.app|pool app: backend", stream.getvalue())

    def test_serves_once_synced(self) -> None:
        """It listens only once it has the master's state, so no request sees stale health."""
        down = backend_message("app", Backend(A, "10.0.0.1", 8000), True)
        down["healthy"] = False
        self.worker.handle(down)
        self.assertEqual(self.reactor.tcpServers, [])
        self.worker.handle({"type": "synced"})
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual([b.name for b in self.pool.usable()], [B])

    def test_pins_published(self) -> None:
        """Its new pins go to the master; pins from the master are not sent back."""
        self.worker.handle({"type": "synced"})
        self.worker.handle(
            {"type": "pin", "pool": "app", "key": "192.0.2.5", "backend": B, "deadline": None}
        )
        self.assertEqual(self.pool.stickiness.pinned(PickContext("http", "192.0.2.5")), B)  # type: ignore[union-attr]
        self.pool.sticky_response_done(
            PickContext("http", "192.0.2.6"), self.pool.backends()[0], StickyResponse()
        )
        self.assertEqual(
            decode(self.sent)[1:],
            [{"type": "pin", "pool": "app", "key": "192.0.2.6", "backend": A, "deadline": None}],
        )

    def test_stats_every_second(self) -> None:
        """Every second (for the master's admin listener): its statistics and leases."""
        self.worker.handle({"type": "synced"})
        lease = self.pool.pick(PickContext("http", "192.0.2.1"))
        self.reactor.advance(1.0)
        serving, message = decode(self.sent)
        self.assertEqual(serving, {"type": "serving"})
        self.assertEqual(message["type"], "stats")
        self.assertEqual(sum(message["active"]["app"].values()), 1)
        self.assertIn("backends", message["snapshot"])
        del lease

    def test_reload(self) -> None:
        """C{reload} reads the file again and reports the outcome."""
        self.worker.handle({"type": "synced"})
        with open(self.path, "a") as file:
            file.write('\n[[pool.app.backends]]\naddress = "10.0.0.3:8000"\n')
        self.worker.handle({"type": "reload"})
        self.assertEqual(len(self.pool.backends()), 3)
        with open(self.path, "a") as file:
            file.write("nonsense")
        self.worker.handle({"type": "reload"})
        results = [m for m in decode(self.sent) if m["type"] == "reloaded"]
        self.assertEqual([m["ok"] for m in results], [True, False])
        self.assertIn("proxy.toml", results[1]["error"])
