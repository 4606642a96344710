"""
Redirect reverse-mapping: URLs a backend sends about itself become the public URLs clients use.

A backend only knows the address the proxy reached it at, so its redirects (C{Location}),
C{Content-Location} and C{Refresh} fields may name C{http://10.0.0.5:8080/login} or
C{http://app1.internal/login}.  L{RedirectRewriter} turns those into
C{https://www.example.com/app/login}: the scheme the client used, the C{Host} it asked for,
and the route's path prefix when the route strips it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import frozen
from zope.interface import implementer

from twisted_rp.http.message import ProxyRequest, ResponseHead
from twisted_rp.interfaces import IRequestRewriter, IResponseRewriter

#: The key under which L{RedirectRewriter.rewrite_request} keeps the client's C{Host} field in
#: L{ProxyRequest.notes}, since a route that does not preserve the host replaces it.
CLIENT_HOST_NOTE = "twisted_rp.rewrite.client_host"

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# An absolute URL (scheme://authority...) or a scheme-relative one (//authority...).
_ABSOLUTE = re.compile(rb"(?:([A-Za-z][A-Za-z0-9+.\-]*):)?//([^/?#]*)(.*)\Z", re.S)
# "5; url=http://...", "0;URL='...'", "3, http://..." (HTML's refresh syntax).
_REFRESH = re.compile(
    rb"(\s*[0-9][0-9.]*\s*[;,]\s*(?:url\s*=\s*)?)(['\"]?)(.*?)(\2\s*)\Z", re.I | re.S
)
_PORT = re.compile(rb"[0-9]{1,5}\Z")


@frozen
class Authority:
    """
    The host and port of a URL or C{Host} field.

    @ivar host: lower-cased, without brackets or a final dot.
    @ivar port: the port, or L{None} when none was given.
    @ivar userinfo: C{user:password@} as it came, or C{b""}.
    """

    host: bytes
    port: int | None
    userinfo: bytes = b""


def parse_authority(authority: bytes) -> Authority | None:
    """
    Split C{[userinfo@]host[:port]}; L{None} when it is not one.
    """
    userinfo, at, hostport = authority.rpartition(b"@")
    if hostport.startswith(b"["):
        end = hostport.find(b"]")
        if end < 0:
            return None
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest and not rest.startswith(b":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(b":")
        if b":" in port_text:
            return None
    if not host:
        return None
    port: int | None = None
    if port_text:
        if not _PORT.match(port_text):
            return None
        port = int(port_text)
    return Authority(host.lower().rstrip(b"."), port, userinfo + at)


def normalize_host(host: str | bytes) -> bytes:
    """C{host} as L{Authority.host} has it: lower-cased, no brackets, no final dot."""
    raw = host.encode("latin-1", "replace") if isinstance(host, str) else host
    if raw.startswith(b"[") and raw.endswith(b"]"):
        raw = raw[1:-1]
    return raw.lower().rstrip(b".")


def route_prefix(route: Any) -> bytes:
    """
    The path prefix C{route} removes before forwarding (C{b"/app"}), or C{b""} when it keeps
    the path as it is.
    """
    if route is None or not getattr(route, "strip_prefix", False):
        return b""
    prefix: str = route.path_prefix
    return prefix.rstrip("/").encode("latin-1")


def backends_of(request: ProxyRequest) -> list[Any]:
    """The backend that answered C{request} and every backend of its route's pool."""
    found: list[Any] = []
    if request.backend is not None:
        found.append(request.backend)
    route = request.route
    pool = getattr(route, "pool", None)
    if pool is not None:
        found.extend(b for b in pool.backends() if b is not request.backend)
    return found


def client_host_field(request: ProxyRequest) -> bytes | None:
    """
    The C{Host} field the client sent: C{request.authority}, else noted by
    L{RedirectRewriter.rewrite_request} or, for a route that preserves the host, still in
    the request head.
    """
    if request.authority is not None:
        return request.authority
    noted = request.notes.get(CLIENT_HOST_NOTE)
    if noted is not None:
        return noted
    route = request.route
    if route is None or getattr(route, "preserve_host", True):
        return request.head.headers.get(b"host")
    return None


def public_authority(request: ProxyRequest) -> bytes | None:
    """
    How the client addressed the proxy: C{request.host}, with the port of its C{Host} field
    unless that is the default port of C{request.scheme}.  L{None} when the client named no
    host.
    """
    if not request.host:
        return None
    try:
        host = request.host.encode("ascii")
    except UnicodeEncodeError:
        return None
    field = client_host_field(request)
    parsed = parse_authority(field) if field is not None else None
    port = None if parsed is None else parsed.port
    if port is not None and port != _DEFAULT_PORTS.get(request.scheme.encode("ascii")):
        return b"%s:%d" % (host, port)
    return host


class InternalAuthorities:
    """The host names and addresses that mean "the backend" in one response."""

    def __init__(self) -> None:
        self.hosts: set[bytes] = set()
        self.addresses: set[tuple[bytes, int]] = set()

    def add(self, host: bytes, port: int | None) -> None:
        self.hosts.add(host)
        if port is not None:
            self.addresses.add((host, port))

    def matches(self, authority: Authority, scheme: bytes | None) -> bool:
        port = authority.port
        if port is None or (scheme is not None and port == _DEFAULT_PORTS.get(scheme)):
            # A backend that believes it listens on the default port leaves the port out.
            return authority.host in self.hosts
        return (authority.host, port) in self.addresses


