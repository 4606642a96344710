"""
Access logs: one line per request, in the combined format or as JSON.

An L{AccessLog} formats each L{AccessRecord} and hands the line (without a newline) to a
writer; L{AccessLog.to_file} writes to a file rotated as twistd rotates its own log (by size,
and on SIGUSR1) and L{AccessLog.to_logger} to the twistd log.  Build one from the
configuration's L{LogSettings} with L{access_log_from_settings}; an L{AccessLogSwitch} lets a
configuration reload replace it under the listeners.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import asdict, field, frozen
from twisted.logger import Logger
from twisted.python.logfile import LogFile
from zope.interface import implementer

from twisted_rp.http.message import AccessRecord, RequestHead
from twisted_rp.interfaces import IAccessLog
from twisted_rp.settings import LogSettings

if TYPE_CHECKING:
    from twisted_rp.http.exchange import Exchange

FORMATS = ("combined", "json")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _nothing() -> None:
    return None


def _escape(value: str) -> str:
    """
    Make C{value} safe inside a double-quoted field: a client controls the request line,
    Referer and User-Agent, and must not be able to forge fields or lines.
    """
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char.isprintable() and char.isascii():
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


def _field(value: str | None) -> str:
    """An unquoted field: C{-} when empty, never containing a space."""
    if not value:
        return "-"
    return _escape(value).replace(" ", "\\x20")


def _clf_time(timestamp: float) -> str:
    """C{10/Oct/2000:13:55:36 +0000}: the common log format's time, in UTC."""
    t = time.gmtime(timestamp)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def format_combined(record: AccessRecord) -> str:
    """
    The Apache/nginx combined format followed by the request id, backend, pool, request time
    and backend time (seconds; C{-} when no backend answered)::

        127.0.0.1 - alice [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.5"
            rid=5f0c backend=web-1 pool=web rt=0.012 bt=0.010

    (one line).  Times are in UTC.
    """
    if record.method:
        request_line = _escape(f"{record.method} {record.target} {record.version}")
    else:
        request_line = "-"
    backend_time = "-" if record.backend_time is None else f"{record.backend_time:.3f}"
    line = (
        f"{_field(record.client_ip)} - {_field(record.user)} [{_clf_time(record.started)}] "
        f'"{request_line}" {record.status} {record.bytes_sent} '
        f'"{_escape(record.referer) or "-"}" "{_escape(record.user_agent) or "-"}" '
        f"rid={_field(record.request_id)} backend={_field(record.backend)} "
        f"pool={_field(record.pool)} rt={record.duration:.3f} bt={backend_time}"
    )
    if record.tls_version is not None:
        line += f" tls={_field(record.tls_version)}/{_field(record.tls_cipher)}"
    return line


def format_json(record: AccessRecord) -> str:
    """One JSON object with every field of C{record}, on one line."""
    return json.dumps(asdict(record), separators=(",", ":"))


_FORMATTERS: dict[str, Callable[[AccessRecord], str]] = {
    "combined": format_combined,
    "json": format_json,
}


def _formatter(name: str) -> Callable[[AccessRecord], str]:
    if name not in _FORMATTERS:
        raise ValueError(f"unknown access log format {name!r}; use one of {', '.join(FORMATS)}")
    return _FORMATTERS[name]


