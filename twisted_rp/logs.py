"""
Structured logs: every event of C{twisted.logger} as one JSON object per line.

Run the proxy with::

    twistd --logger twisted_rp.logs.json_observer -n reverseproxy --config proxy.toml

and each line on standard output (the journal, under systemd) reads like::

    {"time": "2026-11-22T03:04:05.123Z", "level": "warn", "namespace": "twisted_rp.pool.web",
     "message": "pool web: backend web-2 (10.0.0.2:8000): 3 failed checks: ...",
     "pool": "web", "backend": "web-2", "address": "10.0.0.2:8000", "reason": "..."}

(on one line): the time in UTC, the level, the namespace, the formatted message, then the
event's own fields, so that log tools can filter on C{backend} or C{pool} without parsing the
message.  A failure adds C{traceback}.  Fields whose values JSON cannot represent are given as
their C{repr}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

__all__ = ["json_line", "json_observer", "json_record"]

#: Keys of twisted.logger's own bookkeeping, never copied as fields.
_INTERNAL = frozenset({"log_trace", "log_legacy", "log_io", "message", "format", "time"})
#: The record's own keys, which an event's field of the same name must not replace.
_RESERVED = frozenset({"time", "level", "namespace", "message", "system", "traceback"})


def _iso_time(timestamp: float) -> str:
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _plain(value: Any) -> Any:
    """C{value} if JSON can represent it as it is, else its C{repr}."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain(item) for key, item in value.items()}
    return repr(value)


def json_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """
    The flat record of one C{twisted.logger} event: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{message} (formatted), C{system} when the event has one, C{traceback}
    for a failure, then every field of the event that is not C{twisted.logger}'s own.
    """
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": _iso_time(time.time() if when is None else when),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(dict(event)),
    }
    system = event.get("log_system")
    if system is not None and system != "-":
        record["system"] = str(system)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in _RESERVED:
            continue
        record[key] = _plain(value)
    return record


def json_line(event: Mapping[str, Any]) -> str:
    """L{json_record} of C{event} as one line of JSON, with its newline."""
    return json.dumps(json_record(event), separators=(",", ":"), ensure_ascii=False) + "\n"


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """
    A log observer writing L{json_line} of every event to C{out}, by default the standard
    output as it is now (twistd redirects C{sys.stdout} into the log once logging begins,
    which must not loop back here).

    Called without arguments by C{twistd --logger twisted_rp.logs.json_observer}.
    """
    return FileLogObserver(out if out is not None else sys.stdout, json_line)
