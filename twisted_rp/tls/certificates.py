"""
Reading and checking certificate, key, chain and CA files, for both server and client TLS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
)
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)

_PEM_KEY = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)


class TLSConfigError(Exception):
    """
    A TLS file or setting is unusable; the message names the file and what is wrong with it.
    """


@frozen
class CertificateFiles:
    """
    Where one certificate and its key are.

    @ivar cert: PEM file with the certificate first, optionally followed by its chain.
    @ivar key: PEM file with the (unencrypted) private key; may be the same file as C{cert}.
    @ivar chain: optional PEM file with intermediate certificates.
    """

    cert: str
    key: str
    chain: str | None = None


@frozen
class _LoadedCertificate:
    """
    A certificate, its chain and key, read and checked.
    """

    files: CertificateFiles
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    dns_names: tuple[str, ...]
    common_name: str | None


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSConfigError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read {what} file: {e.strerror}") from None


def _read_certificates(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{path}: unreadable PEM: no valid {what} certificate") from None
    return certificates


def _read_key(path: str) -> PrivateKey:
    data = _read(path, "key")
    match = _PEM_KEY.search(data)
    if match is None:
        raise TLSConfigError(f"{path}: unreadable PEM: no private key found")
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except TypeError:
        raise TLSConfigError(
            f"{path}: the private key is encrypted; give an unencrypted key"
        ) from None
    except ValueError as e:
        raise TLSConfigError(f"{path}: unreadable PEM private key: {e}") from None
    if not isinstance(key, PrivateKey):
        raise TLSConfigError(f"{path}: unsupported private key type {type(key).__name__}")
    return key


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _names(certificate: x509.Certificate) -> tuple[tuple[str, ...], str | None]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = tuple(
            name.lower().rstrip(".") for name in san.value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        dns_names = ()
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = None
    if common_names:
        value = common_names[0].value
        common_name = (value if isinstance(value, str) else value.decode()).lower().rstrip(".")
    return dns_names, common_name


def _check_validity(
    certificate: x509.Certificate, path: str, now: float, warning_days: int, log: Logger
) -> None:
    not_after = certificate.not_valid_after_utc.timestamp()
    if not_after < now:
        raise TLSConfigError(
            f"{path}: certificate expired on {certificate.not_valid_after_utc.isoformat()}"
        )
    if certificate.not_valid_before_utc.timestamp() > now:
        log.warn(
            "{path}: certificate is not valid before {not_before}",
            path=path,
            not_before=certificate.not_valid_before_utc.isoformat(),
        )
    if not_after - now < warning_days * 86400:
        log.warn(
            "{path}: certificate expires in {days} days, on {not_after}",
            path=path,
            days=int((not_after - now) // 86400),
            not_after=certificate.not_valid_after_utc.isoformat(),
        )


def _load_certificate(
    files: CertificateFiles, now: float, warning_days: int, log: Logger
) -> _LoadedCertificate:
    certificates = _read_certificates(files.cert, "certificate")
    leaf, chain = certificates[0], list(certificates[1:])
    if files.chain is not None:
        chain.extend(_read_certificates(files.chain, "chain"))
    key = _read_key(files.key)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(f"{files.key}: private key does not match certificate {files.cert}")
    _check_validity(leaf, files.cert, now, warning_days, log)
    dns_names, common_name = _names(leaf)
    return _LoadedCertificate(
        files=files,
        leaf=leaf,
        chain=tuple(chain),
        key=key,
        dns_names=dns_names,
        common_name=common_name,
    )


def _load_ca_files(paths: Sequence[str]) -> list[x509.Certificate]:
    authorities: list[x509.Certificate] = []
    for path in paths:
        try:
            authorities.extend(_read_certificates(path, "CA"))
        except TLSConfigError as e:
            raise TLSConfigError(f"bad CA file {e}") from None
    return authorities
