"""
End-to-end HTTPS: the HTTP proxy behind L{twisted_rp.tls.ServerTLS} on loopback, between real
TLS clients (curl, C{openssl s_client}) and real backends (twisted.web), plain and over TLS.

Certificates are made with trustme for each test, in a temporary directory.  Everything
listens on 127.0.0.1 on a port the system picks; every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trustme
from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.servers import wait_until
from twisted_rp.http.backend import BackendConnection, BackendConnections
from twisted_rp.http.message import AccessRecord
from twisted_rp.http.proxy import HTTPProxyFactory, HTTPProxyProtocol
from twisted_rp.http.redirect import HTTPSRedirectFactory
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import IAccessLog
from twisted_rp.pool import Backend, BackendPool
from twisted_rp.settings import ProxySettings
from twisted_rp.tls import CertificateFiles, ServerTLS, client_tls

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")

#: What clients forge to pose as holders of a verified certificate.
FORGED = (
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("Client-Cert", ":Zm9v:"),
    ("Client-Cert-Chain", ":Zm9v:"),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("X-SSL-Client-Fingerprint", "00" * 32),
)
CLIENT_CERT_FIELDS = [name.lower() for name, _ in FORGED]


# Certificates


class PKI:
    """
    Three unrelated trustme CAs (servers, clients, and one nobody trusts) and the PEM files of
    what they issue, in a temporary directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True)
        self.ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.untrusted_ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.client_ca_file = self._write("client-ca.pem", self.client_ca.cert_pem.bytes())
        self.untrusted_ca_file = self._write("untrusted-ca.pem", self.untrusted_ca.cert_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def issue(self, name: str, ca: trustme.CA | None = None, label: str = "") -> CertificateFiles:
        """
        A certificate for C{name} (its SAN and common name) and its key, as files.

        @param label: distinguishes the files of certificates for the same name.
        """
        leaf = (ca or self.ca).issue_cert(name, common_name=name)
        stem = f"{name}{label}"
        cert = self._write(f"{stem}.crt", b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key = self._write(f"{stem}.key", leaf.private_key_pem.bytes())
        return CertificateFiles(cert=cert, key=key)

    def server_options(self, name: str, ca: trustme.CA | None = None) -> Any:
        """Twisted's own server TLS options for a certificate for C{name}."""
        leaf = (ca or self.ca).issue_cert(name, common_name=name)
        return PrivateCertificate.loadPEM(leaf.private_key_and_cert_chain_pem.bytes()).options()


def certificate_of(files: CertificateFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(files.cert).read_bytes())


# Backends


@frozen
class SeenRequest:
    """
    A request as a backend received it.

    @ivar connection: which connection accepted by the backend (from 1) carried it.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    connection: int

    def header(self, name: str) -> list[str]:
        """Every value of header C{name} (case-insensitive)."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


class _EchoResource(Resource):
    isLeaf = True

    def __init__(self, backend: EchoBackend) -> None:
        super().__init__()
        self._backend = backend

    def render(self, request: Request) -> bytes:
        channel: Any = request.channel
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        )
        self._backend.requests.append(
            SeenRequest(
                request.method.decode("latin-1"),
                request.uri.decode("latin-1"),
                headers,
                channel.number,
            )
        )
        if request.args.get(b"sts"):
            request.setHeader(b"Strict-Transport-Security", b"max-age=60")
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"connection": channel.number}).encode()


class _CountedChannel(HTTPChannel):
    number = 0
    backend: EchoBackend

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.backend.open_channels.discard(self)


