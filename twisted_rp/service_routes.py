"""
Turning the C{[[route]]} and C{[middleware.NAME]} tables into the L{Route}s of a listener:
what runs on a request, in which order.

For every route, in order::

    authenticators:     remove the identity header the client sent
                        the listener's allow/deny lists, then the route's
                        the route's middlewares that authenticate, in order
                        set the identity header from the authenticated user
    request rewriters:  note the client's Host (redirect mapping)
                        the route's middlewares that rewrite requests, in order
    response rewriters: redirect URLs and cookies that name a backend, made public
                        the route's middlewares that rewrite responses, in order
                        Cache-Control: no-store (no_store)
    body filters:       substitution (substitute), then gzip (compress)

A middleware providing several interfaces takes every place it fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted_rp.auth.identity import IdentityHeader, RemoveIdentityHeader
from twisted_rp.auth.ipfilter import IPFilter
from twisted_rp.config import Config, ListenerConfig, RouteConfig
from twisted_rp.http.routing import Route, Router
from twisted_rp.interfaces import (
    IAuthenticator,
    IBackendPool,
    IRequestRewriter,
    IResponseRewriter,
)
from twisted_rp.rewrite import CookieRewriter, Gzip, NoStore, RedirectRewriter, Substitute


def build_middlewares(
    config: Config, reactor: Any, keep: Mapping[str, object] | None = None
) -> dict[str, object]:
    """
    One object per C{[middleware.NAME]} table, by name, shared by every route naming it.

    @param keep: objects still valid for some names (a reload whose tables for them did not
        change): used as they are, with their caches and connections.
    @raise ConfigError: naming the middleware's table, when one cannot be built (a file it
        names is missing, say).
    """
    keep = keep or {}
    return {
        m.name: keep[m.name] if m.name in keep else m.extension.build(reactor, config.source)
        for m in config.middlewares
    }


def listener_filter(listener: ListenerConfig) -> IPFilter | None:
    """The filter of C{listener}'s C{allow} and C{deny} lists; L{None} without them."""
    if not listener.allow and not listener.deny:
        return None
    return IPFilter([str(n) for n in listener.allow], [str(n) for n in listener.deny])


def _body_filters(route: RouteConfig) -> tuple[Any, ...]:
    """
    The response body filters of C{substitute} and C{compress}: substitution first, on
    the backend's plain text, then compression of the result.
    """
    filters: list[Any] = []
    if route.substitute:
        types = {"content_types": route.substitute_types} if route.substitute_types else {}
        filters.append(Substitute(route.substitute, **types))
    if route.compress:
        filters.append(Gzip(level=route.compress_level))
    return tuple(filters)


def build_route(
    route: RouteConfig,
    pool: IBackendPool,
    middlewares: Mapping[str, object],
    listener: ListenerConfig | None = None,
    name: str = "",
) -> Route:
    """The L{Route} C{route} describes, sending to C{pool}, with its chains assembled."""
    authenticators: list[Any] = []
    if listener is not None:
        for_listener = listener_filter(listener)
        if for_listener is not None:
            authenticators.append(for_listener)
    if route.allow or route.deny:
        authenticators.append(IPFilter([str(n) for n in route.allow], [str(n) for n in route.deny]))
    used = [middlewares[m] for m in route.middlewares]
    authenticators.extend(m for m in used if IAuthenticator.providedBy(m))
    request: list[Any] = []
    response: list[Any] = []
    if route.rewrite_redirects:
        aliases = tuple(a.encode("ascii") for a in route.redirect_aliases)
        # Its request side only notes the client's Host, which request.authority holds.
        response.append(RedirectRewriter(aliases))
    if route.rewrite_cookies or route.cookie_domains:
        domains = {k.encode("ascii"): v.encode("ascii") for k, v in route.cookie_domains}
        response.append(
            CookieRewriter(
                domains,
                path_prefix=None if route.rewrite_cookies else "",
                automatic=route.rewrite_cookies,
            )
        )
    request.extend(m for m in used if IRequestRewriter.providedBy(m))
    response.extend(m for m in used if IResponseRewriter.providedBy(m))
    if route.no_store:
        response.append(NoStore())
    identity = IdentityHeader(route.identity_header)
    # Without authenticators nothing can name a user: removing the client's copy is enough.
    chain: list[Any] = (
        identity.chain(authenticators) if authenticators else [RemoveIdentityHeader(identity)]
    )
    return Route(
        pool,
        hosts=route.hosts,
        path_prefix=route.path_prefix,
        strip_prefix=route.strip_prefix,
        preserve_host=route.preserve_host,
        authenticators=tuple(chain),
        request_rewriters=tuple(request),
        response_rewriters=tuple(response),
        name=name,
        response_body_filters=_body_filters(route),
    )


def build_routes(
    config: Config,
    listener: ListenerConfig,
    pools: Mapping[str, IBackendPool],
    middlewares: Mapping[str, object] | None = None,
) -> list[Route]:
    """
    The routes that apply to C{listener}, in configuration order, using C{pools} and the
    built C{middlewares} (L{build_middlewares}; a config naming any needs them).

    Each route is named after its place in the file (C{route[0]}, ...) so logs can point at it.
    """
    middlewares = middlewares or {}
    routes = []
    for index, route in enumerate(config.routes):
        if route.listeners and listener.name not in route.listeners:
            continue
        routes.append(
            build_route(route, pools[route.pool], middlewares, listener, f"route[{index}]")
        )
    return routes


def build_router(
    config: Config,
    listener: ListenerConfig,
    pools: Mapping[str, IBackendPool],
    middlewares: Mapping[str, object] | None = None,
) -> Router:
    """
    The L{Router} of one listener.
    """
    return Router(build_routes(config, listener, pools, middlewares))


__all__ = [
    "build_middlewares",
    "build_route",
    "build_router",
    "build_routes",
    "listener_filter",
]
