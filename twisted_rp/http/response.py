"""
The response head a client gets: framing for its connection, hop-by-hop fields removed, and
the hooks that may change it (stickiness, connection-bound authentication, rewriters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.http.body import encode_chunk
from twisted_rp.http.forwarding import remove_hop_by_hop
from twisted_rp.http.message import ProxyRequest, ResponseHead
from twisted_rp.http.parser import Framing, ResponseInfo
from twisted_rp.http.routing import Route
from twisted_rp.http.scan import SimpleResponse
from twisted_rp.interfaces import IBodyTransform
from twisted_rp.pool.backend import Lease, Outcome, PickContext, StickyResponse

if TYPE_CHECKING:
    from twisted_rp.http.backend import BackendConnection
    from twisted_rp.http.exchange import Exchange
    from twisted_rp.http.front import HTTPProxyProtocol

_NOTHING: frozenset[bytes] = frozenset()
#: Response fields the proxy re-creates for the client connection.
_RESPONSE_FRAMING = frozenset({b"content-length"})
#: Connection-oriented authentication: the client connection must keep its backend connection.
_CONNECTION_AUTH = (b"ntlm", b"negotiate")


class _HTTPStickyResponse(StickyResponse):
    """A response head as stickiness sees it: its Set-Cookie fields, and a way to add one."""

    def __init__(self, head: ResponseHead) -> None:
        self._head = head

    def header_values(self, name: str) -> list[str]:
        return [v.decode("latin-1") for v in self._head.headers.get_all(name.encode("latin-1"))]

    def set_cookie(self, value: str) -> None:
        self._head.headers.add(b"Set-Cookie", value.encode("latin-1"))


@implementer(IBodyTransform)
class FilterChain:
    """Several body transforms applied one after the other, as one."""

    def __init__(self, transforms: Sequence[IBodyTransform]) -> None:
        self._transforms = tuple(transforms)

    def feed(self, data: bytes) -> bytes:
        for transform in self._transforms:
            data = transform.feed(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for transform in self._transforms:
            # What one transform releases on flush must reach the next before it flushes.
            data = transform.feed(data) if data else b""
            data += transform.flush()
        return data

    def finish(self) -> bytes:
        data = b""
        for transform in self._transforms:
            data = transform.feed(data) if data else b""
            data += transform.finish()
        return data


class ResponseHeads:
    """
    The response-head half of an L{twisted_rp.http.exchange.Exchange} (a mixin: the state
    it uses lives on the exchange).
    """

    # The response-side state (class defaults: see the exchange); it declares the rest.
    _out: list[bytes]
    backend_time: float | None = None
    bind_connection = False
    body_filter: IBodyTransform | None = None
    close_after = False
    response_chunked = False
    response_started = False
    status = 0

    front: HTTPProxyProtocol
    route: Route
    request: ProxyRequest
    lease: Lease | None
    connection: BackendConnection | None
    context: PickContext | None
    upgrade: bytes | None
    client_version: bytes
    request_done: bool
    sent_at: float
    bytes_sent: int

    if TYPE_CHECKING:

        def _end(self, outcome: Outcome, keep_alive: bool, abort: bool = False) -> None: ...

    _log = Logger()

    def on_informational(self, head: ResponseHead) -> bool:
        if head.status == 101 and self.upgrade is not None:
            self.on_response_head(head, ResponseInfo(Framing("none"), []))
            self.front.start_tunnel(cast("Exchange", self))
            return True
        if head.status != 100 and self.client_version == b"HTTP/1.1":
            remove_hop_by_hop(head.headers, [])
            self._out.append(self._serialize_head(head))
        return False

    def on_response_head(self, head: ResponseHead, info: ResponseInfo) -> None:
        front = self.front
        self.response_started = True
        self.status = head.status
        self.backend_time = front.clock.seconds() - self.sent_at
        framing = info.framing
        connection = info.connection
        headers = head.headers
        kind = framing.kind
        if info.cut is not None and headers.raw is not None and kind == "length":
            self._fast_response_head(head, info.cut, headers.raw, framing)
            return
        if head.status == 101:
            self.close_after = True
            remove_hop_by_hop(headers, connection, _NOTHING)
            headers.fields = [f for f in headers.fields if f[0] != b"connection"]
            headers.add(b"Connection", b"upgrade")
            headers.add(b"Upgrade", self.upgrade or b"")
        else:
            # A bodiless response (HEAD, 204, 304) keeps its Content-Length: it describes the
            # representation, not this message.
            remove_hop_by_hop(
                headers, connection, _NOTHING if kind == "none" else _RESPONSE_FRAMING
            )
            client_11 = self.client_version == b"HTTP/1.1"
            if kind == "length":
                headers.fields.append(
                    [b"content-length", b"Content-Length", b"%d" % framing.length]
                )
            elif kind != "none":
                if client_11:
                    headers.fields.append([b"transfer-encoding", b"Transfer-Encoding", b"chunked"])
                    self.response_chunked = True
                else:
                    self.close_after = True
            if not self.request_done or front.closing or not front.wants_keepalive:
                self.close_after = True
            if self.close_after:
                headers.fields.append([b"connection", b"Connection", b"close"])
            elif not client_11:
                headers.fields.append([b"connection", b"Connection", b"keep-alive"])
        self._response_hooks(head, framing)
        self._out.append(self._serialize_head(head))

    def _response_hooks(self, head: ResponseHead, framing: Framing) -> None:
        """Stickiness, connection-bound authentication, then the route's rewriters."""
        pool = self.route.pool
        hsts = self.front.factory.hsts
        if (
            hsts is not None
            and head.headers.raw is None
            and b"strict-transport-security" not in head.headers
        ):
            head.headers.add(b"Strict-Transport-Security", hsts)
        lease = self.lease
        sticky = getattr(pool, "stickiness", None)
        if lease is not None and self.context is not None and sticky is not None:
            pool.sticky_response_done(self.context, lease.backend, _HTTPStickyResponse(head))
        if head.status == 401 and not self.bind_connection:
            for challenge in head.headers.get_all(b"www-authenticate"):
                if challenge.lower().startswith(_CONNECTION_AUTH):
                    self.bind_connection = True
                    break
        request = self.request
        route = self.route
        for rewriter in route.response_rewriters:
            rewriter.rewrite_response(request, head)
        filters = route.response_body_filters
        if filters and framing.kind != "none" and (framing.kind != "length" or framing.length):
            self._start_body_filters(head, framing)

    def _start_body_filters(self, head: ResponseHead, framing: Framing) -> None:
        """Let the route's body filters take the response, and re-frame it if any did."""
        request = self.request
        transforms: list[IBodyTransform] = []
        for body_filter in self.route.response_body_filters:
            try:
                transform = body_filter.start(request, head)
            except Exception:
                self._log.failure("response body filter {f!r} failed", f=body_filter)
                continue
            if transform is not None:
                transforms.append(transform)
        if not transforms:
            return
        self.body_filter = transforms[0] if len(transforms) == 1 else FilterChain(transforms)
        if framing.kind != "length":
            # Already chunked for the client, or delimited by closing.
            return
        headers = head.headers
        headers.remove(b"content-length")
        if self.client_version == b"HTTP/1.1":
            headers.add(b"Transfer-Encoding", b"chunked")
            self.response_chunked = True
        else:
            self.close_after = True
            headers.set(b"Connection", b"close")

    def _filtered(self, pieces: list[bytes]) -> list[bytes]:
        """The body bytes of one read from the backend, through the body filter and flushed."""
        body_filter = self.body_filter
        assert body_filter is not None
        try:
            out = [body_filter.feed(piece) for piece in pieces]
            out.append(body_filter.flush())
        except Exception:
            self._filter_failed()
            return []
        data = b"".join(out)
        return [data] if data else []

    def _finish_filter(self, body_filter: IBodyTransform) -> bool:
        """Send the body filter's last bytes; C{False} if it failed (the exchange ended)."""
        self.body_filter = None
        try:
            tail = body_filter.finish()
        except Exception:
            self._filter_failed()
            return False
        if tail:
            self.bytes_sent += len(tail)
            self._out.append(encode_chunk(tail) if self.response_chunked else tail)
        return True

    def _filter_failed(self) -> None:
        exchange = cast("Exchange", self)
        self._log.failure(
            "{request_id}: response body filter failed", request_id=self.request.request_id
        )
        self.body_filter = None
        # Part of the response may be out: only an abort tells the client it is incomplete,
        # and nothing may follow it.
        self.response_chunked = False
        self._out = []
        exchange._end(Outcome("aborted", exchange._elapsed()), keep_alive=False, abort=True)

    def simple_response(self, simple: SimpleResponse, body: bytes) -> bool:
        """
        Answer with a complete simple response in one write, when no hook of the route
        would act on it; C{False} (nothing done) sends it the general way.
        """
        _, status, reason, fields, lowered, _, cut, _ = simple
        route = self.route
        triggers = route.response_triggers
        if status == 401 or triggers is None or getattr(route.pool, "stickiness", None) is not None:
            return False
        connection = self.connection
        assert connection is not None
        if connection.quiet_head is not simple or connection.quiet_triggers is not triggers:
            if triggers(lowered):
                return False
            # The connection reuses its reading of a repeated head: the verdict holds too.
            connection.quiet_head, connection.quiet_triggers = simple, triggers
        front = self.front
        self.response_started = True
        self.status = status
        elapsed = self.backend_time = front.clock.seconds() - self.sent_at
        fields = self._client_fields(fields, cut)
        self.bytes_sent = len(body)
        if fields:
            data = b"HTTP/1.1 %d %s\r\n%s\r\n\r\n%s" % (status, reason, fields, body)
        else:
            data = b"HTTP/1.1 %d %s\r\n\r\n%s" % (status, reason, body)
        if self._out:
            # Informational heads read before it.
            self._out.append(data)
            data = b"".join(self._out)
            self._out = []
        front.write(data)
        outcome = Outcome("server_error" if status >= 500 else "ok", elapsed)
        self._end(outcome, keep_alive=not self.close_after)
        return True

    def _client_fields(self, fields: bytes, cut: tuple[int, int]) -> bytes:
        """
        An unsplit response field block as the client gets it: without the C{cut} span (the
        C{Connection} field), with this connection's C{Connection} and HSTS fields.
        """
        front = self.front
        start, end = cut
        if end:
            fields = fields[:start] + fields[end:]
        if not self.request_done or front.closing or not front.wants_keepalive:
            self.close_after = True
        if self.close_after:
            fields = fields + b"\r\nConnection: close" if fields else b"Connection: close"
        elif self.client_version != b"HTTP/1.1":
            fields = fields + b"\r\nConnection: keep-alive" if fields else b"Connection: keep-alive"
        hsts = front.factory.hsts
        if hsts is not None and b"strict-transport-security:" not in fields.lower():
            field = b"Strict-Transport-Security: " + hsts
            fields = fields + b"\r\n" + field if fields else field
        return fields

    def _fast_response_head(
        self, head: ResponseHead, cut: tuple[int, int], raw: bytes, framing: Framing
    ) -> None:
        # The common response: plain Content-Length, at most a Connection field to drop.
        head.headers.replace_raw(self._client_fields(raw, cut))
        route = self.route
        if (
            head.status == 401
            or route.response_rewriters
            or route.response_body_filters
            or getattr(route.pool, "stickiness", None) is not None
        ):
            self._response_hooks(head, framing)
        self._out.append(self._serialize_head(head))

    def _serialize_head(self, head: ResponseHead) -> bytes:
        return b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.status, head.reason, head.headers.serialize())
