"""
Built-in authenticators (L{twisted_rp.interfaces.IAuthenticator}) and what they share.

Each module holds one kind:

  - L{twisted_rp.auth.basic}: HTTP Basic against a twisted.cred checker, and an htpasswd
    checker (bcrypt, SHA-256/512 crypt).
  - L{twisted_rp.auth.jwt}: Bearer JSON Web Tokens (HS*, RS*, PS*, ES*, EdDSA).
  - L{twisted_rp.auth.forward}: a sub-request to an auth service decides.
  - L{twisted_rp.auth.ipfilter}: CIDR allow and deny lists.
  - L{twisted_rp.auth.identity}: the header that tells the backend who the user is.

This module holds L{WatchedFile}, which reloads a credentials or key file when it changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath

T = TypeVar("T")

_log = Logger()


def _signature(path: str) -> tuple[int, int, int]:
    status = os.stat(path)
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class WatchedFile(Generic[T]):
    """
    The parsed content of a file, parsed again when the file changes.

    The file is looked at (one C{stat}) at most once every C{check_interval} seconds, when
    L{current} is called; it is read and parsed again only when its modification time, size
    or inode changed, so both editing in place and replacing by rename are seen.  A reload
    that fails (file gone, unreadable, does not parse) is logged and the previous content
    stays in force: a half-written file must not lock everybody out or let anybody in.

    @ivar path: the file's path.
    """

    def __init__(
        self,
        path: str | FilePath[str],
        parse: Callable[[bytes], T],
        clock: IReactorTime,
        check_interval: float = 1.0,
    ) -> None:
        """
        Read and parse the file now.

        @param parse: turns the file's bytes into the value L{current} returns; raises
            C{ValueError} (or any exception) on bad content.
        @raise OSError: the file cannot be read.
        @raise ValueError: or whatever C{parse} raises, for bad content.
        """
        self.path = path.path if isinstance(path, FilePath) else path
        self._parse = parse
        self._clock = clock
        self._check_interval = check_interval
        self._signature = _signature(self.path)
        with open(self.path, "rb") as f:
            self._value = parse(f.read())
        self._checked_at = clock.seconds()

    def current(self) -> T:
        """The content in force, reloaded first if the file changed since last looked at."""
        now = self._clock.seconds()
        if now - self._checked_at >= self._check_interval:
            self._checked_at = now
            self._reload_if_changed()
        return self._value

    def _reload_if_changed(self) -> None:
        try:
            signature = _signature(self.path)
            if signature == self._signature:
                return
            with open(self.path, "rb") as f:
                value = self._parse(f.read())
        except Exception as e:
            _log.warn(
                "keeping the previous content of {path}: reloading it failed: {error}",
                path=self.path,
                error=e,
            )
            return
        self._signature = signature
        self._value = value
        _log.info("reloaded {path}", path=self.path)


def quoted_string(text: str) -> bytes:
    """
    C{text} as an RFC 9110 quoted-string (for C{realm="..."} parameters).

    @raise ValueError: C{text} holds a control character, which no header value may carry.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"control character in {text!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode("utf-8") + b'"'
