"""
The authenticators and rewriters a configuration file puts on routes, through a real proxy on
loopback with real clients (curl and treq): what a user and a backend would see.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from typing import Any

import bcrypt
import jwt
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.servers import BackendServer, run_curl
from twisted_rp.config import parse_config
from twisted_rp.service import build_service

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SECRET = "a-shared-secret-that-is-long-enough-for-hs256"


async def port_of(service: MultiService, name: str) -> int:
    """The port the listener C{name} of a started service got."""
    listening = service.getServiceNamed(name)
    assert isinstance(listening, StreamServerEndpointService)
    found: Deferred[Any] = Deferred()

    def seen(port: Any) -> Any:
        found.callback(port)
        return port

    listening._waitingForPort.addCallback(seen)  # type: ignore[attr-defined]
    port = await found
    return int(port.getHost().port)


class InternalApp(Resource):
    """
    A backend that knows itself by an internal name: it redirects to it, sets cookies for it
    and names its software.
    """

    isLeaf = True

    def __init__(self, own: str) -> None:
        super().__init__()
        self.own = own

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"X-Powered-By", b"PHP/5.6.40")
        if request.path == b"/start":
            request.setResponseCode(302)
            request.setHeader(b"Location", f"http://{self.own}/login?next=%2Fhome".encode())
            request.addCookie(b"sid", b"42", domain=self.own.split(":")[0].encode(), path=b"/")
            return b""
        if request.path == b"/page":
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            link = f'<a href="http://{self.own}/next">next</a>\n'.encode()
            return b"<html><body>\n" + link * 200 + b"</body></html>\n"
        if request.path == b"/elsewhere":
            request.setResponseCode(302)
            request.setHeader(b"Location", b"https://sso.example.net/login")
            return b""
        return b"page " + request.path


class AuthService(Resource):
    """Allows C{X-Token: good} as bob; sends everyone else to the login page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.getHeader(b"x-token") == b"good":
            request.setHeader(b"X-Auth-User", b"bob")
            request.setHeader(b"X-Auth-Groups", b"staff,ops")
            request.setHeader(b"X-Not-Copied", b"secret")
            return b""
        request.setResponseCode(302)
        request.setHeader(b"Location", b"https://sso.example.net/login")
        return b"log in first\n"


CONFIG = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:0:interface=127.0.0.1"

[[listener]]
name = "closed-tcp"
protocol = "tcp"
endpoint = "tcp:0:interface=127.0.0.1"
pool = "echo"
deny = ["127.0.0.0/8"]

[middleware.staff]
type = "basic"
htpasswd = "{htpasswd}"
realm = "Staff"

[middleware.api]
type = "jwt"
secret_file = "{secret}"
algorithms = ["HS256"]
audience = "orders"
issuer = "https://sso.example.net"

[middleware.sso]
type = "forward"
url = "http://127.0.0.1:{auth_port}/verify"
copy_headers = ["X-Auth-User", "X-Auth-Groups"]
identity_from = "X-Auth-User"

[middleware.quiet]
type = "hide_backend"

[middleware.frame]
type = "headers"
response = [{{ set = "X-Frame-Options", value = "DENY" }}]
request = [{{ remove = "X-Debug" }}, {{ set = "X-Env", value = "prod" }}]

[pool.echo]
backends = [{{ address = "127.0.0.1:{echo_port}" }}]

[pool.legacy]
backends = [{{ address = "localhost:{app_port}" }}]

[pool.aliased]
backends = [{{ address = "127.0.0.1:{aliased_port}" }}]

[[route]]
path_prefix = "/staff"
pool = "echo"
middlewares = ["staff"]

[[route]]
path_prefix = "/api"
pool = "echo"
middlewares = ["api"]
identity_header = "X-User"

[[route]]
path_prefix = "/sso"
pool = "echo"
middlewares = ["sso", "frame"]

[[route]]
path_prefix = "/intranet"
pool = "echo"
allow = ["10.0.0.0/8"]

[[route]]
path_prefix = "/app"
strip_prefix = true
pool = "legacy"
middlewares = ["quiet"]

[[route]]
path_prefix = "/aliased"
strip_prefix = true
pool = "aliased"
redirect_aliases = ["app-1.internal:8080"]

[[route]]
path_prefix = "/site"
strip_prefix = true
pool = "aliased"
substitute = [{{ search = "http://app-1.internal:8080/", replace = "/site/" }}]
compress = true
no_store = true

