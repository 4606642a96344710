"""
Tests for L{twisted_rp.demo}: the demo runs for real, on free ports of 127.0.0.1.
"""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from twisted_rp.demo import DemoService, demo_instructions, make_demo_service


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

    def test_toggle(self) -> Deferred[None]:
        """
        C{POST /toggle} on demo-2 makes it answer 503 (also on C{/health}), seen through the
        proxy on every third request; toggling again heals it.
        """

        async def run() -> None:
            addresses = await self.start_demo()
            demo_2 = addresses["demo-2"]
            self.assertEqual(await self.get(demo_2, "/health"), (200, "ok\n"))

            code, body = await self.post(demo_2, "/toggle")
            self.assertEqual(code, 200)
            self.assertIn("demo-2 is now failing", body)
            self.assertEqual((await self.get(demo_2, "/health"))[0], 503)

            answers = [await self.get(addresses["proxy"]) for _ in range(3)]
            self.assertEqual([code for code, _ in answers], [200, 503, 200])
            self.assertIn("demo-2 is failing", answers[1][1])
            self.assertTrue(answers[2][1].startswith("Hello from demo-3 "))

            code, body = await self.post(demo_2, "/toggle")
            self.assertIn("demo-2 is now healthy", body)
            answers = [await self.get(addresses["proxy"]) for _ in range(3)]
            self.assertEqual([code for code, _ in answers], [200, 200, 200])
            self.assertEqual(answers[1][1].splitlines()[0], "Hello from demo-2 (request #1)")

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

    def test_three_commands(self) -> None:
        text = demo_instructions()
        self.assertIn("for i in 1 2 3; do curl -s http://127.0.0.1:8080/; done", text)
        self.assertIn("curl -X POST http://127.0.0.1:8082/toggle", text)
        self.assertIn("curl -si -H 'Host: www.example.test' http://127.0.0.1:8080/", text)
