"""
A custom authenticator, named in the configuration by its dotted path
(C{type = "api_key_auth.APIKeyAuthenticator"}): no plugin registration needed, only the module
on the Python path.  The table's other keys are its constructor's keyword arguments.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.python.filepath import FilePath
from zope.interface import implementer

from twisted_rp.http.message import ErrorResponse, ProxyRequest
from twisted_rp.interfaces import IAuthenticator


@implementer(IAuthenticator)
class APIKeyAuthenticator:
    """
    Lets through requests whose C{header} holds one of the keys of C{keys_file} (one
    C{client-name:key} per line); the client's name becomes the authenticated identity, and
    the key itself never reaches the backend.
    """

    def __init__(self, keys_file: str, header: str = "X-API-Key", reactor: Any = None) -> None:
        self.header = header.encode("ascii")
        self.keys: list[tuple[str, bytes]] = []
        for line in FilePath(keys_file).getContent().splitlines():
            if line.strip() and not line.startswith(b"#"):
                name, _, key = line.strip().partition(b":")
                if not key:
                    raise ValueError(f"{keys_file}: expected 'client-name:key', got {line!r}")
                self.keys.append((name.decode("utf-8"), key))

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | None:
        headers = request.head.headers
        offered = headers.get(self.header)
        headers.remove(self.header)
        if offered is not None:
            for name, key in self.keys:
                # Constant time, so that the answer's timing tells nothing about the keys.
                if hmac.compare_digest(offered, key):
                    request.identity = name
                    return None
        return ErrorResponse(401, b"401 Unauthorized: a valid API key is required\n")
