"""
Tests for L{twisted_rp.tls}: certificate loading errors, and real TLS handshakes on loopback
against L{ServerTLS} with Twisted clients, C{openssl s_client} and curl.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorProcess,
    IReactorTCP,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.tls import (
    INSECURE_WARNING,
    MOZILLA_INTERMEDIATE_CIPHERS,
    CertificateFiles,
    ServerTLS,
    TLSConfigError,
    client_cert_info,
    client_tls,
    negotiated,
    reload_on_sighup,
    select_certificate,
)

reactor: Any = _reactor
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


def write_leaf(
    directory: Path, name: str, leaf: trustme.LeafCert, *, combined: bool = False
) -> CertificateFiles:
    """
    Write a trustme leaf certificate (with its chain) and key as PEM files.
    """
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    if combined:
        cert.write_bytes(chain + leaf.private_key_pem.bytes())
        return CertificateFiles(cert=str(cert), key=str(cert))
    cert.write_bytes(chain)
    key.write_bytes(leaf.private_key_pem.bytes())
    return CertificateFiles(cert=str(cert), key=str(key))


def write_ca(directory: Path, name: str, ca: trustme.CA) -> str:
    path = directory / f"{name}.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


def signed_leaf(
    ca: trustme.CA, name: str, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[bytes, bytes]:
    """
    A certificate for C{name} with the given validity, signed by C{ca}: (cert PEM, key PEM).
    """
    ca_key: Any = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class PKI:
    """
    A CA, a second (untrusted) CA, and files for certificates they issue, in a temp directory.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True)
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.ca_file = write_ca(self.directory, "ca", self.ca)
        self.other_ca_file = write_ca(self.directory, "other-ca", self.other_ca)

    def issue(self, name: str, *identities: str, ca: trustme.CA | None = None) -> CertificateFiles:
        leaf = (ca or self.ca).issue_cert(*(identities or (name,)), common_name=name)
        return write_leaf(self.directory, name, leaf)


def common_name(certificate: x509.Certificate) -> str:
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


