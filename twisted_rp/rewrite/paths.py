"""
Path rewriting: change the path of the request target sent to the backend.
"""

from __future__ import annotations

import re

from zope.interface import implementer

from twisted_rp.http.message import ProxyRequest
from twisted_rp.interfaces import IRequestRewriter

# What may not appear in a prefix or a replacement: whatever would end the path or the request
# line, and controls.
_NOT_IN_PATH = re.compile(rb"[\x00-\x20\x7f?#]")


def _prefix(prefix: str | bytes | None, what: str) -> bytes:
    if prefix is None:
        return b""
    raw = prefix.encode("ascii") if isinstance(prefix, str) else prefix
    stripped = raw.rstrip(b"/")
    if not raw.startswith(b"/") or not stripped or _NOT_IN_PATH.search(raw):
        raise ValueError(f"invalid {what} {prefix!r}: expected a path such as '/app'")
    return stripped


@implementer(IRequestRewriter)
class PathRewriter:
    """
    Rewrite the path of the request target; the query string is kept as it came.

    The steps run in this order, each optional: remove C{strip_prefix} (on a segment boundary:
    C{/api} takes C{/api/users} to C{/users} and C{/api} to C{/}, and leaves C{/apis} alone),
    substitute C{replacement} for every match of C{pattern} (as L{re.sub}; anchor the pattern
    to change one place), then put C{add_prefix} in front.

    It sees the target after the route removed its own prefix (a route with C{strip_prefix}).
    Targets that are not paths (C{OPTIONS *}) are left alone.
    """

    def __init__(
        self,
        strip_prefix: str | bytes | None = None,
        add_prefix: str | bytes | None = None,
        pattern: bytes | None = None,
        replacement: bytes = b"",
    ) -> None:
        self.strip_prefix = _prefix(strip_prefix, "strip_prefix")
        self.add_prefix = _prefix(add_prefix, "add_prefix")
        if pattern is None:
            self.pattern: re.Pattern[bytes] | None = None
        else:
            try:
                self.pattern = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"invalid pattern {pattern!r}: {e}") from None
            if _NOT_IN_PATH.search(replacement):
                raise ValueError(f"invalid replacement {replacement!r}")
        self.replacement = replacement

    def __repr__(self) -> str:
        pattern = None if self.pattern is None else self.pattern.pattern
        return (
            f"PathRewriter(strip_prefix={self.strip_prefix!r}, add_prefix={self.add_prefix!r}, "
            f"pattern={pattern!r}, replacement={self.replacement!r})"
        )

    def rewrite_path(self, path: bytes) -> bytes:
        """The new form of C{path} (without a query string)."""
        prefix = self.strip_prefix
        if prefix and path.startswith(prefix):
            rest = path[len(prefix) :]
            if not rest:
                path = b"/"
            elif rest.startswith(b"/"):
                path = rest
        if self.pattern is not None:
            path = self.pattern.sub(self.replacement, path)
            if not path.startswith(b"/"):
                path = b"/" + path
        if self.add_prefix:
            path = self.add_prefix + path
        return path

    def rewrite_request(self, request: ProxyRequest) -> None:
        head = request.head
        target = head.target
        if not target.startswith(b"/"):
            return
        path, question, query = target.partition(b"?")
        head.target = self.rewrite_path(path) + question + query
