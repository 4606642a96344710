"""
The public extension points of twisted_rp.

Every protocol reaches a backend the same way: it builds a L{PickContext}, asks an
L{IBackendPool} for a L{Lease}, uses the backend the lease names, and releases the lease with
an L{Outcome}.  HTTP requests additionally pass through authenticators and rewriters, in this
order::

    parse head -> route -> IAuthenticator(s) -> IRequestRewriter(s) -> IBackendPool.pick
      -> backend -> response head -> IResponseRewriter(s) -> client

Implementations are ordinary objects declared with C{@implementer}; the data they see is
described by the attrs classes in L{twisted_rp.pool.backend} and L{twisted_rp.http.message}.
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
