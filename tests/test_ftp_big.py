"""
One gibibyte each way through the FTP proxy, in a child process whose memory is measured: curl
on one side, an in-process Twisted FTP server that generates or counts the bytes on the other
(nothing is stored on disk).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.ftpproc import CHUNK, FTPProxyProcess, FTPTestServer, generated_bytes
from tests.servers import CURL

GiB = 1 << 30
MiB = 1 << 20
#: The most the proxy process may ever have resident, start-up included.
PEAK_LIMIT = 80 * MiB
CURL_OPTIONS = f"{CURL} -q --silent --show-error --noproxy '*' --max-time 250"


def generated_sha256(length: int) -> str:
    """The SHA-256 of the first C{length} bytes of a generated file, a chunk at a time."""
    digest = hashlib.sha256()
    chunk = generated_bytes(0, CHUNK)
    whole, rest = divmod(length, CHUNK)
    for _ in range(whole):
        digest.update(chunk)
    digest.update(chunk[:rest])
    return digest.hexdigest()


class BigFTPTransferTests(TestCase):
    """A 1 GiB RETR and STOR through the proxy arrive complete; its memory stays flat."""

    timeout = 300

    async def start(self) -> tuple[FTPTestServer, FTPProxyProcess]:
        self.reactor: Any = global_reactor
        backend = FTPTestServer("big", {"big": GiB}, discard_uploads=True)
        backend.start(self.reactor)
        self.addCleanup(backend.stop)
        proxy = await FTPProxyProcess.start(self.reactor, [backend.port])
        self.addCleanup(proxy.stop)
        return backend, proxy

    async def shell(self, command: str) -> bytes:
        """Run C{command} with C{bash}; its output, after checking that it succeeded."""
        d = getProcessOutputAndValue(
            "/bin/bash", ["-c", command], env={"PATH": "/usr/bin:/bin"}, reactor=self.reactor
        )
        out, err, code = await d.addTimeout(280, self.reactor)
        self.assertEqual(code, 0, err)
        return out

    def assert_memory_bounded(self, proxy: FTPProxyProcess) -> None:
        peak = proxy.memory().peak
        self.assertLess(peak, PEAK_LIMIT, f"proxy VmHWM was {peak / MiB:.1f} MiB")

    async def test_one_gibibyte_retr(self) -> None:
        """curl downloads 1 GiB through the proxy, byte for byte."""
        backend, proxy = await self.start()
        out = await self.shell(
            "set -o pipefail; "
            f"{CURL_OPTIONS} --output - ftp://127.0.0.1:{proxy.port}/big | sha256sum"
        )
        self.assertEqual(out.split()[0].decode(), generated_sha256(GiB))
        [download] = backend.downloads
        self.assertEqual(download.sent, GiB)
        self.assert_memory_bounded(proxy)

    async def test_one_gibibyte_stor(self) -> None:
        """curl uploads 1 GiB of zeros from a pipe through the proxy; all of it arrives."""
        backend, proxy = await self.start()
        out = await self.shell(
            f"head -c {GiB} /dev/zero | {CURL_OPTIONS} --write-out '%{{size_upload}}' "
            f"--upload-file - ftp://127.0.0.1:{proxy.port}/upload.bin"
        )
        self.assertEqual(out, b"%d" % GiB)
        [upload] = backend.uploads
        self.assertEqual(upload.path, "upload.bin")
        self.assertTrue(upload.complete)
        self.assertEqual(upload.length, GiB)
        self.assertTrue(upload.all_zero)
        self.assert_memory_bounded(proxy)
