"""
C{Set-Cookie} rewriting: the C{Domain} and C{Path} a backend gives its cookies, made right for
the public site.
"""

from __future__ import annotations

from collections.abc import Mapping

from zope.interface import implementer

from twisted_rp.http.message import ProxyRequest, ResponseHead
from twisted_rp.interfaces import IResponseRewriter
from twisted_rp.rewrite.redirects import (
    internal_authorities,
    normalize_host,
    parse_authority,
    route_prefix,
)


def _domain_key(domain: bytes) -> bytes:
    # A leading dot is ignored by RFC 6265 (5.2.3), so ".example.com" is "example.com".
    return domain.strip(b" \t").lstrip(b".").lower().rstrip(b".")


def _prefix(path_prefix: str | bytes) -> bytes:
    prefix = path_prefix.encode("latin-1") if isinstance(path_prefix, str) else path_prefix
    prefix = prefix.rstrip(b"/")
    if prefix and (not prefix.startswith(b"/") or b";" in prefix or b" " in prefix):
        raise ValueError(f"invalid path prefix {path_prefix!r}")
    return prefix


@implementer(IResponseRewriter)
class CookieRewriter:
    """
    Rewrite the C{Domain} and C{Path} attributes of C{Set-Cookie} fields.

    B{Domain}: a domain found in C{domain_map} becomes its value there (C{b""} removes the
    attribute).  Otherwise, when C{automatic}, a domain that names a backend (the host or name
    of any backend of the route's pool, or the C{Host} the proxy sent upstream when that is not
    the public host) is removed, which makes the cookie the public host's own.  A cookie meant
    for a whole public domain and its subdomains needs a C{domain_map} entry.

    B{Path}: a C{Path} gets the route's path prefix in front (C{/} becomes C{/app}, C{/cart}
    becomes C{/app/cart}) when the route strips that prefix, or C{path_prefix} when it is
    given (C{""} turns path rewriting off).  A cookie without C{Path} is left as it is: the
    browser derives its path from the public URL, which already has the prefix.

    @ivar domain_map: internal domain to public domain (C{bytes}), matched case-insensitively
        and ignoring a leading dot.
    """

    #: It changes nothing else (L{twisted_rp.http.routing.hook_triggers}).
    only_with_fields = (b"set-cookie",)

    def __init__(
        self,
        domain_map: Mapping[bytes, bytes] | None = None,
        path_prefix: str | bytes | None = None,
        automatic: bool = True,
    ) -> None:
        mapping = {}
        for internal, public in (domain_map or {}).items():
            if (
                not isinstance(public, bytes)
                or b";" in public
                or b"\r" in public
                or b"\n" in public
            ):
                raise ValueError(f"invalid public domain {public!r}")
            mapping[_domain_key(internal)] = public
        self.domain_map = mapping
        self.path_prefix = None if path_prefix is None else _prefix(path_prefix)
        self.automatic = automatic

    def __repr__(self) -> str:
        return (
            f"CookieRewriter(domain_map={self.domain_map!r}, path_prefix={self.path_prefix!r}, "
            f"automatic={self.automatic!r})"
        )

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        headers = response.headers
        raw = headers.raw
        if raw is not None and b"set-cookie" not in raw.lower():
            return
        cookies = [f for f in headers.fields if f[0] == b"set-cookie"]
        if not cookies:
            return
        prefix = self.path_prefix if self.path_prefix is not None else route_prefix(request.route)
        internal: set[bytes] | None = None
        if self.automatic:
            public = normalize_host(request.host)
            sent = request.head.headers.get(b"host")
            upstream = parse_authority(sent) if sent else None
            internal = internal_authorities(
                request, upstream_host=upstream is not None and upstream.host != public
            ).hosts
        for f in cookies:
            f[2] = self._rewrite(f[2], prefix, internal)

    def _rewrite(self, value: bytes, prefix: bytes, internal: set[bytes] | None) -> bytes:
        parts = value.split(b";")
        changed = False
        kept = [parts[0]]
        for part in parts[1:]:
            name, eq, attribute = part.partition(b"=")
            lname = name.strip(b" \t").lower()
            if eq and lname == b"domain":
                key = _domain_key(attribute)
                public = self.domain_map.get(key)
                if public is None and internal is not None and key in internal:
                    public = b""
                if public is not None:
                    changed = True
                    if public:
                        kept.append(name + b"=" + public)
                    continue
            elif eq and lname == b"path" and prefix:
                path = attribute.strip(b" \t")
                if path.startswith(b"/"):
                    changed = True
                    kept.append(name + b"=" + prefix + (b"" if path == b"/" else path))
                    continue
            kept.append(part)
        return b";".join(kept) if changed else value