class EchoBackend(Site):
    """
    A twisted.web server that records every request and answers with a little JSON; with
    C{?sts=1} it sets its own C{Strict-Transport-Security}.

    @ivar accepted: connections accepted so far (TLS connections, for a TLS backend).
    """

    # A plain HTTPChannel (HTTP/1.1 only, no HTTP/2 negotiation), so that its loss is seen.
    protocol = _CountedChannel  # type: ignore[assignment]

    def __init__(self, reactor: Any) -> None:
        super().__init__(_EchoResource(self), reactor=reactor)
        self.requests: list[SeenRequest] = []
        self.accepted = 0
        self.open_channels: set[_CountedChannel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel: Any = super().buildProtocol(addr)
        self.accepted += 1
        channel.number = self.accepted
        channel.backend = self
        self.open_channels.add(channel)
        return channel


# The proxy


class _TrackedConnections(BackendConnections):
    """Backend connections, remembered until they close."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, reactor)
        self.open: set[BackendConnection] = set()

    def connect(self, backend: Backend) -> Deferred[BackendConnection]:
        def opened(connection: BackendConnection) -> BackendConnection:
            self.open.add(connection)
            return connection

        return super().connect(backend).addCallback(opened)

    def forget(self, connection: BackendConnection) -> None:
        super().forget(connection)
        self.open.discard(connection)


class _TrackedProtocol(HTTPProxyProtocol):
    factory: _TrackingFactory

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.open_clients.discard(self)


class _TrackingFactory(HTTPProxyFactory):
    """The proxy, remembering its client connections until they close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_clients: set[HTTPProxyProtocol] = set()

    def buildProtocol(self, addr: Any) -> HTTPProxyProtocol:
        protocol = _TrackedProtocol(self)
        self.open_clients.add(protocol)
        return protocol


@implementer(IAccessLog)
class RecordingAccessLog:
    """Keeps every access record."""

    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


@frozen
class HTTPResult:
    """What curl got: the exit code, the final response's status and headers, and stderr."""

    code: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    err: str

    def header(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def _parse_curl_output(code: int, out: bytes, err: bytes) -> HTTPResult:
    # "-D -" puts each response head (of every redirect followed) before the body.
    status, body = 0, out
    headers: list[tuple[str, str]] = []
    while body.startswith(b"HTTP/"):
        head, _, body = body.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status, headers = int(lines[0].split(" ")[1]), []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return HTTPResult(code, status, tuple(headers), body, err.decode("utf-8", "replace"))


class _Collector(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        # s_client reads what to send from stdin; closed, it ends after the handshake.
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code: int | None = 0
        if not reason.check(ProcessDone):
            # None when a signal ended the process.
            code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)


class HTTPSTestCase(TestCase):
    """
    Starts backends and proxies (HTTPS, plain, redirecting) for a test and stops them after it.
    """

    timeout = 60

    def setUp(self) -> None:
        self.reactor: Any = global_reactor
        self.pki = PKI(self.mktemp())
        self.www = self.pki.issue("www.test")
        self.api = self.pki.issue("api.test")
        self.client = self.pki.issue("alice.client.test", ca=self.pki.client_ca)

    # Servers

    def backend(self, tls_options: Any = None) -> tuple[EchoBackend, int]:
        """A backend over plain TCP, or over TLS with the given server options."""
        backend = EchoBackend(self.reactor)
        if tls_options is None:
            listener = self.reactor.listenTCP(0, backend, interface="127.0.0.1")
        else:
            listener = self.reactor.listenSSL(0, backend, tls_options, interface="127.0.0.1")

        async def stop() -> None:
            await listener.stopListening()
            for channel in list(backend.open_channels):
                transport: Any = channel.transport
                transport.abortConnection()
            await wait_until(
                self.reactor, lambda: not backend.open_channels, 5, "backend connections to close"
            )

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port: int = listener.getHost().port
        return backend, port

    def proxy(
        self,
        backends: Sequence[Backend],
        server_tls: ServerTLS | None = None,
        *,
        hsts: str | None = None,
        access_log: IAccessLog | None = None,
    ) -> int:
        """
        The proxy in front of C{backends}: HTTPS with C{server_tls}, else plain HTTP.  Client
        certificate fields go to backends whenever the listener asks for certificates.
        """
        connections = _TrackedConnections(self.reactor)
        factory = _TrackingFactory(
            self.reactor,
            Router([Route(BackendPool("app", backends))]),
            ProxySettings(),
            scheme="http" if server_tls is None else "https",
            access_log=access_log,
            connections=connections,
            client_cert_headers=server_tls is not None and server_tls.client_certs != "none",
            hsts=hsts,
        )
        wrapped: Any = factory
        if server_tls is not None:
            wrapped = TLSMemoryBIOFactory(server_tls, False, factory)
        listener = self.reactor.listenTCP(0, wrapped, interface="127.0.0.1")

        async def stop() -> None:
            clients = factory.open_clients
            try:
                await wait_until(self.reactor, lambda: not clients, 5, "clients to disconnect")
            finally:
                for client in list(clients):
                    client.transport.abortConnection()
                await wait_until(self.reactor, lambda: not clients, 5, "clients to close")
                # Stopping the factory closes the pooled backend connections.
                await listener.stopListening()
                for connection in list(connections.open):
                    connection.abort()
                await wait_until(
                    self.reactor, lambda: not connections.open, 5, "backend connections to close"
                )

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port: int = listener.getHost().port
        return port

    def https_proxy(
        self,
        backend_port: int,
        *,
        client_certs: str = "none",
        hsts: str | None = None,
        access_log: IAccessLog | None = None,
    ) -> int:
        server_tls = ServerTLS(
            [self.www, self.api],
            client_certs=client_certs,
            client_ca_files=[self.pki.client_ca_file] if client_certs != "none" else [],
        )
        return self.proxy(
            [Backend("app", "127.0.0.1", backend_port)],
            server_tls,
            hsts=hsts,
            access_log=access_log,
        )

    # Clients

    async def run_program(self, *argv: str) -> tuple[int, bytes, bytes]:
        """Run a program; its exit code, stdout and stderr."""
        collector = _Collector()
        self.reactor.spawnProcess(
            collector, argv[0], list(argv), env={"PATH": os.environ.get("PATH", "")}
        )
        code = await collector.ended.addTimeout(30, self.reactor)
        return code, collector.out, collector.err

    async def curl(self, url: str, *args: str, resolve: Sequence[int] = ()) -> HTTPResult:
        """
        curl C{url}, trusting the test CA; C{www.test} and C{api.test} are 127.0.0.1 on the
        ports in C{resolve}.
        """
        if CURL is None:
            raise self.skipTest("curl is not installed")
        names = [
            arg
            for port in resolve
            for name in ("www.test", "api.test")
            for arg in ("--resolve", f"{name}:{port}:127.0.0.1")
        ]
        code, out, err = await self.run_program(
            CURL,
            "-q",
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--cacert",
            self.pki.ca_file,
            "-D",
            "-",
            *names,
            *args,
            url,
        )
        return _parse_curl_output(code, out, err)

    async def get(
        self, port: int, path: str = "/", *args: str, host: str = "www.test"
    ) -> HTTPResult:
        """GET C{path} from the HTTPS proxy on C{port} as C{host}."""
        return await self.curl(f"https://{host}:{port}{path}", *args, resolve=[port])

    async def s_client(self, port: int, *args: str) -> tuple[int, str]:
        if OPENSSL is None:
            raise self.skipTest("openssl is not installed")
        code, out, err = await self.run_program(
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            self.pki.ca_file,
            "-verify_return_error",
            *args,
        )
        return code, (out + err).decode("utf-8", "replace")

    def client_args(self) -> list[str]:
        return ["--cert", self.client.cert, "--key", self.client.key]

    def assertVerifiedCertificate(self, request: SeenRequest) -> None:
        certificate = certificate_of(self.client)
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(request.header("x-ssl-client-verify"), ["SUCCESS"])
        self.assertEqual(
            request.header("x-ssl-client-s-dn"), [certificate.subject.rfc4514_string()]
        )
        self.assertIn("CN=alice.client.test", request.header("x-ssl-client-s-dn")[0])
        self.assertEqual(
            request.header("x-ssl-client-fingerprint"), [hashlib.sha256(der).hexdigest()]
        )
        self.assertEqual(request.header("client-cert"), [f":{base64.b64encode(der).decode()}:"])


class SNITests(HTTPSTestCase):
    """
    The certificate a client gets is the one for the name it asked for (SNI), the first one
    when it asked for none.
    """

    async def test_openssl(self) -> None:
        _backend, backend_port = self.backend()
        port = self.https_proxy(backend_port)
        for name in ("api.test", "www.test"):
            code, output = await self.s_client(port, "-servername", name, "-verify_hostname", name)
            self.assertEqual(code, 0, output)
            self.assertIn(f"CN = {name}", output)
            self.assertIn("Verify return code: 0 (ok)", output)
        code, output = await self.s_client(port, "-noservername")
        self.assertEqual(code, 0, output)
        self.assertIn("CN = www.test", output)
        self.assertNotIn("CN = api.test", output)

    async def test_curl(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port)
        for name in ("api.test", "www.test"):
            # curl checks the certificate against the CA and the name (it would exit 60).
            result = await self.get(port, f"/{name}", "--verbose", host=name)
            self.assertEqual((result.code, result.status), (0, 200), result.err)
            self.assertIn(f"CN={name}", result.err)
        self.assertEqual([r.target for r in backend.requests], ["/api.test", "/www.test"])
        self.assertEqual(
            [r.header("host") for r in backend.requests],
            [[f"api.test:{port}"], [f"www.test:{port}"]],
        )


class VersionTests(HTTPSTestCase):
    """
    TLS 1.2 and 1.3 only; the access log says which version and cipher a request used.
    """

    async def test_tls11_refused(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port)
        # SECLEVEL=0, or OpenSSL 3 would refuse to offer TLS 1.1 itself.
        code, output = await self.s_client(
            port, "-servername", "www.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
        )
        self.assertNotEqual(code, 0, output)
        self.assertIn("alert protocol version", output)
        result = await self.get(
            port, "/", "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0"
        )
        self.assertNotEqual(result.code, 0)
        self.assertEqual(backend.requests, [])

    async def test_tls12_and_tls13_logged(self) -> None:
        _backend, backend_port = self.backend()
        access_log = RecordingAccessLog()
        verifyObject(IAccessLog, access_log)
        port = self.https_proxy(backend_port, access_log=access_log)
        result = await self.get(
            port,
            "/twelve",
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        )
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        result = await self.get(
            port, "/thirteen", "--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"
        )
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        await wait_until(self.reactor, lambda: len(access_log.records) == 2, what="2 records")
        self.assertEqual(
            [(r.target, r.tls_version, r.tls_cipher) for r in access_log.records],
            [
                ("/twelve", "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                ("/thirteen", "TLSv1.3", "TLS_AES_128_GCM_SHA256"),
            ],
        )

    async def test_plain_http_logs_no_tls(self) -> None:
        _backend, backend_port = self.backend()
        access_log = RecordingAccessLog()
        port = self.proxy([Backend("app", "127.0.0.1", backend_port)], access_log=access_log)
        result = await self.curl(f"http://127.0.0.1:{port}/")
        self.assertEqual(result.status, 200, result.err)
        await wait_until(self.reactor, lambda: len(access_log.records) == 1, what="a record")
        record = access_log.records[0]
        self.assertEqual((record.tls_version, record.tls_cipher), (None, None))


class ForwardingTests(HTTPSTestCase):
    """
    Backends learn the client used HTTPS; HSTS is added to responses when configured.
    """

    async def test_proto_https(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port)
        result = await self.get(
            port, "/", "-H", "X-Forwarded-Proto: http", "-H", "Forwarded: proto=http"
        )
        self.assertEqual(result.status, 200, result.err)
        [request] = backend.requests
        self.assertEqual(request.header("x-forwarded-proto"), ["https"])
        [forwarded] = request.header("forwarded")
        self.assertIn("proto=https", forwarded)
        self.assertNotIn("proto=http;", forwarded + ";")
        # No HSTS unless configured.
        self.assertEqual(result.header("strict-transport-security"), [])

    async def test_hsts(self) -> None:
        _backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, hsts="max-age=31536000; includeSubDomains")
        result = await self.get(port, "/")
        self.assertEqual(result.status, 200, result.err)
        self.assertEqual(
            result.header("strict-transport-security"), ["max-age=31536000; includeSubDomains"]
        )
        # The backend's own value is kept, and not doubled.
        result = await self.get(port, "/?sts=1")
        self.assertEqual(result.status, 200, result.err)
        self.assertEqual(result.header("strict-transport-security"), ["max-age=60"])


class ClientCertificateTests(HTTPSTestCase):
    """
    Client certificates: required ones keep out clients without one; backends are told of a
    verified certificate.
    """

    async def test_required_without_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="required")
        for version in ("1.2", "1.3"):
            result = await self.get(port, "/", f"--tlsv{version}", "--tls-max", version)
            # A handshake failure (1.2), or an alert right after it (1.3): no response.
            self.assertNotEqual(result.code, 0, result)
            self.assertIn("alert", result.err)
            self.assertEqual(result.status, 0)
        self.assertEqual(backend.requests, [])

    async def test_required_with_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="required")
        result = await self.get(port, "/", *self.client_args())
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        [request] = backend.requests
        self.assertVerifiedCertificate(request)

    async def test_required_with_untrusted_certificate(self) -> None:
        """
        A certificate from a CA the listener does not trust is as good as none.
        """
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="required")
        stranger = self.pki.issue("mallory.client.test", ca=self.pki.untrusted_ca)
        result = await self.get(port, "/", "--cert", stranger.cert, "--key", stranger.key)
        self.assertNotEqual(result.code, 0, result)
        self.assertEqual(backend.requests, [])

    async def test_optional_without_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="optional")
        result = await self.get(port, "/")
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        [request] = backend.requests
        self.assertEqual(request.header("x-ssl-client-verify"), ["NONE"])
        for name in CLIENT_CERT_FIELDS:
            if name != "x-ssl-client-verify":
                self.assertEqual(request.header(name), [], name)

    async def test_optional_with_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="optional")
        result = await self.get(port, "/", *self.client_args())
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        [request] = backend.requests
        self.assertVerifiedCertificate(request)


