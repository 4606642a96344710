"""
Client address allow and deny lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.http.message import ErrorResponse, ProxyRequest
from twisted_rp.interfaces import IAuthenticator

Network = IPv4Network | IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """
    C{cidrs} (C{"10.0.0.0/8"}, C{"2001:db8::/32"}, or a single address) as networks.  Host
    bits set below the prefix are ignored (C{"10.1.2.3/8"} is C{10.0.0.0/8}).

    @raise ValueError: naming the entry that is not an address or network.
    """
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {cidr!r}") from None
    return tuple(networks)


def _client_address(client_ip: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; IPv4 rules must match.
        return address.ipv4_mapped
    return address


@implementer(IAuthenticator)
class IPFilter:
    """
    Allows or refuses a request by its client's address.

    A client in any C{deny} network is refused, whatever C{allow} says.  With a non-empty
    C{allow} list, a client must be in one of its networks; with none, every client not
    denied is allowed.  Refused clients get 403.  A client address that does not parse (a
    UNIX socket peer) matches nothing: it is refused when there is an C{allow} list.

    The address is the peer of the connection (C{request.client_ip}, or the one a PROXY
    protocol header gave), never an C{X-Forwarded-For} value a client could write.

    @ivar allow: the allowed networks.
    @ivar deny: the denied networks.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        """
        @param allow: CIDR networks or addresses, IPv4 or IPv6.
        @param deny: likewise.
        @raise ValueError: for an entry that is not a network.
        """
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)

    def __repr__(self) -> str:
        allow = [str(n) for n in self.allow]
        deny = [str(n) for n in self.deny]
        return f"IPFilter(allow={allow!r}, deny={deny!r})"

    def allows(self, client_ip: str) -> bool:
        """
        Whether C{client_ip} may pass: also usable per listener, on a connection's peer.
        """
        address = _client_address(client_ip)
        if address is None:
            return not self.allow
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | None:
        if self.allows(request.client_ip):
            return None
        return ErrorResponse(403, b"403 Forbidden\n")


class ClientFilterFactory(Factory):
    """
    Wraps a listener's factory: connections from clients C{client_filter} refuses are closed
    at once, before the wrapped factory sees them.  For listeners that are not HTTP (whose
    routes answer 403 instead).
    """

    def __init__(self, client_filter: IPFilter, wrapped: IProtocolFactory) -> None:
        self.client_filter = client_filter
        self.wrappedFactory = wrapped

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        host = getattr(addr, "host", "")
        if not self.client_filter.allows(host):
            self._log.info("refused a connection from {client}", client=host)
            return None
        return self.wrappedFactory.buildProtocol(addr)  # type: ignore[arg-type,return-value]

    _log = Logger()
