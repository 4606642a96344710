"""
The C{twistd reverseproxy} plugin.

Only this small object is imported when twistd lists its plugins; the proxy itself is imported
when the plugin is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.application.service import IService

    from twisted_rp.tap import Options


@implementer(IServiceMaker, IPlugin)
class ReverseProxyServiceMaker:
    """
    Makes the reverse proxy service from C{twistd reverseproxy} options.
    """

    tapname = "reverseproxy"
    description = "An HTTP reverse proxy and load balancer with shared backend pools."

    @property
    def options(self) -> type[Options]:
        from twisted_rp.tap import Options

        return Options

    def makeService(self, options: Options) -> IService:
        from twisted_rp.tap import makeService

        return makeService(options)


reverseproxy = ReverseProxyServiceMaker()
