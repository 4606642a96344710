"""Sphinx configuration for the twisted_rp documentation."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the checkout this file belongs to, even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted_rp import __version__

project = "twisted_rp"
author = "the twisted_rp authors"
copyright = "the twisted_rp authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

# Nothing that needs the network at build time (no intersphinx).
extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"

exclude_patterns = ["_build"]
html_theme = "alabaster"
