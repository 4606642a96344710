"""
The FTP reverse proxy: clients see one FTP server; each session goes to a backend of a pool and
every data connection passes through the proxy.
"""

from __future__ import annotations

from twisted_rp.ftp.control import BACKEND_PASSIVE_MODES, FTPProxyFactory, FTPSession
from twisted_rp.ftp.data import DataChannel
from twisted_rp.ftp.proxylogin import BackendAccount, ProxyLogin
from twisted_rp.ftp.replies import Command, Reply, ReplyReader

__all__ = [
    "BACKEND_PASSIVE_MODES",
    "BackendAccount",
    "Command",
    "DataChannel",
    "FTPProxyFactory",
    "FTPSession",
    "ProxyLogin",
    "Reply",
    "ReplyReader",
]
