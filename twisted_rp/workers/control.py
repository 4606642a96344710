"""
The control channel between the master and its workers: JSON objects, one a line, each with
a C{type}.

From the master (on the worker's standard input):

  - C{backend}: the state of one backend of one pool (C{present} false: removed), sent for
    every health, admin state, weight or membership change the master's pools see, and for
    every backend when a worker starts;
  - C{pin}: a sticky pin one worker made, for the others to learn;
  - C{synced}: the worker has the master's state and may start serving;
  - C{reload}: read the configuration file again;
  - C{rotate}: rotate the access log file.

From a worker (on its control pipe): C{serving} (once synced and listening), C{pin}, C{stats}
(every second: its statistics snapshot, its leases per backend and retries per pool) and
C{reloaded} (the outcome of a reload).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rp.pool import Backend, BackendPool
from twisted_rp.pool.backend import ADMIN_STATES
from twisted_rp.pool.peers import learn, pins

__all__ = [
    "MAX_LINE",
    "MessageReceiver",
    "apply_backend",
    "apply_pin",
    "backend_message",
    "encode",
    "full_state",
    "leases",
    "pin_message",
]

Message = dict[str, Any]

#: The longest message accepted (a statistics snapshot of a very large proxy fits easily).
MAX_LINE = 64 * 1024 * 1024

_log = Logger(namespace="twisted_rp.workers")


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as a line."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class MessageReceiver(Protocol):
    """
    Splits what arrives into lines and hands each decoded message to C{handle}; a line that
    is not a JSON object is logged and skipped.
    """

    def __init__(
        self,
        handle: Callable[[Message], object],
        lost: Callable[[Failure], object] | None = None,
    ) -> None:
        self._handle = handle
        self._lost = lost
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take C{data} from the channel."""
        buffer = self._buffer + data
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            _log.error("control channel: a message over {max} bytes, dropped", max=MAX_LINE)
            self._buffer = b""
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                _log.error("control channel: not a message: {line!r}", line=line[:200])
                continue
            try:
                self._handle(message)
            except Exception:
                _log.failure("control channel: handling {type} failed", type=message["type"])

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._lost is not None:
            self._lost(reason or Failure(ConnectionError("control channel closed")))


# Backend state


def backend_message(pool: str, backend: Backend, present: bool, reason: str = "") -> Message:
    """The C{backend} message telling a worker what the master knows of C{backend}."""
    return {
        "type": "backend",
        "pool": pool,
        "name": backend.name,
        "present": present,
        "host": backend.host,
        "port": backend.port,
        "ports": dict(backend.ports),
        "weight": backend.weight,
        "backup": backend.backup,
        "max_connections": backend.max_connections,
        "tls": backend.tls is not None,
        "healthy": backend.healthy,
        "admin_state": backend.admin_state,
        "reason": reason,
    }


def pin_message(pool: str, key: str, backend: str | None, deadline: float | None) -> Message:
    """The C{pin} message for a sticky pin made (C{backend} L{None}: forgotten)."""
    return {"type": "pin", "pool": pool, "key": key, "backend": backend, "deadline": deadline}


def full_state(pools: Mapping[str, BackendPool]) -> Iterator[Message]:
    """
    Everything a starting worker must learn from the master: every backend, every sticky pin,
    then C{synced}.
    """
    for name, pool in pools.items():
        for backend in pool.backends():
            yield backend_message(name, backend, True, "state from the master")
        for key, backend_name, deadline in pins(pool.stickiness):
            yield pin_message(name, key, backend_name, deadline)
    yield {"type": "synced"}


def apply_backend(
    pools: Mapping[str, BackendPool],
    message: Message,
    make_tls: Callable[[str, str], object] | None = None,
) -> None:
    """
    Make the worker's copy of a backend match C{message}: add it (with client TLS from
    C{make_tls(pool, host)} when it uses TLS), remove it, or apply its health, admin state and
    weight through the pool, which logs and tells its observers as for a local change.
    Unknown pools are ignored (a reload on its way will add them).
    """
    pool = pools.get(message["pool"])
    if pool is None:
        return
    name = message["name"]
    reason = message.get("reason") or "told by the master"
    current = pool.backend(name)
    if current is not None and (current.host, current.port) != (message["host"], message["port"]):
        pool.remove_backend(name)
        current = None
    if not message["present"]:
        if current is not None:
            pool.remove_backend(name)
        return
    if current is None:
        tls = make_tls(pool.name, message["host"]) if message["tls"] and make_tls else None
        backend = Backend(
            name,
            message["host"],
            message["port"],
            message["weight"],
            message["backup"],
            max_connections=message["max_connections"],
            ports=dict(message.get("ports") or {}),
            tls=tls,
        )
        backend.healthy = message["healthy"]
        if message["admin_state"] in ADMIN_STATES:
            backend.admin_state = message["admin_state"]
        pool.add_backend(backend)
        return
    if current.healthy != message["healthy"]:
        pool.set_health(current, message["healthy"], reason)
    if current.admin_state != message["admin_state"]:
        pool.set_admin_state(name, message["admin_state"])
    if current.weight != message["weight"]:
        pool.set_weight(name, message["weight"])


def apply_pin(pools: Mapping[str, BackendPool], message: Message) -> None:
    """Have the pool's stickiness learn a pin made in another process."""
    pool = pools.get(message["pool"])
    if pool is not None:
        learn(pool.stickiness, message["key"], message["backend"], message["deadline"])


def leases(pools: Iterable[BackendPool]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """The leases held per backend and the retries per pool, for a C{stats} message."""
    pools = list(pools)
    active = {pool.name: {b.name: b.active for b in pool.backends()} for pool in pools}
    return active, {pool.name: pool.retried for pool in pools}
