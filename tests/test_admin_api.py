"""
The admin API over real loopback connections, every call and every answer checked against
C{docs/openapi.yaml}; a real HTTP proxy and real backends provide the traffic.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import bcrypt
import treq
from attrs import define
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from twisted.internet import reactor as global_reactor
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from tests.servers import BackendServer
from twisted_rp.admin import ProxyStats, admin_resource
from twisted_rp.config import Config, load_config
from twisted_rp.config_admin import AdminConfig
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Router
from twisted_rp.pool import BackendPool
from twisted_rp.service import build_pools, build_router

SPEC = OpenAPI.from_file_path(str(Path(__file__).parent.parent / "docs" / "openapi.yaml"))
#: The server named in the spec; requests are validated as if made there.
SPEC_HOST = "http://127.0.0.1:9000"


@define
class SimpleState:
    """A running proxy's state, built from a configuration file (reload reads it again)."""

    config: Config
    pools: dict[str, BackendPool]
    routers: dict[str, Router]
    reloads: int = 0

    async def reload(self, config: Config | None = None) -> None:
        new = load_config(self.config.source) if config is None else config
        self.config = new
        self.reloads += 1


@define
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def write_config(path: Path, ports: list[int], extra: str = "") -> None:
    backends = "".join(
        f'[[pool.app.backends]]\nname = "b{n}"\naddress = "127.0.0.1:{port}"\n\n'
        for n, port in enumerate(ports, 1)
    )
    path.write_text(
        '[[listener]]\nname = "web"\nprotocol = "http"\nendpoint = "tcp:0"\n\n'
        '[[route]]\npool = "app"\n\n'
        f"{backends}"
        '[pool.app.sticky]\nkind = "cookie"\nsecret = "0123456789abcdef0123456789abcdef"\n\n'
        f"{extra}"
    )


class AdminHarness:
    """
    Two (or more) real backends, the HTTP proxy in front of them and the admin listener, all
    on 127.0.0.1; C{stop} closes everything.
    """

    def __init__(self, test: TestCase, backends: int = 2, settings: AdminConfig | None = None):
        self.test = test
        self.reactor: Any = global_reactor
        self.servers = [self._backend(f"b{n}") for n in range(1, backends + 1)]
        self.directory = Path(test.mktemp())
        self.directory.mkdir()
        self.config_path = self.directory / "proxy.toml"
        write_config(self.config_path, [s.port for s in self.servers])
        config = load_config(str(self.config_path))
        pools = build_pools(config, self.reactor)
        router = build_router(config, config.listeners[0], pools)
        self.state = SimpleState(config, pools, {"web": router})
        self.stats = ProxyStats()
        self.factory = HTTPProxyFactory(self.reactor, router)
        self.factory.request_observers.append(self.stats)
        proxy = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        test.addCleanup(proxy.stopListening)
        self.proxy_url = f"http://127.0.0.1:{proxy.getHost().port}"
        self.settings = settings or AdminConfig(endpoint="tcp:0:interface=127.0.0.1")
        resource = admin_resource(self.state, self.stats, self.settings, self.reactor)
        site = Site(resource)
        admin = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(admin.stopListening)
        self.admin_url = f"http://127.0.0.1:{admin.getHost().port}"
        test.addCleanup(self.factory.connections.close_idle)

    def _backend(self, name: str) -> BackendServer:
        server = BackendServer(self.reactor, name)
        server.start()
        self.test.addCleanup(server.stop)
        return server

    async def proxy_get(self, path: str = "/", **kwargs: Any) -> Answer:
        response = await treq.get(self.proxy_url + path, persistent=False, **kwargs)
        return Answer(response.code, response.headers, await response.content())

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        validate: bool = True,
    ) -> Answer:
        """
        Make one admin API call; unless told otherwise, check the request and the answer
        against the OpenAPI document.
        """
        sent_headers = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent_headers.setdefault("Content-Type", "application/json")
        response = await treq.request(
            method,
            self.admin_url + path,
            data=data,
            headers={k: [v] for k, v in sent_headers.items()},
            persistent=False,
        )
        answer = Answer(response.code, response.headers, await response.content())
        if validate:
            self.validate(method, path, data, sent_headers, answer)
        return answer

    def validate(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], answer: Answer
    ) -> None:
        request = MockRequest(
            SPEC_HOST,
            method.lower(),
            path,
            headers=headers,
            data=data,
            content_type=headers.get("Content-Type", "application/json"),
        )
        if data is not None or method in ("GET", "DELETE"):
            SPEC.validate_request(request)
        content_type = answer.headers.getRawHeaders("content-type", [""])[0]
        response = MockResponse(answer.body, answer.status, content_type=content_type)
        SPEC.validate_response(request, response)


