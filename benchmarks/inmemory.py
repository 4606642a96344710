"""
The proxy's own cost per request, with no sockets: one client connection and one pooled
backend connection on in-memory transports, a 101-byte response, the route a configuration
file without options gives (the default chain: identity header removal, redirect and
cookie mapping), or a bare route.

    python benchmarks/inmemory.py                 # microseconds per request (best of 8)
    python benchmarks/inmemory.py --bare          # a route without hooks
    python benchmarks/inmemory.py --callgrind     # instructions per request (valgrind)
    python benchmarks/inmemory.py --vary          # every head differs from the one before
    python benchmarks/inmemory.py --big           # a 1 MiB response, in 64 KiB reads

The same request and response over and over let the connections reuse their reading of the
last head (as for wrk, and for clients and backends that repeat their fields); C{--vary}
changes a field of each, the dearer case.

Wall-clock figures move with whatever else the machine does; the instruction count does not,
which makes it the figure to compare two versions of the code by.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:28090\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 00:42:56 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 101\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 101
)


class _Sink(StringTransport):
    """A transport that forgets what is written (the proxy's writes are the work measured)."""

    def write(self, data: bytes) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def one_exchange(bare: bool, vary: bool = False, big: bool = False) -> Any:
    """
    A function that proxies one request and its response in memory; with C{vary}, each head
    differs in one field from the one before; with C{big}, the response has a 1 MiB body and
    comes in reads of 64 KiB, as from a socket.
    """
    from twisted_rp.config import RouteConfig
    from twisted_rp.http.backend import BackendConnection
    from twisted_rp.http.proxy import HTTPProxyFactory
    from twisted_rp.http.routing import Route, Router
    from twisted_rp.pool import Backend, BackendPool
    from twisted_rp.service_routes import build_route

    backend = Backend("b0", "127.0.0.1", 9)
    pool = BackendPool("web", [backend])
    route = Route(pool) if bare else build_route(RouteConfig(pool="web"), pool, {})
    factory = HTTPProxyFactory(_ClockReactor(), Router([route]))
    front = factory.buildProtocol(None)
    front.makeConnection(
        _Sink(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5555),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
    )
    connection = BackendConnection(factory.connections, backend)
    connection.makeConnection(_Sink())
    factory.connections.keep(connection)

    def one() -> None:
        front.dataReceived(REQUEST)
        connection.dataReceived(RESPONSE)

    if big:
        body = bytes(range(256)) * 4096
        whole = RESPONSE[:-101].replace(b"Length: 101", b"Length: %d" % len(body)) + body
        reads = [whole[i : i + 65536] for i in range(0, len(whole), 65536)]

        def one() -> None:
            front.dataReceived(REQUEST)
            for data in reads:
                connection.dataReceived(data)

    elif vary:
        pairs = itertools.cycle(
            [
                (
                    REQUEST.replace(b"Accept: */*", b"Accept: */%d" % i),
                    RESPONSE.replace(b":56 GMT", b":%02d GMT" % i),
                )
                for i in range(2)
            ]
        )

        def one() -> None:
            request, response = next(pairs)
            front.dataReceived(request)
            connection.dataReceived(response)

    one()
    if (
        front.exchange is not None
        or connection.requests != 1
        or factory.connections.idle_count(backend) != 1
    ):
        raise RuntimeError("the request was not answered in one go")
    return one


class _ClockReactor(Clock):
    """Time for the proxy's timers; the pooled connection means it never connects."""

    def connectTCP(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the in-memory benchmark never connects")


def _run(count: int, bare: bool, vary: bool, big: bool) -> None:
    one = one_exchange(bare, vary, big)
    for _ in range(count):
        one()


def _instructions(count: int, bare: bool, vary: bool, big: bool) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = (
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                str(count),
            ]
            + (["--bare"] if bare else [])
            + (["--vary"] if vary else [])
            + (["--big"] if big else [])
        )
        # A fixed hash seed: string hashes decide dictionary probes, which move the count.
        env = dict(os.environ, PYTHONHASHSEED="0")
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        match = re.search(r"Collected : (\d+)", result.stderr)
        assert match is not None, result.stderr
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bare", action="store_true", help="a route without hooks")
    parser.add_argument("--vary", action="store_true", help="every head differs")
    parser.add_argument("--big", action="store_true", help="a 1 MiB response")
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.run is not None:
        _run(options.run, options.bare, options.vary, options.big)
        return
    if options.callgrind:
        # The difference between 2,000 and 0 requests leaves out start-up.
        flags = options.bare, options.vary, options.big
        start, more = _instructions(0, *flags), _instructions(2000, *flags)
        print(f"{(more - start) // 2000:,} instructions per request")
        return
    one = one_exchange(options.bare, options.vary, options.big)
    for _ in range(2000):
        one()
    best = float("inf")
    for _ in range(8):
        began = time.perf_counter()
        for _ in range(5000):
            one()
        best = min(best, (time.perf_counter() - began) / 5000)
    print(f"{best * 1e6:.1f} µs per request (best of 8 runs of 5,000)")


if __name__ == "__main__":
    main()
