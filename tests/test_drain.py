"""
Tests for stopping gracefully: in memory with the service's own clock, then SIGTERM to a
real C{twistd reverseproxy} process with a long, slow download in flight.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionRefusedError, ProcessTerminated
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import FakeBackend, FakeClient, FakeTCPTransport, get, parse_message, response
from tests.proxyproc import TwistdProcess
from tests.servers import BackendServer, connect_raw, wait_until
from tests.test_ftp_control import Harness as FTPHarness
from tests.test_service import config_from
from twisted_rp.config import ConfigError
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.service import build_service

CONFIG = """
[server]
grace_period = {grace}

[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:8080:interface=127.0.0.1"

[[listener]]
name = "files"
protocol = "ftp"
endpoint = "tcp:2121:interface=127.0.0.1"
pool = "ftp"

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "10.0.0.1:8000"

[pool.ftp]
[[pool.ftp.backends]]
address = "10.0.0.2:21"
"""


def factory_named(service: Any, name: str) -> Any:
    listening = service.getServiceNamed(name)
    assert isinstance(listening, StreamServerEndpointService)
    return listening.factory


class StopTests(SynchronousTestCase):
    """
    Stopping the service stops listening, closes idle connections, lets busy ones finish
    within the grace period and cuts the rest at its end.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = build_service(config_from(CONFIG.format(grace=10)), self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.http: HTTPProxyFactory = factory_named(self.service, "web")

    def client(self, port: int) -> FakeClient:
        return FakeClient(self.http, self.reactor, IPv4Address("TCP", "192.0.2.1", port))

    def busy_client(self) -> tuple[FakeClient, FakeBackend]:
        client = self.client(5001)
        client.send(get(b"/download"))
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        return client, FakeBackend(self.reactor, host, port, factory)

    def test_idle_closed_busy_finishes(self) -> None:
        """
        An idle keep-alive connection is closed at once; a busy one gets its whole response,
        told C{Connection: close}, and the stop completes when it is closed.
        """
        idle = self.client(5000)
        idle.send(get(b"/"))
        FakeBackend(self.reactor, *self.reactor.tcpClients[-1][:3]).answer(response(200, b"hi"))
        self.assertEqual(parse_message(idle.take()).status, 200)
        busy, backend = self.busy_client()
        stopped = self.service.stopService()
        self.assertTrue(idle.closed)
        self.assertFalse(busy.closed)
        self.assertNoResult(stopped)
        self.reactor.advance(5)
        backend.answer(response(200, b"x" * 1000))
        answer = parse_message(busy.take())
        self.assertEqual((answer.status, answer.get(b"connection")), (200, b"close"))
        self.assertTrue(busy.closed)
        self.assertFalse(busy.aborted)
        self.reactor.advance(0.1)
        self.successResultOf(stopped)
        self.assertFalse(self.service.running)

    def test_cut_at_grace(self) -> None:
        """What is still busy when the grace period ends is aborted then, not before."""
        busy, _ = self.busy_client()
        stopped = self.service.stopService()
        self.reactor.advance(9.9)
        self.assertFalse(busy.closed)
        self.assertNoResult(stopped)
        self.reactor.pump([0.05] * 4)
        self.assertTrue(busy.aborted)
        self.reactor.advance(0.1)
        self.successResultOf(stopped)

    def test_idle_ftp_session(self) -> None:
        """An FTP session between commands is told 421 and closed."""
        ftp: FTPProxyFactory = factory_named(self.service, "files")
        transport = FakeTCPTransport(
            self.reactor,
            IPv4Address("TCP", "192.0.2.1", 6000),
            IPv4Address("TCP", "127.0.0.1", 2121),
        )
        session = ftp.buildProtocol(None)
        transport.protocol = session
        session.makeConnection(transport)
        transport.clear()
        stopped = self.service.stopService()
        self.assertTrue(transport.value().startswith(b"421 "), transport.value())
        self.reactor.advance(0.1)
        self.successResultOf(stopped)

    def test_nothing_in_flight(self) -> None:
        """With nothing open, stopping completes at once."""
        self.successResultOf(self.service.stopService())

    def test_grace_period_setting(self) -> None:
        """C{[server] grace_period} defaults to 30 s, may be 0, and is checked."""
        self.assertEqual(config_from(CONFIG.format(grace=0)).server.grace_period, 0.0)
        default = config_from(CONFIG.replace("grace_period = {grace}", ""))
        self.assertEqual(default.server.grace_period, 30.0)
        for bad in ("-1", '"soon"'):
            error = self.assertRaises(ConfigError, config_from, CONFIG.format(grace=bad))
            self.assertEqual(error.key, "server.grace_period")
        error = self.assertRaises(
            ConfigError, config_from, CONFIG.format(grace=1) + "\n[server.other]\n"
        )
        self.assertTrue(str(error).startswith("test.toml: server"), str(error))


TWISTD_CONFIG = """
[server]
grace_period = {grace}

[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:{port}:interface=127.0.0.1"

[[route]]
pool = "web"

[pool.web]
[[pool.web.backends]]
address = "127.0.0.1:{backend}"
"""

MiB = 1 << 20


def shut_down(proxy: TwistdProcess) -> bool:
    """
    Whether twistd shut down in order: it says so, then ends itself with the signal it was
    stopped by, as twistd does (systemd counts that a clean stop).
    """
    reason = proxy.exit_reason
    if reason is None or not isinstance(reason.value, ProcessTerminated):
        return False
    return reason.value.signal == signal.SIGTERM and "Server Shut Down." in proxy.log


class SIGTERMTests(TestCase):
    """
    SIGTERM to C{twistd reverseproxy} while a slow client downloads: new connections are
    refused at once, the download goes on within the grace period.
    """

    async def start(self, grace: float) -> tuple[TwistdProcess, BackendServer]:
        backend = BackendServer(global_reactor)
        backend.start()
        self.addCleanup(backend.stop)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "proxy.toml")
        port = TwistdProcess.free_port()
        with open(path, "w", encoding="utf-8") as file:
            file.write(TWISTD_CONFIG.format(grace=grace, port=port, backend=backend.port))
        proxy = await TwistdProcess.launch(global_reactor, path, port)
        self.addCleanup(proxy.stop)
        return proxy, backend

    async def refused(self, port: int) -> bool:
        endpoint = TCP4ClientEndpoint(global_reactor, "127.0.0.1", port, timeout=2)
        try:
            probe = await connectProtocol(endpoint, Protocol())
        except ConnectionRefusedError:
            return True
        except ConnectError as error:
            # Queued on the listening socket as it closed: the kernel resets it.
            if error.osError == errno.ECONNRESET:
                return True
            raise
        assert probe.transport is not None
        probe.transport.loseConnection()
        return False

    async def until_refused(self, port: int) -> None:
        for _ in range(200):
            if await self.refused(port):
                return
            await deferLater(global_reactor, 0.02)
        self.fail("the proxy kept accepting connections after SIGTERM")

    def test_download_finishes(self) -> Deferred[None]:
        """
        A 48 MiB download read slowly (about 3 s) started before SIGTERM arrives whole; the
        proxy refuses new connections meanwhile and exits once it is done, cleanly.
        """

        async def run() -> None:
            proxy, _ = await self.start(grace=20)
            size = 48 * MiB
            client = await connect_raw(
                global_reactor, proxy.port, keep=4096, pause_every=MiB, pause_for=0.06
            )
            client.transport.write(get(b"/stream?bytes=%d" % size, b"x"))
            await wait_until(global_reactor, lambda: client.total > 2 * MiB, what="a first MiB")
            signalled = global_reactor.seconds()
            os.kill(proxy.pid, signal.SIGTERM)
            await self.until_refused(proxy.port)
            self.assertLess(client.total, size, "the download ended before the proxy stopped")
            await proxy.ended(timeout=30)
            took = global_reactor.seconds() - signalled
            # What the proxy wrote before exiting may still wait in the sockets' buffers.
            await wait_until(global_reactor, lambda: client.closed, 30, "the end of the body")
            answer = client.response()
            assert answer is not None
            self.assertEqual(answer.status, 200)
            self.assertEqual(client.total - (len(client.received) - len(answer.body)), size)
            self.assertTrue(shut_down(proxy), proxy.log)
            self.assertLess(took, 20)
            # The download's connection, and maybe a refusal probe of until_refused that
            # reached the backlog just before the port closed (idle: closed at once).
            self.assertRegex(proxy.log, r"waiting up to 20s for [12] connections")

        return Deferred.fromCoroutine(run())

    def test_cut_at_grace(self) -> Deferred[None]:
        """
        A download that would take far longer than the grace period of 1 s is cut then, and
        the process exits right after.
        """

        async def run() -> None:
            proxy, _ = await self.start(grace=1)
            client = await connect_raw(
                global_reactor, proxy.port, keep=4096, pause_every=MiB, pause_for=0.5
            )
            client.transport.write(get(b"/stream?bytes=%d" % (256 * MiB), b"x"))
            await wait_until(global_reactor, lambda: client.total > MiB, what="a first MiB")
            signalled = global_reactor.seconds()
            os.kill(proxy.pid, signal.SIGTERM)
            await proxy.ended(timeout=30)
            took = global_reactor.seconds() - signalled
            self.assertGreaterEqual(took, 0.9)
            self.assertLess(took, 5)
            self.assertTrue(shut_down(proxy), proxy.log)
            self.assertIn("grace period of 1s over: closing 1 connections", proxy.log)
            await wait_until(global_reactor, lambda: client.closed, what="the cut")
            self.assertLess(client.total, 256 * MiB)

        return Deferred.fromCoroutine(run())


class FTPShutdownTests(SynchronousTestCase):
    """
    An FTP session told to shut down finishes the command (or transfer) in flight, then says
    421 and closes.
    """

    def test_after_command_in_flight(self) -> None:
        harness = FTPHarness()
        backend = harness.login()
        harness.send("PWD")
        self.assertEqual(backend.heard(), ["PWD"])
        harness.session.shutdown()
        self.assertEqual(harness.replies(), [])
        self.assertFalse(harness.client.transport.disconnecting)
        backend.say('257 "/" is the current directory')
        self.assertEqual(
            harness.replies(),
            [
                '257 "/" is the current directory',
                "421 Service not available, closing control connection.",
            ],
        )
        self.assertTrue(harness.client.transport.disconnecting)

    def test_idle(self) -> None:
        harness = FTPHarness()
        harness.login()
        harness.session.shutdown()
        self.assertEqual(
            harness.replies(), ["421 Service not available, closing control connection."]
        )
        self.assertTrue(harness.client.transport.disconnecting)
