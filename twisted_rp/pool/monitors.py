"""
Health monitors: each probes one backend once and says whether it works right now (see
L{IHealthMonitor}); L{twisted_rp.pool.health.HealthChecker} runs them on a schedule.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, TypeVar, cast

from attrs import define, field, validators
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionClosed, ConnectionRefusedError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTCP,
    IStreamClientEndpoint,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from twisted_rp.interfaces import IHealthMonitor
from twisted_rp.pool.backend import Backend

if TYPE_CHECKING:
    # Twisted does not export this interface publicly; only annotations use it.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "FTP_TLS_MODES",
    "FTPMonitor",
    "HTTPMonitor",
    "HealthCheckFailed",
    "TCPMonitor",
    "TLSMonitor",
    "describe_error",
]

_T = TypeVar("_T")

#: How much of a response body L{HTTPMonitor} reads by default to match C{body_regex}.
DEFAULT_BODY_LIMIT = 64 * 1024


class HealthCheckFailed(Exception):
    """A probe found its backend unhealthy; C{str(exc)} says why, briefly."""


def describe_error(error: BaseException | None) -> str:
    """A short, human-readable reason for C{error}, the kind a log line or an admin page shows."""
    if error is None:
        return "unknown error"
    if isinstance(error, HealthCheckFailed):
        return str(error)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectTimeout):
        return "connect timed out"
    if isinstance(error, DNSLookupError):
        return "DNS lookup failed"
    if isinstance(error, ConnectionClosed):
        return "connection closed by the backend"
    if isinstance(error, SSL.Error):
        return f"TLS handshake failed: {_openssl_reasons(error)}"
    if isinstance(error, VerificationError):
        return "TLS handshake failed: the certificate does not match the server name"
    if isinstance(error, (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed)):
        reasons = {describe_error(reason.value) for reason in error.reasons}
        return "; ".join(sorted(reasons)) or "no response"
    return str(error) or type(error).__name__


def _openssl_reasons(error: SSL.Error) -> str:
    # pyOpenSSL's args[0] is a list of (library, function, reason) tuples.
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        reasons = [item[-1] for item in details if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(str(reason) for reason in reasons)
    return str(error) or "TLS error"


def _port(backend: Backend, protocol: str | None) -> int:
    return backend.port if protocol is None else backend.port_for(protocol)


class _Probe(Protocol):
    """
    One probe connection: a subclass decides healthy or not with L{succeed} or L{fail}; the
    verdict is delivered through L{finished} once the connection is closed, so that a probe
    never leaves a socket behind.  Cancelling aborts the connection.

    @ivar waiting_for: what the probe awaits; named if the backend hangs up before a verdict.
    """

    waiting_for = "the connection"

    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred(self._cancel)
        self._verdict: Failure | None = None
        self._decided = False

    def succeed(self) -> None:
        self._decide(None)

    def fail(self, problem: str) -> None:
        self._decide(Failure(HealthCheckFailed(problem)))

    def _decide(self, verdict: Failure | None) -> None:
        if self._decided:
            return
        self._decided = True
        self._verdict = verdict
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if self._decided:
            self._deliver()
        elif reason.check(ConnectionClosed):
            self.finished.errback(
                HealthCheckFailed(f"connection closed by the backend before {self.waiting_for}")
            )
        else:
            self.finished.errback(HealthCheckFailed(describe_error(reason.value)))

    def _deliver(self) -> None:
        if self._verdict is None:
            self.finished.callback(None)
        else:
            self.finished.errback(self._verdict)

    def _cancel(self, finished: Deferred[None]) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()
        # A verdict already reached stands; only the wait for the close is cut short.
        if self._decided and not finished.called:
            self._deliver()


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class _QuietConnectionPool(HTTPConnectionPool):
    """treq's pool, without a "Starting factory" log line for every probe."""

    _factory = _QuietHTTP11ClientFactory


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, probe: _Probe) -> None:
        self._probe = probe

    def buildProtocol(self, addr: object) -> _Probe:
        return self._probe


def _cancellable(inner: Deferred[_T]) -> Deferred[_T]:
    """
    Follow C{inner}, but fail with L{CancelledError} when cancelled, whatever C{inner} then
    reports: L{HostnameEndpoint} says C{ConnectingCancelledError}, or even C{DNSLookupError}
    when cancelled while resolving, which would read as a genuine failure.
    """
    cancelled = False

    def cancel(outer: Deferred[_T]) -> None:
        nonlocal cancelled
        cancelled = True
        inner.cancel()

    outer: Deferred[_T] = Deferred(cancel)

    def forward(result: _T | Failure) -> None:
        if cancelled:
            return
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    inner.addBoth(forward)
    return outer


