"""
Subclassing the proxy: a listener with rules of its own, written as methods of an
C{HTTPProxyFactory} subclass.

Run it (with twisted_rp installed, e.g. C{pip install .} from the checkout)::

    python examples/rewriting_subclass.py [PORT]

It starts a small application on a free port of 127.0.0.1 (standing for yours) and the proxy
on 127.0.0.1:PORT (default 8080) in front of it, which:

    - sends C{/old/...} to the application as C{/new/...};
    - tells the application the customer's plan, looked up by the C{X-API-Key} the client
      sent (C{X-Customer-Plan}; a client cannot set it itself);
    - answers C{/status} from a pool whose only server is not running, to show its branded
      error page (502 here; also used for 503 and 504)::

        curl -H 'X-API-Key: key-alice' http://127.0.0.1:8080/old/report
        curl -i http://127.0.0.1:8080/status

See C{docs/extending.rst}, "Subclassing the proxy".
"""

from __future__ import annotations

import sys
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.http.proxy import HTTPProxyFactory, reason_phrase
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import Backend, BackendPool

DEFAULT_PORT = 8080

#: What the proxy knows of its customers: API key -> plan.
PLANS = {"key-alice": b"gold", "key-bob": b"silver"}

ERROR_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{status} {reason} - Example Corp</title></head>
<body>
<h1>Example Corp</h1>
<p>Sorry, this page is not available right now ({status} {reason}).
Please try again in a few minutes.</p>
</body>
</html>
"""


class ExampleProxy(HTTPProxyFactory):
    """
    The listener's factory, with this site's rewriting and error pages.
    """

    def rewrite_request(self, request: ProxyRequest) -> ErrorResponse | None:
        # Called for every request, after the route's own rewriters, just before a backend
        # is picked; request.head is what the backend will get.
        head = request.head
        if head.target.startswith(b"/old/"):
            head.target = b"/new/" + head.target[len(b"/old/") :]
        key = head.headers.get(b"x-api-key")
        plan = PLANS.get(key.decode("latin-1")) if key is not None else None
        # set() replaces any X-Customer-Plan the client sent.
        head.headers.set(b"X-Customer-Plan", plan or b"none")
        return None

    def error_response(
        self, request: ProxyRequest | None, status: int, detail: str
    ) -> ErrorResponse:
        if status < 500:
            # Client errors keep the default page, which says what was wrong.
            return super().error_response(request, status, detail)
        # detail names the failure (and maybe a backend): log material, not for visitors.
        page = ERROR_PAGE.format(status=status, reason=reason_phrase(status).decode())
        return ErrorResponse(
            status,
            page.encode("utf-8"),
            Headers.of(
                (b"Content-Type", b"text/html; charset=utf-8"),
                (b"Retry-After", b"120"),
            ),
        )


class Application(Resource):
    """
    The application behind the proxy: says what it received.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        plan = request.getHeader(b"x-customer-plan") or b"?"
        return b"application: path=%s plan=%s\n" % (request.uri, plan)


@frozen
class Running:
    """
    What L{start} started.
    """

    application: IListeningPort
    proxy: IListeningPort

    @property
    def proxy_port(self) -> int:
        """The port the proxy listens on (useful when started on port 0)."""
        port: int = self.proxy.getHost().port  # type: ignore[attr-defined]
        return port

    def stop(self) -> Deferred[None]:
        """Stop listening: the proxy first, then the application."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await maybeDeferred(self.proxy.stopListening)
        await maybeDeferred(self.application.stopListening)


async def free_port(reactor: Any) -> int:
    """A port of 127.0.0.1 nothing listens on (as the stopped status server's)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Resource()))
    number: int = port.getHost().port
    await maybeDeferred(port.stopListening)
    return number


async def start(reactor: Any, port: int = DEFAULT_PORT) -> Running:
    """
    Start the application on a free port and the proxy on C{port} of 127.0.0.1.
    """
    application = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(Application())
    )
    app = BackendPool("app", [Backend("app-1", "127.0.0.1", application.getHost().port)])
    status = BackendPool("status", [Backend("status-1", "127.0.0.1", await free_port(reactor))])
    router = Router([Route(status, path_prefix="/status", name="status"), Route(app, name="app")])
    proxy = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
        ExampleProxy(reactor, router)
    )
    return Running(application, proxy)


async def run(reactor: Any, argv: tuple[str, ...]) -> None:
    running = await start(reactor, int(argv[0]) if argv else DEFAULT_PORT)
    print(f"Proxy listening on http://127.0.0.1:{running.proxy_port}/", flush=True)
    await Deferred()


def main(reactor: Any, *argv: str) -> Deferred[None]:
    """
    The program: C{argv} is the optional port.
    """
    return Deferred.fromCoroutine(run(reactor, argv))


if __name__ == "__main__":
    react(main, sys.argv[1:])
