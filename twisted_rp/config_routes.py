"""
The C{[[route]]} and C{[middleware.NAME]} tables of the configuration file.
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

from twisted_rp.config_listeners import ListenerConfig
from twisted_rp.config_pools import PoolConfig
from twisted_rp.config_readers import (
    _boolean,
    _integer,
    _list_of,
    _network,
    _path_prefix,
    _route_host,
    _Section,
    _string,
    _text,
    _token,
)
from twisted_rp.extensions import ExtensionRef, read_extension
from twisted_rp.settings import Network

#: The identity header every route removes from clients' requests and sets after
#: authentication, unless a route names another.
IDENTITY_HEADER = "X-Authenticated-User"


@frozen
class MiddlewareConfig:
    """
    A C{[middleware.NAME]} table: an authenticator or rewriter routes use by name.

    @ivar extension: its type and validated options.
    """

    name: str
    extension: ExtensionRef


@frozen
class RouteConfig:
    """
    Which HTTP requests go to which pool, and what happens to them on the way.

    @ivar hosts: lower-case host names the route matches (C{*.example.com} matches any
        subdomain); empty matches every host.
    @ivar strip_prefix: remove C{path_prefix} from the path sent to the backend.
    @ivar preserve_host: send the client's C{Host}; otherwise the backend's C{host:port}.
    @ivar listeners: names of the listeners the route applies to; empty means every HTTP
        and HTTPS listener (except those that only redirect to HTTPS).
    @ivar middlewares: names of C{[middleware.NAME]} tables, in the order they run.
    @ivar allow: client networks allowed (empty: all); checked before the middlewares.
    @ivar deny: client networks refused.
    @ivar identity_header: the header that tells the backend who authenticated; always
        removed from the client's request first.
    @ivar rewrite_redirects: map C{Location}, C{Content-Location} and C{Refresh} URLs that
        name a backend to the public URL.
    @ivar redirect_aliases: more C{host} or C{host:port} names the backends call
        themselves.
    @ivar rewrite_cookies: remove a backend's own C{Domain} from C{Set-Cookie} and put the
        stripped prefix in front of its C{Path}.
    @ivar cookie_domains: internal cookie domain to public one.
    @ivar substitute: search and replacement pairs applied to text response bodies,
        streamed (C{[[route.substitute]]}).
    @ivar substitute_types: the media types C{substitute} changes; the default text types
        when empty.
    @ivar compress: gzip compressible responses for clients that accept it.
    @ivar compress_level: the gzip level, 1 (fastest, as nginx's default) to 9.
    @ivar no_store: add C{Cache-Control: no-store} to every response ("never cache").
    """

    pool: str
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    strip_prefix: bool = False
    preserve_host: bool = True
    listeners: tuple[str, ...] = ()
    middlewares: tuple[str, ...] = ()
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    identity_header: str = IDENTITY_HEADER
    rewrite_redirects: bool = True
    redirect_aliases: tuple[str, ...] = ()
    rewrite_cookies: bool = True
    cookie_domains: tuple[tuple[str, str], ...] = ()
    substitute: tuple[tuple[bytes, bytes], ...] = ()
    substitute_types: tuple[str, ...] = ()
    compress: bool = False
    compress_level: int = 1
    no_store: bool = False


def read_middleware(name: str, section: _Section) -> MiddlewareConfig:
    """A C{[middleware.NAME]} table: C{type} and the type's own options."""
    return MiddlewareConfig(name, read_extension("middleware", section))


def _cookie_domains(section: _Section) -> tuple[tuple[str, str], ...]:
    table = section.table("cookie_domains")
    pairs = []
    for internal in table.names():
        public = table.required(internal, _text)
        if ";" in public or any(ord(c) < 0x21 for c in public):
            raise table.error(internal, f"not a cookie domain: {public!r}")
        pairs.append((internal, public))
    return tuple(pairs)


def _substitutions(section: _Section) -> tuple[tuple[bytes, bytes], ...]:
    rules = []
    for table in section.tables("substitute"):
        table.allow("search", "replace")
        search = table.required("search", _string)
        replace = table.required("replace", _text)
        rules.append((search.encode("utf-8"), replace.encode("utf-8")))
    if not rules:
        raise section.error("substitute", "expected at least one { search, replace } table")
    return tuple(rules)


def _check_body_filters(section: _Section, options: Mapping[str, object]) -> None:
    """Let the filter classes check what they take (media types), naming the key."""
    from twisted_rp.rewrite.body import Substitute

    types = options.get("substitute_types")
    if types:
        try:
            Substitute([(b"x", b"y")], types)  # type: ignore[arg-type]
        except ValueError as error:
            raise section.error("substitute_types", str(error)) from None


def read_route(
    section: _Section,
    pools: Mapping[str, PoolConfig],
    listeners: Mapping[str, ListenerConfig],
    middlewares: Mapping[str, MiddlewareConfig],
) -> RouteConfig:
    """A C{[[route]]} table, checked against the pools, listeners and middlewares defined."""
    section.allow(
        "hosts",
        "path_prefix",
        "strip_prefix",
        "pool",
        "preserve_host",
        "listeners",
        "middlewares",
        "allow",
        "deny",
        "identity_header",
        "rewrite_redirects",
        "redirect_aliases",
        "rewrite_cookies",
        "cookie_domains",
        "substitute",
        "substitute_types",
        "compress",
        "compress_level",
        "no_store",
    )
    pool = section.required("pool", _string)
    if pool not in pools:
        defined = ", ".join(pools) or "none"
        raise section.error("pool", f"no pool named {pool!r} (defined: {defined})")
    options = section.optional(
        {
            "hosts": _list_of(_route_host),
            "path_prefix": _path_prefix,
            "strip_prefix": _boolean,
            "preserve_host": _boolean,
            "listeners": _list_of(_string),
            "middlewares": _list_of(_string),
            "allow": _list_of(_network),
            "deny": _list_of(_network),
            "identity_header": _token,
            "rewrite_redirects": _boolean,
            "redirect_aliases": _list_of(_string),
            "rewrite_cookies": _boolean,
            "substitute_types": _list_of(_string),
            "compress": _boolean,
            "compress_level": _integer(1, 9),
            "no_store": _boolean,
        }
    )
    if section.has("cookie_domains"):
        options["cookie_domains"] = _cookie_domains(section)
    if section.has("substitute"):
        options["substitute"] = _substitutions(section)
    elif "substitute_types" in options:
        raise section.error("substitute_types", "has no effect without [[route.substitute]]")
    if "compress_level" in options and not options.get("compress"):
        raise section.error("compress_level", "has no effect without compress = true")
    _check_body_filters(section, options)
    for index, name in enumerate(options.get("listeners", ())):
        listener = listeners.get(name)
        if listener is None:
            raise section.error(f"listeners[{index}]", f"no listener named {name!r}")
        if listener.protocol not in ("http", "https"):
            raise section.error(f"listeners[{index}]", f"not an http listener named {name!r}")
        if listener.redirect_to_https is not None:
            raise section.error(
                f"listeners[{index}]",
                f"listener {name!r} only redirects to HTTPS (redirect_to_https): no route "
                "applies to it",
            )
    for index, name in enumerate(options.get("middlewares", ())):
        if name not in middlewares:
            defined = ", ".join(middlewares) or "none"
            raise section.error(
                f"middlewares[{index}]", f"no middleware named {name!r} (defined: {defined})"
            )
    from twisted_rp.rewrite.redirects import parse_authority

    for index, alias in enumerate(options.get("redirect_aliases", ())):
        if parse_authority(alias.encode("ascii", "replace")) is None:
            raise section.error(
                f"redirect_aliases[{index}]", f"expected host or host:port, got {alias!r}"
            )
    return RouteConfig(pool=pool, **options)


__all__ = ["IDENTITY_HEADER", "MiddlewareConfig", "RouteConfig", "read_middleware", "read_route"]