class AdminAPITests(TestCase):
    """Every call of the API, each answer valid by the OpenAPI document."""

    timeout = 60

    def setUp(self) -> None:
        self.admin = AdminHarness(self)

    async def test_listeners(self) -> None:
        answer = await self.admin.call("GET", "/api/listeners")
        self.assertEqual(answer.status, 200)
        [web] = answer.json()
        self.assertEqual(
            (web["name"], web["protocol"], web["routes"], web["tls"]),
            ("web", "http", ["route[0]"], False),
        )

    async def test_routes_count_requests(self) -> None:
        for _ in range(3):
            self.assertEqual((await self.admin.proxy_get("/hello")).status, 200)
        await self.admin.proxy_get("/", headers={"Host": ["bad host"]})
        answer = await self.admin.call("GET", "/api/routes")
        [route] = answer.json()
        self.assertEqual(route["name"], "route[0]")
        self.assertEqual(route["pool"], "app")
        self.assertEqual(route["listeners"], ["web"])
        self.assertEqual(route["requests"], 3)
        self.assertEqual(route["responses"], {"2xx": 3})
        self.assertIsNotNone(route["latency"]["p50"])

    async def test_pools_show_backends_with_traffic(self) -> None:
        for _ in range(4):
            self.assertEqual((await self.admin.proxy_get()).status, 200)
        answer = await self.admin.call("GET", "/api/pools")
        [pool] = answer.json()
        self.assertEqual(pool["name"], "app")
        self.assertEqual(pool["balance"], "round_robin")
        self.assertEqual(pool["requests"], 4)
        self.assertEqual(pool["usable"], 2)
        names = [b["name"] for b in pool["backends"]]
        self.assertEqual(names, ["b1", "b2"])
        for backend in pool["backends"]:
            self.assertEqual(backend["requests"], 2)
            self.assertEqual(backend["outcomes"], {"ok": 2})
            self.assertEqual((backend["state"], backend["healthy"]), ("enabled", True))
            self.assertGreater(backend["latency"]["p99"], 0)

    async def test_one_pool_and_backend(self) -> None:
        pool = (await self.admin.call("GET", "/api/pools/app")).json()
        self.assertEqual(pool["name"], "app")
        backend = (await self.admin.call("GET", "/api/pools/app/backends/b2")).json()
        port = self.admin.servers[1].port
        self.assertEqual(backend["address"], f"127.0.0.1:{port}")

    async def test_unknown_pool_and_backend(self) -> None:
        missing = await self.admin.call("GET", "/api/pools/nope")
        self.assertEqual(missing.status, 404)
        self.assertIn("nope", missing.json()["error"])
        missing = await self.admin.call("GET", "/api/pools/app/backends/nope")
        self.assertEqual(missing.status, 404)
        missing = await self.admin.call("DELETE", "/api/pools/app/backends/nope")
        self.assertEqual(missing.status, 404)

    async def test_drain_sends_no_new_requests(self) -> None:
        answer = await self.admin.call("PATCH", "/api/pools/app/backends/b1", {"state": "draining"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json()["state"], "draining")
        answers = [await self.admin.proxy_get() for _ in range(4)]
        backends = {json.loads(a.body)["backend"] for a in answers}
        self.assertEqual(backends, {"b2"})
        answer = await self.admin.call("PATCH", "/api/pools/app/backends/b1", {"state": "enabled"})
        self.assertEqual(answer.json()["state"], "enabled")
        answers = [await self.admin.proxy_get() for _ in range(4)]
        self.assertEqual({json.loads(a.body)["backend"] for a in answers}, {"b1", "b2"})

    async def test_weight(self) -> None:
        answer = await self.admin.call("PATCH", "/api/pools/app/backends/b2", {"weight": 0})
        self.assertEqual((answer.status, answer.json()["weight"]), (200, 0))
        answers = [await self.admin.proxy_get() for _ in range(3)]
        self.assertEqual({json.loads(a.body)["backend"] for a in answers}, {"b1"})

    async def test_bad_changes_are_refused(self) -> None:
        path = "/api/pools/app/backends/b1"
        for body in ({"state": "sleeping"}, {"weight": -1}, {"weight": True}, {}, {"colour": 1}):
            answer = await self.admin.call("PATCH", path, body, validate=False)
            self.assertEqual(answer.status, 400, body)
            self.admin.validate("PATCH", path, None, {}, answer)
        answer = await self.admin.call("PATCH", path, b"{not json", validate=False)
        self.assertEqual(answer.status, 400)
        pool = self.admin.state.pools["app"]
        self.assertEqual(
            (pool.backends()[0].admin_state, pool.backends()[0].weight), ("enabled", 1)
        )

    async def test_changes_need_json_content_type(self) -> None:
        """A form a page on another site could make a browser post is refused."""
        answer = await self.admin.call(
            "PATCH",
            "/api/pools/app/backends/b1",
            b"state=disabled",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            validate=False,
        )
        self.assertEqual(answer.status, 415)
        answer = await self.admin.call(
            "POST", "/api/reload", headers={"Content-Type": "text/plain"}, validate=False
        )
        self.assertEqual(answer.status, 415)
        self.assertEqual(self.admin.state.pools["app"].backends()[0].admin_state, "enabled")

    async def test_add_backend(self) -> None:
        third = self.admin._backend("b3")
        answer = await self.admin.call(
            "POST",
            "/api/pools/app/backends",
            {"address": f"127.0.0.1:{third.port}", "name": "b3", "weight": 2},
        )
        self.assertEqual(answer.status, 201)
        self.assertEqual((answer.json()["name"], answer.json()["weight"]), ("b3", 2))
        answers = [await self.admin.proxy_get() for _ in range(8)]
        self.assertIn("b3", {json.loads(a.body)["backend"] for a in answers})
        again = await self.admin.call(
            "POST", "/api/pools/app/backends", {"address": f"127.0.0.1:{third.port}", "name": "b3"}
        )
        self.assertEqual(again.status, 409)

    async def test_add_backend_default_name_and_bad_input(self) -> None:
        answer = await self.admin.call(
            "POST", "/api/pools/app/backends", {"address": "http://127.0.0.1:1"}
        )
        self.assertEqual((answer.status, answer.json()["name"]), (201, "127.0.0.1:1"))
        for body in (
            {"address": "nowhere"},
            {"address": "ftp://127.0.0.1:21"},
            {"address": "127.0.0.1:2", "weight": "heavy"},
            {"address": "127.0.0.1:2", "backup": "yes"},
            {"name": "x"},
        ):
            answer = await self.admin.call("POST", "/api/pools/app/backends", body, validate=False)
            self.assertEqual(answer.status, 400, body)
            self.admin.validate("POST", "/api/pools/app/backends", None, {}, answer)

    async def test_remove_backend(self) -> None:
        answer = await self.admin.call("DELETE", "/api/pools/app/backends/b1")
        self.assertEqual((answer.status, answer.json()), (200, {"removed": "b1"}))
        pool = (await self.admin.call("GET", "/api/pools/app")).json()
        self.assertEqual([b["name"] for b in pool["backends"]], ["b2"])
        answers = [await self.admin.proxy_get() for _ in range(3)]
        self.assertEqual({json.loads(a.body)["backend"] for a in answers}, {"b2"})

    async def test_reload(self) -> None:
        write_config(
            self.admin.config_path,
            [s.port for s in self.admin.servers],
            "[timeouts]\nbackend_connect = 3.5\n",
        )
        answer = await self.admin.call("POST", "/api/reload", {})
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json(), {"reloaded": True, "source": str(self.admin.config_path)})
        self.assertEqual(self.admin.state.config.proxy.timeouts.backend_connect, 3.5)
        # An empty body will do, with the content type.
        answer = await self.admin.call(
            "POST", "/api/reload", headers={"Content-Type": "application/json"}
        )
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.admin.state.reloads, 2)

    async def test_reload_invalid_config_keeps_the_old_one(self) -> None:
        before = self.admin.state.config
        self.admin.config_path.write_text('[[listener]]\nname = "web"\nprotocol = "gopher"\n')
        answer = await self.admin.call("POST", "/api/reload", {})
        self.assertEqual(answer.status, 422)
        self.assertIn("listener[0].protocol", answer.json()["error"])
        self.assertIs(self.admin.state.config, before)

    async def test_config_masks_secrets(self) -> None:
        answer = await self.admin.call("GET", "/api/config")
        self.assertEqual(answer.status, 200)
        config = answer.json()
        self.assertEqual(config["source"], str(self.admin.config_path))
        [pool] = config["pools"]
        self.assertEqual(pool["sticky"]["secret"], "********")
        self.assertNotIn(b"0123456789abcdef", answer.body)
        self.assertEqual(config["listeners"][0]["name"], "web")

    async def test_stats(self) -> None:
        await self.admin.proxy_get()
        answer = await self.admin.call("GET", "/api/stats")
        stats = answer.json()
        self.assertEqual(stats["http"]["requests"]["route[0]"]["app"], {"b1": {"2xx": 1}})
        self.assertEqual(stats["backends"]["app"]["b1"]["requests"], 1)

    async def test_unknown_path_and_method(self) -> None:
        answer = await self.admin.call("GET", "/api/nothing", validate=False)
        self.assertEqual(answer.status, 404)
        answer = await self.admin.call("DELETE", "/api/pools", validate=False)
        self.assertEqual(answer.status, 405)
        self.assertIn("GET", answer.json()["error"])