async def _run_probe(endpoint: IStreamClientEndpoint, probe: _Probe) -> None:
    try:
        await _cancellable(endpoint.connect(_ProbeFactory(probe)))
        await probe.finished
    except (CancelledError, HealthCheckFailed):
        raise
    except Exception as error:
        raise HealthCheckFailed(describe_error(error)) from error


class _Connected(_Probe):
    def connectionMade(self) -> None:
        self.succeed()


@implementer(IHealthMonitor)
@define(eq=False)
class TCPMonitor:
    """
    Healthy when a TCP connection to the backend succeeds; it is closed at once.

    @ivar reactor: provides C{IReactorTCP}, C{IReactorTime} and
        C{IReactorPluggableNameResolver} (as every monitor's reactor must).
    @ivar port_protocol: the key of L{Backend.ports} to probe (L{Backend.port_for}); L{None}
        probes L{Backend.port}.
    """

    reactor: IReactorTCP
    port_protocol: str | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        endpoint = HostnameEndpoint(self.reactor, backend.host, _port(backend, self.port_protocol))
        return Deferred.fromCoroutine(_run_probe(endpoint, _Connected()))


@implementer(IHandshakeListener)
class _Handshake(_Probe):
    waiting_for = "the TLS handshake completed"

    def handshakeCompleted(self) -> None:
        self.succeed()


@implementer(IHealthMonitor)
@define(eq=False)
class TLSMonitor:
    """
    Healthy when a TLS handshake with the backend completes, certificate verification included.

    @ivar tls_options: the client TLS options to use for every backend; by default each backend
        gets C{optionsForClientTLS(server_name or backend.host, trust_root)}.
    @ivar server_name: the name to send (SNI) and verify instead of the backend's host.
    @ivar trust_root: the certificate authorities to trust; L{None} for the platform's.
    @ivar port_protocol: as for L{TCPMonitor}.
    """

    reactor: IReactorTCP
    tls_options: IOpenSSLClientConnectionCreator | None = None
    server_name: str | None = None
    trust_root: IOpenSSLTrustRoot | Certificate | None = None
    port_protocol: str | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        creator = self.tls_options or optionsForClientTLS(
            self.server_name or backend.host, trustRoot=self.trust_root
        )
        endpoint = wrapClientTLS(
            creator,
            HostnameEndpoint(self.reactor, backend.host, _port(backend, self.port_protocol)),
        )
        return Deferred.fromCoroutine(_run_probe(endpoint, _Handshake()))


def _ftp_code(text: str) -> str | None:
    return text[:3] if len(text) >= 3 and text[:3].isdigit() else None


#: How L{FTPMonitor} reaches a backend: plain FTP, C{AUTH TLS} after the banner, or TLS from
#: the first byte.
FTP_TLS_MODES = ("none", "explicit", "implicit")


