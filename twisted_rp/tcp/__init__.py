"""
The layer-4 TCP listener and the PROXY protocol.
"""

from __future__ import annotations

from twisted_rp.tcp.proxyprotocol import ProxyHeader, encode_v1, encode_v2, parse
from twisted_rp.tcp.relay import SEND_PROXY_VERSIONS, TCPProxyFactory

__all__ = [
    "SEND_PROXY_VERSIONS",
    "ProxyHeader",
    "TCPProxyFactory",
    "encode_v1",
    "encode_v2",
    "parse",
]
