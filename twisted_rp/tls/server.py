"""
Server-side TLS: L{ServerTLS} (SNI, client certificates, protocol settings) and reloading its
files when they change or on SIGHUP.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from functools import partial

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.interfaces import ITLSObserver
from twisted_rp.listening import SignalService
from twisted_rp.tls.certificates import (
    CertificateFiles,
    TLSConfigError,
    _load_ca_files,
    _load_certificate,
    _LoadedCertificate,
)

#: The TLS 1.2 cipher suites of Mozilla's "intermediate" profile (version 5.7).  TLS 1.3 suites are
#: OpenSSL's defaults, which are the ones the profile lists.  The DHE suites are only ever chosen
#: when the server has finite-field DH parameters, which L{ServerTLS} does not set: ECDHE is used.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

#: The curves (key exchange groups) of Mozilla's "intermediate" profile.
MOZILLA_INTERMEDIATE_CURVES = ("X25519", "prime256v1", "secp384r1")

#: How often (seconds) L{ServerTLS} rebuilds its contexts, which gives session tickets a fresh key.
TICKET_ROTATION = 12 * 60 * 60.0

_TLS_VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}

_CLIENT_CERT_MODES = ("none", "optional", "required")

# The session id context ties cached sessions to this application; OpenSSL refuses to resume
# sessions without one when client certificates are requested.
_SESSION_ID_CONTEXT = b"twisted_rp"


def _hostname_matches(pattern: str, name: str) -> bool:
    """
    RFC 6125 matching of one presented DNS name: a wildcard only as the whole leftmost label,
    standing for exactly one label.
    """
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    _, _, rest = name.partition(".")
    return bool(rest) and rest == pattern[2:] and name.count(".") >= 2


def select_certificate(server_name: str, names: Sequence[tuple[Sequence[str], str | None]]) -> int:
    """
    Choose which certificate answers a TLS server name (SNI).

    @param server_name: the name the client asked for.
    @param names: for each certificate, its SAN DNS names and its common name.
    @return: the index of the chosen certificate: an exact SAN match first, then a wildcard SAN
        match, then a common name match (only for certificates without SAN DNS names, as clients
        ignore the CN otherwise), else 0, the default certificate.
    """
    name = server_name.lower().rstrip(".")
    for index, (dns_names, _) in enumerate(names):
        if name in dns_names:
            return index
    for index, (dns_names, _) in enumerate(names):
        if any(_hostname_matches(pattern, name) for pattern in dns_names):
            return index
    for index, (dns_names, common_name) in enumerate(names):
        if not dns_names and common_name is not None and _hostname_matches(common_name, name):
            return index
    return 0


def _session_reused(connection: SSL.Connection) -> bool:
    """Whether C{connection}'s handshake resumed a session (pyOpenSSL has no method for it)."""
    from OpenSSL._util import lib  # type: ignore[attr-defined,unused-ignore]

    reused = getattr(lib, "SSL_session_reused", None)
    return bool(reused(connection._ssl)) if reused is not None else False


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Server-side TLS for one listener: one or more certificates chosen by SNI, secure protocol
    settings, optional client certificates, reloading without dropping connections.

    All files are read and checked when it is made and on L{reload}; the OpenSSL contexts are
    built then too, and rebuilt every C{ticket_rotation} seconds (when the next connection
    arrives) so that session tickets get a fresh key.  A connection keeps the context it started
    with, so reloading never affects open connections.

    @ivar observers: told of every completed or failed handshake; add to the list at any time.
    """

    log = Logger()

    def __init__(
        self,
        certificates: Sequence[CertificateFiles],
        *,
        min_version: str = "TLSv1.2",
        max_version: str | None = None,
        ciphers: str = MOZILLA_INTERMEDIATE_CIPHERS,
        curves: Sequence[str] = MOZILLA_INTERMEDIATE_CURVES,
        client_certs: str = "none",
        client_ca_files: Sequence[str] = (),
        alpn: Sequence[bytes] = (b"http/1.1",),
        clock: IReactorTime | None = None,
        expiry_warning_days: int = 14,
        ticket_rotation: float = TICKET_ROTATION,
        prefer_server_ciphers: bool = True,
    ) -> None:
        """
        @param certificates: the first is the default, for clients without SNI or with a name
            none of them matches.
        @param min_version: lowest TLS version, C{"TLSv1.2"} or C{"TLSv1.3"} (older ones are
            accepted as names but OpenSSL 3 refuses them at its default security level).
        @param max_version: highest TLS version, or L{None} for the newest OpenSSL knows.
        @param ciphers: OpenSSL cipher string for TLS 1.2.
        @param curves: key exchange groups, in preference order.
        @param client_certs: C{"none"}, C{"optional"} or C{"required"}.
        @param client_ca_files: PEM files of the CAs client certificates must chain to.
        @param alpn: protocols offered by ALPN, in preference order.
        @param clock: time source for expiry checks and for L{watch}; defaults to the reactor.
        @param expiry_warning_days: warn about certificates expiring within this many days.
        @param ticket_rotation: seconds between rebuilding the contexts (session ticket keys).
        @param prefer_server_ciphers: choose the cipher by the server's order.
        @raise TLSConfigError: a file or setting is unusable.
        """
        if not certificates:
            raise TLSConfigError("no certificate configured")
        if client_certs not in _CLIENT_CERT_MODES:
            raise TLSConfigError(
                f"client_certs must be one of {', '.join(_CLIENT_CERT_MODES)}, not {client_certs!r}"
            )
        if client_certs != "none" and not client_ca_files:
            raise TLSConfigError(f"client_certs = {client_certs!r} needs client_ca_files")
        self._min_version = self._version(min_version, "min_version")
        self._max_version = (
            None if max_version is None else self._version(max_version, "max_version")
        )
        if self._max_version is not None and self._max_version < self._min_version:
            raise TLSConfigError(f"max_version {max_version} is below min_version {min_version}")
        self.certificates = tuple(certificates)
        self.client_ca_files = tuple(client_ca_files)
        self.client_certs = client_certs
        self._ciphers = ciphers
        self._curves = tuple(curves)
        self._alpn = tuple(alpn)
        self._clock = clock
        self._expiry_warning_days = expiry_warning_days
        self._ticket_rotation = ticket_rotation
        self._prefer_server_ciphers = prefer_server_ciphers
        self._loaded: tuple[_LoadedCertificate, ...] = ()
        self._authorities: tuple[x509.Certificate, ...] = ()
        self._contexts: tuple[SSL.Context, ...] = ()
        self._built_at = 0.0
        self.observers: list[ITLSObserver] = []
        self.reload()

    @staticmethod
    def _version(name: str, setting: str) -> int:
        try:
            return _TLS_VERSIONS[name]
        except KeyError:
            raise TLSConfigError(
                f"{setting} must be one of {', '.join(_TLS_VERSIONS)}, not {name!r}"
            ) from None

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock.seconds()

    def reload(self) -> None:
        """
        Re-read every certificate, key, chain and CA file and build new contexts for new
        connections.

        @raise TLSConfigError: a file is unusable; the contexts in use are kept.
        """
        now = self._now()
        loaded = tuple(
            _load_certificate(files, now, self._expiry_warning_days, self.log)
            for files in self.certificates
        )
        authorities = tuple(_load_ca_files(self.client_ca_files))
        contexts = self._build_contexts(loaded, authorities)
        self._loaded, self._authorities = loaded, authorities
        self._contexts, self._built_at = contexts, now

    def rotate_ticket_keys(self) -> None:
        """
        Rebuild the contexts from the certificates already loaded, which gives session tickets a
        fresh key; sessions from before can no longer be resumed.
        """
        self._contexts = self._build_contexts(self._loaded, self._authorities)
        self._built_at = self._now()

    def _build_contexts(
        self, loaded: Sequence[_LoadedCertificate], authorities: Sequence[x509.Certificate]
    ) -> tuple[SSL.Context, ...]:
        contexts = tuple(self._build_context(entry, authorities) for entry in loaded)
        names = [(entry.dns_names, entry.common_name) for entry in loaded]

        def on_server_name(connection: SSL.Connection) -> None:
            server_name = connection.get_servername()
            if server_name:
                index = select_certificate(server_name.decode("ascii", "replace"), names)
                if index:
                    connection.set_context(contexts[index])

        # Only the context a connection starts with is asked for the server name; the others
        # only contribute their certificate (OpenSSL keeps verification settings and options of
        # the initial context), so all of them are built alike.
        contexts[0].set_tlsext_servername_callback(on_server_name)
        return contexts

    def _build_context(
        self, entry: _LoadedCertificate, authorities: Sequence[x509.Certificate]
    ) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        try:
            context.set_min_proto_version(self._min_version)
            if self._max_version is not None:
                context.set_max_proto_version(self._max_version)
            options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_ALL
            if self._prefer_server_ciphers:
                options |= SSL.OP_CIPHER_SERVER_PREFERENCE
            context.set_options(options)
            context.set_cipher_list(self._ciphers.encode("ascii"))
        except SSL.Error as e:
            raise TLSConfigError(f"ciphers {self._ciphers!r}: not usable: {e}") from None
        self._set_curves(context)
        context.set_info_callback(self._on_info)
        context.set_session_id(_SESSION_ID_CONTEXT)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        try:
            context.use_certificate(entry.leaf)
            context.use_privatekey(entry.key)
            for certificate in entry.chain:
                context.add_extra_chain_cert(certificate)
            context.check_privatekey()
        except (SSL.Error, crypto.Error) as e:
            raise TLSConfigError(
                f"{entry.files.cert}: OpenSSL refuses the certificate: {e}"
            ) from None
        if self.client_certs != "none":
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if self.client_certs == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            # No callback: OpenSSL's own chain verification, whose failure ends the handshake.
            context.set_verify(mode)
            store = context.get_cert_store()
            assert store is not None
            for authority in authorities:
                store.add_cert(crypto.X509.from_cryptography(authority))
                context.add_client_ca(authority)
        if self._alpn:
            offered = self._alpn

            def choose(connection: SSL.Connection, protocols: list[bytes]) -> bytes:
                for protocol in offered:
                    if protocol in protocols:
                        return protocol
                return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

            context.set_alpn_select_callback(choose)
        return context

    def _on_info(self, connection: SSL.Connection, where: int, value: int) -> None:
        if not self.observers:
            return
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            # Once per handshake on the server side, TLS 1.3 session tickets included.
            version = connection.get_protocol_version_name()
            resumed = _session_reused(connection)
            for observer in self.observers:
                observer.handshake_done(version, resumed)
        elif where & SSL.SSL_CB_EXIT and value <= 0 and connection.get_state_string() == b"error":
            # The handshake gave up (an alert sent or received, not TLS at all); OpenSSL does
            # not run the state machine again on a connection in error.
            for observer in self.observers:
                observer.handshake_failed()

    def _set_curves(self, context: SSL.Context) -> None:
        if not self._curves:
            return
        names = ":".join(self._curves).encode("ascii")
        # pyOpenSSL only sets a single curve; its binding has the list setter, which also takes
        # X25519.
        from OpenSSL._util import lib  # type: ignore[attr-defined,unused-ignore]

        set_list = getattr(lib, "SSL_CTX_set1_curves_list", None)
        if set_list is not None:
            if not set_list(context._context, names):
                raise TLSConfigError(f"curves {':'.join(self._curves)!r}: not supported by OpenSSL")
            return
        # An older binding: the one curve every client supports.
        context.set_tmp_ecdh(ec.SECP256R1())

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A connection for one new client, using the current default context; SNI may switch it.
        """
        if self._now() - self._built_at >= self._ticket_rotation:
            self.rotate_ticket_keys()
        return SSL.Connection(self._contexts[0], None)

    def watched_files(self) -> tuple[str, ...]:
        """
        Every file this configuration reads.
        """
        paths: list[str] = []
        for files in self.certificates:
            paths.extend(p for p in (files.cert, files.key, files.chain) if p is not None)
        paths.extend(self.client_ca_files)
        return tuple(dict.fromkeys(paths))

    def watch(self, interval: float = 5.0) -> Service:
        """
        A service that polls the files every C{interval} seconds and reloads when one changed
        (modification time, size or inode); errors are logged and the old contexts kept.
        """
        return _FileWatcher(self, interval, self._clock)


