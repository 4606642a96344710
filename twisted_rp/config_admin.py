"""
The C{[admin]} table of the configuration file: where the admin listener (API, dashboard,
metrics) listens and how it authenticates.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from twisted_rp.config_readers import _boolean, _endpoint, _Invalid, _Section, _string

DEFAULT_ADMIN_ENDPOINT = "tcp:9000:interface=127.0.0.1"
DEFAULT_ADMIN_REALM = "twisted_rp admin"


@frozen
class AdminConfig:
    """
    The admin listener.

    @ivar endpoint: a Twisted server endpoint string.
    @ivar token: a secret that clients send as C{Authorization: Bearer TOKEN} (or as the
        password of Basic credentials, for browsers), from C{token} or C{token_file}.
    @ivar users: an htpasswd file whose users may log in with Basic authentication.
    @ivar realm: the Basic authentication realm browsers show.
    """

    endpoint: str = DEFAULT_ADMIN_ENDPOINT
    token: str | None = None
    users: str | None = None
    realm: str = DEFAULT_ADMIN_REALM

    @property
    def authenticated(self) -> bool:
        """Whether clients must authenticate."""
        return self.token is not None or self.users is not None


def loopback_only(endpoint: str) -> bool:
    """
    Whether C{endpoint} only accepts connections from this machine: a TCP endpoint whose
    interface is a loopback address, or a UNIX socket.  Anything else (every interface, a
    public address, an endpoint type that cannot be inspected) does not.
    """
    reactor = MemoryReactor()
    try:
        serverFromString(reactor, endpoint).listen(Factory())
    except Exception:
        return False
    if reactor.unixServers and not reactor.tcpServers and not reactor.sslServers:
        return True
    listened = list(reactor.tcpServers) + list(reactor.sslServers)
    if len(listened) != 1:
        return False
    interface = listened[0][-1]
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def _token_file(value: object) -> str:
    path = _string(value)
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise _Invalid(
            f"cannot read {path!r}: {getattr(error, 'strerror', None) or error}"
        ) from None
    if not token:
        raise _Invalid(f"{path!r} is empty")
    return token


def _readable_file(value: object) -> str:
    path = _string(value)
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise _Invalid(f"cannot read {path!r}: {error.strerror or error}") from None
    return path


def read_admin(section: _Section) -> AdminConfig | None:
    """
    The C{[admin]} table, or L{None} when it is absent or C{enabled = false}.

    @raise ConfigError: a key is wrong, or the endpoint accepts connections from other
        machines while no C{token}, C{token_file} or C{users} is set.
    """
    section.allow("enabled", "endpoint", "token", "token_file", "users", "realm")
    options = section.optional(
        {
            "enabled": _boolean,
            "endpoint": _endpoint,
            "token": _string,
            "token_file": _token_file,
            "users": _readable_file,
            "realm": _string,
        }
    )
    if not options.pop("enabled", True):
        return None
    if "token" in options and "token_file" in options:
        raise section.error("token_file", "give token or token_file, not both")
    if "token_file" in options:
        options["token"] = options.pop("token_file")
    config = AdminConfig(**options)
    if not config.authenticated and not loopback_only(config.endpoint):
        raise section.error(
            "endpoint",
            f"{config.endpoint!r} accepts connections from other machines: set admin.token, "
            "admin.token_file or admin.users (an htpasswd file), or listen on a loopback "
            "interface like 'tcp:9000:interface=127.0.0.1'",
        )
    return config