@implementer(IHandshakeListener)
class _FTPLogin(LineReceiver, _Probe):
    """
    Reads the banner, switches to TLS with C{AUTH TLS} given C{explicit_tls}, and, given a
    user, logs in; replies may span several lines (RFC 959 4.2: C{"220-first"} ...
    C{"220 last"}).

    @param implicit: the connection is TLS from the first byte (wrapped by the endpoint).
    """

    delimiter = b"\n"
    MAX_LENGTH = 8192

    def __init__(
        self,
        user: str | None,
        password: str | None,
        explicit_tls: IOpenSSLClientConnectionCreator | None = None,
        implicit: bool = False,
    ) -> None:
        _Probe.__init__(self)
        self._user = user
        self._password = password
        self._explicit_tls = explicit_tls
        self._continues: str | None = None
        self._stage = "banner"
        self.waiting_for = "the TLS handshake completed" if implicit else "the 220 banner"

    def handshakeCompleted(self) -> None:
        if self._stage == "banner":
            # Implicit FTPS: the banner comes through the TLS just set up.
            self.waiting_for = "the 220 banner"
        elif self._stage == "handshake":
            self._secured()

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        code = _ftp_code(text)
        if self._continues is not None:
            if code == self._continues and text[3:4] == " ":
                self._continues = None
                self._reply(int(code), text)
            return
        if code is None:
            self.fail(f"not an FTP reply: {text[:80]!r}")
        elif text[3:4] == "-":
            self._continues = code
        else:
            self._reply(int(code), text)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.fail("FTP reply line too long")

    def _reply(self, code: int, text: str) -> None:
        shown = text[:100]
        if self._stage == "banner":
            if code != 220:
                self.fail(f"FTP banner was {shown!r}, not 220")
            elif self._explicit_tls is not None:
                self._send("AUTH", "TLS", "auth", "the reply to AUTH TLS")
            else:
                self._secured()
        elif self._stage == "auth":
            if code == 234 and self._explicit_tls is not None:
                self._stage = "handshake"
                self.waiting_for = "the TLS handshake completed"
                cast(ITLSTransport, self.transport).startTLS(self._explicit_tls)
            else:
                self.fail(f"FTP AUTH TLS was refused: {shown!r}")
        elif self._stage == "handshake":
            # A reply in the clear after 234 would be a server out of step.
            self.fail(f"FTP reply during the TLS handshake: {shown!r}")
        elif self._stage == "user":
            if code == 230:
                self._quit()
            elif code in (331, 332):
                self._send("PASS", self._password or "", "password", "the reply to PASS")
            else:
                self.fail(f"FTP USER was refused: {shown!r}")
        elif code in (202, 230):
            self._quit()
        else:
            self.fail(f"FTP login failed: {shown!r}")

    def _secured(self) -> None:
        """Greeted (and over TLS if asked): log in, or be done."""
        if self._user is None:
            self._quit()
        else:
            self._send("USER", self._user, "user", "the reply to USER")

    def _send(self, command: str, argument: str, stage: str, waiting_for: str) -> None:
        self._stage = stage
        self.waiting_for = waiting_for
        self.sendLine(f"{command} {argument}\r".encode())

    def _quit(self) -> None:
        self.sendLine(b"QUIT\r")
        self.succeed()


@implementer(IHealthMonitor)
@define(eq=False)
class FTPMonitor:
    """
    Healthy when the backend greets with C{220} and, given a C{user}, accepts the login
    (C{USER} answered C{331} then C{PASS} answered C{230}, or C{USER} answered C{230}).

    Over FTPS the TLS handshake, certificate verification included, must succeed too, and the
    login is only ever sent through it.

    @ivar port_protocol: as for L{TCPMonitor}; C{"ftp"} by default.
    @ivar tls: C{"none"} for plain FTP, C{"explicit"} for C{AUTH TLS} (answered C{234})
        after the banner, C{"implicit"} for TLS from the first byte (port 990 style).
    @ivar tls_creator: the client TLS for FTPS; by default each backend gets
        C{optionsForClientTLS(backend.host)} (the platform's trusted authorities).
    """

    reactor: IReactorTCP
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    port_protocol: str | None = "ftp"
    tls: str = field(default="none", validator=validators.in_(FTP_TLS_MODES))
    tls_creator: IOpenSSLClientConnectionCreator | None = None

    def check(self, backend: Backend) -> Deferred[None]:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, backend.host, _port(backend, self.port_protocol)
        )
        creator = None
        if self.tls != "none":
            creator = self.tls_creator or optionsForClientTLS(backend.host)
            if self.tls == "implicit":
                endpoint = wrapClientTLS(creator, endpoint)
        probe = _FTPLogin(
            self.user,
            self.password,
            explicit_tls=creator if self.tls == "explicit" else None,
            implicit=self.tls == "implicit",
        )
        return Deferred.fromCoroutine(_run_probe(endpoint, probe))


