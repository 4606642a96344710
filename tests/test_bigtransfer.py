"""
One gibibyte each way through the proxy, in a child process whose memory is measured: curl
on one side, an in-process backend that generates or counts the bytes on the other.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.proxyproc import ProxyProcess
from tests.servers import CURL, BackendServer, run_curl

GiB = 1 << 30
MiB = 1 << 20
#: The most the proxy process may ever have resident, start-up included.
PEAK_LIMIT = 80 * MiB


class BigTransferTests(TestCase):
    """Streams far larger than the proxy's memory limit arrive complete."""

    timeout = 300

    async def start(self) -> tuple[BackendServer, ProxyProcess]:
        self.reactor: Any = global_reactor
        backend = BackendServer(self.reactor)
        backend.start()
        self.addCleanup(backend.stop)
        proxy = await ProxyProcess.start(self.reactor, [backend.port])
        self.addCleanup(proxy.stop)
        return backend, proxy

    def assert_memory_bounded(self, proxy: ProxyProcess) -> None:
        peak = proxy.memory().peak
        self.assertLess(peak, PEAK_LIMIT, f"proxy VmHWM was {peak / MiB:.1f} MiB")

    async def test_one_gibibyte_download(self) -> None:
        backend, proxy = await self.start()
        result = await run_curl(
            self.reactor,
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{size_download}",
            f"http://127.0.0.1:{proxy.port}/stream?bytes={GiB}",
            timeout=280,
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out, b"200 %d" % GiB)
        stream = backend.connections[0].last_stream
        assert stream is not None
        self.assertEqual(stream.sent, GiB)
        self.assert_memory_bounded(proxy)

    async def test_one_gibibyte_upload(self) -> None:
        backend, proxy = await self.start()
        # curl reads the body from a pipe, so it sends it chunked, of unknown length.
        command = (
            f"head -c {GiB} /dev/zero | {CURL} -q --silent --show-error --noproxy '*' "
            f"--max-time 270 --upload-file - http://127.0.0.1:{proxy.port}/upload"
        )
        d = getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env={"PATH": "/usr/bin:/bin"}, reactor=self.reactor
        )
        out, err, code = await d.addTimeout(280, self.reactor)
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual(answer["method"], "PUT")
        self.assertEqual(answer["body_length"], GiB)
        [request] = backend.requests
        self.assertTrue(request.complete)
        self.assertEqual(request.body_length, GiB)
        self.assert_memory_bounded(proxy)