def _snapshot(paths: Sequence[str]) -> tuple[tuple[int, int, int] | None, ...]:
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            result.append(None)
        else:
            result.append((status.st_mtime_ns, status.st_size, status.st_ino))
    return tuple(result)


class _FileWatcher(Service):
    """
    Reloads a L{ServerTLS} when its files change.
    """

    log = Logger()

    def __init__(self, server_tls: ServerTLS, interval: float, clock: IReactorTime | None) -> None:
        self._server_tls = server_tls
        self._interval = interval
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._seen: tuple[tuple[int, int, int] | None, ...] = ()

    def startService(self) -> None:
        super().startService()
        self._seen = _snapshot(self._server_tls.watched_files())
        self._loop = LoopingCall(self.check)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()

    def check(self) -> None:
        """
        Reload if any file changed since the last look.
        """
        current = _snapshot(self._server_tls.watched_files())
        if current == self._seen:
            return
        # Remembered even when the reload fails, so a half-written update is logged once and the
        # next change (the rest of the update) is tried again.
        self._seen = current
        try:
            self._server_tls.reload()
        except TLSConfigError as e:
            self.log.error("TLS reload failed, keeping the certificates in use: {error}", error=e)
        else:
            self.log.info("TLS certificates reloaded")


def _reload_all(server_tls_list: Sequence[ServerTLS]) -> None:
    # The namespace of these messages stays the package's, as before it was split up.
    log = Logger(namespace="twisted_rp.tls")
    for server_tls in server_tls_list:
        try:
            server_tls.reload()
        except TLSConfigError as e:
            log.error("TLS reload failed, keeping the certificates in use: {error}", error=e)
    log.info("SIGHUP: TLS certificates reloaded")


class SighupReloadService(SignalService):
    """
    Reloads every L{ServerTLS} on SIGHUP while running, then calls the handler that was
    installed before.

    twistd uses SIGHUP to reopen its log file and installs its handler when logging starts,
    which is after the plugin's C{makeService}: handlers installed from C{startService} find
    twistd's already there and chain it.  The default action (terminate) is not chained.
    """

    def __init__(self, server_tls_list: Sequence[ServerTLS], reactor: IReactorFromThreads) -> None:
        super().__init__(reactor, {signal.SIGHUP: partial(_reload_all, tuple(server_tls_list))})


def reload_on_sighup(
    server_tls_list: Sequence[ServerTLS], reactor: IReactorFromThreads
) -> Callable[[], None]:
    """
    Reload every L{ServerTLS} on SIGHUP from now on (see L{SighupReloadService}).

    @return: a callable that puts the previous handler back.
    """
    service = SighupReloadService(server_tls_list, reactor)
    service.startService()
    return service.stopService