def _server_name(host: str) -> str:
    """The name in a C{Host} value, without its port and IPv6 brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


@implementer(IPolicyForHTTPS)
@define(frozen=True)
class _MonitorTLSPolicy:
    """The TLS options for an C{https} health check: given ones, or verify the right name."""

    tls_options: IOpenSSLClientConnectionCreator | None
    server_name: str | None

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        if self.tls_options is not None:
            return self.tls_options
        return optionsForClientTLS(self.server_name or hostname.decode("ascii"))


class _BodyPrefix(Protocol):
    """Collects at most C{limit} bytes of a response body, then stops the download."""

    def __init__(self, limit: int) -> None:
        self.finished: Deferred[bytes] = Deferred(self._cancel)
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._cancelled = False

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        data = data[: self._limit - self._size]
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.finished.callback(b"".join(self._chunks))
            if self.transport is not None:
                cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called or self._cancelled:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)

    def _cancel(self, finished: Deferred[bytes]) -> None:
        self._cancelled = True
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


def _read_prefix(response: IResponse, limit: int) -> Deferred[bytes]:
    reader = _BodyPrefix(limit)
    response.deliverBody(reader)
    return reader.finished


def _status_ranges(statuses: Collection[int]) -> str:
    """C{"200-399"}, C{"200, 204"}: a compact spelling of a set of status codes."""
    runs: list[list[int]] = []
    for status in sorted(statuses):
        if runs and status == runs[-1][1] + 1:
            runs[-1][1] = status
        else:
            runs.append([status, status])
    return ", ".join(f"{low}" if low == high else f"{low}-{high}" for low, high in runs)


def _compile_body_regex(pattern: str | bytes | None) -> re.Pattern[bytes] | None:
    if pattern is None:
        return None
    return re.compile(pattern.encode("utf-8") if isinstance(pattern, str) else pattern)


def _check_path(instance: object, attribute: object, path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"health check path must start with '/': {path!r}")


def _check_scheme(instance: object, attribute: object, scheme: str) -> None:
    if scheme not in ("http", "https"):
        raise ValueError(f"health check scheme must be http or https: {scheme!r}")


@implementer(IHealthMonitor)
@define(eq=False)
class HTTPMonitor:
    """
    Healthy when a request answers with an expected status and, optionally, a body matching a
    regular expression.  Each check uses a new connection (never a pooled one, which could hide
    a backend that stopped accepting connections), does not follow redirects, and reads at
    most C{body_limit} bytes of the body.

    @ivar host: the C{Host} header (and, for C{https} without C{tls_options}, the name to
        verify); by default the backend's address.
    @ivar expect_status: the statuses that mean healthy.
    @ivar body_regex: searched (C{re.search}) in the first C{body_limit} bytes of the body.
    @ivar tls_options: the client TLS options for C{https}, for every backend.
    @ivar port_protocol: the key of L{Backend.ports} to probe; by default the scheme.
    """

    reactor: IReactorTCP
    path: str = field(default="/", validator=_check_path)
    method: str = "GET"
    host: str | None = None
    expect_status: frozenset[int] = field(default=frozenset(range(200, 400)), converter=frozenset)
    body_regex: re.Pattern[bytes] | None = field(default=None, converter=_compile_body_regex)
    scheme: str = field(default="http", validator=_check_scheme)
    tls_options: IOpenSSLClientConnectionCreator | None = None
    port_protocol: str | None = None
    body_limit: int = DEFAULT_BODY_LIMIT
    _agent: Agent = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        policy = _MonitorTLSPolicy(
            self.tls_options, None if self.host is None else _server_name(self.host)
        )
        pool = _QuietConnectionPool(self.reactor, persistent=False)
        self._agent = Agent(self.reactor, contextFactory=policy, pool=pool)

    def url_for(self, backend: Backend) -> str:
        """The URL this monitor requests from C{backend}."""
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        port = _port(backend, self.scheme if self.port_protocol is None else self.port_protocol)
        return f"{self.scheme}://{host}:{port}{self.path}"

    def check(self, backend: Backend) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check(backend))

    async def _check(self, backend: Backend) -> None:
        headers: dict[bytes | str, bytes | str] = {} if self.host is None else {"Host": self.host}
        # A new client each time: treq's cookie jar must not carry state between checks.
        client = HTTPClient(self._agent)
        try:
            response = await _cancellable(
                client.request(
                    self.method,
                    self.url_for(backend),
                    headers=headers,
                    allow_redirects=False,
                    unbuffered=True,
                )
            )
            body = await _read_prefix(response, self.body_limit)
        except (CancelledError, HealthCheckFailed):
            raise
        except Exception as error:
            raise HealthCheckFailed(describe_error(error)) from error
        if response.code not in self.expect_status:
            raise HealthCheckFailed(
                f"HTTP status {response.code}, expected {_status_ranges(self.expect_status)}"
            )
        if self.body_regex is not None and not self.body_regex.search(body):
            pattern = self.body_regex.pattern.decode("utf-8", "replace")
            raise HealthCheckFailed(f"response body does not match {pattern!r}")