[[route]]
pool = "echo"
"""


class ConfiguredRouteTests(TestCase):
    """
    A proxy built from a configuration file with every kind of route middleware.
    """

    async def start(self) -> None:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        htpasswd = directory.child("staff.htpasswd")
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4))
        htpasswd.setContent(b"alice:" + hashed + b"\n")
        secret = directory.child("jwt.secret")
        secret.setContent(SECRET.encode() + b"\n")

        self.echo = BackendServer(reactor, "echo")
        echo_port = self.echo.start()
        self.addCleanup(self.echo.stop)
        ports = {}
        for name, resource in (
            ("auth", AuthService()),
            ("app", None),
            ("aliased", InternalApp("app-1.internal:8080")),
        ):
            listening = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            ports[name] = listening.getHost().port
            if name == "app":
                listening.factory.resource = InternalApp(f"localhost:{ports['app']}")
        text = CONFIG.format(
            htpasswd=htpasswd.path,
            secret=secret.path,
            auth_port=ports["auth"],
            echo_port=echo_port,
            app_port=ports["app"],
            aliased_port=ports["aliased"],
        )
        config = parse_config(tomllib.loads(text), "test.toml")
        self.service = build_service(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = await port_of(self.service, "web")
        self.tcp_port = await port_of(self.service, "closed-tcp")

    async def curl(self, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
        """Status, response headers (lower-case names) and body of a GET through the proxy."""
        result = await run_curl(reactor, "--include", *args, f"http://127.0.0.1:{self.port}{path}")
        self.assertEqual(result.code, 0, result.err)
        head, _, body = result.out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        return status, headers, body

    def backend_saw(self, body: bytes) -> dict[str, list[str]]:
        """The headers the echo backend received, by lower-case name."""
        seen: dict[str, list[str]] = {}
        for name, value in json.loads(body)["headers"]:
            seen.setdefault(name.lower(), []).append(value)
        return seen

    def started(self, test: Any) -> Deferred[None]:
        async def both() -> None:
            await self.start()
            await test()

        return Deferred.fromCoroutine(both())

    def test_basic(self) -> Deferred[None]:
        """
        Without or with wrong credentials the client gets a 401 challenge and the backend
        sees nothing; with the right ones the backend sees the user in the identity header,
        not the one the client tried to send.
        """

        async def test() -> None:
            before = len(self.echo.requests)
            status, headers, _ = await self.curl("/staff/report")
            self.assertEqual(status, 401)
            self.assertEqual(headers["www-authenticate"], 'Basic realm="Staff", charset="UTF-8"')
            status, _, _ = await self.curl("/staff/report", "--user", "alice:wrong")
            self.assertEqual(status, 401)
            self.assertEqual(len(self.echo.requests), before)
            status, _, body = await self.curl(
                "/staff/report",
                "--user",
                "alice:s3cret",
                "-H",
                "X-Authenticated-User: root",
                "-H",
                "x-authenticated-user: admin",
            )
            self.assertEqual(status, 200)
            self.assertEqual(self.backend_saw(body)["x-authenticated-user"], ["alice"])

        return self.started(test)

    def test_jwt(self) -> Deferred[None]:
        """
        A valid token passes with its subject in the route's identity header; an expired one,
        one for another audience, one signed with another key, or none, get 401.
        """

        def token(secret: str = SECRET, **claims: Any) -> str:
            now = int(time.time())
            payload = {
                "sub": "carol",
                "aud": "orders",
                "iss": "https://sso.example.net",
                "exp": now + 300,
                **claims,
            }
            return jwt.encode(payload, secret, algorithm="HS256")

        async def test() -> None:
            good = token()
            status, _, body = await self.curl(
                "/api/orders", "-H", f"Authorization: Bearer {good}", "-H", "X-User: mallory"
            )
            self.assertEqual(status, 200)
            self.assertEqual(self.backend_saw(body)["x-user"], ["carol"])
            before = len(self.echo.requests)
            for bad in (
                token(exp=int(time.time()) - 3600),
                token(aud="payroll"),
                token(secret="another-secret-that-is-also-long-enough-!!"),
            ):
                status, headers, _ = await self.curl(
                    "/api/orders", "-H", f"Authorization: Bearer {bad}"
                )
                self.assertEqual(status, 401)
                self.assertTrue(headers["www-authenticate"].startswith("Bearer"))
            status, _, _ = await self.curl("/api/orders")
            self.assertEqual(status, 401)
            self.assertEqual(len(self.echo.requests), before)

        return self.started(test)

    def test_forward_auth(self) -> Deferred[None]:
        """
        The auth service's verdict decides: a refusal (its redirect to a login page) reaches
        the client as it was; an approval lets the request through with the chosen headers
        copied onto it, the user in the identity header, and the route's header rules applied
        both ways.
        """

        async def test() -> None:
            before = len(self.echo.requests)
            status, headers, body = await self.curl("/sso/dashboard")
            self.assertEqual(status, 302)
            self.assertEqual(headers["location"], "https://sso.example.net/login")
            self.assertEqual(body, b"log in first\n")
            self.assertEqual(len(self.echo.requests), before)
            status, headers, body = await self.curl(
                "/sso/dashboard",
                "-H",
                "X-Token: good",
                "-H",
                "X-Auth-User: mallory",
                "-H",
                "X-Debug: 1",
            )
            self.assertEqual(status, 200)
            self.assertEqual(headers["x-frame-options"], "DENY")
            saw = self.backend_saw(body)
            self.assertEqual(saw["x-auth-user"], ["bob"])
            self.assertEqual(saw["x-auth-groups"], ["staff,ops"])
            self.assertEqual(saw["x-authenticated-user"], ["bob"])
            self.assertEqual(saw["x-env"], ["prod"])
            self.assertNotIn("x-not-copied", saw)
            self.assertNotIn("x-debug", saw)

        return self.started(test)

    def test_spoofed_identity_removed_without_authentication(self) -> Deferred[None]:
        """A route without any authentication still removes the identity header."""

        async def test() -> None:
            status, _, body = await self.curl("/public", "-H", "X-Authenticated-User: root")
            self.assertEqual(status, 200)
            self.assertNotIn("x-authenticated-user", self.backend_saw(body))

        return self.started(test)

    def test_ip_filters(self) -> Deferred[None]:
        """
        A route allowing only 10.0.0.0/8 answers 403 to a loopback client; a TCP listener
        denying loopback closes the connection without relaying anything.
        """

        async def test() -> None:
            before = len(self.echo.requests)
            status, _, _ = await self.curl("/intranet/wiki")
            self.assertEqual(status, 403)
            self.assertEqual(len(self.echo.requests), before)
            accepted = self.echo.accepted
            closed: Deferred[bytes] = Deferred()

            class Reader(Protocol):
                received = b""

                def dataReceived(self, data: bytes) -> None:
                    self.received += data

                def connectionLost(self, reason: object) -> None:
                    closed.callback(self.received)

            factory = ClientFactory.forProtocol(Reader)
            reactor.connectTCP("127.0.0.1", self.tcp_port, factory)
            received = await closed.addTimeout(10, reactor)
            self.assertEqual(received, b"")
            self.assertEqual(self.echo.accepted, accepted)

        return self.started(test)

    def test_redirect_and_cookie_from_internal_name(self) -> Deferred[None]:
        """
        A backend configured as C{localhost:PORT} redirects to its own name and sets a
        cookie for it: the client sees the public host, the route's prefix, and a cookie
        of the public host under the prefix; the backend's software names are hidden.
        """

        async def test() -> None:
            status, headers, _ = await self.curl("/app/start", "-H", "Host: www.example.com")
            self.assertEqual(status, 302)
            self.assertEqual(headers["location"], "http://www.example.com/app/login?next=%2Fhome")
            self.assertEqual(headers["set-cookie"], "sid=42; Path=/app")
            self.assertNotIn("x-powered-by", headers)
            self.assertNotIn("server", headers)
            status, headers, _ = await self.curl("/app/elsewhere", "-H", "Host: www.example.com")
            self.assertEqual(headers["location"], "https://sso.example.net/login")

        return self.started(test)

    def test_redirect_from_alias(self) -> Deferred[None]:
        """A backend redirecting to a name listed in C{redirect_aliases} comes out public."""

        async def test() -> None:
            status, headers, _ = await self.curl(
                "/aliased/start", "-H", "Host: www.example.com:8000"
            )
            self.assertEqual(status, 302)
            self.assertEqual(
                headers["location"], "http://www.example.com:8000/aliased/login?next=%2Fhome"
            )

        return self.started(test)

    def test_body_substituted_and_compressed(self) -> Deferred[None]:
        """
        A page linking to the backend's internal name arrives with the links made public,
        compressed for a client that asks for gzip (and decompressing to the same text), and
        marked never to be cached; a client that does not ask gets it plain.
        """

        async def test() -> None:
            expected = b"<html><body>\n" + b'<a href="/site/next">next</a>\n' * 200
            expected += b"</body></html>\n"
            status, headers, body = await self.curl("/site/page", "--compressed")
            self.assertEqual(status, 200)
            self.assertEqual(headers["content-encoding"], "gzip")
            self.assertEqual(headers["cache-control"], "no-store")
            self.assertEqual(body, expected)
            raw = await run_curl(
                reactor, "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{self.port}/site/page"
            )
            self.assertLess(len(raw.out), len(expected) // 4)
            self.assertEqual(zlib.decompress(raw.out, 16 + zlib.MAX_WBITS), expected)
            status, headers, body = await self.curl("/site/page")
            self.assertNotIn("content-encoding", headers)
            self.assertEqual(body, expected)

        return self.started(test)