class AdminAuthenticationTests(TestCase):
    """With a token or users set, nothing is served without credentials."""

    timeout = 60

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        users = directory / "admins.htpasswd"
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
        users.write_text(f"alice:{hashed}\n")
        self.token = base64.urlsafe_b64encode(os.urandom(18)).decode()
        self.admin = AdminHarness(
            self,
            settings=AdminConfig(
                endpoint="tcp:0:interface=127.0.0.1", token=self.token, users=str(users)
            ),
        )

    async def get(self, path: str, authorization: str | None = None) -> Answer:
        headers = {} if authorization is None else {"Authorization": authorization}
        return await self.admin.call("GET", path, headers=headers, validate=False)

    async def test_refused_without_credentials(self) -> None:
        for path in ("/api/pools", "/", "/metrics", "/dashboard.js"):
            answer = await self.get(path)
            self.assertEqual(answer.status, 401, path)
            challenges = answer.headers.getRawHeaders("www-authenticate")
            self.assertIn('basic realm="twisted_rp admin"', challenges)
            self.assertIn("bearer", [c.lower() for c in challenges])
        self.admin.validate("GET", "/api/pools", None, {}, await self.get("/api/pools"))

    async def test_bearer_token(self) -> None:
        answer = await self.get("/api/pools", f"Bearer {self.token}")
        self.assertEqual(answer.status, 200)
        self.assertEqual((await self.get("/api/pools", "Bearer wrong")).status, 401)

    async def test_token_as_basic_password(self) -> None:
        credentials = base64.b64encode(f"anyone:{self.token}".encode()).decode()
        self.assertEqual((await self.get("/", f"Basic {credentials}")).status, 200)

    async def test_htpasswd_user(self) -> None:
        good = base64.b64encode(b"alice:s3cret").decode()
        bad = base64.b64encode(b"alice:guess").decode()
        self.assertEqual((await self.get("/api/pools", f"Basic {good}")).status, 200)
        self.assertEqual((await self.get("/api/pools", f"Basic {bad}")).status, 401)

    async def test_token_is_masked_in_config(self) -> None:
        answer = await self.get("/api/config", f"Bearer {self.token}")
        self.assertEqual(answer.status, 200)
        self.assertNotIn(self.token.encode(), answer.body)
