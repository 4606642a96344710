"""
Body substitution and gzip through the proxy on loopback sockets, with curl as the client: the
bytes curl decodes are the backend's (substituted), and a 200 MiB text stream leaves the memory
of a proxy child process flat.

Run as a program (C{python -m tests.test_rewrite_body_proxy BACKEND_PORT}), it is that child: a
proxy with L{Substitute} and L{Gzip} on its route, listening on a port the system picks.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.proxyproc import ProxyProcess, begin_logging
from tests.servers import CURL, run_curl
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.rewrite.body import Gzip, Substitute

MiB = 1 << 20
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKEND_URL = b"http://backend.internal:8001"
PUBLIC_URL = b"https://www.example.com"
_LINE = b'<li><a href="' + BACKEND_URL + b'/item">item</a> and some filler text here</li>\n'
#: One block of every page: whole lines, so a search string never spans two blocks.
BLOCK = _LINE * (64 * 1024 // len(_LINE))


def expected_page(blocks: int, substituted: bool) -> tuple[int, str]:
    """The length and SHA-256 of C{blocks} blocks, as the backend sends them or substituted."""
    block = BLOCK.replace(BACKEND_URL, PUBLIC_URL) if substituted else BLOCK
    digest = hashlib.sha256()
    for _ in range(blocks):
        digest.update(block)
    return len(block) * blocks, digest.hexdigest()


def filters() -> list[Any]:
    return [Substitute([(BACKEND_URL, PUBLIC_URL)]), Gzip()]


class _PageProducer:
    """Writes C{blocks} blocks chunked as fast as the transport drains, then the last chunk."""

    def __init__(self, transport: Any, blocks: int, done: Any) -> None:
        self._transport = transport
        self._remaining = blocks
        self._done = done
        self._paused = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not self._paused and self._remaining >= 0:
            self._call = global_reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        for _ in range(16):
            if self._paused or self._remaining < 0:
                return
            if not self._remaining:
                self._remaining = -1
                self._transport.unregisterProducer()
                self._transport.write(b"0\r\n\r\n")
                self._done()
                return
            self._remaining -= 1
            self._transport.writeSequence([b"%x\r\n" % len(BLOCK), BLOCK, b"\r\n"])
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._remaining = -1
        if self._call is not None:
            self._call.cancel()
            self._call = None


class PageBackend(Protocol):
    """
    Answers C{GET /page?blocks=N} with N blocks of HTML, chunked and generated as the
    connection drains; records each request's C{Accept-Encoding}.
    """

    transport: Any
    factory: PageFactory

    def connectionMade(self) -> None:
        self._buffer = b""
        self._busy = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def _next(self) -> None:
        if self._busy or b"\r\n\r\n" not in self._buffer:
            return
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")[1].decode()
        accept = [
            v
            for n, _, v in (x.partition(b":") for x in lines[1:])
            if n.lower() == b"accept-encoding"
        ]
        self.factory.accept_encodings.append(accept[0].strip() if accept else None)
        blocks = int(parse_qs(urlsplit(target).query)["blocks"][0])
        self._busy = True
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        _PageProducer(self.transport, blocks, self._request_done).start()

    def _request_done(self) -> None:
        self._busy = False
        self._next()


class PageFactory(Factory):
    protocol = PageBackend
    noisy = False

    def __init__(self) -> None:
        self.accept_encodings: list[bytes | None] = []


class LoopbackTests(TestCase):
    """curl through an in-process proxy, in front of an in-process backend."""

    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor
        self.backend = PageFactory()
        port = self.reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = BackendPool("pages", [Backend("b1", "127.0.0.1", port.getHost().port)])
        proxy = HTTPProxyFactory(
            self.reactor, Router([Route(pool, response_body_filters=filters())])
        )
        listening = self.reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(proxy.connections.close_idle)
        self.url = f"http://127.0.0.1:{listening.getHost().port}/page?blocks=3"

    async def test_curl_compressed_gets_the_substituted_page(self) -> None:
        result = await run_curl(
            self.reactor, "--compressed", "--dump-header", "/dev/stderr", self.url
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"content-encoding: gzip", result.err.lower())
        self.assertIn(b"vary: accept-encoding", result.err.lower())
        self.assertEqual(result.out, BLOCK.replace(BACKEND_URL, PUBLIC_URL) * 3)
        # The backend was asked for a body the substitution can read.
        self.assertEqual(self.backend.accept_encodings, [None])

    async def test_compressed_size(self) -> None:
        result = await run_curl(
            self.reactor,
            "--compressed",
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_download}",
            self.url,
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertLess(int(result.out), len(BLOCK) * 3 // 20)

    async def test_plain_client_gets_the_substituted_page_unencoded(self) -> None:
        result = await run_curl(self.reactor, "--dump-header", "/dev/stderr", self.url)
        self.assertEqual(result.code, 0, result.err)
        self.assertNotIn(b"content-encoding", result.err.lower())
        self.assertEqual(result.out, BLOCK.replace(BACKEND_URL, PUBLIC_URL) * 3)


class BigStreamTests(TestCase):
    """200 MiB of HTML through a proxy child process: its memory does not grow with it."""

    timeout = 300
    blocks = 200 * MiB // len(BLOCK)

    async def start(self) -> ProxyProcess:
        self.reactor: Any = global_reactor
        backend = PageFactory()
        port = self.reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        process = ProxyProcess(self.reactor)
        listening = process._listening
        assert listening is not None
        env = dict(os.environ, PYTHONPATH=_REPO, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "tests.test_rewrite_body_proxy", str(port.getHost().port)]
        process.pid = self.reactor.spawnProcess(
            process, sys.executable, argv, env=env, path=_REPO
        ).pid
        self.addCleanup(process.stop)
        process.port = await listening.addTimeout(30, self.reactor)
        # Everything the proxy imports and builds for a filtered response, before measuring.
        warm = await run_curl(
            self.reactor, "--compressed", "-o", "/dev/null", f"{self.url(process, 2)}"
        )
        self.assertEqual(warm.code, 0, warm.err)
        self.baseline = process.memory().rss
        return process

    def url(self, process: ProxyProcess, blocks: int) -> str:
        return f"http://127.0.0.1:{process.port}/page?blocks={blocks}"

    async def fetch(self, process: ProxyProcess, *options: str) -> tuple[int, str]:
        # The client reads at a bounded rate: the proxy has to hold the backend back.
        command = (
            f"{CURL} -q --silent --show-error --noproxy '*' --max-time 250 {' '.join(options)} "
            f"'{self.url(process, self.blocks)}' | tee >(wc -c >&2) | sha256sum"
        )
        d = getProcessOutputAndValue(
            "/bin/bash", ["-c", command], env={"PATH": "/usr/bin:/bin"}, reactor=self.reactor
        )
        out, err, code = await d.addTimeout(280, self.reactor)
        self.assertEqual(code, 0, err)
        return int(err.split()[-1]), out.split()[0].decode()

    def assert_flat(self, process: ProxyProcess) -> None:
        grown = process.memory().peak - self.baseline
        self.assertLess(grown, 16 * MiB, f"the proxy grew by {grown / MiB:.1f} MiB")

    async def test_substituted_stream(self) -> None:
        process = await self.start()
        got = await self.fetch(process, "--limit-rate", "80M")
        self.assertEqual(got, expected_page(self.blocks, substituted=True))
        self.assert_flat(process)

    async def test_compressed_stream(self) -> None:
        process = await self.start()
        got = await self.fetch(process, "--compressed")
        self.assertEqual(got, expected_page(self.blocks, substituted=True))
        self.assert_flat(process)


def main(backend_port: int) -> None:
    """The proxy child of L{BigStreamTests}: filters on, until SIGTERM."""
    begin_logging()
    reactor: Any = global_reactor
    pool = BackendPool("pages", [Backend("b1", "127.0.0.1", backend_port)])
    factory = HTTPProxyFactory(reactor, Router([Route(pool, response_body_filters=filters())]))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
