"""
Client-side TLS for connecting to backends, verified (service_identity) or not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl as twisted_ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.tls.certificates import (
    CertificateFiles,
    _load_ca_files,
    _load_certificate,
    _LoadedCertificate,
)

#: A L{twisted.logger} format string for the start-up warning when backend verification is off;
#: log it with a C{server_name} field.
INSECURE_WARNING = (
    "TLS certificate verification for backend {server_name} is turned off "
    "(verify = false): the connection is encrypted but anyone on the path can intercept it"
)

_CLIENT_EXPIRY_WARNING_DAYS = 14


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    Client TLS that sends SNI but accepts any certificate.
    """

    def __init__(self, server_name: str, context: SSL.Context) -> None:
        self._server_name = server_name
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not _is_ip_address(self._server_name):
            connection.set_tlsext_host_name(self._server_name.encode("idna"))
        return connection


def _is_ip_address(name: str) -> bool:
    from twisted.internet.abstract import isIPAddress, isIPv6Address

    return isIPAddress(name) or isIPv6Address(name)


def _unverified_context(client_certificate: _LoadedCertificate | None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_ALL)
    context.set_verify(SSL.VERIFY_NONE)
    if client_certificate is not None:
        context.use_certificate(client_certificate.leaf)
        context.use_privatekey(client_certificate.key)
        for certificate in client_certificate.chain:
            context.add_extra_chain_cert(certificate)
    return context


def client_tls(
    server_name: str,
    *,
    verify: bool = True,
    ca_files: Sequence[str] = (),
    client_cert: CertificateFiles | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS for connecting to a backend.

    @param server_name: sent as SNI and, with C{verify}, checked against the certificate with
        service_identity (a DNS name or an IP address).
    @param verify: check the certificate chain and name; when L{False} the caller should log
        L{INSECURE_WARNING} at start-up.
    @param ca_files: PEM files of trusted CAs; empty means the system trust store.
    @param client_cert: a certificate to present (mutual TLS).
    @raise TLSConfigError: a file is unusable.
    """
    loaded = None
    if client_cert is not None:
        # The namespace of these warnings stays the package's, as before it was split up.
        log = Logger(namespace="twisted_rp.tls")
        loaded = _load_certificate(client_cert, time.time(), _CLIENT_EXPIRY_WARNING_DAYS, log)
    if not verify:
        return _UnverifiedClientTLS(server_name, _unverified_context(loaded))
    extra: dict[str, Any] = {}
    client_certificate = None
    if loaded is not None:
        client_certificate = twisted_ssl.PrivateCertificate.fromCertificateAndKeyPair(
            twisted_ssl.Certificate(crypto.X509.from_cryptography(loaded.leaf)),
            twisted_ssl.KeyPair(crypto.PKey.from_cryptography_key(loaded.key)),
        )
        if loaded.chain:
            extra["extraCertChain"] = [
                twisted_ssl.Certificate(crypto.X509.from_cryptography(c)) for c in loaded.chain
            ]
    trust_root: Any
    if ca_files:
        trust_root = twisted_ssl.trustRootFromCertificates(
            [
                twisted_ssl.Certificate(crypto.X509.from_cryptography(c))
                for c in _load_ca_files(ca_files)
            ]
        )
    else:
        trust_root = twisted_ssl.platformTrust()
    return twisted_ssl.optionsForClientTLS(
        server_name,
        trustRoot=trust_root,
        clientCertificate=client_certificate,
        extraCertificateOptions=extra or None,
    )
