"""Process lifecycle: bind, serve, and shut down in a fixed order within a deadline.

Shutdown order (SIGTERM or SIGINT): readiness goes 503 and new upgrades are refused; the
listener stops accepting; every open WebSocket gets a 1001 Going Away close; the server waits
for them until ``shutdown_deadline``; the store drains what is queued in the time left (at
least ``MIN_STORE_DRAIN`` seconds). Signal handlers only set flags. A second SIGINT skips the
waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable

import tornado.httpserver
import tornado.netutil

from .app import make_app
from .config import Config
from .connections import Connections
from .store import Store, make_store
from .store.reader import SessionReader

logger = logging.getLogger(__name__)

MIN_STORE_DRAIN = 2.0


def default_server_id(config: Config, worker: int = 0) -> str:
    """Stable across restarts of the same instance, distinct between instances and workers."""
    return f"{socket.gethostname()}:{config.port}:{worker}"


class Server:
    """One serving process: its store, application, listener and shutdown sequence."""

    def __init__(self, config: Config, server_id: str | None = None) -> None:
        self.config = config
        self.server_id = server_id or default_server_id(config)
        self.connections = Connections()
        self.store: Store = make_store(config, self.server_id)
        self.reader = SessionReader(config.database_url)
        self.http: tornado.httpserver.HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self.exit_requested = False
        self.force_exit = False
        self._exit_event: asyncio.Event | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open the store, then listen. Raises StoreError when the store cannot be opened."""
        if self.http is not None:
            return
        self._exit_event = asyncio.Event()
        await self.store.start()
        app = make_app(self.config, self.store, self.connections, self.server_id, self.reader)
        self.http = tornado.httpserver.HTTPServer(
            app, xheaders=self.config.behind_proxy, idle_connection_timeout=60
        )
        self.sockets = sockets or tornado.netutil.bind_sockets(
            self.config.port, self.config.host, backlog=1024
        )
        self.http.add_sockets(self.sockets)
        logger.info(
            "listening on %s:%d%s, store %s",
            self.config.host,
            self.port,
            self.config.ws_path,
            self.store.backend.describe(),
        )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_exit, sig)

    def request_exit(self, sig: int = signal.SIGTERM) -> None:
        """Signal handler: only sets flags (a second SIGINT forces exit)."""
        if self.exit_requested and sig == signal.SIGINT:
            self.force_exit = True
        self.exit_requested = True
        if self._exit_event is not None:
            self._exit_event.set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> int:
        """Run until a signal, then shut down; returns the process exit code."""
        await self.start(sockets)
        self.install_signal_handlers()
        assert self._exit_event is not None
        await self._exit_event.wait()
        return await self.shutdown()

    async def shutdown(self) -> int:
        """Drain and stop; returns 0 if everything drained in time, else 1. Idempotent."""
        if self._stopped:
            return 0
        self._stopped = True
        deadline = time.monotonic() + self.config.shutdown_deadline
        self.connections.start_draining()
        if self.http is not None:
            self.http.stop()
        closing = self.connections.close_all()
        logger.info("shutting down: closing %d WebSocket sessions with 1001", closing)
        drained = await self._wait_or_forced(
            self.connections.wait_closed(max(0.0, deadline - time.monotonic()))
        )
        if not drained:
            logger.warning(
                "%d WebSocket sessions still open at the shutdown deadline; dropping them",
                len(self.connections),
            )
        if self.http is not None:
            await self._wait_or_forced(self._close_http_connections())
        store_time = max(MIN_STORE_DRAIN, deadline - time.monotonic())
        self.reader.close()
        await self.store.close(0.0 if self.force_exit else store_time)
        status = self.store.status()
        if status.pending or status.dropped:
            logger.error(
                "store not drained: %d records left in the spool for the next start, %d lost",
                status.pending,
                status.dropped,
            )
        logger.info("stopped")
        return 0 if drained and not self.force_exit else 1

    async def _close_http_connections(self) -> bool:
        assert self.http is not None
        await self.http.close_all_connections()
        return True

    async def _wait_or_forced(self, waiting: Awaitable[bool]) -> bool:
        """Await ``waiting`` unless a forced exit comes first; False when cut short."""
        task = asyncio.ensure_future(waiting)
        while not task.done():
            if self.force_exit:
                task.cancel()
                return False
            await asyncio.wait([task], timeout=0.1)
        return bool(task.result())
