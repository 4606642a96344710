"""
The header that tells a backend who the authenticated user is.

A backend trusts this header, so a client must never be able to send it: the value the
backend sees is the one an authenticator put in L{ProxyRequest.identity
<twisted_rp.http.message.ProxyRequest>}, or nothing.  L{IdentityHeader.chain} wraps a
route's authenticators between a step that removes the header as it came from the client
and a step that sets it from the identity::

    RemoveIdentityHeader -> authenticator(s) -> SetIdentityHeader

The removing step runs first on every route, including routes without authentication
(C{chain(())}), so that a spoofed header never reaches any backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from attrs import field, frozen
from zope.interface import implementer

from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.interfaces import IAuthenticator

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_name(instance: object, attribute: object, value: str) -> None:
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid header name: {value!r}")


def identity_value(identity: str) -> bytes | None:
    """
    C{identity} as a header value (UTF-8), or L{None} when it holds a control character
    (CR, LF, NUL, ...), which would let a crafted user name or token claim inject headers.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in identity):
        return None
    return identity.encode("utf-8")


@frozen
class IdentityHeader:
    """
    The name of the identity header and the steps that keep it honest.

    @ivar name: the header's name, C{X-Authenticated-User} unless configured otherwise.
    """

    name: str = field(default="X-Authenticated-User", validator=_check_name)

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("ascii")

    def remove(self, headers: Headers) -> None:
        """Drop every copy of the header from C{headers}."""
        headers.remove(self.name_bytes)

    def chain(self, authenticators: Sequence[IAuthenticator]) -> list[IAuthenticator]:
        """
        C{authenticators} between the removing and the setting step: what a route runs.
        """
        return [RemoveIdentityHeader(self), *authenticators, SetIdentityHeader(self)]


@implementer(IAuthenticator)
@frozen
class RemoveIdentityHeader:
    """
    Removes the identity header as sent by the client; always allows.
    """

    header: IdentityHeader

    @property
    def only_with_fields(self) -> tuple[bytes]:
        """It acts only on requests that have the header
        (L{twisted_rp.http.routing.hook_triggers})."""
        return (self.header.name_bytes.lower(),)

    def authenticate(self, request: ProxyRequest) -> None:
        self.header.remove(request.head.headers)


@implementer(IAuthenticator)
@frozen
class SetIdentityHeader:
    """
    Sets the identity header from C{request.identity} (after removing any copy again, in
    case a step in between added one).  Refuses (403) an identity that cannot be sent in a
    header.
    """

    header: IdentityHeader

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | None:
        headers = request.head.headers
        self.header.remove(headers)
        if request.identity is None:
            return None
        value = identity_value(request.identity)
        if value is None:
            return ErrorResponse(403, b"403 Forbidden\nthe identity cannot be sent on\n")
        headers.add(self.header.name_bytes, value)
        return None
