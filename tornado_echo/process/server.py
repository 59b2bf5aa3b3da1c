"""Process lifecycle: bind, serve, reload, and shut down in a fixed order within a deadline.

Shutdown order (SIGTERM or SIGINT): systemd hears STOPPING=1; readiness goes 503 and new
upgrades are refused; the listener stops accepting; every open WebSocket gets a 1001 Going
Away close; the server waits for them until ``shutdown_deadline``; the store drains what is
queued in the time left (at least ``MIN_STORE_DRAIN`` seconds). Signal handlers only set
flags. A second SIGINT skips the waiting.

SIGHUP re-reads the configuration (off the IOLoop thread) and applies the keys in
``LIVE_KEYS`` to connections opened from then on (the one :class:`LiveConfig` that handlers
and the listener read); other changed keys are logged as needing a restart; a configuration
that fails validation is refused and the running one kept. The files are read in a thread
of their own within ``LOAD_TIMEOUT`` (a certificate on a hung mount is a refused reload, not
a hung one), and a reload under way never holds up a shutdown: SIGTERM is served while it
runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tornado_echo.addresses import is_loopback
from tornado_echo.config import Config, LiveConfig
from tornado_echo.connections import Connections
from tornado_echo.engines.budget import loop_budgets
from tornado_echo.errors import ConfigError
from tornado_echo.http import tls
from tornado_echo.http.fast_listener import FastHTTPServer, make_fast_http_server
from tornado_echo.http.listener import EchoHTTPServer, make_http_server
from tornado_echo.http.sockets import bind_sockets
from tornado_echo.observability.logs import setup_logging
from tornado_echo.observability.metrics import Metrics
from tornado_echo.process.systemd import Notifier
from tornado_echo.store import Store, StoreStatus, is_sqlite, make_backend, make_store
from tornado_echo.store.reader import SessionReader
from tornado_echo.store.retention import Retention
from tornado_echo.web.app import EchoApplication, make_app

logger = logging.getLogger(__name__)

MIN_STORE_DRAIN = 2.0
LOAD_TIMEOUT = 10.0  # seconds to read the conf file and the TLS pair
TICK = 0.5  # housekeeping period: loop lag, metrics, watchdog, status
STATUS_EVERY = 5.0


def uses_fast_listener(config: Config) -> bool:
    """Whether :mod:`tornado_echo.http.fast_listener` serves: ``listener = "auto"`` with the
    fast engine, TLS or not (Tornado's own protocol needs Tornado's IOStream)."""
    return config.listener == "auto" and config.engine == "fast"


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
        self.live_config = LiveConfig(config)
        self.server_id = server_id or default_server_id(config)
        self.reload_config = reload_config
        self.notifier = notifier or Notifier(None)
        self.connections = Connections()
        self.metrics = Metrics()
        self.metrics.configure(config)
        self.store: Store = make_store(config, self.server_id)
        self.reader = SessionReader(config.database_url)
        self.retention = Retention(
            lambda: make_backend(config.database_url),
            config.retention_days,
            partitions=not is_sqlite(config.database_url),
        )
        self.app: EchoApplication | None = None
        self.http: EchoHTTPServer | FastHTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self.exit_requested = False
        self.force_exit = False
        self.reload_requested = False
        self._wakeup: asyncio.Event | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopped = False
        self._status_state: tuple[object, ...] = ()  # what the last status line said was wrong
        self._reload_refused: str | None = None  # why the last reload was refused

    @property
    def config(self) -> Config:
        """The running configuration."""
        return self.live_config.current

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Open the store, then listen. Raises StoreError when the store cannot be opened
        (a network database that does not answer yet is no such case: the store starts
        without it), OSError when the address cannot be bound; either way nothing is left
        behind (no spool file, no threads)."""
        if self.http is not None:
            return
        try:
            await self._start(sockets)
        except BaseException:
            await self._abandon()
            raise

    async def _abandon(self) -> None:
        """Undo a start that failed part way."""
        if self.http is not None:
            self.http.stop()
        if self.app is not None:
            self.app.live.close()
        self.reader.close()
        self.retention.close()
        await self.store.close(0.0)

    async def _start(self, sockets: list[socket.socket] | None) -> None:
        self._wakeup = asyncio.Event()
        budgets = loop_budgets()
        budgets.memory.limit = self.config.max_inflight_bytes
        if self.notifier.beats is not None:
            budgets.turn.beats = self.notifier.beats  # the supervisor watches it
        self.store.on_batch = self.metrics.batch_seconds.observe
        await self.store.start()
        self.retention.start()
        self.app = make_app(
            self.live_config,
            self.store,
            self.connections,
            self.server_id,
            self.metrics,
            self.reader,
        )
        loop = asyncio.get_running_loop()
        ssl_context = await _read_files(functools.partial(tls.server_context, self.config))
        make = make_fast_http_server if uses_fast_listener(self.config) else make_http_server
        self.http = make(
            self.app,
            self.live_config,
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
                    bind_sockets,
                    self.config.port,
                    self.config.host,
                    backlog=self.config.listen_backlog,
                ),
            )
        self.sockets = sockets
        await self.http.start_serving(self.sockets)
        if self.config.console:
            self.app.live.start()
        self._housekeeping = asyncio.ensure_future(self._housekeep())
        # One record a line: the log escapes line breaks inside a record.
        for line in self._first_screen(ssl_context is not None):
            logger.info("%s", line)
        self._update_status(force=True, ready=True)

    def _first_screen(self, tls_on: bool) -> list[str]:
        """Where to point a browser and a client, and where the records go."""
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        base = f"{shown}:{self.port}"
        http, ws = ("https", "wss") if tls_on else ("http", "ws")
        lines = [f"listening on {base}{' with TLS' if tls_on else ''}"]
        if self.config.console:
            lines.append(f"  console    {http}://{base}{self.config.console_path}")
        lines.append(f"  WebSocket  {ws}://{base}{self.config.ws_path}")
        lines.append(f"  store      {self.store.backend.describe()}")
        status = self.store.status()
        if not status.available:
            lines.append(
                f"  the database does not answer ({status.error}): serving without it; records"
                f" wait in {os.path.abspath(self.config.state_dir)} and it is retried"
            )
        return lines

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
            # Before start(), which tells systemd READY=1: a SIGHUP (systemctl reload) or a
            # SIGTERM right after it must find the handlers, not kill the process.
            self.install_signal_handlers()
            await self.start(sockets)
            assert self._wakeup is not None
            if self.reload_requested:
                self._wake()  # a SIGHUP came during start()
            reloading: asyncio.Task[bool] | None = None
            while not self.exit_requested:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self.exit_requested:
                    break
                if self.reload_requested and (reloading is None or reloading.done()):
                    self.reload_requested = False
                    reloading = asyncio.ensure_future(self.reload())
                    reloading.add_done_callback(self._reloaded)
            if reloading is not None:
                reloading.cancel()  # applies nothing unless it was done
            return await self.shutdown()
        finally:
            self.notifier.close()

    def _reloaded(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("reload failed", exc_info=task.exception())
        self._wake()  # a SIGHUP that came meanwhile is served now

    async def reload(self) -> bool:
        """Re-read the configuration and apply what can change live; False if refused."""
        if self.reload_config is None or self.app is None:
            logger.warning("reload requested but this server has no configuration source")
            return False
        self.notifier.reloading()
        try:
            loaded, ssl_context = await _read_files(self._load_config)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: %s", exc)
            self._reload_refused = str(exc)
            self._update_status(force=True, ready=True)
            return False
        self._reload_refused = None
        old = self.config
        reload = self.live_config.reload(loaded)
        if reload.kept:
            logger.warning(
                "reload: changing %s needs a restart; keeping the running values",
                ", ".join(reload.kept),
            )
        new = reload.config
        if new.log_level != old.log_level or new.log_format != old.log_format:
            setup_logging(new.log_level, new.log_format, new.secrets())
        self.metrics.configure(new)
        if self.http is not None and ssl_context is not None and new.tls_cert:
            # Read again even when the paths are the same: a renewed certificate. (Not when
            # TLS was switched on: that needs a restart, and new.tls_cert is still empty.)
            self.http.set_ssl_context(ssl_context)
            logger.info("TLS certificate %s loaded for new connections", new.tls_cert)
        self.app.journal_budget.rate = new.journal_max_bytes_per_second
        loop_budgets().memory.limit = new.max_inflight_bytes
        logger.info(
            "configuration reloaded; applied: %s", ", ".join(reload.applied) or "nothing changed"
        )
        self._update_status(force=True, ready=True)
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
            self.metrics.observe_loop_lag(max(0.0, now - expected))
            self.metrics.refresh(self.connections, self.store)
            # Pinged from the loop itself: a blocked loop stops the pings and systemd
            # restarts the service.
            if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                self.notifier.watchdog()
                last_watchdog = now
            if self._update_status(force=now - last_status >= STATUS_EVERY):
                last_status = now

    def _update_status(self, force: bool = False, ready: bool = False) -> bool:
        """Send the status line when what it says is wrong changed (the store going away or
        coming back, a refused reload, the drain), or when ``force``; True if sent."""
        status = self.store.status()
        state = (status.available, status.error, self.connections.draining, self._reload_refused)
        if not force and state == self._status_state:
            return False
        self._status_state = state
        line = self._status_line(status)
        if ready:
            self.notifier.ready(line)
        else:
            self.notifier.status(line)
        return True

    def _status_line(self, status: StoreStatus | None = None) -> str:
        """``N connections (M total); store ok, P pending``, a refused reload first."""
        status = status or self.store.status()
        state = "ok" if status.available else f"unavailable ({status.error})"
        draining = ", draining" if self.connections.draining else ""
        refused = f"reload refused: {self._reload_refused}; " if self._reload_refused else ""
        return (
            f"{refused}{len(self.connections)} connections ({self.connections.total} total)"
            f"{draining}; store {state}, {status.pending} pending"
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
        if self.app is not None:
            self.app.live.close()
        # The sessions' last counts, folded since the last tick: with workers, another
        # worker's scrape reads them from this one's files after it has gone.
        self.metrics.refresh(self.connections, self.store)
        store_time = max(MIN_STORE_DRAIN, deadline - time.monotonic())
        self.reader.close()
        self.retention.close()
        try:
            await self.store.close(0.0 if self.force_exit else store_time)
        finally:
            # Only now: its beats and pings tell a supervisor that a worker awaiting the
            # store's writer is draining, not stuck (that one is killed past the grace).
            if self._housekeeping is not None:
                self._housekeeping.cancel()
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


_T = TypeVar("_T")


async def _read_files(read: Callable[[], _T]) -> _T:
    """``read()`` in a daemon thread of its own, within LOAD_TIMEOUT (else ConfigError).

    Not the loop's executor: a read that never returns (a FIFO, a hung mount) would keep
    its thread, and the executor's shutdown and the interpreter's exit wait for those.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if done.done():
            return  # timed out, or the reload was cancelled
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = read(), None
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            pass

    threading.Thread(target=run, name="read-files", daemon=True).start()
    try:
        return await asyncio.wait_for(done, LOAD_TIMEOUT)
    except asyncio.TimeoutError:
        raise ConfigError(
            f"reading the configuration and TLS files took over {LOAD_TIMEOUT:.0f} s"
        ) from None
