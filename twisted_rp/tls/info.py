"""
What a TLS transport negotiated: the client's certificate, the protocol version and cipher.
"""

from __future__ import annotations

import base64
import hashlib

from attrs import frozen
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL


@frozen
class ClientCertInfo:
    """
    What a TLS client proved about itself with a certificate.

    @ivar verify: C{"SUCCESS"} (a certificate was sent and verified) or C{"NONE"} (none sent).
        A certificate that fails verification never gets this far: the handshake fails.
    @ivar subject_dn: the subject distinguished name in RFC 4514 form (C{CN=a,O=b}).
    @ivar fingerprint_sha256: lowercase hex SHA-256 of the DER certificate.
    @ivar der: the DER certificate.
    @ivar chain_der: the other certificates the client sent (not including its own), as DER.
    """

    verify: str
    subject_dn: str | None = None
    fingerprint_sha256: str | None = None
    der: bytes | None = None
    chain_der: tuple[bytes, ...] = ()


NO_CLIENT_CERT = ClientCertInfo(verify="NONE")


def _tls_connection(transport: object) -> SSL.Connection | None:
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    return handle if isinstance(handle, SSL.Connection) else None


def client_cert_info(transport: object) -> ClientCertInfo:
    """
    What the client's certificate says, from a TLS transport after the handshake.

    @param transport: the C{TLSMemoryBIOProtocol} a protocol was given as its transport.
    @return: verify C{"NONE"} when no certificate was sent (or the transport is not TLS).
    """
    connection = _tls_connection(transport)
    if connection is None:
        return NO_CLIENT_CERT
    peer = connection.get_peer_certificate(as_cryptography=True)
    if peer is None:
        return NO_CLIENT_CERT
    der = peer.public_bytes(serialization.Encoding.DER)
    chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    chain_der = tuple(
        d for d in (c.public_bytes(serialization.Encoding.DER) for c in chain) if d != der
    )
    return ClientCertInfo(
        verify="SUCCESS",
        subject_dn=peer.subject.rfc4514_string(),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        chain_der=chain_der,
    )


def negotiated(transport: object) -> tuple[str | None, str | None]:
    """
    The TLS version (C{"TLSv1.3"}) and cipher name of a TLS transport after the handshake.

    @return: C{(None, None)} for a transport that is not TLS or before the handshake.
    """
    connection = _tls_connection(transport)
    if connection is None:
        return None, None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None, None
    return connection.get_protocol_version_name(), cipher


def client_cert_fields(transport: object) -> list[tuple[bytes, bytes]]:
    """
    The fields that tell a backend about the client's certificate: RFC 9440 C{Client-Cert}
    and C{Client-Cert-Chain} (Structured Field byte sequences), and the C{X-SSL-Client-*}
    fields nginx and HAProxy setups use.
    """
    info = client_cert_info(transport)
    fields = [(b"X-SSL-Client-Verify", info.verify.encode("ascii"))]
    if info.der is not None:
        fields.append((b"Client-Cert", b":" + base64.b64encode(info.der) + b":"))
        if info.chain_der:
            chain = b", ".join(b":" + base64.b64encode(d) + b":" for d in info.chain_der)
            fields.append((b"Client-Cert-Chain", chain))
    if info.subject_dn is not None:
        fields.append((b"X-SSL-Client-S-DN", info.subject_dn.encode("utf-8")))
    if info.fingerprint_sha256 is not None:
        fields.append((b"X-SSL-Client-Fingerprint", info.fingerprint_sha256.encode("ascii")))
    return fields