class ForgedClientCertificateTests(HTTPSTestCase):
    """
    Client-certificate fields a client sends never reach a backend: only the proxy's own.
    """

    def forged_args(self) -> list[str]:
        args = []
        for name, value in FORGED:
            args.extend(["-H", f"{name}: {value}"])
        return args

    async def test_plain_http(self) -> None:
        backend, backend_port = self.backend()
        port = self.proxy([Backend("app", "127.0.0.1", backend_port)])
        result = await self.curl(f"http://127.0.0.1:{port}/", *self.forged_args())
        self.assertEqual(result.status, 200, result.err)
        [request] = backend.requests
        for name in CLIENT_CERT_FIELDS:
            self.assertEqual(request.header(name), [], name)

    async def test_https_without_client_certificates(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port)
        result = await self.get(port, "/", *self.forged_args())
        self.assertEqual(result.status, 200, result.err)
        [request] = backend.requests
        for name in CLIENT_CERT_FIELDS:
            self.assertEqual(request.header(name), [], name)

    async def test_https_optional_no_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="optional")
        result = await self.get(port, "/", *self.forged_args())
        self.assertEqual(result.status, 200, result.err)
        [request] = backend.requests
        self.assertEqual(request.header("x-ssl-client-verify"), ["NONE"])
        for name in CLIENT_CERT_FIELDS:
            if name != "x-ssl-client-verify":
                self.assertEqual(request.header(name), [], name)

    async def test_https_with_certificate(self) -> None:
        backend, backend_port = self.backend()
        port = self.https_proxy(backend_port, client_certs="required")
        result = await self.get(port, "/", *self.client_args(), *self.forged_args())
        self.assertEqual(result.status, 200, result.err)
        [request] = backend.requests
        self.assertVerifiedCertificate(request)
        self.assertEqual(request.header("client-cert-chain"), [])


