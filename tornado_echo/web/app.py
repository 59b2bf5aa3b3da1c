"""``make_app``: the Tornado Application with its routes and settings, built from a Config."""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log

from tornado_echo.compat import HandlerDelegate, eager_handler_delegate, request_summary
from tornado_echo.config import Config, LiveConfig
from tornado_echo.connections import Connections
from tornado_echo.engines.ratelimit import TokenBucket
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import Store
from tornado_echo.store.reader import SessionReader
from tornado_echo.web.api import SessionHandler, SessionsHandler
from tornado_echo.web.console import LiveFeed, console_routes
from tornado_echo.web.echo import EchoWebSocket
from tornado_echo.web.endpoints import (
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    ReadyHandler,
)


class EchoApplication(tornado.web.Application):
    """The application; its handlers read the running configuration from ``live_config``.

    One :class:`LiveConfig`, shared with the server: a reload replaces its config there, so
    every request and connection begun afterwards sees the new values while open
    connections keep theirs.
    """

    def __init__(
        self,
        config: LiveConfig,
        store: Store,
        connections: Connections,
        server_id: str,
        metrics: Metrics,
        reader: SessionReader,
    ) -> None:
        self.live_config = config
        current = config.current
        # Shared by every connection of this process: what a stranger sends must not grow
        # the database faster than this, whatever permessage-deflate inflates it to (its
        # rate follows reloads: Server.reload).
        self.journal_budget = TokenBucket(current.journal_max_bytes_per_second)
        ws_kwargs = {
            "db": store,  # EchoWebSocket's users know it as the db
            "config": config,
            "connections": connections,
            "server_id": server_id,
            "metrics": metrics,
            "journal_budget": self.journal_budget,
        }
        metrics_kwargs = {
            "metrics": metrics,
            "connections": connections,
            "store": store,
            "config": config,
        }
        self._ws_path = current.ws_path
        self._ws_kwargs = ws_kwargs
        api_kwargs = {"config": config, "reader": reader}
        ready_kwargs = {"store": store, "connections": connections, "config": config}
        # Sampling starts with the server (Server.start), and only when the console is on.
        self.live = LiveFeed(connections, store, metrics)
        live_kwargs = {"live": self.live, "reader": reader, "config": config}
        super().__init__(
            [
                # A literal path: Tornado would read it as a regular expression. Anchored
                # here: Tornado adds the "$" only to a pattern not ending in one, and the
                # escaped "\$" of a path ending in "$" does.
                (re.escape(current.ws_path) + "$", EchoWebSocket, ws_kwargs),
                ("/healthz", HealthHandler),
                ("/readyz", ReadyHandler, ready_kwargs),
                ("/metrics", MetricsHandler, metrics_kwargs),
                ("/api/sessions", SessionsHandler, api_kwargs),
                (r"/api/sessions/([^/]+)", SessionHandler, api_kwargs),
            ]
            + (console_routes(current, live_kwargs) if current.console else []),
            default_handler_class=NotFoundHandler,
            compress_response=False,
            log_function=self._log_request,
        )

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HandlerDelegate:
        # The WebSocket route by equality, before Tornado's routers (its two rule lists and
        # a regular expression per rule: a few percent of a handshake); the same rule is
        # first in the table too, for reverse_url and the rest of Tornado's interface.
        if request.path == self._ws_path:
            return eager_handler_delegate(self, request, EchoWebSocket, self._ws_kwargs)
        return super().find_handler(request, **kwargs)

    def _log_request(self, handler: tornado.web.RequestHandler) -> None:
        # An upgraded session has its own access line when it ends (EchoWebSocket); its 101
        # is not logged. Rejections and failures are logged where they happen, with their
        # reason, whatever access_log says.
        if handler.get_status() == 101 or not self.live_config.current.access_log:
            return
        access_log.info(
            "%d %s %.2fms",
            handler.get_status(),
            request_summary(handler),
            1000.0 * handler.request.request_time(),
        )


def make_app(
    config: Config | LiveConfig,
    store: Store,
    connections: Connections | None = None,
    server_id: str = "local",
    metrics: Metrics | None = None,
    reader: SessionReader | None = None,
) -> EchoApplication:
    """The application serving ``config.ws_path``, /healthz, /readyz, /metrics, /api and the
    console (``config.console_path``).

    ``config``: the server's :class:`LiveConfig` (a Config is held in one of its own);
    ``store`` must be started before the first connection; ``connections`` is shared with the
    server so that shutdown can reach every open session; ``reader`` (made from
    ``config.database_url`` when not given) answers the /api queries.
    """
    live = config if isinstance(config, LiveConfig) else LiveConfig(config)
    return EchoApplication(
        live,
        store,
        Connections() if connections is None else connections,
        server_id,
        Metrics() if metrics is None else metrics,
        SessionReader(live.current.database_url) if reader is None else reader,
    )
