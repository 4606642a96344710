"""
Tests for C{examples/embed.py}: the example runs, and requests reach its application through
the proxy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

REPOSITORY = Path(__file__).resolve().parent.parent
EMBED = REPOSITORY / "examples" / "embed.py"


def load_embed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_embed", EMBED)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ExampleProcess(ProcessProtocol):
    """
    Collects a child's output; L{first_line} fires with its first line of standard output.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.first_line: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        if b"\n" in self.stdout and not self.first_line.called:
            self.first_line.callback(self.stdout.split(b"\n")[0].decode())

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.first_line.called:
            self.first_line.errback(
                RuntimeError(f"the example ended without output: {self.stderr.decode()}")
            )
        self.ended.callback(None)


class EmbedExampleTests(TestCase):
    """
    C{examples/embed.py} proxies to its own application.
    """

    def setUp(self) -> None:
        # One connection per request, so nothing stays open after a test.
        self.client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    async def fetch(self, port: int) -> tuple[int, bytes]:
        response = await self.client.get(f"http://127.0.0.1:{port}/")
        return response.code, await response.content()

    def test_in_process(self) -> Deferred[None]:
        """
        L{start} runs in the caller's reactor, on the port it is given.
        """
        embed = load_embed()

        async def run() -> None:
            running = await embed.start(reactor, 0)
            self.addCleanup(running.stop)
            code, body = await self.fetch(running.proxy_port)
            self.assertEqual((code, body), (200, embed.GREETING))

        return Deferred.fromCoroutine(run())

    def test_script(self) -> Deferred[None]:
        """
        C{python examples/embed.py 0} starts, says where it listens, and proxies requests to
        its application until it is stopped.
        """

        async def run() -> None:
            process = ExampleProcess()
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(
                [str(REPOSITORY), *filter(None, [environment.get("PYTHONPATH")])]
            )
            transport = reactor.spawnProcess(  # type: ignore[attr-defined]
                process,
                sys.executable,
                [sys.executable, str(EMBED), "0"],
                env=environment,
                path=str(REPOSITORY),
            )
            try:
                line = await process.first_line
                prefix = "Proxy listening on http://127.0.0.1:"
                self.assertTrue(line.startswith(prefix), line)
                port = int(line[len(prefix) :].rstrip("/"))
                self.assertEqual(
                    await self.fetch(port), (200, b"Hello from the application behind the proxy\n")
                )
            finally:
                if not process.ended.called:
                    # It may have died on its own, which the assertions above reported.
                    with contextlib.suppress(ProcessExitedAlready):
                        transport.signalProcess("TERM")
                await process.ended
            self.assertIn(b"backend=app-1 pool=app", process.stderr)

        return Deferred.fromCoroutine(run())