class BackendTLSTests(HTTPSTestCase):
    """
    HTTPS backends: certificate and name verification, and pooled connections.
    """

    def tls_backend(self, **client: Any) -> tuple[EchoBackend, int]:
        """
        An HTTPS backend with a certificate for C{backend.test}, behind an HTTPS proxy whose
        client TLS settings are C{client}.
        """
        backend, backend_port = self.backend(self.pki.server_options("backend.test"))
        tls = client_tls(client.pop("server_name", "backend.test"), **client)
        port = self.proxy(
            [Backend("tls-app", "127.0.0.1", backend_port, tls=tls)],
            ServerTLS([self.www]),
        )
        return backend, port

    async def assertRefused(self, backend: EchoBackend, port: int, *details: str) -> None:
        """
        The client gets a 502, nothing reaches the backend, and a log line says why.
        """
        with capturedLogs() as events:
            result = await self.get(port, "/")
        self.assertEqual((result.code, result.status), (0, 502), result.err)
        self.assertEqual(backend.requests, [])
        lines = [formatEvent(event) for event in events]
        self.assertTrue(
            [
                line
                for line in lines
                if "tls-app" in line
                and ("certificate" in line.lower() or "verif" in line.lower())
                and all(detail in line for detail in details)
            ],
            f"no log line about the backend's certificate in {lines}",
        )

    async def test_verified(self) -> None:
        backend, port = self.tls_backend(ca_files=[self.pki.ca_file])
        result = await self.get(port, "/verified")
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        [request] = backend.requests
        self.assertEqual(request.target, "/verified")

    async def test_wrong_hostname(self) -> None:
        backend, port = self.tls_backend(ca_files=[self.pki.ca_file], server_name="other.test")
        await self.assertRefused(backend, port, "other.test")

    async def test_untrusted_ca(self) -> None:
        backend, port = self.tls_backend(ca_files=[self.pki.untrusted_ca_file])
        await self.assertRefused(backend, port)

    async def test_unverified(self) -> None:
        backend, port = self.tls_backend(server_name="other.test", verify=False)
        result = await self.get(port, "/")
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        self.assertEqual(len(backend.requests), 1)

    async def test_pooled(self) -> None:
        """
        Requests of different clients share one pooled TLS connection to the backend.
        """
        backend, port = self.tls_backend(ca_files=[self.pki.ca_file])
        for path in ("/one", "/two"):
            result = await self.get(port, path)
            self.assertEqual((result.code, result.status), (0, 200), result.err)
        self.assertEqual(
            [(r.target, r.connection) for r in backend.requests], [("/one", 1), ("/two", 1)]
        )
        self.assertEqual(backend.accepted, 1)


