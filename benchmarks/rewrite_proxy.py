"""
The HTTP proxy with rewriting switched on, for C{benchmarks/rewrite_bench.sh}.

    python benchmarks/rewrite_proxy.py MODE --listen 127.0.0.1:28190 --backend 127.0.0.1:28180

MODE is one of:

- C{plain}: no rewriting (the reference);
- C{headers}: a chain of ten header rules, five on requests and five on responses;
- C{gzip}: L{Gzip} with its defaults (level 1);
- C{gzip-6}: L{Gzip} at level 6;
- C{substitute}: L{Substitute} with one rule (the backend's URL for the public one);
- C{substitute-gzip}: both, as a site moved behind the proxy would use them.

The proxy is built in-process from a route (as C{docs/embedding.rst} shows) with the default
settings, so the modes differ only by what is installed on the route.

With C{--in-memory N PAGE} it instead proxies N requests for the file PAGE (served as
C{text/html}, in 16 KiB reads) on one keep-alive connection, without sockets, and exits: run
under C{valgrind --tool=callgrind} for an instruction count per request that other work on the
machine does not disturb.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.rewrite import Add, HeaderRules, Remove, Replace, Set
from twisted_rp.rewrite.body import Gzip, Substitute

MODES = ("plain", "headers", "gzip", "gzip-6", "substitute", "substitute-gzip")


def header_rules() -> HeaderRules:
    """Ten rules a site might really use: five each way."""
    return HeaderRules(
        request=[
            Remove(b"X-Debug"),
            Set(b"X-Env", b"prod"),
            Add(b"X-Client-Tier", b"web"),
            Replace(b"User-Agent", rb"\s+", b" "),
            Set(b"X-Forwarded-Prefix", b"/"),
        ],
        response=[
            Remove(b"Server"),
            Remove(b"X-Powered-By"),
            Set(b"X-Frame-Options", b"DENY"),
            Set(b"X-Content-Type-Options", b"nosniff"),
            Set(b"Referrer-Policy", b"same-origin"),
        ],
    )


def route(mode: str, pool: BackendPool) -> Route:
    if mode == "plain":
        return Route(pool)
    if mode == "headers":
        rules = header_rules()
        return Route(pool, request_rewriters=(rules,), response_rewriters=(rules,))
    filters: list[Any] = []
    if mode.startswith("substitute"):
        filters.append(Substitute([(b"http://backend.internal", b"https://www.example.com")]))
    if mode.endswith("gzip"):
        filters.append(Gzip())
    if mode == "gzip-6":
        filters.append(Gzip(level=6))
    return Route(pool, response_body_filters=tuple(filters))


def in_memory(mode: str, count: int, page: bytes) -> None:
    """Proxy C{count} requests for C{page} through the factory, on in-memory transports."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    class Transport(StringTransport):
        def setTcpNoDelay(self, enabled: bool) -> None:
            pass

    reactor = MemoryReactorClock()
    pool = BackendPool("bench", [Backend("b1", "127.0.0.1", 8001)])
    factory = HTTPProxyFactory(reactor, Router([route(mode, pool)]), send_now=False)
    client = Transport(
        peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
    )
    front = factory.buildProtocol(client.getPeer())
    front.makeConnection(client)
    request = (
        b"GET /page.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: bench/1.0\r\n"
        b"Accept: text/html\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n"
    )
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
        b'Content-Length: %d\r\nETag: "64f1-5e3"\r\n\r\n' % len(page)
    )
    reads = [head + page[:16384]] + [page[i : i + 16384] for i in range(16384, len(page), 16384)]
    front.dataReceived(request)
    _, _, connecting, _, _ = reactor.tcpClients[0]
    backend = connecting.buildProtocol(None)
    backend.makeConnection(Transport())
    for _ in range(count):
        for data in reads:
            backend.dataReceived(data)
        received = client.value()
        compressed = b"\r\ncontent-encoding: gzip\r\n" in received.lower()
        if not received.startswith(b"HTTP/1.1 200 ") or compressed != ("gzip" in mode):
            raise SystemExit(f"unexpected answer: {received[:300]!r}")
        client.clear()
        backend.transport.clear()
        front.dataReceived(request)


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--listen", type=address, default=("127.0.0.1", 28190))
    parser.add_argument("--backend", type=address, default=("127.0.0.1", 28180))
    parser.add_argument("--in-memory", nargs=2, metavar=("N", "PAGE"))
    args = parser.parse_args()
    if args.in_memory:
        count, page = args.in_memory
        with open(page, "rb") as f:
            in_memory(args.mode, int(count), f.read())
        return
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    reactor: Any = global_reactor
    host, port = args.backend
    pool = BackendPool("bench", [Backend("b1", host, port)])
    factory = HTTPProxyFactory(reactor, Router([route(args.mode, pool)]))
    listen_host, listen_port = args.listen
    reactor.listenTCP(listen_port, factory, backlog=4096, interface=listen_host)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    reactor.run()


if __name__ == "__main__":
    main()
