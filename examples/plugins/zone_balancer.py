"""
A custom balancer, found by the proxy as a Twisted plugin (see
C{twisted/plugins/zone_balancer_plugin.py} beside this file and C{docs/extending.rst}).

It keeps traffic in the proxy's own zone: backends whose name starts with C{ZONE-} take every
request, in turn; the others only when no backend of the zone is usable (a cheap way to stay
in one data centre and fail over to the other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from twisted_rp.extensions import Extension, ExtensionOptions
from twisted_rp.interfaces import IBalancer
from twisted_rp.pool import Backend, PickContext


@implementer(IBalancer)
class ZoneAwareBalancer:
    """Round-robin over the backends of C{zone}; over all the others when none is usable."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self._turn = 0

    def choose(self, candidates: Sequence[Backend], context: PickContext) -> Backend:
        local = [b for b in candidates if b.name.startswith(self.zone + "-")]
        chosen = local or list(candidates)
        self._turn += 1
        return chosen[self._turn % len(chosen)]


def parse_options(options: ExtensionOptions) -> Mapping[str, Any]:
    """C{zone} is required: a short name such as C{"eu"}."""
    options.allow("zone")
    zone = options.string("zone")
    if not zone.isidentifier():
        raise options.error("zone", f"expected a short name like 'eu', got {zone!r}")
    return {"zone": zone}


#: The extension the plugin module publishes.
zone_aware = Extension("zone_aware", "balancer", ZoneAwareBalancer, parse_options)
