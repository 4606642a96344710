"""
Immutable settings handed to the protocols.

The configuration file is parsed into these (see L{twisted_rp.config}); library users build
them directly.  Every field has the default a user of nginx or HAProxy would expect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from attrs import field, frozen

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


@frozen
class Timeouts:
    """
    Seconds; every one of them is enforced.

    @ivar client_header: from connection (or the end of the previous response) to the end of a
        request head, once its first byte arrived.
    @ivar client_keepalive: idle time allowed between requests on a client connection.
    @ivar client_body: idle time allowed while reading a request body.
    @ivar backend_connect: to establish a backend TCP connection.
    @ivar backend_first_byte: from the end of the request to the first byte of the response.
    @ivar backend_idle: idle time allowed while reading a response body.
    @ivar backend_keepalive: how long an idle pooled backend connection is kept; keep it below
        the backends' own keep-alive timeout (Node.js and Apache close after 5 s).
    """

    client_header: float = 30.0
    client_keepalive: float = 60.0
    client_body: float = 60.0
    backend_connect: float = 5.0
    backend_first_byte: float = 60.0
    backend_idle: float = 60.0
    backend_keepalive: float = 4.0


@frozen
class Limits:
    """
    Sizes in bytes (counts where named so); exceeding one gives the client a 4xx.

    @ivar max_body: request body size limit (413); 0 means no limit.
    @ivar backend_idle_connections: idle pooled connections kept per backend.
    """

    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body: int = 0
    backend_idle_connections: int = 64


@frozen
class HeaderPolicy:
    """
    Which forwarding headers the proxy adds to requests.

    @ivar trusted_proxies: peers whose X-Forwarded-*/Forwarded headers are kept (and appended
        to); from anyone else they are replaced.
    """

    x_forwarded: bool = True
    forwarded: bool = True
    via: bool = True
    via_name: str = "twisted_rp"
    request_id: bool = True
    request_id_header: str = "X-Request-ID"
    trusted_proxies: tuple[Network, ...] = field(default=(), converter=_networks)

    def trusts(self, ip: str) -> bool:
        """Whether C{ip} is a trusted proxy."""
        if not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


@frozen
class LogSettings:
    """
    @ivar access: C{"off"}, C{"combined"} or C{"json"}.
    @ivar access_file: where access records go; L{None} sends them to the twistd log.
    @ivar rotate_length: the file is rotated (renamed C{FILE.1}, older ones shifted) when it
        reaches this many bytes; 0 rotates only on SIGUSR1, as twistd's own log.
    @ivar max_rotated_files: how many rotated files are kept; 0 keeps them all.
    """

    access: str = "off"
    access_file: str | None = None
    rotate_length: int = 100_000_000
    max_rotated_files: int = 10


@frozen
class ProxySettings:
    """
    Everything an HTTP listener needs besides its routes.
    """

    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    headers: HeaderPolicy = HeaderPolicy()


@frozen
class ServerSettings:
    """
    How the proxy process itself behaves (C{[server]}).

    @ivar grace_period: seconds that requests, tunnels, TCP relays and FTP transfers in flight
        may take to finish once the proxy is told to stop (SIGTERM) and has stopped accepting;
        whatever is left then is closed.
    @ivar workers: how many processes serve the listeners (1: this one); see
        L{twisted_rp.workers}.
    """

    grace_period: float = 30.0
    workers: int = 1
