"""Process lifecycle: bind, serve, reload, and shut down in a fixed order within a deadline.

Shutdown order (SIGTERM or SIGINT): systemd hears STOPPING=1; readiness goes 503 and new
upgrades are refused; the listener stops accepting; every open WebSocket gets a 1001 Going
Away close; the server waits for them until ``shutdown_deadline``; the store drains what is
queued in the time left (at least ``MIN_STORE_DRAIN`` seconds). Signal handlers only set
flags. A second SIGINT skips the waiting.

SIGHUP re-reads the configuration (off the IOLoop thread) and applies the keys in
``LIVE_KEYS`` to connections opened from then on; other changed keys are logged as needing
a restart; a configuration that fails validation is refused and the running one kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import tornado.netutil

from tornado_echo.addresses import is_loopback
from tornado_echo.config import Config
from tornado_echo.connections import Connections
from tornado_echo.engines.budget import loop_budgets
from tornado_echo.errors import ConfigError
from tornado_echo.http import tls
from tornado_echo.http.access import TrustedProxies
from tornado_echo.http.listener import EchoHTTPServer, make_http_server
from tornado_echo.observability.logs import setup_logging
from tornado_echo.observability.metrics import Metrics
from tornado_echo.process.systemd import Notifier
from tornado_echo.store import Store, make_backend, make_store
from tornado_echo.store.reader import SessionReader
from tornado_echo.store.retention import Retention
from tornado_echo.web.app import EchoApplication, make_app

logger = logging.getLogger(__name__)

MIN_STORE_DRAIN = 2.0
TICK = 0.5  # housekeeping period: loop lag, metrics, watchdog, status
STATUS_EVERY = 5.0
LIVE_KEYS = frozenset(
    {
        "allowed_origins",
        "max_message_size",
        "max_messages_per_second",
        "max_bytes_per_second",
        "max_inflight_bytes",
        "max_connections",
        "max_connections_per_ip",
        "ping_interval",
        "ping_timeout",
        "compression",
        "compression_level",
        "journal",
        "log_level",
        "log_format",
        "shutdown_deadline",
        "readiness_needs_store",
        "admin_token",
        "metrics_token",
        "server_names",
        "behind_proxy",
        "trusted_proxies",
        "max_http_connections",
        # Live while TLS stays on (or off): switching it needs a restart.
        "tls_cert",
        "tls_key",
    }
)
TLS_KEYS = ("tls_cert", "tls_key")


def _proxies(config: Config) -> TrustedProxies | None:
    return TrustedProxies(config.trusted_proxies) if config.behind_proxy else None


def default_server_id(config: Config, worker: int = 0) -> str:
    """Stable across restarts of the same instance, distinct between instances and workers."""
    return f"{socket.gethostname()}:{config.port}:{worker}"


class Server:
    """One serving process: its store, application, listener, signals and shutdown."""

    def __init__(
        self,
        config: Config,
        server_id: str | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.server_id = server_id or default_server_id(config)
        self.reload_config = reload_config
        self.notifier = notifier or Notifier(None)
        self.connections = Connections()
        self.metrics = Metrics()
        self.metrics.configure(config)
        self.store: Store = make_store(config, self.server_id)
        self.reader = SessionReader(config.database_url)
        self.retention = Retention(lambda: make_backend(config.database_url), config.retention_days)
        self.app: EchoApplication | None = None
        self.http: EchoHTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self.exit_requested = False
        self.force_exit = False
        self.reload_requested = False
        self._wakeup: asyncio.Event | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open the store, then listen. Raises StoreError when the store cannot be opened."""
        if self.http is not None:
            return
        self._wakeup = asyncio.Event()
        budgets = loop_budgets()
        budgets.memory.limit = self.config.max_inflight_bytes
        if self.notifier.beats is not None:
            budgets.turn.beats = self.notifier.beats  # the supervisor watches it
        self.store.on_batch = self.metrics.batch_seconds.observe
        await self.store.start()
        self.retention.start()
        self.app = make_app(
            self.config, self.store, self.connections, self.server_id, self.metrics, self.reader
        )
        loop = asyncio.get_running_loop()
        ssl_context = await loop.run_in_executor(None, tls.server_context, self.config)
        self.http = make_http_server(
            self.app,
            timeout=self.config.http_timeout,
            max_http_connections=self.config.max_http_connections,
            proxies=_proxies(self.config),
            ssl_context=ssl_context,
            on_refusal=self._count_refusal,
            on_tls_failure=self.metrics.tls_failures.inc,
        )
        if self.config.behind_proxy and not is_loopback(self.config.host):
            logger.warning(
                "behind_proxy is on but host %s is not a loopback address: clients that reach"
                " the port directly are told apart from the proxy only by trusted_proxies (%s)",
                self.config.host,
                ", ".join(self.config.trusted_proxies) or "empty",
            )
        if sockets is None:
            # bind_sockets resolves the host name: a DNS lookup, kept off the IOLoop thread.
            sockets = await loop.run_in_executor(
                None,
                functools.partial(
                    tornado.netutil.bind_sockets, self.config.port, self.config.host, backlog=1024
                ),
            )
        self.sockets = sockets
        self.http.add_sockets(self.sockets)
        if self.config.console:
            self.app.live.start()
        self._housekeeping = asyncio.ensure_future(self._housekeep())
        logger.info(
            "listening on %s:%d%s%s, store %s",
            self.config.host,
            self.port,
            self.config.ws_path,
            " with TLS" if ssl_context is not None else "",
            self.store.backend.describe(),
        )
        self.notifier.ready(self._status_line())

    def _count_refusal(self, label: str) -> None:
        self.metrics.rejections.labels(label).inc()

    # -- signals: flags only ---------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def request_exit(self, sig: int = signal.SIGTERM) -> None:
        """Signal handler: only sets flags (a second SIGINT forces exit)."""
        if self.exit_requested and sig == signal.SIGINT:
            self.force_exit = True
        self.exit_requested = True
        self._wake()

    def request_reload(self) -> None:
        """Signal handler for SIGHUP: only sets a flag."""
        self.reload_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- main loop -------------------------------------------------------------------------

    async def serve(self, sockets: list[socket.socket] | None = None) -> int:
        """Run until a signal, then shut down; returns the process exit code."""
        self.notifier.start()
        try:
            await self.start(sockets)
            self.install_signal_handlers()
            assert self._wakeup is not None
            while not self.exit_requested:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self.reload_requested and not self.exit_requested:
                    self.reload_requested = False
                    await self.reload()
            return await self.shutdown()
        finally:
            self.notifier.close()

    async def reload(self) -> bool:
        """Re-read the configuration and apply what can change live; False if refused."""
        if self.reload_config is None or self.app is None:
            logger.warning("reload requested but this server has no configuration source")
            return False
        self.notifier.reloading()
        try:
            loaded, ssl_context = await asyncio.get_running_loop().run_in_executor(
                None, self._load_config
            )
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_line())
            return False
        old = self.config
        changed = [
            f.name
            for f in dataclasses.fields(Config)
            if getattr(loaded, f.name) != getattr(old, f.name)
        ]
        tls_switched = bool(loaded.tls_cert) != bool(old.tls_cert)
        needs_restart = [
            key for key in changed if key not in LIVE_KEYS or (tls_switched and key in TLS_KEYS)
        ]
        if needs_restart:
            logger.warning(
                "reload: changing %s needs a restart; keeping the running values",
                ", ".join(needs_restart),
            )
        new = dataclasses.replace(loaded, **{key: getattr(old, key) for key in needs_restart})
        if new.log_level != old.log_level or new.log_format != old.log_format:
            setup_logging(new.log_level, new.log_format, new.secrets())
        self.app.reconfigure(new)
        self.metrics.configure(new)
        loop_budgets().memory.limit = new.max_inflight_bytes
        if self.http is not None:
            self.http.proxies = _proxies(new)
            self.http.max_http_connections = new.max_http_connections
            if ssl_context is not None and not tls_switched:
                # Read again even when the paths are the same: a renewed certificate.
                self.http.set_ssl_context(ssl_context)
                logger.info("TLS certificate %s loaded for new connections", new.tls_cert)
        self.config = new
        applied = [key for key in changed if key in LIVE_KEYS]
        logger.info("configuration reloaded; applied: %s", ", ".join(applied) or "nothing changed")
        self.notifier.ready(self._status_line())
        return True

    def _load_config(self) -> tuple[Config, ssl.SSLContext | None]:
        """The configuration and its TLS context, files read afresh (not on the IOLoop)."""
        assert self.reload_config is not None
        loaded = self.reload_config()
        return loaded, tls.server_context(loaded)

    async def _housekeep(self) -> None:
        """Every TICK: event-loop lag, metrics, watchdog ping, and now and then the status."""
        loop = asyncio.get_running_loop()
        turn = loop_budgets().turn
        watchdog_every = self.notifier.watchdog_interval()
        last_watchdog = last_status = loop.time()
        while True:
            expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            now = loop.time()
            turn.beats[0] += 1  # an idle loop is alive too
            self.metrics.loop_lag.observe(max(0.0, now - expected))
            self.metrics.refresh(self.connections, self.store)
            # Pinged from the loop itself: a blocked loop stops the pings and systemd
            # restarts the service.
            if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                self.notifier.watchdog()
                last_watchdog = now
            if now - last_status >= STATUS_EVERY:
                self.notifier.status(self._status_line())
                last_status = now

    def _status_line(self) -> str:
        status = self.store.status()
        state = "ok" if status.available else f"unavailable ({status.error})"
        draining = ", draining" if self.connections.draining else ""
        return (
            f"{len(self.connections)} connections ({self.connections.total} total){draining};"
            f" store {state}, {status.pending} pending"
        )

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> int:
        """Drain and stop; returns 0 if everything drained in time, else 1. Idempotent."""
        if self._stopped:
            return 0
        self._stopped = True
        deadline = time.monotonic() + self.config.shutdown_deadline
        self.notifier.stopping()
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
            self.connections.abort_all()  # their close records go in before the store seals
            # Their ends are work of the turn budget, a few hundred a turn: let them run.
            await self._wait_or_forced(self.connections.wait_closed(MIN_STORE_DRAIN))
        if self.http is not None:
            await self._wait_or_forced(self._close_http_connections())
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.app is not None:
            self.app.live.close()
        store_time = max(MIN_STORE_DRAIN, deadline - time.monotonic())
        self.reader.close()
        self.retention.close()
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
