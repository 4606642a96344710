"""
Publishes the C{zone_aware} balancer to twisted_rp: Twisted's plugin system finds every
module in a C{twisted/plugins/} directory on the Python path (with no C{__init__.py} in
C{twisted/} or C{twisted/plugins/}) and the objects in it that provide an interface.
"""

from zone_balancer import zone_aware

__all__ = ["zone_aware"]
