"""The console's HTTP side: the page, its static assets, and the live figures as JSON."""

from __future__ import annotations

import functools
import logging
import posixpath
import re
from importlib import resources
from typing import Any

import tornado.template
import tornado.web

from tornado_echo.config import Config, LiveConfig
from tornado_echo.http.access import deny
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.reader import SessionReader
from tornado_echo.web.console.live import LiveFeed
from tornado_echo.web.endpoints import JsonHandler

logger = logging.getLogger(__name__)
throttle = LogThrottle(logger)

STATIC = resources.files(__package__) / "static"
# Below console_path: assets and figures, so a proxy passes the console with two rules.
SUBPATH = "console/"
RECENT_SESSIONS = 20
# The page loads nothing but its own files and talks to nothing but its own server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def relative_ws_path(config: Config) -> str:
    """``ws_path`` relative to the page, so the page works under any prefix a proxy adds."""
    relative = posixpath.relpath(config.ws_path, config.console_path)
    return relative + "/" if config.ws_path.endswith("/") and relative != "." else relative


@functools.lru_cache(maxsize=8)
def render_page(ws_path: str) -> bytes:
    template = tornado.template.Template((STATIC / "index.html").read_text(encoding="utf-8"))
    return template.generate(ws_path=ws_path)


def console_routes(config: Config, live_kwargs: dict[str, Any]) -> list[Any]:
    """The console's routes under ``config.console_path``.

    ``live_kwargs`` (live, reader, and the running config's holder) is the LiveHandler's:
    it reads the config per request, so a reloaded admin_token applies at once.
    """
    base = re.escape(config.console_path)
    sub = base + re.escape(SUBPATH)
    routes: list[Any] = [
        (base, ConsolePage, {"ws_path": relative_ws_path(config)}),
        (sub + "live", LiveHandler, live_kwargs),
        (sub + r"(app\.js|app\.css|icon\.svg)", ConsoleAsset, {"path": str(STATIC)}),
    ]
    if config.console_path != "/":
        without_slash = re.escape(config.console_path.rstrip("/"))
        routes.append((without_slash, tornado.web.RedirectHandler, {"url": config.console_path}))
    return routes


class _Secured(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)


class ConsolePage(_Secured, JsonHandler):
    """The page, with the WebSocket path filled in; errors (a POST, say) as JSON."""

    def initialize(self, ws_path: str) -> None:
        self.ws_path = ws_path

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(render_page(self.ws_path))


class ConsoleAsset(_Secured, JsonHandler, tornado.web.StaticFileHandler):
    """The page's script, style and icon from the package; JSON errors like every handler."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


class LiveHandler(JsonHandler):
    """``GET <console_path>console/live``: the live figures, read-only and safe to show.

    With ``Authorization: Bearer <admin_token>`` (or from loopback, as for /api) the answer
    also holds the most recent sessions; a wrong token costs the sessions, not the figures.
    """

    def initialize(self, live: LiveFeed, reader: SessionReader, config: LiveConfig) -> None:
        self.live = live
        self.reader = reader
        self.config: Config = config.current

    async def get(self) -> None:
        figures, body = self.live.current()
        if "Authorization" not in self.request.headers:
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.finish(body)
            return
        self.write_json(200, {**figures, "sessions": await self._sessions()})

    async def _sessions(self) -> dict[str, Any]:
        config = self.config
        denial = deny(
            self.request,
            config.admin_token,
            config.server_names,
            loopback_only="sessions are shown to loopback clients only while admin_token is unset",
            wrong_token="wrong admin token",
        )
        if denial is not None:
            throttle.log(
                "refused",
                logging.WARNING,
                "console sessions refused to %s: %s",
                self.request.remote_ip,
                denial.reason,
            )
            return {"error": denial.reason}
        try:
            rows = await self.reader.list_sessions(RECENT_SESSIONS, None)
        except Exception as exc:  # noqa: BLE001 - any driver failure: the figures still go out
            throttle.log(
                "query", logging.WARNING, "console sessions query failed: %s", exc, exc_info=exc
            )
            return {"error": "database unavailable"}
        return {"rows": rows}
