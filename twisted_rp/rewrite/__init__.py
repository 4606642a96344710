"""
Built-in request and response rewriters: header rules, redirect reverse-mapping, cookie
rewriting and path rewriting.

Each is an L{IRequestRewriter}, an L{IResponseRewriter} or both, installed on a route's
C{request_rewriters} and C{response_rewriters}; see C{docs/rewriting.rst}.
"""

from __future__ import annotations

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
    "HeaderRule",
    "HeaderRules",
    "PathRewriter",
    "RedirectRewriter",
    "Remove",
    "Replace",
    "Set",
]