def internal_authorities(
    request: ProxyRequest, aliases: Iterable[Authority] = (), upstream_host: bool = True
) -> InternalAuthorities:
    """
    What names the backend in C{request}'s response: L{backends_of} by host and name, the
    C{aliases}, and (if C{upstream_host}) the C{Host} the proxy sent upstream.
    """
    internal = InternalAuthorities()
    for backend in backends_of(request):
        internal.add(normalize_host(backend.host), backend.port)
        name = getattr(backend, "name", "")
        if name:
            internal.add(normalize_host(name), backend.port)
    for alias in aliases:
        internal.add(alias.host, alias.port)
    if upstream_host:
        sent = request.head.headers.get(b"host")
        parsed = parse_authority(sent) if sent else None
        if parsed is not None:
            internal.add(parsed.host, parsed.port)
    return internal


@implementer(IRequestRewriter, IResponseRewriter)
class RedirectRewriter:
    """
    Rewrite C{Location}, C{Content-Location} and C{Refresh} URLs that point at a backend to
    the public scheme, host and port, with the route's stripped path prefix put back.

    A URL points at a backend when its host is the host or name of the backend that answered,
    of any backend of the route's pool, one of C{aliases}, or the C{Host} the proxy sent
    upstream; with a port, the port must match too (no port, or the default port of the URL's
    scheme, matches any).  Relative URLs and URLs naming any other host are left alone.

    Install it as both a request rewriter (first, so that it notes the client's C{Host} before
    anything changes it) and a response rewriter.  As a response rewriter only, the port the
    client used is still known on routes that preserve the host.

    @ivar aliases: more authorities that mean the backend (C{b"app.internal"},
        C{b"10.1.2.3:8080"}), for backends that redirect to a name the proxy does not use.
    @ivar prefix_relative: also put the route's stripped prefix in front of absolute-path
        URLs (C{/login}); off by default since a backend that knows its public prefix already
        includes it.
    """

    fields = (b"location", b"content-location")
    #: It changes nothing else (L{twisted_rp.http.routing.hook_triggers}); on the request
    #: side it only notes what C{request.authority} already says.
    only_with_fields = (*fields, b"refresh")

    def __init__(self, aliases: Sequence[bytes] = (), prefix_relative: bool = False) -> None:
        parsed: list[Authority] = []
        for alias in aliases:
            authority = parse_authority(alias)
            if authority is None:
                raise ValueError(f"invalid alias {alias!r}: expected host or host:port")
            parsed.append(authority)
        self.aliases = tuple(aliases)
        self._aliases = tuple(parsed)
        self.prefix_relative = prefix_relative

    def __repr__(self) -> str:
        return f"RedirectRewriter(aliases={list(self.aliases)!r})"

    def rewrite_request(self, request: ProxyRequest) -> None:
        host = request.head.headers.get(b"host")
        if host is not None:
            request.notes.setdefault(CLIENT_HOST_NOTE, host)

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        headers = response.headers
        raw = headers.raw
        if raw is not None:
            lowered = raw.lower()
            if b"location" not in lowered and b"refresh" not in lowered:
                return
        targets = [f for f in headers.fields if f[0] in self.fields or f[0] == b"refresh"]
        if not targets:
            return
        public = public_authority(request)
        if public is None:
            return
        mapper = _Mapper(
            request.scheme.encode("ascii"),
            public,
            route_prefix(request.route),
            internal_authorities(request, self._aliases),
            self.prefix_relative,
        )
        for f in targets:
            new = mapper.refresh(f[2]) if f[0] == b"refresh" else mapper.url(f[2])
            if new is not None:
                f[2] = new


class _Mapper:
    def __init__(
        self,
        scheme: bytes,
        authority: bytes,
        prefix: bytes,
        internal: InternalAuthorities,
        prefix_relative: bool,
    ) -> None:
        self.scheme = scheme
        self.authority = authority
        self.prefix = prefix
        self.internal = internal
        self.prefix_relative = prefix_relative

    def url(self, value: bytes) -> bytes | None:
        """The public form of C{value}, or L{None} to leave it as it is."""
        match = _ABSOLUTE.match(value)
        if match is None:
            if self.prefix and self.prefix_relative and value.startswith(b"/"):
                return self.prefix + value
            return None
        scheme = match.group(1)
        if scheme is not None:
            scheme = scheme.lower()
            if scheme not in _DEFAULT_PORTS:
                return None
        authority = parse_authority(match.group(2))
        if authority is None or not self.internal.matches(authority, scheme):
            return None
        rest = match.group(3)
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        start = b"//" if scheme is None else self.scheme + b"://"
        return start + authority.userinfo + self.authority + self.prefix + rest

    def refresh(self, value: bytes) -> bytes | None:
        match = _REFRESH.match(value)
        if match is None:
            return None
        new = self.url(match.group(3))
        if new is None:
            return None
        return match.group(1) + match.group(2) + new + match.group(4)
