"""
The admin JSON API (described by C{docs/openapi.yaml}): listeners, routes, pools and backends
with their state and statistics; changing a backend's state and weight, adding and removing
backends; reloading; the running configuration with its secrets masked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twisted_rp.admin.state import ProxyState
from twisted_rp.admin.stats import ProxyStats, latency_summary, merge_snapshots
from twisted_rp.config import Config, ConfigError
from twisted_rp.config_readers import _address, _format_address, _Invalid
from twisted_rp.pool import BackendPool
from twisted_rp.pool.backend import ADMIN_STATES, Backend
from twisted_rp.service_pools import build_client_tls

_log = Logger()

#: Names of configuration fields whose values are masked in C{GET /api/config}.
_SECRET = re.compile(r"token|secret|password|passphrase", re.IGNORECASE)
MASK = "********"
_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,200}\Z")
_BACKEND_KEYS = frozenset({"name", "address", "weight", "backup", "max_connections"})
_MAX_BODY = 64 * 1024


class APIError(Exception):
    """An answer other than success: C{status} and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _empty_latency() -> dict[str, Any]:
    return {"counts": [0], "sum": 0.0}


def masked_config(config: Config) -> Any:
    """
    C{config} as JSON-ready data: attrs classes become objects, and every field that holds
    a secret (by name, or left out of its class's C{repr}) shows as L{MASK} when set.
    """

    def convert(value: Any) -> Any:
        if attrs.has(type(value)):
            out = {}
            for field in attrs.fields(type(value)):
                item = getattr(value, field.name)
                secret = field.repr is False or _SECRET.search(field.name)
                out[field.name] = MASK if secret and item is not None else convert(item)
            return out
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, frozenset, set)):
            return [convert(item) for item in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)

    return convert(config)