class ErrorsTests(SynchronousTestCase):
    """
    Unusable files are reported at start-up with the file and the problem.
    """

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.files = self.pki.issue("alpha.test")

    def assertConfigError(self, callable: Callable[[], object], *fragments: str) -> str:
        error = self.assertRaises(TLSConfigError, callable)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return str(error)

    def test_valid(self) -> None:
        server = ServerTLS([self.files])
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, server))

    def test_missing_certificate(self) -> None:
        missing = str(self.pki.directory / "nope.crt")
        self.assertConfigError(
            lambda: ServerTLS([CertificateFiles(cert=missing, key=self.files.key)]),
            missing,
            "not found",
        )

    def test_missing_key(self) -> None:
        missing = str(self.pki.directory / "nope.key")
        self.assertConfigError(
            lambda: ServerTLS([CertificateFiles(cert=self.files.cert, key=missing)]),
            missing,
            "not found",
        )

    def test_key_mismatch(self) -> None:
        other = self.pki.issue("beta.test")
        self.assertConfigError(
            lambda: ServerTLS([CertificateFiles(cert=self.files.cert, key=other.key)]),
            other.key,
            "does not match",
            self.files.cert,
        )

    def test_unreadable_certificate(self) -> None:
        Path(self.files.cert).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n")
        self.assertConfigError(lambda: ServerTLS([self.files]), self.files.cert, "unreadable PEM")

    def test_unreadable_key(self) -> None:
        Path(self.files.key).write_bytes(b"garbage")
        self.assertConfigError(lambda: ServerTLS([self.files]), self.files.key, "unreadable PEM")

    def test_encrypted_key(self) -> None:
        key = serialization.load_pem_private_key(Path(self.files.key).read_bytes(), None)
        Path(self.files.key).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        self.assertConfigError(lambda: ServerTLS([self.files]), self.files.key, "encrypted")

    def test_combined_file(self) -> None:
        """
        The key may sit in the certificate file.
        """
        leaf = self.pki.ca.issue_cert("combined.test")
        files = write_leaf(self.pki.directory, "combined", leaf, combined=True)
        ServerTLS([files])

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = signed_leaf(
            self.pki.ca, "old.test", now - datetime.timedelta(days=30), now - datetime.timedelta(1)
        )
        cert_path, key_path = self.pki.directory / "old.crt", self.pki.directory / "old.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        self.assertConfigError(
            lambda: ServerTLS([CertificateFiles(str(cert_path), str(key_path))]),
            str(cert_path),
            "expired",
        )

    def test_expired_by_clock(self) -> None:
        """
        Expiry is judged by the injected clock.
        """
        clock = Clock()
        clock.advance(time.time() + 2000 * 365 * 86400)
        self.assertConfigError(lambda: ServerTLS([self.files], clock=clock), "expired")

    def test_near_expiry_warning(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = signed_leaf(
            self.pki.ca, "soon.test", now - datetime.timedelta(days=30), now + datetime.timedelta(5)
        )
        cert_path, key_path = self.pki.directory / "soon.crt", self.pki.directory / "soon.key"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        with capturedLogs() as events:
            ServerTLS([CertificateFiles(str(cert_path), str(key_path))])
        messages = [formatEvent(event) for event in events]
        self.assertTrue(
            any(str(cert_path) in m and "expires in 4 days" in m for m in messages), messages
        )
        with capturedLogs() as events:
            ServerTLS([self.files])
        self.assertFalse([e for e in events if "expires" in formatEvent(e)])

    def test_missing_chain(self) -> None:
        missing = str(self.pki.directory / "chain.pem")
        self.assertConfigError(
            lambda: ServerTLS([CertificateFiles(self.files.cert, self.files.key, missing)]),
            missing,
            "chain",
        )

    def test_bad_ca_file(self) -> None:
        garbage = self.pki.directory / "garbage.pem"
        garbage.write_bytes(b"nothing to see")
        self.assertConfigError(
            lambda: ServerTLS(
                [self.files], client_certs="required", client_ca_files=[str(garbage)]
            ),
            str(garbage),
            "CA",
        )
        self.assertConfigError(
            lambda: client_tls("alpha.test", ca_files=[str(garbage)]), str(garbage), "CA"
        )

    def test_settings(self) -> None:
        self.assertConfigError(
            lambda: ServerTLS([self.files], client_certs="sometimes"), "client_certs"
        )
        self.assertConfigError(
            lambda: ServerTLS([self.files], client_certs="required"), "client_ca_files"
        )
        self.assertConfigError(lambda: ServerTLS([self.files], min_version="SSLv3"), "min_version")
        self.assertConfigError(
            lambda: ServerTLS([self.files], min_version="TLSv1.3", max_version="TLSv1.2"),
            "max_version",
        )
        self.assertConfigError(lambda: ServerTLS([self.files], ciphers="NOPE"), "ciphers")
        self.assertConfigError(lambda: ServerTLS([self.files], curves=["nocurve"]), "curves")
        self.assertConfigError(lambda: ServerTLS([]), "no certificate")

    def test_client_tls_files(self) -> None:
        missing = str(self.pki.directory / "client.key")
        self.assertConfigError(
            lambda: client_tls(
                "alpha.test", client_cert=CertificateFiles(self.files.cert, missing)
            ),
            missing,
        )
        creator = client_tls("alpha.test", ca_files=[self.pki.ca_file], client_cert=self.files)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, creator))
        self.assertTrue(
            verifyObject(IOpenSSLClientConnectionCreator, client_tls("alpha.test", verify=False))
        )

    def test_insecure_warning(self) -> None:
        self.assertIn("{server_name}", INSECURE_WARNING)


class SelectCertificateTests(SynchronousTestCase):
    """
    L{select_certificate} picks by SAN, wildcard, then common name, else the default.
    """

    names: Sequence[tuple[Sequence[str], str | None]] = [
        (("default.test",), "default.test"),
        (("*.wild.test",), "wild"),
        (("exact.wild.test", "alpha.test"), "alpha.test"),
        ((), "legacy.test"),
        (("san.test",), "cn-ignored.test"),
    ]

    def test_choices(self) -> None:
        for server_name, expected in [
            ("default.test", 0),
            ("alpha.test", 2),
            ("ALPHA.test.", 2),
            ("exact.wild.test", 2),
            ("x.wild.test", 1),
            ("a.b.wild.test", 0),
            ("wild.test", 0),
            ("legacy.test", 3),
            ("cn-ignored.test", 0),
            ("unknown.test", 0),
        ]:
            self.assertEqual(select_certificate(server_name, self.names), expected, server_name)


