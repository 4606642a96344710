"""
The admin listener: L{build_admin_service}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from twisted_rp.admin.api import AdminAPI
from twisted_rp.admin.auth import guarded
from twisted_rp.admin.dashboard import dashboard_pages
from twisted_rp.admin.metrics import MetricsPage, ProxyCollector, metrics_registry
from twisted_rp.admin.state import ProxyState
from twisted_rp.admin.stats import ProxyStats
from twisted_rp.admin.wiring import observe_listeners
from twisted_rp.auth.basic import HtpasswdChecker
from twisted_rp.config import ConfigError
from twisted_rp.config_admin import AdminConfig, loopback_only


class _Root(Resource):
    """C{/}: the dashboard; C{/api/}, C{/metrics} and the dashboard's files below it."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"" and not request.postpath:
            return self.children[b""]
        return super().getChild(path, request)


def admin_resource(
    state: ProxyState,
    stats: ProxyStats,
    settings: AdminConfig,
    reactor: Any = None,
    listeners: IService | None = None,
) -> IResource:
    """
    The admin listener's resource tree (behind authentication when C{settings} asks for it).

    @param listeners: a service tree whose listeners report to C{stats}; looked through again
        at every API call and scrape, so that listeners a reload added report too.
    """

    def refresh() -> None:
        stats.watch_pools(state.pools.values())
        if listeners is not None:
            observe_listeners(stats, listeners)

    refresh()
    after_reload = getattr(state, "after_reload", None)
    if isinstance(after_reload, list):
        # Pools and listeners a reload adds report from their first request on.
        after_reload.append(refresh)
    root = _Root()
    for segment, page in dashboard_pages().items():
        root.putChild(segment.encode("ascii"), page)
    root.putChild(b"api", AdminAPI(state, stats, refresh))

    def snapshot() -> dict[str, Any]:
        refresh()
        return stats.snapshot()

    collector = ProxyCollector(snapshot, lambda: state.pools)
    root.putChild(b"metrics", MetricsPage(metrics_registry(collector)))
    if not settings.authenticated:
        return root
    users = None
    if settings.users is not None:
        try:
            users = HtpasswdChecker(settings.users, reactor)
        except (OSError, ValueError) as error:
            raise ConfigError(
                state.config.source, "admin.users", f"cannot use the htpasswd file: {error}"
            ) from None
    return guarded(root, settings.token, users, settings.realm)


def build_admin_service(
    state: ProxyState,
    settings: AdminConfig,
    reactor: Any,
    stats: ProxyStats | None = None,
    listeners: IService | None = None,
) -> Service:
    """
    The admin listener (API, dashboard, metrics) on C{settings.endpoint}, named C{admin}.

    @param stats: where the pools and listeners report; a new one if not given.
    @param listeners: the service tree holding the proxy's listeners (the proxy service
        itself), whose HTTP and FTP factories are made to report to C{stats}.
    @raise ConfigError: the endpoint accepts connections from other machines and no
        authentication is set (naming C{admin.endpoint}), or the htpasswd file is unusable.
    """
    if not settings.authenticated and not loopback_only(settings.endpoint):
        raise ConfigError(
            state.config.source,
            "admin.endpoint",
            f"{settings.endpoint!r} accepts connections from other machines: set admin.token "
            "or admin.users",
        )
    resource = admin_resource(state, stats or ProxyStats(), settings, reactor, listeners)
    site = Site(resource)
    site.displayTracebacks = False
    site.noisy = False
    service = StreamServerEndpointService(serverFromString(reactor, settings.endpoint), site)
    service.setName("admin")
    return service