class AdminAPI(Resource):
    """
    C{/api/...}: one leaf resource that dispatches on method and path.
    """

    isLeaf = True

    def __init__(
        self, state: ProxyState, stats: ProxyStats, refresh: Callable[[], None] | None = None
    ) -> None:
        """
        @param refresh: called before statistics are read, to subscribe C{stats} to pools
            and listeners that a reload added.
        """
        super().__init__()
        self.state = state
        self.stats = stats
        self._refresh = refresh or (lambda: stats.watch_pools(state.pools.values()))

    # Dispatch

    def render(self, request: Request) -> bytes | int:
        method = (request.method or b"GET").decode("ascii", "replace")
        path = [segment.decode("utf-8", "replace") for segment in request.postpath or ()]
        while path and path[-1] == "":
            path.pop()
        try:
            handler, arguments = self._route(method, path)
            if method in ("POST", "PATCH", "PUT"):
                _require_json(request)
            result = handler(request, *arguments)
        except APIError as error:
            return _error(request, error.status, error.message)
        if isinstance(result, Coroutine):
            self._finish_later(request, result)
            return NOT_DONE_YET
        return _json(request, result)

    def _route(self, method: str, path: list[str]) -> tuple[Callable[..., Any], list[str]]:
        table: list[tuple[str, tuple[str, ...], Callable[..., Any]]] = [
            ("GET", ("listeners",), self.get_listeners),
            ("GET", ("routes",), self.get_routes),
            ("GET", ("pools",), self.get_pools),
            ("GET", ("pools", "*"), self.get_pool),
            ("POST", ("pools", "*", "backends"), self.add_backend),
            ("GET", ("pools", "*", "backends", "*"), self.get_backend),
            ("PATCH", ("pools", "*", "backends", "*"), self.change_backend),
            ("DELETE", ("pools", "*", "backends", "*"), self.remove_backend),
            ("POST", ("reload",), self.reload),
            ("GET", ("config",), self.get_config),
            ("GET", ("stats",), self.get_stats),
        ]
        allowed = []
        for route_method, pattern, handler in table:
            if len(pattern) != len(path):
                continue
            if all(p == "*" or p == segment for p, segment in zip(pattern, path, strict=True)):
                arguments = [s for p, s in zip(pattern, path, strict=True) if p == "*"]
                if route_method == method:
                    return handler, arguments
                allowed.append(route_method)
        if allowed:
            raise APIError(405, f"method {method} not allowed here; use {', '.join(allowed)}")
        raise APIError(404, "no such API path")

    def _finish_later(self, request: Request, work: Coroutine[Any, Any, Any]) -> None:
        def done(result: Any) -> None:
            if not request.finished and not request._disconnected:
                request.write(_json(request, result))
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(APIError):
                error: Any = failure.value
                status, message = error.status, error.message
            else:
                _log.failure("admin API request failed", failure)
                status, message = 500, "internal error (see the proxy's log)"
            if not request.finished and not request._disconnected:
                request.write(_error(request, status, message))
                request.finish()

        Deferred.fromCoroutine(work).addCallbacks(done, failed)

    # Reading

    def _snapshot(self) -> dict[str, Any]:
        self._refresh()
        return self.stats.snapshot()

    def _pool(self, name: str) -> BackendPool:
        pool = self.state.pools.get(name)
        if pool is None:
            raise APIError(404, f"no pool named {name!r}")
        return pool

    def _backend(self, pool: BackendPool, name: str) -> Backend:
        backend = pool.backend(name)
        if backend is None:
            raise APIError(404, f"pool {pool.name!r} has no backend named {name!r}")
        return backend

    def get_listeners(self, request: Request) -> list[dict[str, Any]]:
        listeners = []
        for listener in self.state.config.listeners:
            router = self.state.routers.get(listener.name)
            listeners.append(
                {
                    "name": listener.name,
                    "protocol": listener.protocol,
                    "endpoint": listener.endpoint,
                    "tls": listener.tls is not None,
                    "pool": listener.pool,
                    "routes": [] if router is None else [route.name for route in router.routes],
                }
            )
        return listeners

    def get_routes(self, request: Request) -> list[dict[str, Any]]:
        http = self._snapshot()["http"]
        seen: dict[str, dict[str, Any]] = {}
        for listener, router in self.state.routers.items():
            for route in router.routes:
                entry = seen.get(route.name)
                if entry is None:
                    requests = http["requests"].get(route.name, {})
                    latency = merge_snapshots(*http["latency"].get(route.name, {}).values())
                    responses = merge_snapshots(
                        *(by_class for by in requests.values() for by_class in by.values())
                    )
                    entry = seen[route.name] = {
                        "name": route.name,
                        "listeners": [],
                        "hosts": list(route.hosts),
                        "path_prefix": route.path_prefix,
                        "pool": route.pool.name,
                        "requests": sum(responses.values()),
                        "responses": responses,
                        "latency": latency_summary(latency or _empty_latency()),
                    }
                entry["listeners"].append(listener)
        return list(seen.values())

    def get_pools(self, request: Request) -> list[dict[str, Any]]:
        snapshot = self._snapshot()
        return [self._describe_pool(pool, snapshot) for pool in self.state.pools.values()]

    def get_pool(self, request: Request, name: str) -> dict[str, Any]:
        return self._describe_pool(self._pool(name), self._snapshot())

    def get_backend(self, request: Request, pool_name: str, name: str) -> dict[str, Any]:
        pool = self._pool(pool_name)
        return self._describe_backend(pool, self._backend(pool, name), self._snapshot())

    def get_config(self, request: Request) -> Any:
        return masked_config(self.state.config)

    def get_stats(self, request: Request) -> dict[str, Any]:
        return self._snapshot()

    def _describe_pool(self, pool: BackendPool, snapshot: dict[str, Any]) -> dict[str, Any]:
        backends = [self._describe_backend(pool, b, snapshot) for b in pool.backends()]
        try:
            balance: str | None = self.state.config.pool(pool.name).balance
        except KeyError:
            balance = None
        return {
            "name": pool.name,
            "balance": balance,
            "retries": pool.retries,
            "retried": pool.retried,
            "usable": len(pool.usable()),
            "active": sum(b["active"] for b in backends),
            "requests": sum(b["requests"] for b in backends),
            "failures": sum(b["failures"] for b in backends),
            "backends": backends,
        }

    def _describe_backend(
        self, pool: BackendPool, backend: Backend, snapshot: dict[str, Any]
    ) -> dict[str, Any]:
        counters = snapshot["backends"].get(pool.name, {}).get(backend.name, {})
        ejected = bool(backend.ejected_until) and backend.ejected_until > pool.clock.seconds()
        return {
            "name": backend.name,
            "address": backend.address,
            "state": backend.admin_state,
            "healthy": backend.healthy,
            "ejected": ejected,
            "weight": backend.weight,
            "effective_weight": backend.effective_weight,
            "backup": backend.backup,
            "max_connections": backend.max_connections,
            "tls": backend.tls is not None,
            "active": backend.active,
            "requests": counters.get("requests", 0),
            "failures": counters.get("failures", 0),
            "ejections": counters.get("ejections", 0),
            "outcomes": counters.get("outcomes", {}),
            "latency": latency_summary(counters.get("latency") or _empty_latency()),
        }

    # Changing

    def change_backend(self, request: Request, pool_name: str, name: str) -> dict[str, Any]:
        pool = self._pool(pool_name)
        backend = self._backend(pool, name)
        body = _read_object(request)
        unknown = set(body) - {"state", "weight"}
        if unknown:
            raise APIError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        if not body:
            raise APIError(400, "give state, weight or both")
        state = body.get("state", backend.admin_state)
        weight = body.get("weight", backend.weight)
        if state not in ADMIN_STATES:
            raise APIError(400, f"state must be one of {', '.join(ADMIN_STATES)}")
        if not _is_integer(weight) or not 0 <= weight <= 1000:
            raise APIError(400, "weight must be an integer from 0 to 1000")
        pool.set_weight(name, weight)
        pool.set_admin_state(name, state)
        _log.info(
            "admin API: pool {pool}: backend {backend}: state {state}, weight {weight}",
            pool=pool.name,
            backend=name,
            state=state,
            weight=weight,
        )
        return self._describe_backend(pool, backend, self._snapshot())

    def add_backend(self, request: Request, pool_name: str) -> dict[str, Any]:
        pool = self._pool(pool_name)
        body = _read_object(request)
        unknown = set(body) - _BACKEND_KEYS
        if unknown:
            raise APIError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        address = body.get("address")
        if not isinstance(address, str):
            raise APIError(400, "address is required: host:port or https://host:port")
        scheme, separator, rest = address.partition("://")
        if not separator:
            scheme, rest = "http", address
        if scheme not in ("http", "https"):
            raise APIError(400, "address must be host:port, http://host:port or https://...")
        try:
            host, port = _address(rest)
        except _Invalid as invalid:
            raise APIError(400, f"address: {invalid.message}") from None
        name = body.get("name", _format_address(host, port))
        weight = body.get("weight", 1)
        max_connections = body.get("max_connections", 0)
        backup = body.get("backup", False)
        if not isinstance(name, str) or not _NAME.match(name):
            raise APIError(400, "name must be 1 to 200 letters, digits or _.:[]-")
        if not _is_integer(weight) or not 0 <= weight <= 1000:
            raise APIError(400, "weight must be an integer from 0 to 1000")
        if not _is_integer(max_connections) or max_connections < 0:
            raise APIError(400, "max_connections must be an integer >= 0")
        if not isinstance(backup, bool):
            raise APIError(400, "backup must be true or false")
        if pool.backend(name) is not None:
            raise APIError(409, f"pool {pool.name!r} already has a backend named {name!r}")
        tls = None
        if scheme == "https":
            try:
                tls = build_client_tls(self.state.config.pool(pool.name), host)
            except (KeyError, ConfigError) as error:
                raise APIError(400, f"cannot make client TLS for {address}: {error}") from None
        backend = Backend(
            name, host, port, weight, backup, max_connections=max_connections, tls=tls
        )
        pool.add_backend(backend)
        _log.info(
            "admin API: pool {pool}: added backend {backend} ({address})",
            pool=pool.name,
            backend=name,
            address=backend.address,
        )
        request.setResponseCode(201)
        return self._describe_backend(pool, backend, self._snapshot())

    def remove_backend(self, request: Request, pool_name: str, name: str) -> dict[str, Any]:
        pool = self._pool(pool_name)
        self._backend(pool, name)
        pool.remove_backend(name)
        _log.info("admin API: pool {pool}: removed backend {backend}", pool=pool.name, backend=name)
        return {"removed": name}

    async def reload(self, request: Request) -> dict[str, Any]:
        _read_object(request, allow_empty=True)
        try:
            await self.state.reload()
        except ConfigError as error:
            _log.warn("admin API: reload refused: {error}", error=str(error))
            raise APIError(422, str(error)) from None
        # Listeners the reload built report from their first request on.
        self._refresh()
        _log.info("admin API: configuration reloaded")
        return {"reloaded": True, "source": self.state.config.source}


# Helpers


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_json(request: Request) -> None:
    """
    Changes must say C{Content-Type: application/json}: a page on another site can make a
    browser send a form (with the admin's Basic credentials) but not that without asking.
    """
    content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise APIError(415, "send the request with Content-Type: application/json")


def _read_object(request: Request, allow_empty: bool = False) -> dict[str, Any]:
    assert request.content is not None
    data = request.content.read(_MAX_BODY + 1)
    if len(data) > _MAX_BODY:
        raise APIError(413, "request body too large")
    if allow_empty and not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        raise APIError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _json(request: Request, value: Any) -> bytes:
    request.setHeader("content-type", "application/json")
    request.setHeader("cache-control", "no-store")
    return json.dumps(value, indent=1).encode("utf-8") + b"\n"


def _error(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    return _json(request, {"error": message})