@implementer(IAccessLog)
@frozen
class AccessLog:
    """
    Formats each record and hands the line to C{write}.

    @ivar format: C{"combined"} or C{"json"}.
    @ivar write: called with one line of text, without its newline.
    @ivar close: releases whatever C{write} writes to (a file); the log is unusable afterwards.
    @ivar rotate: rotates the file now (SIGUSR1), as twistd does its own log.
    @ivar reopen: opens the file at its path again, for one something else moved away.
    """

    format: str = field()
    write: Callable[[str], None]
    close: Callable[[], None] = _nothing
    rotate: Callable[[], None] = _nothing
    reopen: Callable[[], None] = _nothing
    _format_record: Callable[[AccessRecord], str] = field(init=False)

    @format.validator
    def _check_format(self, attribute: object, value: str) -> None:
        _formatter(value)

    @_format_record.default
    def _pick_formatter(self) -> Callable[[AccessRecord], str]:
        return _formatter(self.format)

    def log(self, record: AccessRecord) -> None:
        self.write(self._format_record(record))

    @classmethod
    def to_file(
        cls,
        format: str,
        path: str,
        rotate_length: int = 100_000_000,
        max_rotated_files: int | None = 10,
    ) -> AccessLog:
        """
        Append to the file at C{path}; when it reaches C{rotate_length} bytes it is renamed
        C{path.1} (older ones shift to C{.2}, ...; beyond C{max_rotated_files} they are deleted).

        L{rotate} does the same at once, unless the file was moved away already (by
        C{logrotate}, say), which makes it start a new file at C{path}; L{reopen} only does the
        latter.

        @param rotate_length: 0 or L{None} to rotate only when told to.
        @param max_rotated_files: 0 or L{None} to keep every rotated file.
        @raise OSError: if the file cannot be opened.
        """
        full_path = os.path.abspath(path)
        logfile = LogFile(
            os.path.basename(full_path),
            os.path.dirname(full_path),
            rotateLength=rotate_length or None,
            maxRotatedFiles=max_rotated_files or None,
        )

        def moved_away() -> bool:
            try:
                # LogFile keeps its file object private; its descriptor is what was opened.
                return not os.path.samestat(os.fstat(logfile._file.fileno()), os.stat(logfile.path))
            except OSError:
                return True

        def rotate() -> None:
            if logfile.closed:
                return
            if moved_away():
                logfile.reopen()
            else:
                logfile.rotate()

        def reopen() -> None:
            if not logfile.closed and moved_away():
                logfile.reopen()

        def write(line: str) -> None:
            # A request still finishing while the application stops is not worth a crash.
            if logfile.closed:
                return
            # Bytes, so that the size that decides rotation counts bytes, not characters.
            logfile.write((line + "\n").encode("utf-8"))

        return cls(format, write, logfile.close, rotate, reopen)

    @classmethod
    def to_logger(cls, format: str, logger: Logger | None = None) -> AccessLog:
        """
        Emit each line as an info event of C{logger} (by default one in the
        C{twisted_rp.access} namespace), which twistd writes to its log.
        """
        target = logger if logger is not None else Logger(namespace="twisted_rp.access")

        def write(line: str) -> None:
            target.info("{access_line}", access_line=line)

        return cls(format, write)


def access_log_from_settings(settings: LogSettings) -> AccessLog | None:
    """
    The access log C{settings} ask for: L{None} when C{settings.access} is C{"off"}, otherwise
    one writing to C{settings.access_file} or, without one, to the twistd log.
    """
    if settings.access == "off":
        return None
    if settings.access_file is None:
        return AccessLog.to_logger(settings.access)
    return AccessLog.to_file(
        settings.access,
        settings.access_file,
        settings.rotate_length,
        settings.max_rotated_files,
    )


@implementer(IAccessLog)
class AccessLogSwitch:
    """
    The access log listeners hold, passing records on to whichever L{AccessLog} the current
    configuration has (none: records are dropped), so that a reload can change it under them.

    @ivar target: where records go now.
    """

    def __init__(self, target: AccessLog | None) -> None:
        self.target = target

    def log(self, record: AccessRecord) -> None:
        target = self.target
        if target is not None:
            target.log(record)

    def replace(self, target: AccessLog | None) -> None:
        """Send later records to C{target}, and close the log they went to."""
        old, self.target = self.target, target
        if old is not None and old is not target:
            old.close()

    def rotate(self) -> None:
        """Rotate the file (SIGUSR1)."""
        if self.target is not None:
            self.target.rotate()

    def reopen(self) -> None:
        """Open the file again if it was moved away (a reload)."""
        if self.target is not None:
            self.target.reopen()

    def close(self) -> None:
        """Close the file; later records are dropped."""
        self.replace(None)


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


def exchange_record(exchange: Exchange) -> AccessRecord:
    """The access record of a finished L{Exchange}."""
    headers = exchange.head.headers
    request = exchange.request
    backend: Any = request.backend
    tls = exchange.front.tls_parameters()
    return AccessRecord(
        client_ip=request.client_ip,
        method=_text(exchange.client_method),
        target=_text(exchange.client_target),
        version=_text(exchange.client_version),
        status=exchange.status,
        bytes_sent=exchange.bytes_sent,
        referer=_text(headers.get(b"referer")),
        user_agent=_text(headers.get(b"user-agent")),
        host=request.host,
        request_id=request.request_id,
        backend=backend.name if backend is not None else "",
        pool=exchange.route.pool.name,
        started=exchange.started,
        duration=exchange.front.clock.seconds() - exchange.started,
        backend_time=exchange.backend_time,
        user=request.identity,
        tls_version=tls[0],
        tls_cipher=tls[1],
    )


def refused_record(
    client_ip: str, head: RequestHead | None, host: str, now: float, status: int
) -> AccessRecord:
    """The record of a request the proxy answered itself, without any backend."""
    text = _text
    headers = head.headers if head is not None else None
    return AccessRecord(
        client_ip=client_ip,
        method=text(head.method) if head else "",
        target=text(head.target) if head else "",
        version=text(head.version) if head else "",
        status=status,
        bytes_sent=0,
        referer=text(headers.get(b"referer")) if headers is not None else "",
        user_agent=text(headers.get(b"user-agent")) if headers is not None else "",
        host=host,
        request_id="",
        backend="",
        pool="",
        started=now,
        duration=0.0,
        backend_time=None,
    )
