"""The web console: an echo console and a live view of the server, at ``console_path``."""

from __future__ import annotations

from tornado_echo.web.console.handlers import console_routes
from tornado_echo.web.console.live import LiveFeed

__all__ = ["LiveFeed", "console_routes"]
