"""twisted_rp: a Twisted reverse proxy for HTTP, HTTPS, FTP and TCP with shared backend pools."""

from __future__ import annotations

__version__ = "0.1.0"
