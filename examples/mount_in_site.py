"""
Mounting a backend pool in an existing C{twisted.web} site: the site keeps serving its own
pages, and everything under C{/legacy/} goes to the servers of an older application.

Run it (with twisted_rp installed, e.g. C{pip install .} from the checkout)::

    python examples/mount_in_site.py [PORT]

It starts the "legacy" application on two free ports of 127.0.0.1 (two servers of one
pool), and the site on 127.0.0.1:PORT (default 8080)::

    curl http://127.0.0.1:8080/                  # the site's own page
    curl http://127.0.0.1:8080/legacy/orders?id=7  # the legacy application, as /orders?id=7

The legacy servers get the client's C{Host} and C{X-Forwarded-For}, C{-Proto}, C{-Host},
C{-Port} and C{-Prefix} (here C{/legacy}, for links back through the site).  See
C{docs/extending.rst}, "Mounting in a twisted.web Site".
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
from twisted.web.static import Data

from twisted_rp.http.mount import ProxyResource
from twisted_rp.pool import Backend, BackendPool

DEFAULT_PORT = 8080
HOME = b"The site's own home page\n"


class LegacyApplication(Resource):
    """
    The older application, reached through the site; says what it received.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        prefix = request.getHeader(b"x-forwarded-prefix") or b""
        return b"legacy %s: path=%s prefix=%s\n" % (self.name, request.uri, prefix)


def build_site(pool: BackendPool, reactor: Any) -> tuple[Site, ProxyResource]:
    """
    The site: its own pages, and the pool under C{/legacy}.
    """
    root = Resource()
    root.putChild(b"", Data(HOME, "text/plain"))
    root.putChild(b"about", Data(b"About this site\n", "text/plain"))
    # Requests for /legacy and below reach a server of the pool, without the /legacy prefix.
    legacy = ProxyResource(pool, reactor, strip_prefix=True, response_timeout=30)
    root.putChild(b"legacy", legacy)
    return Site(root), legacy


@frozen
class Running:
    """
    What L{start} started.
    """

    legacy: list[IListeningPort]
    site: IListeningPort
    resource: ProxyResource

    @property
    def site_port(self) -> int:
        """The port the site listens on (useful when started on port 0)."""
        port: int = self.site.getHost().port  # type: ignore[attr-defined]
        return port

    def stop(self) -> Deferred[None]:
        """Stop the site, close its backend connections, stop the legacy servers."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await maybeDeferred(self.site.stopListening)
        await self.resource.close()
        for port in self.legacy:
            await maybeDeferred(port.stopListening)


async def start(reactor: Any, port: int = DEFAULT_PORT) -> Running:
    """
    Start two legacy servers on free ports and the site on C{port} of 127.0.0.1.
    """
    legacy = []
    backends = []
    for name in ("legacy-1", "legacy-2"):
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(LegacyApplication(name))
        )
        legacy.append(listening)
        backends.append(Backend(name, "127.0.0.1", listening.getHost().port))
    site, resource = build_site(BackendPool("legacy", backends), reactor)
    listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    return Running(legacy, listening, resource)


async def run(reactor: Any, argv: tuple[str, ...]) -> None:
    running = await start(reactor, int(argv[0]) if argv else DEFAULT_PORT)
    print(f"Site listening on http://127.0.0.1:{running.site_port}/", flush=True)
    await Deferred()


def main(reactor: Any, *argv: str) -> Deferred[None]:
    """
    The program: C{argv} is the optional port.
    """
    return Deferred.fromCoroutine(run(reactor, argv))


if __name__ == "__main__":
    react(main, sys.argv[1:])
