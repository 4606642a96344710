"""HTTP/1.1 reverse proxying: front (client) and back (backend) protocols."""

from __future__ import annotations
