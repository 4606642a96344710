"""
The request half of an L{twisted_rp.http.exchange.Exchange}: reading the head's body framing,
running the route's authenticators (which may answer asynchronously), adding the forwarding
headers and running the request rewriters, before a backend is picked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.http.body import ChunkedDecoder, LengthDecoder
from twisted_rp.http.message import ErrorResponse, HTTPError, ProxyRequest, RequestHead
from twisted_rp.http.parser import Framing, RequestInfo
from twisted_rp.http.routing import Route

if TYPE_CHECKING:
    from twisted_rp.http.front import HTTPProxyProtocol

_UPGRADE = frozenset({b"upgrade"})
_NOTHING: frozenset[bytes] = frozenset()


class RequestSide:
    """
    The request-side steps of an exchange (a mixin: the state lives on the exchange).
    """

    _log = Logger()

    front: HTTPProxyProtocol
    head: RequestHead
    info: RequestInfo
    framing: Framing
    route: Route
    request: ProxyRequest
    upgrade: bytes | None
    decoder: ChunkedDecoder | LengthDecoder | None
    finished: bool
    _early: tuple[list[bytes], bytes | None] | None

    if TYPE_CHECKING:

        def fail(self, status: int, reason: str, outcome: Any = None) -> None: ...
        def respond(self, response: ErrorResponse) -> None: ...
        def _over_body_limit(self, pieces: list[bytes]) -> bool: ...
        def _pick(self) -> None: ...

    def begin(self) -> None:
        """Authenticate, rewrite and send the request."""
        if self.framing.kind != "none" and self.upgrade is None:
            self.decoder = (
                LengthDecoder(self.framing.length)
                if self.framing.kind == "length"
                else ChunkedDecoder()
            )
            # Body bytes that came with the head are checked now, so that a malformed
            # chunk there never costs a backend connection.
            pending = self.front.take_buffer()
            if pending:
                try:
                    self._early = self.decoder.feed(pending)
                except HTTPError as e:
                    self.fail(e.status, e.detail)
                    return
                if self._over_body_limit(self._early[0]):
                    return
        route = self.route
        info = self.info
        triggers = route.request_triggers
        if (
            info.plain
            and info.lowered is not None
            and triggers is not None
            and not triggers(info.lowered)
            and self.front.factory.plain_requests
        ):
            # No hook would act on this request.
            self._prepare(hooks=False)
        elif route.authenticators:
            self._authenticate(0)
        else:
            self._prepare()

    def _authenticate(self, index: int) -> None:
        authenticators = self.route.authenticators
        while index < len(authenticators):
            try:
                verdict = authenticators[index].authenticate(self.request)
            except Exception:
                self._log.failure("authenticator {a!r} failed", a=authenticators[index])
                self.fail(500, "authentication failed")
                return
            index += 1
            if isinstance(verdict, Deferred):
                verdict.addCallbacks(self._authenticated, self._auth_failed, callbackArgs=(index,))
                return
            if verdict is not None:
                self.respond(verdict)
                return
        self._prepare()

    def _authenticated(self, verdict: ErrorResponse | None, index: int) -> None:
        if self.finished:
            return
        if verdict is not None:
            self.respond(verdict)
        else:
            self._authenticate(index)

    def _auth_failed(self, failure: Failure) -> None:
        self._log.failure("authenticator failed", failure)
        if not self.finished:
            self.fail(500, "authentication failed")

    def _prepare(self, hooks: bool = True) -> None:
        """
        Add the forwarding and framing fields, then run the request rewriters (unless not
        C{hooks}), and pick a backend.
        """
        front = self.front
        head = self.head
        headers = head.headers
        request = self.request
        info = self.info
        if info.plain and headers.raw is not None:
            # A simple head (scan_request) without any field forwarding removes or merges,
            # that no authenticator changed: the forwarding fields go after its fields.
            request.request_id = front.forwarding.append(
                headers,
                request.client_ip,
                request.scheme,
                info.host,
                front.local_port,
                front.forwarding_cache,
            )
        else:
            request.request_id = front.forwarding.apply(
                headers,
                info.connection,
                request.client_ip,
                request.scheme,
                info.host,
                front.local_port,
                _UPGRADE if self.upgrade is not None else _NOTHING,
                info.lowered,
                front.forwarding_cache,
            )
        if front.factory.client_cert_headers:
            for name, value in front.client_cert_fields():
                headers.add(name, value)
        if self.upgrade is not None:
            headers.add(b"Connection", b"upgrade")
        framing = self.framing
        if framing.kind == "length":
            headers.add(b"Content-Length", b"%d" % framing.length)
        elif framing.kind == "chunked":
            headers.add(b"Transfer-Encoding", b"chunked")
        route = self.route
        if route.strip_prefix:
            head.target = route.backend_path(head.target)
        if not hooks:
            self._pick()
            return
        try:
            for rewriter in route.request_rewriters:
                rewriter.rewrite_request(request)
            answer = front.factory.rewrite_request(request)
            for body_filter in route.response_body_filters:
                body_filter.prepare_request(request)
        except Exception:
            # A broken rewriter costs this request a 500, not the connection or the reactor.
            self._log.failure("rewriting a request for {route} failed", route=route.name)
            self.fail(500, "rewriting the request failed")
            return
        if answer is not None:
            self.respond(answer)
            return
        self._pick()
