"""
An HTTPS listener with the default settings passes sslyze's check against Mozilla's
"intermediate" TLS configuration.

sslyze runs as a subprocess: set C{SSLYZE} to its executable, or have C{sslyze} on the PATH
(C{pip install sslyze==6.3.1}); without it the test is skipped.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.test_https import HTTPSTestCase
from twisted_rp.pool import Backend
from twisted_rp.tls import CertificateFiles, ServerTLS


def _sslyze() -> str | None:
    configured = os.environ.get("SSLYZE")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("sslyze")


SSLYZE = _sslyze()


def mozilla_leaf(
    ca: trustme.CA, name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> tuple[bytes, bytes]:
    """
    A server certificate for C{name} signed by C{ca} that the profile accepts: at most 366
    days of validity, and a non-critical SAN (trustme's own leaves have a critical SAN with a
    non-empty subject, which sslyze's path validation rejects).

    @return: the certificate and key, as PEM.
    """
    ca_key: Any = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class MozillaIntermediateTests(HTTPSTestCase):
    """
    sslyze --mozilla_config intermediate exits 0 against the proxy's HTTPS listener.
    """

    timeout = 300

    def setUp(self) -> None:
        if SSLYZE is None:
            if os.environ.get("CI"):
                # CI installs sslyze (in a venv of its own): a missing one is a broken CI.
                self.fail("sslyze is not available in CI: .ci/run must set SSLYZE")
            raise self.skipTest(
                "sslyze is not available: set SSLYZE to its executable or put it on the PATH"
                " (pip install sslyze==6.3.1)"
            )
        super().setUp()

    def certificate(
        self, name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ) -> CertificateFiles:
        cert, key_pem = mozilla_leaf(self.pki.ca, name, key)
        directory = Path(self.pki.directory)
        (directory / f"{name}.mozilla.crt").write_bytes(cert)
        (directory / f"{name}.mozilla.key").write_bytes(key_pem)
        return CertificateFiles(
            cert=str(directory / f"{name}.mozilla.crt"),
            key=str(directory / f"{name}.mozilla.key"),
        )

    async def scan(self, certificates: list[CertificateFiles], server_name: str) -> None:
        assert SSLYZE is not None
        _, backend_port = self.backend()
        port = self.proxy(
            [Backend("app", "127.0.0.1", backend_port)],
            ServerTLS(certificates),
            hsts="max-age=63072000",
        )
        code, out, err = await self.run_program(
            SSLYZE,
            "--mozilla_config",
            "intermediate",
            "--sni",
            server_name,
            "--certinfo_ca_file",
            self.pki.ca_file,
            f"127.0.0.1:{port}",
        )
        report = out.decode("utf-8", "replace")
        compliance = report[report.find("COMPLIANCE AGAINST") :]
        self.assertEqual(
            code, 0, f"{compliance}\n{err.decode('utf-8', 'replace')[-2000:]}\n{report[-4000:]}"
        )
        self.assertIn("OK - Compliant", compliance)

    async def test_ecdsa(self) -> None:
        await self.scan(
            [self.certificate("www.test", ec.generate_private_key(ec.SECP256R1()))], "www.test"
        )

    async def test_rsa(self) -> None:
        await self.scan(
            [
                self.certificate(
                    "www.test", rsa.generate_private_key(public_exponent=65537, key_size=2048)
                )
            ],
            "www.test",
        )

    async def test_sni_second_certificate(self) -> None:
        """
        Each certificate of a listener with several passes; sslyze also looks at the default
        one (without SNI).
        """
        await self.scan(
            [
                self.certificate("www.test", ec.generate_private_key(ec.SECP256R1())),
                self.certificate(
                    "api.test", rsa.generate_private_key(public_exponent=65537, key_size=2048)
                ),
            ],
            "api.test",
        )
