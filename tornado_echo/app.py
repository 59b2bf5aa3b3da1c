"""``make_app``: the Tornado Application with its routes and settings, built from a Config."""

from __future__ import annotations

import tornado.web
from tornado.log import access_log

from .api import SessionHandler, SessionsHandler
from .config import Config
from .connections import Connections
from .handlers import EchoWebSocket, HealthHandler, NotFoundHandler, ReadyHandler
from .store import Store
from .store.reader import SessionReader


def make_app(
    config: Config,
    db: Store,
    connections: Connections | None = None,
    server_id: str = "local",
    reader: SessionReader | None = None,
) -> tornado.web.Application:
    """The application serving ``config.ws_path`` plus /healthz, /readyz and /api.

    ``db`` must be started before the first connection; ``connections`` is shared with the
    server so that shutdown can reach every open session; ``reader`` (made from
    ``config.database_url`` when not given) answers the /api queries.
    """
    connections = Connections() if connections is None else connections
    reader = SessionReader(config.database_url) if reader is None else reader
    api_kwargs = {"config": config, "reader": reader}
    ws_kwargs = {"db": db, "config": config, "connections": connections, "server_id": server_id}
    return tornado.web.Application(
        [
            (config.ws_path, EchoWebSocket, ws_kwargs),
            ("/healthz", HealthHandler),
            ("/readyz", ReadyHandler, {"db": db, "connections": connections}),
            ("/api/sessions", SessionsHandler, api_kwargs),
            (r"/api/sessions/([^/]+)", SessionHandler, api_kwargs),
        ],
        default_handler_class=NotFoundHandler,
        websocket_max_message_size=config.max_message_size,
        websocket_ping_interval=config.ping_interval or None,
        websocket_ping_timeout=config.ping_timeout,
        compress_response=False,
        log_function=_log_request,
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Rejections and failures are logged where they happen, with their reason; the access
    # line is only for debugging.
    access_log.debug(
        "%d %s %.2fms",
        handler.get_status(),
        handler._request_summary(),
        1000.0 * handler.request.request_time(),
    )
