"""
The express way of an L{twisted_rp.http.exchange.Exchange}: a simple request that no hook acts
on, sent from its raw parts, whose head, info and request are made only when something asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_rp.http.message import Headers, ProxyRequest, RequestHead
from twisted_rp.http.parser import HTTP_11, NO_BODY, Framing, RequestInfo
from twisted_rp.http.routing import Route
from twisted_rp.pool.backend import BLANK_CONTEXT, Lease, PickContext

if TYPE_CHECKING:
    from twisted_rp.http.backend import BackendConnection
    from twisted_rp.http.front import HTTPProxyProtocol


def simple_request(
    front: HTTPProxyProtocol,
    method: bytes,
    target: bytes,
    headers: Headers,
    lowered: bytes,
    authority: bytes,
    host: str,
) -> tuple[RequestHead, RequestInfo, ProxyRequest]:
    """
    The head, info and request of a simple request (L{twisted_rp.http.scan.scan_request})
    from C{front}'s client: C{headers} unsplit, C{lowered} CRLF and their block lower-cased.
    """
    head = RequestHead(method, target, HTTP_11, headers)
    info = RequestInfo(NO_BODY, authority, [], None, None, lowered, plain=True)
    request = ProxyRequest(
        head, front.client_ip, front.client_port, front.factory.scheme, host, authority=authority
    )
    return head, info, request


_SimpleParts = tuple[bytes, bytes, Headers, bytes, bytes, str]


class _Made:
    """
    An express exchange's head, info or request, made when first asked for.  (Not
    C{__getattr__}: it would slow every attribute lookup on every exchange.)
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, exchange: ExpressStart | None, owner: type) -> Any:
        if exchange is None:
            return self
        express = exchange._express
        if express is None:
            raise AttributeError(self.name)
        exchange._materialize(*express)
        return exchange.__dict__[self.name]


class ExpressStart:
    """
    The express start of an exchange (a mixin: the state lives on the exchange).
    """

    # What an express exchange has instead of a head, info and request.
    framing: Framing = NO_BODY
    upgrade: bytes | None = None
    client_version = HTTP_11
    _express: tuple[_SimpleParts, str, Any] | None = None
    if not TYPE_CHECKING:
        head = _Made()
        info = _Made()
        request = _Made()

    if TYPE_CHECKING:
        head: RequestHead
        info: RequestInfo
        request: ProxyRequest
        front: HTTPProxyProtocol
        route: Route
        client_method: bytes
        client_target: bytes
        started: float
        sent_at: float
        attempts: int
        request_done: bool
        context: PickContext | None
        lease: Lease | None
        connection: BackendConnection | None
        _out: list[bytes]

        def _context(self, client_ip: str, host: str, headers: Headers) -> PickContext: ...
        def _no_backend(self, failure: Failure) -> None: ...
        def _picked(self, lease: Lease) -> None: ...
        def _connect_new(self) -> None: ...
        def _send(self, connection: BackendConnection) -> None: ...

    def start_express(
        self,
        front: HTTPProxyProtocol,
        route: Route,
        method: bytes,
        target: bytes,
        block: bytes,
        lowered: bytes,
        authority: bytes,
        host: str,
    ) -> None:
        """
        Start a simple request (L{twisted_rp.http.scan.scan_request}) that no hook acts on
        and that the factory's override points leave alone: the common request, sent with as
        little work as possible.

        Its head, info and request are made only when something asks for them (a response
        hook, the access log, an observer, a failure); any turn off the common way makes
        them first, and goes on as any exchange would.  (Called on an exchange made by
        C{Exchange.__new__}, instead of C{__init__}.)
        """
        self.front = front
        self.route = route
        self.client_method = method
        self.client_target = target
        clock = front.clock
        self.started = clock.seconds()
        self._out = []
        block, request_id = front.forwarding.append_block(
            block,
            front.client_ip,
            front.factory.scheme,
            authority,
            front.local_port,
            front.forwarding_cache,
        )
        if route.strip_prefix:
            target = route.backend_path(target)
        headers = Headers.from_block(block)
        parts = (method, target, headers, lowered, authority, host)
        self.attempts = 1
        pool = route.pool
        if getattr(pool, "reads_context", True) or getattr(pool, "stickiness", None) is not None:
            context = self._context(front.client_ip, host, headers)
        else:
            context = BLANK_CONTEXT
        self.context = context
        try:
            lease = pool.pick(context)
        except Exception:
            self._materialize(parts, request_id, None)
            self._no_backend(Failure())
            return
        if type(lease) is not Lease:
            self._materialize(parts, request_id, None)
            if isinstance(lease, Deferred):
                lease.addCallbacks(self._picked, self._no_backend)
            else:
                self._picked(lease)
            return
        self.lease = lease
        backend = lease.backend
        connection = front.connections.take_idle(backend)
        if connection is None or not route.preserve_host:
            self._materialize(parts, request_id, backend)
            if connection is None:
                self._connect_new()
            else:
                self._send(connection)
            return
        self._express = (parts, request_id, backend)
        self.connection = connection
        # The exchange this mixin is part of is the connection's sink.
        connection.start(self, method)  # type: ignore[arg-type]
        if front.client_full:
            connection.transport.pauseProducing()
        self.sent_at = clock.seconds()
        self.request_done = True
        connection.write(method + b" " + target + b" HTTP/1.1\r\n" + block + b"\r\n\r\n")

    def _materialize(self, parts: _SimpleParts, request_id: str, backend: Any) -> None:
        """
        Make an express exchange's head, info and request, as L{__init__} would have, from
        the arguments of L{simple_request} after the front.
        """
        self.head, self.info, request = simple_request(self.front, *parts)
        self.request = request
        request.route = self.route
        request.request_id = request_id
        request.backend = backend
        self._express = None
