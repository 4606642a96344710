"""
The admin listener of the real service: C{build_service} with an C{[admin]} table, running
on loopback, its statistics fed by the listeners it built, through a reload.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import treq
import trustme
from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import TestCase

from tests.servers import BackendServer, free_port, run_curl, wait_until
from twisted_rp.config import load_config
from twisted_rp.service import build_service


class RunningServiceTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor
        self.servers = []
        for name in ("b1", "b2"):
            server = BackendServer(self.reactor, name)
            server.start()
            self.addCleanup(server.stop)
            self.servers.append(server)
        self.proxy_port, self.admin_port, self.tls_port = free_port(), free_port(), free_port()
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        certificate = ca.issue_cert("localhost", "127.0.0.1")
        self.cert_file, self.key_file = directory / "cert.pem", directory / "key.pem"
        certificate.cert_chain_pems[0].write_to_path(str(self.cert_file))
        certificate.private_key_pem.write_to_path(str(self.key_file))
        self.path = directory / "proxy.toml"
        self.write_config(connect_timeout=5)
        self.service = build_service(load_config(str(self.path)), self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def write_config(self, connect_timeout: float) -> None:
        backends = "".join(
            f'[[pool.app.backends]]\nname = "{s.name}"\naddress = "127.0.0.1:{s.port}"\n'
            for s in self.servers
        )
        self.path.write_text(
            "[[listener]]\n"
            'name = "web"\nprotocol = "http"\n'
            f'endpoint = "tcp:{self.proxy_port}:interface=127.0.0.1"\n'
            "[[listener]]\n"
            'name = "secure"\nprotocol = "https"\n'
            f'endpoint = "tcp:{self.tls_port}:interface=127.0.0.1"\n'
            f'certificates = [{{ cert = "{self.cert_file}", key = "{self.key_file}" }}]\n'
            '[[route]]\npool = "app"\n'
            f"{backends}"
            f"[timeouts]\nbackend_connect = {connect_timeout}\n"
            "[server]\ngrace_period = 1\n"
            f'[admin]\nendpoint = "tcp:{self.admin_port}:interface=127.0.0.1"\n'
        )

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": ["application/json"]}
        data = None if body is None else json.dumps(body).encode()
        response = await treq.request(
            method,
            f"http://127.0.0.1:{self.admin_port}{path}",
            data=data,
            headers=headers,
            persistent=False,
        )
        return response.code, json.loads(await response.content())

    async def requests(self, count: int) -> None:
        for _ in range(count):
            response = await treq.get(f"http://127.0.0.1:{self.proxy_port}/", persistent=False)
            self.assertEqual(response.code, 200)
            await response.content()

    async def routed(self) -> int:
        status, routes = await self.api("GET", "/api/routes")
        self.assertEqual(status, 200)
        return int(routes[0]["requests"])

    async def test_counts_through_a_reload(self) -> None:
        await wait_until(self.reactor, lambda: _answers(self.admin_port), 10, "the admin port")
        status, listeners = await self.api("GET", "/api/listeners")
        self.assertEqual((status, [entry["name"] for entry in listeners]), (200, ["web", "secure"]))
        await self.requests(3)
        self.assertEqual(await self.routed(), 3)
        # A reload that changes the listener's settings builds it a new factory.
        self.write_config(connect_timeout=4)
        status, answer = await self.api("POST", "/api/reload", {})
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.service.config.proxy.timeouts.backend_connect, 4)
        await self.requests(2)
        self.assertEqual(await self.routed(), 5)
        status, pools = await self.api("GET", "/api/pools")
        self.assertEqual(sum(b["requests"] for b in pools[0]["backends"]), 5)
        # An invalid file is refused, and the proxy goes on.
        self.path.write_text("[[listener]]\n")
        status, answer = await self.api("POST", "/api/reload", {})
        self.assertEqual(status, 422)
        self.assertIn("listener[0]", answer["error"])
        await self.requests(1)
        self.assertEqual(await self.routed(), 6)

    async def test_tls_handshakes_counted(self) -> None:
        """
        Handshakes on the C{https} listener show in C{/metrics}, before and after a reload
        that builds the listener a new factory.
        """
        await wait_until(self.reactor, lambda: _answers(self.admin_port), 10, "the admin port")
        await wait_until(self.reactor, lambda: _answers(self.tls_port), 10, "the https port")

        async def handshakes() -> float:
            response = await treq.get(
                f"http://127.0.0.1:{self.admin_port}/metrics", persistent=False
            )
            text = (await response.content()).decode()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("twisted_rp_tls_handshakes_total{")
            )

        async def curl_https() -> None:
            result = await run_curl(
                self.reactor,
                "--cacert",
                str(self.ca_file),
                f"https://127.0.0.1:{self.tls_port}/",
            )
            self.assertEqual(result.code, 0, result.err)

        self.assertEqual(await handshakes(), 0)
        await curl_https()
        await curl_https()
        self.assertEqual(await handshakes(), 2)
        self.write_config(connect_timeout=4)
        status, answer = await self.api("POST", "/api/reload", {})
        self.assertEqual(status, 200, answer)
        await curl_https()
        self.assertEqual(await handshakes(), 3)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
