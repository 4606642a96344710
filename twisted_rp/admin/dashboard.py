"""
The dashboard page and its script and style sheet, shipped as package data in C{static/}.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.web.resource import Resource
from twisted.web.server import Request

#: Only this listener's own script, style and API: no CDN, no inline code, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

STATIC_FILES = {
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class StaticPage(Resource):
    """One file of the dashboard, read once, served with strict security headers."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", self.content_type)
        request.setHeader("content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader("x-content-type-options", "nosniff")
        request.setHeader("x-frame-options", "DENY")
        request.setHeader("cache-control", "no-cache")
        return self.body


def dashboard_pages() -> dict[str, StaticPage]:
    """The dashboard's pages by path segment (C{""} being the page itself)."""
    static = files("twisted_rp.admin") / "static"
    return {
        segment: StaticPage((static / name).read_bytes(), content_type)
        for segment, (name, content_type) in STATIC_FILES.items()
    }
