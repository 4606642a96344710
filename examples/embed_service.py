"""
Embedding twisted_rp's services in a Twisted application of your own: one service tree
holding your program's services and the proxy's pools, health checks and listeners, all
started and stopped together.

Run it (with twisted_rp installed, e.g. C{pip install .} from the checkout)::

    python examples/embed_service.py [PROXY_PORT [APP_PORT]]      # defaults: 8080 8081

or as a C{.tac} file under twistd, which also gives logging, daemonizing and a pid file::

    EMBED_PROXY_PORT=8080 EMBED_APP_PORT=8081 twistd -n -y examples/embed_service.py

The program's own service is a small web application on APP_PORT; the proxy on PROXY_PORT
balances over it (a pool of one server here), health-checking C{/health}.  The application's
C{/pools} page shows the proxy's view of its pools, since both live in one process::

    curl http://127.0.0.1:8080/
    curl http://127.0.0.1:8080/pools

The proxy's part is described by a configuration string, parsed by
C{twisted_rp.config.parse_config} and built piece by piece (L{proxy_services}) so that the
program keeps the pool objects; C{twisted_rp.service.build_service(config, reactor)} builds
the same services in one call.  See C{docs/embedding.rst}.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_rp.config import Config, parse_config
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.pool import BackendPool
from twisted_rp.service import build_health_checker, build_pools, build_router, open_access_log

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_PROXY_PORT = 8080
DEFAULT_APP_PORT = 8081
GREETING = b"Hello from the program's own application\n"

#: The proxy's part, in the configuration file's language (docs/configuration.rst).
PROXY_CONFIG = """
[[listener]]
name = "web"
protocol = "http"
endpoint = "tcp:{proxy_port}:interface=127.0.0.1"

[[route]]
pool = "app"

[[pool.app.backends]]
name = "app-1"
address = "127.0.0.1:{app_port}"

[pool.app.health]
kind = "http"
path = "/health"
interval = 2
timeout = 1

[log]
access = "combined"
"""


class WebApplication(Resource):
    """
    The program's own web application: a greeting, a health check, and the proxy's pools.
    """

    isLeaf = True

    def __init__(self, pools: Mapping[str, BackendPool]) -> None:
        super().__init__()
        self.pools = pools

    def render_GET(self, request: Request) -> bytes:
        if request.path == b"/pools":
            request.setHeader(b"Content-Type", b"application/json")
            state = {
                name: [
                    {"name": b.name, "healthy": b.healthy, "admin_state": b.admin_state}
                    for b in pool.backends()
                ]
                for name, pool in self.pools.items()
            }
            return json.dumps(state).encode() + b"\n"
        request.setHeader(b"Content-Type", b"text/plain")
        return b"ok\n" if request.path == b"/health" else GREETING


def proxy_services(config: Config, reactor: Any) -> tuple[MultiService, dict[str, BackendPool]]:
    """
    The proxy's services for C{config}'s HTTP listeners (health checkers first, then one
    listening service per listener, named after it) and its pools, by name.
    """
    services = MultiService()
    pools = build_pools(config, reactor)
    for pool_config in config.pools:
        checker = build_health_checker(pool_config, pools[pool_config.name], reactor)
        if checker is not None:
            checker.setServiceParent(services)
    access_log = open_access_log(config)
    for listener in config.listeners:
        factory = HTTPProxyFactory(
            reactor,
            build_router(config, listener, pools),
            config.proxy,
            scheme=listener.protocol,
            access_log=access_log,
        )
        listening = StreamServerEndpointService(
            serverFromString(reactor, listener.endpoint), factory
        )
        listening.setName(listener.name)
        listening.setServiceParent(services)
    return services, pools


def make_service(reactor: Any, proxy_port: int, app_port: int) -> MultiService:
    """
    The whole program as one service: the application, then the proxy.
    """
    text = PROXY_CONFIG.format(proxy_port=proxy_port, app_port=app_port)
    # The name stands for the file in error messages ("<embedded>: pool.app.health.path: ...").
    config = parse_config(tomllib.loads(text), "<embedded proxy configuration>")
    proxy, pools = proxy_services(config, reactor)
    proxy.setName("proxy")

    top = MultiService()
    app = StreamServerEndpointService(
        serverFromString(reactor, f"tcp:{app_port}:interface=127.0.0.1"),
        Site(WebApplication(pools)),
    )
    app.setName("application")
    app.setServiceParent(top)
    proxy.setServiceParent(top)
    return top


async def run(reactor: Any, argv: tuple[str, ...]) -> None:
    proxy_port = int(argv[0]) if argv else DEFAULT_PROXY_PORT
    app_port = int(argv[1]) if len(argv) > 1 else DEFAULT_APP_PORT
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    top = make_service(reactor, proxy_port, app_port)
    # What twistd does with an application's services: start now, stop at shutdown.
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    print(f"Proxy listening on http://127.0.0.1:{proxy_port}/", flush=True)
    await Deferred()


def main(reactor: Any, *argv: str) -> Deferred[None]:
    """
    The program: C{argv} are the optional proxy and application ports.
    """
    return Deferred.fromCoroutine(run(reactor, argv))


if __name__ == "__main__":
    react(main, sys.argv[1:])
elif __name__ == "builtins":
    # twistd -y runs this file without a module name, looking for "application".
    from twisted.internet import reactor as _reactor

    application = Application("embed-service")
    make_service(
        _reactor,
        int(os.environ.get("EMBED_PROXY_PORT", DEFAULT_PROXY_PORT)),
        int(os.environ.get("EMBED_APP_PORT", DEFAULT_APP_PORT)),
    ).setServiceParent(application)
