"""
Subscribing L{ProxyStats} to the listeners of a built service.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceCollection

from twisted_rp.admin.stats import ProxyStats
from twisted_rp.ftp.control import FTPProxyFactory
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.listening import serving_factory
from twisted_rp.tls import ServerTLS


def observe_factory(stats: ProxyStats, factory: object) -> None:
    """
    Have C{stats} told of what the listener C{factory} serves: HTTP requests (inside a TLS
    wrapper too), FTP sessions, transfers and handshakes.  Other factories (TCP, redirects)
    report nothing beyond their pools' outcomes; the handshakes of an HTTPS listener need its
    L{ServerTLS} handed to L{observe_tls}, as the TLS wrapper does not show it.
    """
    factory = serving_factory(factory)
    if isinstance(factory, HTTPProxyFactory):
        if stats not in factory.request_observers:
            factory.request_observers.append(stats)
    elif isinstance(factory, FTPProxyFactory):
        if stats not in factory.observers:
            factory.observers.append(stats)
        if factory.tls is not None:
            observe_tls(stats, [factory.tls])


def observe_tls(stats: ProxyStats, server_tls: Iterable[ServerTLS]) -> None:
    """Have C{stats} told of the handshakes of each of C{server_tls}."""
    for tls in server_tls:
        if stats not in tls.observers:
            tls.observers.append(stats)


def observe_listeners(stats: ProxyStats, service: IService) -> None:
    """
    L{observe_factory} for every listening service in the tree under C{service}, and
    L{observe_tls} for the TLS servers of a proxy service (which keeps them itself).
    """
    server_tls = getattr(service, "server_tls", None)
    if callable(server_tls):
        observe_tls(stats, server_tls())
    if isinstance(service, StreamServerEndpointService):
        observe_factory(stats, service.factory)
    if IServiceCollection.providedBy(service):
        for child in service:
            observe_listeners(stats, child)
