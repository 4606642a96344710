"""
Built-in request and response rewriters: header rules, redirect reverse-mapping, cookie
rewriting, path rewriting, "never cache"; and the response body filters: streaming
substitution and gzip.

Each is an L{IRequestRewriter}, an L{IResponseRewriter} or both, installed on a route's
C{request_rewriters} and C{response_rewriters}; see C{docs/rewriting.rst}.
"""

from __future__ import annotations

from twisted_rp.rewrite.body import Gzip, NoStore, Substitute
from twisted_rp.rewrite.cookies import CookieRewriter
from twisted_rp.rewrite.headers import (
    BACKEND_IDENTITY_HEADERS,
    HIDE_BACKEND,
    Add,
    HeaderRule,
    HeaderRules,
    Remove,
    Replace,
    Set,
)
from twisted_rp.rewrite.paths import PathRewriter
from twisted_rp.rewrite.redirects import RedirectRewriter

__all__ = [
    "BACKEND_IDENTITY_HEADERS",
    "HIDE_BACKEND",
    "Add",
    "CookieRewriter",
    "Gzip",
    "HeaderRule",
    "HeaderRules",
    "NoStore",
    "PathRewriter",
    "RedirectRewriter",
    "Remove",
    "Replace",
    "Set",
    "Substitute",
]