@implementer(IHandshakeListener)
class EchoServer(Protocol):
    """
    Echoes; remembers its TLS transport once the handshake is done.
    """

    factory: EchoFactory

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def handshakeCompleted(self) -> None:
        self.factory.handshakes.append(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"GET "):
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            self.transport.loseConnection()
        else:
            self.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class EchoFactory(Factory):
    protocol = EchoServer

    def __init__(self) -> None:
        self.connections: list[EchoServer] = []
        self.handshakes: list[Any] = []


@implementer(IHandshakeListener)
class EchoClient(Protocol):
    """
    Sends data and waits for the echo.
    """

    def __init__(self) -> None:
        self.handshake: Deferred[EchoClient] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._waiting: Deferred[bytes] | None = None
        self._expected = b""
        self._received = b""

    def handshakeCompleted(self) -> None:
        self.handshake.callback(self)

    def send(self, data: bytes) -> Deferred[bytes]:
        self._waiting, self._expected, self._received = Deferred(), data, b""
        self.transport.write(data)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if self._waiting is not None and self._received == self._expected:
            waiting, self._waiting = self._waiting, None
            waiting.callback(self._received)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(reason)
        self.reason = reason
        self.lost.callback(None)

    def peer_certificate(self) -> x509.Certificate:
        certificate = self.transport.getHandle().get_peer_certificate(as_cryptography=True)
        assert certificate is not None
        return certificate


class OutputCollector(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int, str]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.ended.callback((code, self.output.decode("utf-8", "replace")))


