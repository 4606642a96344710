"""
TLS context building in one place: server contexts (SNI, client certificates, reloading) and
client contexts (verification of backends).

Server side: L{ServerTLS} provides L{IOpenSSLServerConnectionCreator}; wrap a factory with
C{TLSMemoryBIOFactory(ServerTLS([...]), False, factory)}.  Client side: L{client_tls} returns an
L{IOpenSSLClientConnectionCreator} for C{TLSMemoryBIOFactory(creator, True, factory)} or
C{wrapClientTLS}.

Import from here; the submodules are how the code is arranged, not part of the interface:
L{twisted_rp.tls.certificates} (reading and checking files), L{twisted_rp.tls.server}
(L{ServerTLS}, reloading), L{twisted_rp.tls.client} (L{client_tls}) and
L{twisted_rp.tls.info} (what a connection negotiated).
"""

from __future__ import annotations

from twisted_rp.tls.certificates import CertificateFiles, PrivateKey, TLSConfigError
from twisted_rp.tls.client import INSECURE_WARNING, client_tls
from twisted_rp.tls.info import (
    NO_CLIENT_CERT,
    ClientCertInfo,
    client_cert_fields,
    client_cert_info,
    negotiated,
)
from twisted_rp.tls.server import (
    MOZILLA_INTERMEDIATE_CIPHERS,
    MOZILLA_INTERMEDIATE_CURVES,
    TICKET_ROTATION,
    ServerTLS,
    SighupReloadService,
    reload_on_sighup,
    select_certificate,
)

__all__ = [
    "INSECURE_WARNING",
    "MOZILLA_INTERMEDIATE_CIPHERS",
    "MOZILLA_INTERMEDIATE_CURVES",
    "NO_CLIENT_CERT",
    "TICKET_ROTATION",
    "CertificateFiles",
    "ClientCertInfo",
    "PrivateKey",
    "ServerTLS",
    "SighupReloadService",
    "TLSConfigError",
    "client_cert_fields",
    "client_cert_info",
    "client_tls",
    "negotiated",
    "reload_on_sighup",
    "select_certificate",
]
