"""``make_app``: the Tornado Application with its routes and settings, built from a Config."""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from tornado.log import access_log

from tornado_echo.compat import request_summary
from tornado_echo.config import Config
from tornado_echo.connections import Connections
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
    """The application, plus :meth:`reconfigure` for a live reload.

    Handlers receive the config through their route's kwargs; reconfiguring replaces it in
    those kwargs, so every connection opened afterwards sees the new values while open ones
    keep theirs.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        connections: Connections,
        server_id: str,
        metrics: Metrics,
        reader: SessionReader,
    ) -> None:
        self._ws_kwargs: dict[str, Any] = {
            "db": store,  # EchoWebSocket's users know it as the db
            "config": config,
            "connections": connections,
            "server_id": server_id,
            "metrics": metrics,
        }
        self._metrics_kwargs: dict[str, Any] = {
            "metrics": metrics,
            "connections": connections,
            "store": store,
            "token": config.metrics_token,
            "server_names": config.server_names,
        }
        self._api_kwargs: dict[str, Any] = {"config": config, "reader": reader}
        self._ready_kwargs: dict[str, Any] = {
            "store": store,
            "connections": connections,
            "config": config,
        }
        # Sampling starts with the server (Server.start), and only when the console is on.
        self.live = LiveFeed(connections, store, metrics)
        self._live_kwargs: dict[str, Any] = {"live": self.live, "reader": reader, "config": config}
        super().__init__(
            [
                # A literal path: Tornado would read it as a regular expression.
                (re.escape(config.ws_path), EchoWebSocket, self._ws_kwargs),
                ("/healthz", HealthHandler),
                ("/readyz", ReadyHandler, self._ready_kwargs),
                ("/metrics", MetricsHandler, self._metrics_kwargs),
                ("/api/sessions", SessionsHandler, self._api_kwargs),
                (r"/api/sessions/([^/]+)", SessionHandler, self._api_kwargs),
            ]
            + (console_routes(config, self._live_kwargs) if config.console else []),
            default_handler_class=NotFoundHandler,
            compress_response=False,
            log_function=self._log_request,
            **_live_settings(config),
        )

    def _log_request(self, handler: tornado.web.RequestHandler) -> None:
        # An upgraded session has its own access line when it ends (EchoWebSocket); its 101
        # is not logged. Rejections and failures are logged where they happen, with their
        # reason, whatever access_log says.
        if handler.get_status() == 101 or not self._ws_kwargs["config"].access_log:
            return
        access_log.info(
            "%d %s %.2fms",
            handler.get_status(),
            request_summary(handler),
            1000.0 * handler.request.request_time(),
        )

    def reconfigure(self, config: Config) -> None:
        """Apply what can change without a restart to connections opened from now on."""
        self._ws_kwargs["config"] = config
        self._api_kwargs["config"] = config
        self._ready_kwargs["config"] = config
        self._live_kwargs["config"] = config
        self._metrics_kwargs["token"] = config.metrics_token
        self._metrics_kwargs["server_names"] = config.server_names
        self.settings.update(_live_settings(config))


def _live_settings(config: Config) -> dict[str, Any]:
    return {
        "websocket_max_message_size": config.max_message_size,
        "websocket_ping_interval": config.ping_interval or None,
        "websocket_ping_timeout": config.ping_timeout,
    }


def make_app(
    config: Config,
    store: Store,
    connections: Connections | None = None,
    server_id: str = "local",
    metrics: Metrics | None = None,
    reader: SessionReader | None = None,
) -> EchoApplication:
    """The application serving ``config.ws_path``, /healthz, /readyz, /metrics, /api and the
    console (``config.console_path``).

    ``store`` must be started before the first connection; ``connections`` is shared with the
    server so that shutdown can reach every open session; ``reader`` (made from
    ``config.database_url`` when not given) answers the /api queries.
    """
    return EchoApplication(
        config,
        store,
        Connections() if connections is None else connections,
        server_id,
        Metrics() if metrics is None else metrics,
        SessionReader(config.database_url) if reader is None else reader,
    )
