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


class LibraryExampleTests(TestCase):
    """
    The examples of using twisted_rp as a library (C{docs/extending.rst},
    C{docs/embedding.rst}) run as programs, checked with curl.
    """

    async def spawn(
        self, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> ExampleProcess:
        """Run C{argv} from the repository; it is stopped (SIGTERM) when the test ends."""
        process = ExampleProcess()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPOSITORY), *filter(None, [environment.get("PYTHONPATH")])]
        )
        environment.update(extra_env or {})
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            process, sys.executable, [sys.executable, *argv], env=environment, path=str(REPOSITORY)
        )

        async def stop() -> None:
            if not process.ended.called:
                with contextlib.suppress(ProcessExitedAlready):
                    transport.signalProcess("TERM")
            await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return process

    async def wait_for_output(self, process: ExampleProcess, text: bytes) -> None:
        from tests.servers import wait_until

        await wait_until(
            reactor,
            lambda: text in process.stdout or process.ended.called,
            timeout=60,
            what=repr(text),
        )
        self.assertIn(text, process.stdout, process.stderr)

    async def listening_port(self, script: str, prefix: str) -> int:
        """Start C{examples/SCRIPT 0}; the port from its line C{PREFIX<port>/}."""
        process = await self.spawn([str(REPOSITORY / "examples" / script), "0"])
        line = await process.first_line.addTimeout(60, reactor)
        self.assertTrue(line.startswith(prefix), line)
        return int(line[len(prefix) :].rstrip("/"))

    async def curl(self, *args: str) -> bytes:
        from tests.servers import run_curl

        result = await run_curl(reactor, *args)
        self.assertEqual(result.code, 0, result.err)
        return result.out

    async def free_ports(self, count: int) -> list[int]:
        """Distinct ports below 32768 free a moment ago (for programs that take fixed ports)."""
        from tests.servers import free_port

        ports: set[int] = set()
        while len(ports) < count:
            ports.add(free_port())
        return sorted(ports)

    def test_rewriting_subclass(self) -> Deferred[None]:
        """
        C{examples/rewriting_subclass.py}: C{/old/} paths reach the application as C{/new/},
        with the plan looked up from the API key (never the client's own claim), and a
        failing backend gets the branded HTML page, which names no backend.
        """

        async def run() -> None:
            port = await self.listening_port(
                "rewriting_subclass.py", "Proxy listening on http://127.0.0.1:"
            )
            base = f"http://127.0.0.1:{port}"
            out = await self.curl("-H", "X-API-Key: key-alice", f"{base}/old/report?x=1")
            self.assertEqual(out, b"application: path=/new/report?x=1 plan=gold\n")
            out = await self.curl("-H", "X-Customer-Plan: gold", f"{base}/other")
            self.assertEqual(out, b"application: path=/other plan=none\n")
            out = await self.curl("-i", f"{base}/status")
            head, _, body = out.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), head)
            self.assertIn(b"\r\ncontent-type: text/html; charset=utf-8", head.lower())
            self.assertIn(b"<h1>Example Corp</h1>", body)
            self.assertNotIn(b"127.0.0.1", body)

        return Deferred.fromCoroutine(run())

    def test_mount_in_site(self) -> Deferred[None]:
        """
        C{examples/mount_in_site.py}: the site serves its own pages, and C{/legacy/...}
        reaches both legacy servers in turn, without the prefix.
        """

        async def run() -> None:
            port = await self.listening_port(
                "mount_in_site.py", "Site listening on http://127.0.0.1:"
            )
            base = f"http://127.0.0.1:{port}"
            self.assertEqual(await self.curl(f"{base}/"), b"The site's own home page\n")
            answers = {await self.curl(f"{base}/legacy/orders?id=7") for _ in range(2)}
            self.assertEqual(
                answers,
                {
                    b"legacy legacy-1: path=/orders?id=7 prefix=/legacy\n",
                    b"legacy legacy-2: path=/orders?id=7 prefix=/legacy\n",
                },
            )

        return Deferred.fromCoroutine(run())

    def test_embed_service(self) -> Deferred[None]:
        """
        C{examples/embed_service.py}, run by Python and by C{twistd -y}: the proxy forwards
        to the program's application, which sees the proxy's pool.
        """

        async def run() -> None:
            script = str(REPOSITORY / "examples" / "embed_service.py")
            proxy_port, app_port = await self.free_ports(2)
            process = await self.spawn([script, str(proxy_port), str(app_port)])
            line = await process.first_line.addTimeout(60, reactor)
            self.assertEqual(line, f"Proxy listening on http://127.0.0.1:{proxy_port}/")
            await self.check_embed_service(proxy_port)
            process.transport.signalProcess("TERM")  # type: ignore[attr-defined]
            await process.ended

            proxy_port, app_port = await self.free_ports(2)
            twistd = "from twisted.scripts.twistd import run; run()"
            process = await self.spawn(
                ["-c", twistd, "-n", "--pidfile=", "-y", script],
                {"EMBED_PROXY_PORT": str(proxy_port), "EMBED_APP_PORT": str(app_port)},
            )
            await self.wait_for_output(process, b"HTTPProxyFactory starting on %d" % proxy_port)
            await self.check_embed_service(proxy_port)

        return Deferred.fromCoroutine(run())

    async def check_embed_service(self, proxy_port: int) -> None:
        import json

        base = f"http://127.0.0.1:{proxy_port}"
        self.assertEqual(await self.curl(f"{base}/"), b"Hello from the program's own application\n")
        pools = json.loads(await self.curl(f"{base}/pools"))
        self.assertEqual(
            pools, {"app": [{"name": "app-1", "healthy": True, "admin_state": "enabled"}]}
        )
