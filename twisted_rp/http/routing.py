"""
Routes: which pool serves a request, chosen by host name and path prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from attrs import field, frozen

from twisted_rp.interfaces import (
    IAuthenticator,
    IBackendPool,
    IRequestRewriter,
    IResponseBodyFilter,
    IResponseRewriter,
)


def _lower_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    return tuple(h.lower().rstrip(".") for h in hosts)


def host_name(authority: bytes | None) -> str:
    """The lower-cased host name of a C{Host} value (C{host[:port]}), as routes match it."""
    if not authority:
        return ""
    text = authority.decode("ascii", "replace").lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0].rstrip(".")


def request_path(target: bytes) -> str:
    """The path of an origin-form request target, as routes match it."""
    end = target.find(b"?")
    return (target if end < 0 else target[:end]).decode("latin-1")


def _never(lowered: bytes) -> None:
    return None


def hook_triggers(hooks: Sequence[object]) -> Callable[[bytes], object] | None:
    """
    When C{hooks} must run for a message, from the fields each declares it acts on.

    A hook with an C{only_with_fields} attribute (lower-cased field names) does nothing to a
    message that has none of them, so the proxy may skip it.

    @return: a function of CRLF and the message's lower-cased field block that returns a
        true value when some hook must run; L{None} when they must always run.
    """
    names: set[bytes] = set()
    for hook in hooks:
        declared = getattr(hook, "only_with_fields", None)
        if declared is None:
            return None
        names.update(declared)
    if not names:
        return _never
    alternatives = b"|".join(re.escape(name) for name in sorted(names))
    return re.compile(rb"\r\n(?:" + alternatives + rb"):").search


@frozen(eq=False)
class Route:
    """
    Requests for C{hosts} (any host when empty; C{*.example.com} matches every subdomain of
    example.com) whose path starts with C{path_prefix} go to C{pool}.

    @ivar strip_prefix: remove C{path_prefix} from the path sent to the backend.
    @ivar preserve_host: send the client's C{Host}; otherwise the backend's address.
    @ivar response_body_filters: transform response bodies as they stream (after
        C{response_rewriters}).
    """

    pool: IBackendPool
    hosts: tuple[str, ...] = field(default=(), converter=_lower_hosts)
    path_prefix: str = "/"
    strip_prefix: bool = False
    preserve_host: bool = True
    authenticators: tuple[IAuthenticator, ...] = field(default=(), converter=tuple)
    request_rewriters: tuple[IRequestRewriter, ...] = field(default=(), converter=tuple)
    response_rewriters: tuple[IResponseRewriter, ...] = field(default=(), converter=tuple)
    name: str = ""
    response_body_filters: tuple[IResponseBodyFilter, ...] = field(default=(), converter=tuple)
    #: Whether a request needs the authenticators and request rewriters (L{hook_triggers}).
    request_triggers: Callable[[bytes], object] | None = field(init=False, eq=False, repr=False)
    #: Whether a response needs the response rewriters and body filters.
    response_triggers: Callable[[bytes], object] | None = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # Body filters see every request (to prepare) and every response.
        always = [object()] if self.response_body_filters else []
        set_field = object.__setattr__
        set_field(
            self,
            "request_triggers",
            hook_triggers([*self.authenticators, *self.request_rewriters, *always]),
        )
        set_field(self, "response_triggers", hook_triggers([*self.response_rewriters, *always]))

    def host_rank(self, host: str) -> int:
        """
        How specifically this route names C{host}: 3 exact, 2 wildcard, 1 any host, 0 not at all.
        """
        if not self.hosts:
            return 1
        rank = 0
        for pattern in self.hosts:
            if pattern == host:
                return 3
            if (
                pattern.startswith("*.")
                and host.endswith(pattern[1:])
                and len(host) > len(pattern) - 1
            ):
                rank = 2
        return rank

    def path_matches(self, path: str) -> bool:
        """Whether C{path} is under C{path_prefix}, on a segment boundary."""
        prefix = self.path_prefix
        if prefix == "/" or path == prefix:
            return True
        if not path.startswith(prefix):
            return False
        return prefix.endswith("/") or path[len(prefix)] in "/?"

    def backend_path(self, target: bytes) -> bytes:
        """The request target to send to the backend."""
        if not self.strip_prefix or self.path_prefix == "/":
            return target
        rest = target[len(self.path_prefix.rstrip("/").encode()) :]
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        return rest


class Router:
    """
    Chooses the most specific route: exact host over wildcard over any host, then the longest
    path prefix, then configuration order.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._cache: dict[str, list[Route]] = {}

    def _candidates(self, host: str) -> list[Route]:
        # The host part of the decision is the same for every request to a host, so it is
        # computed once; the cache is bounded to stop a client from growing it with made-up names.
        found = self._cache.get(host)
        if found is None:
            ranked = [
                (r.host_rank(host), -len(r.path_prefix), i, r) for i, r in enumerate(self.routes)
            ]
            best = sorted((t for t in ranked if t[0] > 0), key=lambda t: (-t[0], t[1], t[2]))
            found = [t[3] for t in best]
            if len(self._cache) < 1024:
                self._cache[host] = found
        return found

    def route(self, host: str, path: str) -> Route | None:
        """The route for a request, or L{None} if none applies."""
        for route in self._candidates(host):
            if route.path_matches(path):
                return route
        return None

    def route_target(self, host: str, target: bytes) -> Route | None:
        """L{route} for an origin-form request target, whose path is read only if it matters."""
        candidates = self._candidates(host)
        if candidates and candidates[0].path_prefix == "/":
            # The most specific route for the host takes every path.
            return candidates[0]
        return self.route(host, request_path(target))
