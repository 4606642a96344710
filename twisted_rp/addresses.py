"""
Helpers for socket addresses, shared by the protocols (which may not import one another).
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_ip(address: IAddress | None) -> IP | None:
    """
    The IP address of C{address}, an IPv4-mapped IPv6 address as IPv4 (so that a dual-stack
    listener sees IPv4 clients as such); L{None} when it is not an IP address.
    """
    if not isinstance(address, IPv4Address | IPv6Address):
        return None
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
