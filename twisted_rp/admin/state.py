"""
What the admin side needs of a running proxy: L{ProxyState}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from twisted_rp.config import Config
from twisted_rp.http.routing import Router
from twisted_rp.pool import BackendPool


class ProxyState(Protocol):
    """
    A running proxy, as the admin API sees it (L{twisted_rp.proxyservice.ReverseProxyService}
    is one).

    @ivar config: the configuration in force.
    @ivar pools: the pools by name; pools survive reloads, so their state and statistics go on.
    @ivar routers: the L{Router} of each HTTP listener, by listener name.

    Optionally, an C{after_reload} list of callables the proxy calls after each reload: the
    admin side adds one that subscribes its statistics to new pools and listeners at once
    (without it, that happens at the next API call or scrape).
    """

    @property
    def config(self) -> Config: ...

    @property
    def pools(self) -> Mapping[str, BackendPool]: ...

    @property
    def routers(self) -> Mapping[str, Router]: ...

    async def reload(self, config: Config | None = None) -> object:
        """
        Apply C{config}, or the configuration file read again.

        @raise twisted_rp.config.ConfigError: the new configuration is invalid; the old one
            stays in force.
        """