class LoopbackTests(TestCase):
    """
    Real handshakes on 127.0.0.1 against an echo server behind L{ServerTLS}.
    """

    def setUp(self) -> None:
        self.pki = PKI(self.mktemp())
        self.alpha = self.pki.issue("alpha.test")
        self.beta = self.pki.issue("beta.test")
        self.wild = self.pki.issue("wild", "*.wild.test")
        self.client_files = self.pki.issue("client.test")
        self.clients: list[EchoClient] = []

    def listen(self, server_tls: ServerTLS) -> tuple[int, EchoFactory]:
        factory = EchoFactory()
        tcp: IReactorTCP = reactor
        port = tcp.listenTCP(
            0, TLSMemoryBIOFactory(server_tls, False, factory), interface="127.0.0.1"
        )

        async def close() -> None:
            for client in self.clients:
                if not client.lost.called:
                    client.transport.abortConnection()
            await DeferredList([c.lost for c in self.clients])
            await DeferredList([c.lost for c in factory.connections])
            await port.stopListening()

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return port.getHost().port, factory

    async def connect(self, port: int, creator: Any) -> EchoClient:
        client = EchoClient()
        self.clients.append(client)
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, client)
        await client.send(b"ping")
        return client

    async def connect_fails(self, port: int, creator: Any) -> Failure:
        try:
            await self.connect(port, creator)
        except Exception:
            return Failure()
        self.fail("the connection worked")

    async def run_process(self, *args: str) -> tuple[int, str]:
        process: IReactorProcess = reactor
        collector = OutputCollector()
        process.spawnProcess(
            collector, args[0], list(args), env={"PATH": os.environ.get("PATH", "")}
        )
        return await collector.ended

    async def s_client(self, port: int, *args: str) -> tuple[int, str]:
        if OPENSSL is None:
            raise self.skipTest("openssl is not installed")
        return await self.run_process(
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            self.pki.ca_file,
            "-verify_return_error",
            *args,
        )

    def trusting(self, name: str, **kwargs: Any) -> Any:
        return client_tls(name, ca_files=[self.pki.ca_file], **kwargs)

    async def test_sni_with_client_tls(self) -> None:
        port, _ = self.listen(ServerTLS([self.alpha, self.beta, self.wild]))
        for name, expected in [
            ("alpha.test", "alpha.test"),
            ("beta.test", "beta.test"),
            ("x.wild.test", "wild"),
        ]:
            client = await self.connect(port, self.trusting(name))
            self.assertEqual(common_name(client.peer_certificate()), expected)

    async def test_sni_with_openssl(self) -> None:
        port, _ = self.listen(ServerTLS([self.alpha, self.beta, self.wild]))
        code, output = await self.s_client(port, "-servername", "beta.test")
        self.assertEqual(code, 0, output)
        self.assertIn("CN = beta.test", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        code, output = await self.s_client(port, "-servername", "y.wild.test")
        self.assertIn("CN = wild", output)
        # Without SNI, or with an unknown name: the first certificate.
        code, output = await self.s_client(port, "-noservername")
        self.assertEqual(code, 0, output)
        self.assertIn("CN = alpha.test", output)
        code, output = await self.s_client(port, "-servername", "unknown.test")
        self.assertIn("CN = alpha.test", output)

    async def test_sni_with_curl(self) -> None:
        if CURL is None:
            raise self.skipTest("curl is not installed")
        port, _ = self.listen(ServerTLS([self.alpha, self.beta]))
        code, output = await self.run_process(
            CURL,
            "-sSv",
            "--cacert",
            self.pki.ca_file,
            "--resolve",
            f"beta.test:{port}:127.0.0.1",
            f"https://beta.test:{port}/",
        )
        self.assertEqual(code, 0, output)
        self.assertIn("CN=beta.test", output)
        self.assertIn("ALPN: server accepted http/1.1", output)

    async def test_tls11_refused(self) -> None:
        port, factory = self.listen(ServerTLS([self.alpha]))
        # SECLEVEL=0 so the client really offers TLS 1.1: OpenSSL 3 refuses it itself otherwise.
        code, output = await self.s_client(
            port, "-servername", "alpha.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"
        )
        self.assertNotEqual(code, 0, output)
        self.assertIn("alert protocol version", output)
        self.assertEqual(factory.handshakes, [])
        code, output = await self.s_client(port, "-servername", "alpha.test", "-tls1_2")
        self.assertEqual(code, 0, output)

    async def test_alpn(self) -> None:
        port, _ = self.listen(ServerTLS([self.alpha]))
        creator = optionsForClientTLS(
            "alpha.test",
            trustRoot=_trust_root(self.pki.ca),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        client = await self.connect(port, creator)
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")

    async def test_negotiated(self) -> None:
        port, factory = self.listen(ServerTLS([self.alpha]))
        client = await self.connect(port, self.trusting("alpha.test"))
        self.assertEqual(negotiated(factory.handshakes[0]), ("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
        self.assertEqual(negotiated(client.transport)[0], "TLSv1.3")

    async def test_tls12_server_cipher_order(self) -> None:
        """
        With TLS 1.2 the server's Mozilla order wins over the client's preference.
        """
        port, factory = self.listen(ServerTLS([self.alpha], max_version="TLSv1.2"))
        await self.connect(port, self.trusting("alpha.test"))
        version, cipher = negotiated(factory.handshakes[0])
        self.assertEqual(version, "TLSv1.2")
        self.assertEqual(cipher, MOZILLA_INTERMEDIATE_CIPHERS.split(":")[0])

    async def test_required_client_cert(self) -> None:
        port, factory = self.listen(
            ServerTLS([self.alpha], client_certs="required", client_ca_files=[self.pki.ca_file])
        )
        await self.connect_fails(port, self.trusting("alpha.test"))
        self.assertEqual(factory.handshakes, [])

        await self.connect(port, self.trusting("alpha.test", client_cert=self.client_files))
        info = client_cert_info(factory.handshakes[0])
        self.assertEqual(info.verify, "SUCCESS")
        assert info.subject_dn is not None and info.der is not None
        self.assertIn("CN=client.test", info.subject_dn)
        expected = x509.load_pem_x509_certificate(Path(self.client_files.cert).read_bytes())
        der = expected.public_bytes(serialization.Encoding.DER)
        self.assertEqual(info.der, der)
        self.assertEqual(info.fingerprint_sha256, hashlib.sha256(der).hexdigest())

    async def test_required_client_cert_with_openssl(self) -> None:
        """
        With TLS 1.2 the client learns within the handshake whether the server accepted it (with
        TLS 1.3 the server's verdict comes after the client's side of the handshake is done).
        """
        port, _ = self.listen(
            ServerTLS([self.alpha], client_certs="required", client_ca_files=[self.pki.ca_file])
        )
        code, output = await self.s_client(port, "-servername", "alpha.test", "-tls1_2")
        self.assertNotEqual(code, 0, output)
        self.assertIn("Acceptable client certificate CA names", output)
        self.assertIn("alert handshake failure", output)
        code, output = await self.s_client(
            port,
            "-servername",
            "alpha.test",
            "-tls1_2",
            "-cert",
            self.client_files.cert,
            "-key",
            self.client_files.key,
        )
        self.assertEqual(code, 0, output)
        self.assertIn("Verify return code: 0 (ok)", output)

    async def test_untrusted_client_cert(self) -> None:
        """
        A certificate from another CA fails the handshake even when certificates are optional.
        """
        port, factory = self.listen(
            ServerTLS([self.alpha], client_certs="optional", client_ca_files=[self.pki.ca_file])
        )
        stranger = self.pki.issue("stranger.test", ca=self.pki.other_ca)
        await self.connect_fails(port, self.trusting("alpha.test", client_cert=stranger))
        self.assertEqual(factory.handshakes, [])

    async def test_optional_client_cert(self) -> None:
        port, factory = self.listen(
            ServerTLS([self.alpha], client_certs="optional", client_ca_files=[self.pki.ca_file])
        )
        await self.connect(port, self.trusting("alpha.test"))
        info = client_cert_info(factory.handshakes[0])
        self.assertEqual((info.verify, info.subject_dn, info.der), ("NONE", None, None))
        await self.connect(port, self.trusting("alpha.test", client_cert=self.client_files))
        self.assertEqual(client_cert_info(factory.handshakes[1]).verify, "SUCCESS")

    async def test_no_client_cert_requested(self) -> None:
        port, factory = self.listen(ServerTLS([self.alpha]))
        await self.connect(port, self.trusting("alpha.test", client_cert=self.client_files))
        self.assertEqual(client_cert_info(factory.handshakes[0]).verify, "NONE")

    async def test_reload(self) -> None:
        """
        A reload serves a new certificate to new connections; open ones keep working.
        """
        server_tls = ServerTLS([self.alpha])
        port, _ = self.listen(server_tls)
        old = await self.connect(port, self.trusting("alpha.test"))
        old_serial = old.peer_certificate().serial_number

        write_leaf(self.pki.directory, "alpha.test", self.pki.ca.issue_cert("alpha.test"))
        server_tls.reload()

        new = await self.connect(port, self.trusting("alpha.test"))
        self.assertNotEqual(new.peer_certificate().serial_number, old_serial)
        self.assertEqual(await old.send(b"still there"), b"still there")

    async def test_reload_broken(self) -> None:
        server_tls = ServerTLS([self.alpha])
        port, _ = self.listen(server_tls)
        first = await self.connect(port, self.trusting("alpha.test"))
        serial = first.peer_certificate().serial_number

        # A new certificate whose key has not been written yet.
        write_leaf(self.pki.directory, "replacement", self.pki.ca.issue_cert("alpha.test"))
        os.replace(self.pki.directory / "replacement.crt", self.alpha.cert)
        error = self.assertRaises(TLSConfigError, server_tls.reload)
        self.assertIn("does not match", str(error))
        Path(self.alpha.key).write_bytes(b"truncated")
        error = self.assertRaises(TLSConfigError, server_tls.reload)
        self.assertIn(self.alpha.key, str(error))

        again = await self.connect(port, self.trusting("alpha.test"))
        self.assertEqual(again.peer_certificate().serial_number, serial)

    async def test_watch(self) -> None:
        clock = Clock()
        clock.advance(time.time())
        server_tls = ServerTLS([self.alpha], clock=clock)
        port, _ = self.listen(server_tls)
        watcher = server_tls.watch(interval=5)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        serial = (await self.connect(port, self.trusting("alpha.test"))).peer_certificate()
        original = serial.serial_number

        # A broken update is logged and the certificate in use kept.
        Path(self.alpha.key).write_bytes(b"half written")
        with capturedLogs() as events:
            clock.advance(5)
        self.assertTrue(any("reload failed" in formatEvent(e) for e in events))
        client = await self.connect(port, self.trusting("alpha.test"))
        self.assertEqual(client.peer_certificate().serial_number, original)

        write_leaf(self.pki.directory, "alpha.test", self.pki.ca.issue_cert("alpha.test"))
        clock.advance(5)
        client = await self.connect(port, self.trusting("alpha.test"))
        self.assertNotEqual(client.peer_certificate().serial_number, original)

    async def test_session_resumption_and_ticket_rotation(self) -> None:
        clock = Clock()
        clock.advance(time.time())
        port, _ = self.listen(ServerTLS([self.alpha], clock=clock))
        session = str(self.pki.directory / "session.pem")
        name = ("-servername", "alpha.test", "-tls1_2")
        code, output = await self.s_client(port, *name, "-sess_out", session)
        self.assertEqual(code, 0, output)
        code, output = await self.s_client(port, *name, "-sess_in", session)
        self.assertIn("Reused, TLSv1.2", output)

        clock.advance(12 * 60 * 60)
        code, output = await self.s_client(port, *name, "-sess_in", session)
        self.assertEqual(code, 0, output)
        self.assertIn("New, TLSv1.2", output)

    async def test_client_tls_verification(self) -> None:
        port, _ = self.listen(ServerTLS([self.alpha]))
        failure = await self.connect_fails(port, self.trusting("wrong.test"))
        self.assertIn("wrong.test", str(failure.value))
        failure = await self.connect_fails(
            port, client_tls("alpha.test", ca_files=[self.pki.other_ca_file])
        )
        self.assertIn("certificate verify failed", str(failure.value))
        await self.connect_fails(port, client_tls("alpha.test"))
        client = await self.connect(port, self.trusting("alpha.test"))
        self.assertEqual(common_name(client.peer_certificate()), "alpha.test")

    async def test_client_tls_unverified(self) -> None:
        port, _ = self.listen(ServerTLS([self.alpha, self.beta]))
        client = await self.connect(port, client_tls("beta.test", verify=False))
        # SNI is still sent.
        self.assertEqual(common_name(client.peer_certificate()), "beta.test")

    async def test_client_tls_client_certificate(self) -> None:
        port, factory = self.listen(
            ServerTLS([self.alpha], client_certs="required", client_ca_files=[self.pki.ca_file])
        )
        await self.connect(
            port, client_tls("alpha.test", verify=False, client_cert=self.client_files)
        )
        info = client_cert_info(factory.handshakes[0])
        self.assertIn("CN=client.test", info.subject_dn or "")


def _trust_root(ca: trustme.CA) -> Any:
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate

    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    return trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(cert))])


class SighupTests(SynchronousTestCase):
    """
    L{reload_on_sighup} reloads through the reactor and chains the previous handler.
    """

    def test_reload_and_chain(self) -> None:
        pki = PKI(self.mktemp())
        files = pki.issue("alpha.test")
        server_tls = ServerTLS([files])
        previous_calls: list[int] = []

        def previous(signum: int, frame: FrameType | None) -> None:
            previous_calls.append(signum)

        original = signal.signal(signal.SIGHUP, previous)
        self.addCleanup(signal.signal, signal.SIGHUP, original)

        class FakeReactor:
            def __init__(self) -> None:
                self.calls: list[Callable[[], object]] = []

            def callFromThread(self, f: Callable[..., object], *args: object) -> None:
                self.calls.append(lambda: f(*args))

        fake = FakeReactor()
        uninstall = reload_on_sighup([server_tls], fake)  # type: ignore[arg-type]
        Path(files.key).write_bytes(b"broken")
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(previous_calls, [signal.SIGHUP])
        self.assertEqual(len(fake.calls), 1)
        with capturedLogs() as events:
            fake.calls[0]()
        self.assertTrue(any(files.key in formatEvent(e) for e in events))

        uninstall()
        self.assertIs(signal.getsignal(signal.SIGHUP), previous)