class RedirectTests(HTTPSTestCase):
    """
    A plain-HTTP listener that only sends clients to the HTTPS one.
    """

    def redirector(self, https_port: int) -> int:
        listener = self.reactor.listenTCP(
            0, HTTPSRedirectFactory(self.reactor, https_port), interface="127.0.0.1"
        )
        self.addCleanup(listener.stopListening)
        port: int = listener.getHost().port
        return port

    async def test_get(self) -> None:
        port = self.redirector(8443)
        result = await self.curl(f"http://www.test:{port}/x?y", resolve=[port])
        self.assertEqual((result.code, result.status), (0, 301), result.err)
        self.assertEqual(result.header("location"), ["https://www.test:8443/x?y"])

    async def test_post(self) -> None:
        port = self.redirector(8443)
        result = await self.curl(f"http://www.test:{port}/x?y", "--data", "a=b", resolve=[port])
        self.assertEqual((result.code, result.status), (0, 308), result.err)
        self.assertEqual(result.header("location"), ["https://www.test:8443/x?y"])

    async def test_followed(self) -> None:
        """
        A client that follows the redirect reaches the backend over HTTPS, with its body.
        """
        backend, backend_port = self.backend()
        https_port = self.https_proxy(backend_port)
        port = self.redirector(https_port)
        result = await self.curl(
            f"http://www.test:{port}/form?q=1",
            "--location",
            "--data",
            "a=b",
            resolve=[port, https_port],
        )
        self.assertEqual((result.code, result.status), (0, 200), result.err)
        [request] = backend.requests
        self.assertEqual((request.method, request.target), ("POST", "/form?q=1"))
        self.assertEqual(request.header("x-forwarded-proto"), ["https"])
        self.assertEqual(request.header("content-length"), ["3"])
