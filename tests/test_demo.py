"""
Tests for L{twisted_rp.demo}: the demo runs for real, on free ports of 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from twisted_rp.demo import (
    HEALTH_FALL,
    HEALTH_INTERVAL,
    HEALTH_RISE,
    DemoService,
    demo_instructions,
    make_demo_service,
)


def backends(answers: list[tuple[int, str]]) -> set[str]:
    """The demo backends that gave C{answers} ("Hello from demo-1 ..."), or the codes."""
    names = set()
    for code, body in answers:
        words = body.split()
        names.add(words[2] if code == 200 and words[:2] == ["Hello", "from"] else str(code))
    return names


def url(address: object, path: str = "/") -> str:
    assert isinstance(address, IPv4Address)
    return f"http://{address.host}:{address.port}{path}"


class DemoTests(TestCase):
    """
    The demo's proxy balances over its three backends, and demo-2 can be broken and healed.
    """

    async def start_demo(self) -> dict[str, object]:
        demo = make_demo_service(reactor, "tcp:0:interface=127.0.0.1", backend_ports=(0, 0, 0))
        self.assertIsInstance(demo, DemoService)
        self.demo = demo
        demo.startService()
        self.addCleanup(demo.stopService)
        # Every request on its own connection, so nothing stays open after the test.
        client_pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=client_pool))
        return dict(await demo.addresses())

    async def get(self, address: object, path: str = "/") -> tuple[int, str]:
        response = await self.client.get(url(address, path))
        return response.code, await response.text("utf-8")

    async def post(self, address: object, path: str) -> tuple[int, str]:
        response = await self.client.post(url(address, path))
        return response.code, await response.text("utf-8")

    def test_round_robin(self) -> Deferred[None]:
        """
        Three requests through the proxy are answered by demo-1, demo-2 and demo-3, and each
        answer shows the headers the proxy added.
        """

        async def run() -> None:
            addresses = await self.start_demo()
            bodies = [await self.get(addresses["proxy"]) for _ in range(3)]
            self.assertEqual([code for code, _ in bodies], [200, 200, 200])
            first_lines = [body.splitlines()[0] for _, body in bodies]
            self.assertEqual(
                first_lines,
                [
                    "Hello from demo-1 (request #1)",
                    "Hello from demo-2 (request #1)",
                    "Hello from demo-3 (request #1)",
                ],
            )
            proxy = addresses["proxy"]
            assert isinstance(proxy, IPv4Address)
            lines = bodies[0][1].splitlines()
            self.assertIn(f"Host: 127.0.0.1:{proxy.port}", lines)
            self.assertIn("X-Forwarded-For: 127.0.0.1", lines)
            _, again = await self.get(addresses["proxy"])
            self.assertEqual(again.splitlines()[0], "Hello from demo-1 (request #2)")

        return Deferred.fromCoroutine(run())

    async def wait_for(
        self, proxy: object, wanted: Callable[[list[tuple[int, str]]], bool], limit: float
    ) -> list[tuple[int, str]]:
        """
        Send three requests through the proxy every half second until their answers are
        C{wanted}; fail after C{limit} seconds of real time.
        """
        deadline = reactor.seconds() + limit
        while True:
            answers = [await self.get(proxy) for _ in range(3)]
            if wanted(answers):
                return answers
            if reactor.seconds() > deadline:
                self.fail(f"still {answers!r} after {limit} s")
            await deferLater(reactor, 0.5, lambda: None)

    def test_failover(self) -> Deferred[None]:
        """
        C{POST /toggle} makes demo-2 answer 503 to everything; within the health check's
        two failed probes (about 4 seconds) the proxy stops sending it requests, so clients
        get only demo-1 and demo-3 and no error.  Toggled back, demo-2 returns after two good
        probes.
        """

        async def run() -> None:
            addresses = await self.start_demo()
            proxy, demo_2 = addresses["proxy"], addresses["demo-2"]
            self.assertEqual(await self.get(demo_2, "/health"), (200, "ok\n"))

            code, body = await self.post(demo_2, "/toggle")
            self.assertEqual(code, 200)
            self.assertIn("demo-2 is now failing", body)
            self.assertEqual((await self.get(demo_2, "/health"))[0], 503)
            self.assertEqual((await self.get(demo_2, "/"))[0], 503)

            demo_2_backend = self.demo.pool.backend("demo-2")
            assert demo_2_backend is not None
            # Out of rotation for the users, and for the health check too (not only ejected
            # by passive health after a few 503s).
            await self.wait_for(
                proxy,
                lambda answers: (
                    backends(answers) <= {"demo-1", "demo-3"} and not demo_2_backend.healthy
                ),
                6,
            )
            later = [await self.get(proxy) for _ in range(6)]
            self.assertEqual([code for code, _ in later], [200] * 6)
            self.assertEqual(backends(later), {"demo-1", "demo-3"})

            code, body = await self.post(demo_2, "/toggle")
            self.assertIn("demo-2 is now healthy", body)
            answers = await self.wait_for(proxy, lambda answers: "demo-2" in backends(answers), 6)
            self.assertEqual([code for code, _ in answers], [200, 200, 200])

        return Deferred.fromCoroutine(run())

    def test_toggle_needs_post(self) -> Deferred[None]:
        """
        A C{GET /toggle} (a browser, a link checker) does not break the backend.
        """

        async def run() -> None:
            addresses = await self.start_demo()
            code, _ = await self.get(addresses["demo-2"], "/toggle")
            self.assertEqual(code, 405)
            self.assertEqual((await self.get(addresses["demo-2"], "/health"))[0], 200)

        return Deferred.fromCoroutine(run())


class InstructionsTests(TestCase):
    """
    The text printed when the demo starts.
    """

    def test_commands(self) -> None:
        text = demo_instructions()
        self.assertIn("for i in 1 2 3; do curl -s http://127.0.0.1:8080/; done", text)
        self.assertIn("curl -X POST http://127.0.0.1:8082/toggle", text)
        self.assertIn("while sleep 0.5; do curl -s http://127.0.0.1:8080/ | head -1; done", text)
        self.assertIn("curl -si -H 'Host: www.example.test' http://127.0.0.1:8080/", text)

    def test_health_check_as_described(self) -> None:
        """
        The instructions promise removal within about 4 seconds: two failed checks, 2 s apart.
        """
        self.assertEqual((HEALTH_FALL, HEALTH_RISE, HEALTH_INTERVAL), (2, 2, 2.0))
        self.assertIn("GET /health every 2 s", demo_instructions())
