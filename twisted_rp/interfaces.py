"""
The public extension points of twisted_rp.

Every protocol reaches a backend the same way: it builds a L{PickContext}, asks an
L{IBackendPool} for a L{Lease}, uses the backend the lease names, and releases the lease with
an L{Outcome}.  HTTP requests additionally pass through authenticators and rewriters, in this
order::

    parse head -> route -> IAuthenticator(s) -> IRequestRewriter(s) -> IBackendPool.pick
      -> backend -> response head -> IResponseRewriter(s) -> IResponseBodyFilter(s)
      -> client

Implementations are ordinary objects declared with C{@implementer}; the data they see is
described by the attrs classes in L{twisted_rp.pool.backend} and L{twisted_rp.http.message}.
An authenticator or rewriter that acts only on messages with certain fields may say so with
an C{only_with_fields} attribute (lower-cased names), which lets the proxy skip it for the
others (L{twisted_rp.http.routing.hook_triggers}).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBackendPool(Interface):
    """
    A named set of backends shared by every listener and route that names it.
    """

    name = Attribute("The pool's name (C{str}), as used in the configuration.")
    retries = Attribute(
        "How many other backends (C{int}) a protocol may try after a failed one: the first "
        "try and C{retries} more."
    )
    stickiness = Attribute("The pool's L{IStickiness}, or L{None}.")

    def pick(context):  # type: ignore[no-untyped-def]
        """
        Choose a backend for one request or session.

        @param context: what is known of the client and request.
        @type context: L{twisted_rp.pool.backend.PickContext}

        @return: a L{twisted_rp.pool.backend.Lease} when the pool can answer at once (the
            common case, kept synchronous because it runs for every request), or a L{Deferred}
            firing with one when the caller must wait (a full pool's queue).
        @raise twisted_rp.pool.backend.NoBackendAvailable: naming the reason, when there is no
            backend to offer now; a returned L{Deferred} fails with it after waiting.
        """

    def backends():  # type: ignore[no-untyped-def]
        """
        @return: the pool's backends, in configuration order (a sequence of
            L{twisted_rp.pool.backend.Backend}).
        """

    def release(lease, outcome):  # type: ignore[no-untyped-def]
        """
        Take back C{lease} (called by L{twisted_rp.pool.backend.Lease.release}) with the
        L{twisted_rp.pool.backend.Outcome} of its use.
        """

    def sticky_response_done(context, backend, response):  # type: ignore[no-untyped-def]
        """
        C{backend} answered the client of C{context}: let the stickiness pin it (through
        C{response}, a L{twisted_rp.pool.backend.StickyResponse}).  Protocols call this once per
        answered request or session.
        """


class IBalancer(Interface):
    """
    Chooses one backend among those a pool considers usable.

    A balancer whose C{choose} never reads C{context} may say so with a C{reads_context =
    False} attribute (optional): protocols may then pass a blank context on a first try
    (L{twisted_rp.pool.BackendPool.reads_context}).
    """

    def choose(candidates, context):  # type: ignore[no-untyped-def]
        """
        @param candidates: a non-empty sequence of usable L{Backend}s.
        @param context: the L{PickContext} of the request.
        @return: one of C{candidates}.
        """


class IAuthenticator(Interface):
    """
    Decides whether a request may proceed, before it is rewritten or sent anywhere.
    """

    def authenticate(request):  # type: ignore[no-untyped-def]
        """
        @param request: the L{twisted_rp.http.message.ProxyRequest} being handled; an
            authenticator may add headers to C{request.head.headers} and set
            C{request.identity}.
        @return: L{None} to allow, a L{twisted_rp.http.message.ErrorResponse} to answer the
            client instead, or a L{Deferred} firing with either.
        """


class IRequestRewriter(Interface):
    """
    Changes a request head before it goes to the backend.
    """

    def rewrite_request(request):  # type: ignore[no-untyped-def]
        """
        Mutate C{request.head} (method, target, headers) in place.  Called after authentication
        and before a backend is picked; must not block.

        @param request: the L{twisted_rp.http.message.ProxyRequest}.
        """


class IResponseRewriter(Interface):
    """
    Changes a response head before it goes to the client.
    """

    def rewrite_response(request, response):  # type: ignore[no-untyped-def]
        """
        Mutate C{response} (a L{twisted_rp.http.parser.ResponseHead}) in place.  Called once
        per final response (not for 1xx), after hop-by-hop headers were removed.

        @param request: the L{twisted_rp.http.message.ProxyRequest}, with C{request.backend}
            set to the L{Backend} that answered.
        """


class IResponseBodyFilter(Interface):
    """
    Transforms response bodies on a route, as they stream (substitution, compression).

    For each request on the route, C{prepare_request} runs after the request rewriters.  For
    each final response that has a body (never for a C{HEAD} request, 1xx, 204, 304, an
    empty body, or a 101 tunnel), C{start} runs after the response rewriters, in the route's
    order, each filter seeing the head the ones before it left.  The proxy then removes
    C{Content-Length} and sends the body chunked (or closes after it, for an HTTP/1.0 client)
    if any filter took the response.  Body bytes go through the filters in the same order.
    """

    def prepare_request(request):  # type: ignore[no-untyped-def]
        """
        Adjust the request before it goes to the backend (for example ask for an unencoded
        body); must not block.

        @param request: the L{twisted_rp.http.message.ProxyRequest}.
        """

    def start(request, response):  # type: ignore[no-untyped-def]
        """
        Decide whether to transform this response; may change C{response.headers} (but not
        the framing fields, which the proxy sets).

        @param request: the L{twisted_rp.http.message.ProxyRequest}.
        @param response: the L{twisted_rp.http.message.ResponseHead} about to be sent.
        @return: an L{IBodyTransform} for this response's body, or L{None} to leave it alone.
        """


class IBodyTransform(Interface):
    """
    One response body being transformed.  Each call returns the bytes to send now (possibly
    empty); it must hold back no more than a small bounded amount, never the whole body.
    """

    def feed(data):  # type: ignore[no-untyped-def]
        """Transform C{data} (C{bytes}), the next body bytes from the backend."""

    def flush():  # type: ignore[no-untyped-def]
        """
        Everything that can be sent now: called after the body bytes of each read from the
        backend, so that a streamed page reaches the client as it is produced.
        """

    def finish():  # type: ignore[no-untyped-def]
        """The body ended: the last bytes (no call follows)."""


class IAccessLog(Interface):
    """
    Receives one record per completed (or failed) request.
    """

    def log(record):  # type: ignore[no-untyped-def]
        """
        @param record: a L{twisted_rp.http.message.AccessRecord}.
        """


class IStickiness(Interface):
    """
    Keeps a client on the backend it used before (session affinity).

    A pool asks C{pinned} before balancing; protocols call C{pin} after a backend answered,
    giving it a L{twisted_rp.pool.backend.StickyResponse} through which an HTTP
    implementation reads and sets cookies (other protocols pass a response that has none).
    """

    strict = Attribute(
        "C{True}: when the pinned backend is not usable, refuse (503) rather than re-pin."
    )

    def pinned(context):  # type: ignore[no-untyped-def]
        """
        @param context: the L{twisted_rp.pool.backend.PickContext}.
        @return: the name of the backend C{context}'s client is pinned to, or L{None}.
        """

    def pin(context, backend, response):  # type: ignore[no-untyped-def]
        """
        Remember that C{context}'s client uses C{backend} (a
        L{twisted_rp.pool.backend.Backend}); called once per answered request or session.

        @param response: a L{twisted_rp.pool.backend.StickyResponse}.
        """


class IHealthMonitor(Interface):
    """
    One active health probe of a backend.
    """

    def check(backend):  # type: ignore[no-untyped-def]
        """
        Probe C{backend} (a L{twisted_rp.pool.backend.Backend}) once.

        @return: a L{Deferred} firing with L{None} when healthy, failing with an exception whose
            message says what was wrong otherwise.  The caller enforces the timeout (it cancels
            the L{Deferred}).
        """


class IPoolObserver(Interface):
    """
    Receives a pool's state changes (the admin side and metrics subscribe).
    """

    def backend_changed(pool, backend, reason):  # type: ignore[no-untyped-def]
        """
        C{backend}'s health or admin state changed.

        @param pool: the pool's name.
        @param reason: a short human-readable reason (C{"3 failed checks: connection
            refused"}).
        """


class IExtension(Interface):
    """
    A named, configurable extension the configuration file can use: a middleware (any of
    L{IAuthenticator}, L{IRequestRewriter}, L{IResponseRewriter}) named by a route, or a
    pool's L{IBalancer}, L{IStickiness} or L{IHealthMonitor}.

    Third-party ones are found as Twisted plugins (module-level objects providing this and
    C{twisted.plugin.IPlugin} in a C{twisted/plugins/} package) or by dotted name.
    L{twisted_rp.extensions.Extension} implements this for a plain class or factory function.
    """

    name = Attribute("The name (C{str}) the configuration uses for it.")
    kind = Attribute(
        'What it builds: C{"middleware"}, C{"balancer"}, C{"stickiness"} or C{"health_check"}.'
    )

    def parse(options):  # type: ignore[no-untyped-def]
        """
        Validate the extension's options when the configuration is read.

        @param options: a L{twisted_rp.extensions.ExtensionOptions}, whose C{error} makes the
            configuration error that names the exact key.
        @return: the settings L{build} gets (preferably immutable).
        @raise twisted_rp.config.ConfigError: an option is missing, unknown or wrong.
        """

    def build(settings, reactor):  # type: ignore[no-untyped-def]
        """
        Make the extension when the service is built.

        @param settings: what L{parse} returned.
        @param reactor: the reactor the proxy runs on.
        @return: the provider (of the interfaces the kind names).
        @raise ValueError: something the settings name cannot be used (reported as a
            configuration error naming the extension's table).
        @raise OSError: a file the settings name cannot be read (likewise).
        """


class IOutcomeObserver(Interface):
    """
    Told how every use of a pool's backends ended (the admin side's statistics subscribe).
    Called on the hot path, once per request or session: it must be quick and must not raise.
    """

    def outcome(pool, backend, outcome):  # type: ignore[no-untyped-def]
        """
        A lease on C{backend} (a L{twisted_rp.pool.backend.Backend}) was released.

        @param pool: the pool's name.
        @param outcome: the L{twisted_rp.pool.backend.Outcome}.
        """


class IRequestObserver(Interface):
    """
    Told of every HTTP request a listener answered, whether or not a backend was involved.
    Called once per request: it must be quick and must not raise.
    """

    def request_done(route, pool, backend, status, duration):  # type: ignore[no-untyped-def]
        """
        @param route: the route's name (C{"route[0]"}), C{""} when none matched.
        @param pool: the pool's name, C{""} without a route.
        @param backend: the name of the backend that answered, C{""} when none did.
        @param status: the status sent to the client (C{int}).
        @param duration: seconds from the request head to the end of the response.
        """


class IFTPObserver(Interface):
    """
    Told of FTP sessions and data transfers.
    """

    def session_opened():  # type: ignore[no-untyped-def]
        """A client's control connection was accepted."""

    def session_closed():  # type: ignore[no-untyped-def]
        """A session L{session_opened} announced has ended."""

    def data_done(to_client, to_backend):  # type: ignore[no-untyped-def]
        """
        A data channel closed after relaying C{to_client} bytes from the backend to the
        client and C{to_backend} bytes the other way.
        """


class ITLSObserver(Interface):
    """
    Told of the TLS handshakes of a listener.
    """

    def handshake_done(version, resumed):  # type: ignore[no-untyped-def]
        """
        A client's handshake completed.

        @param version: the protocol version, like C{"TLSv1.3"}.
        @param resumed: whether an earlier session was resumed.
        """

    def handshake_failed():  # type: ignore[no-untyped-def]
        """A client's handshake failed (a fatal alert sent or received, or not TLS at all)."""
