"""
Embedding twisted_rp in a Twisted program of your own, without twistd.

Run it (with twisted_rp installed, e.g. C{pip install .} from the checkout)::

    python examples/embed.py [PORT]

It starts a small web application on a free port of 127.0.0.1, standing for the program you
already have, and the reverse proxy on 127.0.0.1:PORT (default 8080) in front of it::

    curl -i http://127.0.0.1:8080/

The proxy is assembled by hand from the same objects the configuration file describes: a
backend pool, a route, a router and the listener's factory.  See C{docs/embedding.rst}.
"""

from __future__ import annotations

import sys
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_rp.http.accesslog import AccessLog
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.settings import ProxySettings, Timeouts

DEFAULT_PORT = 8080
GREETING = b"Hello from the application behind the proxy\n"


class Application(Resource):
    """
    The program's own web application; the proxy forwards every request to it.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return GREETING


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


async def start(reactor: Any, port: int = DEFAULT_PORT) -> Running:
    """
    Start the application on a free port and the proxy on C{port} of 127.0.0.1.
    """
    application = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(Application())
    )

    # A pool of one backend: the application just started.  A pool may hold many backends,
    # and several routes and listeners may share it.
    backend = Backend("app-1", "127.0.0.1", application.getHost().port)
    pool = BackendPool("app", [backend])

    # Every request, for any host and path, goes to that pool.
    router = Router([Route(pool, name="everything")])

    # The listener: settings as in the configuration file's [timeouts], [limits] and [headers].
    settings = ProxySettings(timeouts=Timeouts(backend_connect=2.0))
    factory = HTTPProxyFactory(
        reactor, router, settings, access_log=AccessLog.to_logger("combined")
    )
    proxy = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    return Running(application, proxy)


async def run(reactor: Any, argv: tuple[str, ...]) -> None:
    port = int(argv[0]) if argv else DEFAULT_PORT
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    running = await start(reactor, port)
    print(f"Proxy listening on http://127.0.0.1:{running.proxy_port}/", flush=True)
    # The rest of your program runs here; this one just waits for Ctrl-C.
    await Deferred()


def main(reactor: Any, *argv: str) -> Deferred[None]:
    """
    The program: C{argv} is the optional port.
    """
    return Deferred.fromCoroutine(run(reactor, argv))


if __name__ == "__main__":
    react(main, sys.argv[1:])
