"""The web console: an echo console and a live view of the server, at ``console_path``."""

from __future__ import annotations

from .handlers import console_routes
from .live import LiveFeed

__all__ = ["LiveFeed", "console_routes"]
