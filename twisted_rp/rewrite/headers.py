"""
Header rules: add, set, remove and regex-replace request and response header fields.

Rules run in the order given, each seeing what the ones before it left.  Names and values are
C{bytes}; names match case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from attrs import field, frozen
from zope.interface import implementer

from twisted_rp.http.message import Headers, ProxyRequest, ResponseHead
from twisted_rp.interfaces import IRequestRewriter, IResponseRewriter

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")

#: Fields that frame the message or manage the connection.  The proxy sets them itself after
#: deciding how to carry the body; a rule that changed them would desynchronise the client or
#: the backend connection, so rules may not name them.
FRAMING_HEADERS = frozenset(
    {
        b"connection",
        b"content-length",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Response fields that tell a visitor which software (and often which version) runs behind
#: the proxy.  L{HIDE_BACKEND} removes them.
BACKEND_IDENTITY_HEADERS: tuple[bytes, ...] = (
    b"Server",
    b"X-Powered-By",
    b"X-Powered-CMS",
    b"X-AspNet-Version",
    b"X-AspNetMvc-Version",
    b"X-SourceFiles",
    b"X-Runtime",
    b"X-Generator",
    b"X-Drupal-Cache",
    b"X-Drupal-Dynamic-Cache",
    b"X-Debug-Token",
    b"X-Debug-Token-Link",
    b"X-Backend-Server",
    b"X-Served-By",
    b"X-Server",
    b"X-Mod-Pagespeed",
    b"X-Page-Speed",
)


def _name(name: bytes) -> bytes:
    if not isinstance(name, bytes) or not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in FRAMING_HEADERS:
        raise ValueError(
            f"header {name.decode()!r} is managed by the proxy and cannot be rewritten"
        )
    return name


def _value(value: bytes) -> bytes:
    if not isinstance(value, bytes) or _BAD_VALUE.search(value):
        raise ValueError(f"invalid header value {value!r}")
    return value


def _pattern(pattern: bytes | re.Pattern[bytes]) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, bytes):
        raise ValueError(f"pattern must be bytes, not {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid pattern {pattern!r}: {e}") from None


class HeaderRule(Protocol):
    """What every rule offers: apply itself to a set of header fields."""

    def apply(self, headers: Headers) -> None:
        """Change C{headers} in place."""


@frozen
class Add:
    """
    Append a C{name: value} field, keeping any already there.
    """

    name: bytes = field(converter=_name)
    value: bytes = field(converter=_value)

    def apply(self, headers: Headers) -> None:
        headers.add(self.name, self.value)


@frozen
class Set:
    """
    Make C{value} the only value of C{name}: replaces every such field (where the first one
    stood), or appends one.
    """

    name: bytes = field(converter=_name)
    value: bytes = field(converter=_value)

    def apply(self, headers: Headers) -> None:
        headers.set(self.name, self.value)


@frozen
class Remove:
    """
    Drop every C{name} field.
    """

    name: bytes = field(converter=_name)

    def apply(self, headers: Headers) -> None:
        headers.remove(self.name)


@frozen
class Replace:
    """
    Substitute C{replacement} for every match of C{pattern} in each C{name} value (as
    L{re.sub}: C{\\1} and C{\\g<name>} refer to groups).  Fields whose value does not match
    are left as they are; a missing field is not added.
    """

    name: bytes = field(converter=_name)
    pattern: re.Pattern[bytes] = field(converter=_pattern)
    replacement: bytes = field(converter=_value)

    def apply(self, headers: Headers) -> None:
        lname = self.name.lower()
        sub = self.pattern.sub
        replacement = self.replacement
        for f in headers.fields:
            if f[0] == lname:
                # Groups only copy bytes of a value that was already valid, and the literal
                # part of the replacement was checked, so the result is a valid value.
                f[2] = sub(replacement, f[2])


@frozen
class _RemoveAll:
    """Several L{Remove} rules in a row, done in one pass."""

    lnames: frozenset[bytes]
    present: re.Pattern[bytes]

    @classmethod
    def of(cls, names: Iterable[bytes]) -> _RemoveAll:
        lnames = frozenset(name.lower() for name in names)
        alternatives = b"|".join(re.escape(n) for n in sorted(lnames))
        return cls(lnames, re.compile(rb"(?:\A|\n)(?:" + alternatives + rb")[ \t]*:", re.I))

    def apply(self, headers: Headers) -> None:
        raw = headers.raw
        # Most responses carry none of the fields: find that out without splitting the block.
        if raw is not None and self.present.search(raw) is None:
            return
        headers.remove_all(self.lnames)


def _compile(rules: Iterable[HeaderRule]) -> tuple[HeaderRule, ...]:
    steps: list[HeaderRule] = []
    removals: list[bytes] = []
    for rule in rules:
        if not hasattr(rule, "apply"):
            raise TypeError(f"not a header rule: {rule!r}")
        if isinstance(rule, Remove):
            removals.append(rule.name)
            continue
        if removals:
            steps.append(_RemoveAll.of(removals))
            removals = []
        steps.append(rule)
    if removals:
        steps.append(_RemoveAll.of(removals))
    return tuple(steps)


#: Response rules that remove every field of L{BACKEND_IDENTITY_HEADERS}.
HIDE_BACKEND: tuple[Remove, ...] = tuple(Remove(name) for name in BACKEND_IDENTITY_HEADERS)


@implementer(IRequestRewriter, IResponseRewriter)
class HeaderRules:
    """
    Apply header rules to requests on their way to the backend and to responses on their way
    to the client.

    @ivar request: the rules for requests, in order.
    @ivar response: the rules for responses, in order.
    """

    def __init__(
        self, request: Sequence[HeaderRule] = (), response: Sequence[HeaderRule] = ()
    ) -> None:
        self.request = tuple(request)
        self.response = tuple(response)
        self._request_steps = _compile(self.request)
        self._response_steps = _compile(self.response)

    def __repr__(self) -> str:
        return f"HeaderRules(request={list(self.request)!r}, response={list(self.response)!r})"

    def rewrite_request(self, request: ProxyRequest) -> None:
        headers = request.head.headers
        for step in self._request_steps:
            step.apply(headers)

    def rewrite_response(self, request: ProxyRequest, response: ResponseHead) -> None:
        headers = response.headers
        for step in self._response_steps:
            step.apply(headers)
