"""The store the server talks to: the IOLoop only enqueues, one thread writes in batches.

``submit`` is the only call made per record on the IOLoop thread: it appends to a deque and,
when a batch is full, wakes the writer. The writer thread owns the backend connection: it
connects and migrates at start, writes batches (size ``batch_size`` or after ``batch_delay``),
retries a failed batch with capped exponential backoff while the database is down, pings when
idle so readiness reflects reality, and drains what is queued on close within the deadline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StoreError
from .base import Backend
from .records import Record

logger = logging.getLogger(__name__)

IDLE_PING_INTERVAL = 5.0
MAX_BACKOFF = 5.0
FIRST_BACKOFF = 0.1


@dataclass(frozen=True)
class StoreStatus:
    """A snapshot for /readyz, logs and metrics."""

    available: bool
    error: str | None
    pending: int
    written: int
    dropped: int
    errors: int
    oldest_pending_age: float


class Store:
    """Batching, retrying writer in front of one :class:`Backend`."""

    def __init__(
        self,
        backend: Backend,
        server_id: str,
        batch_size: int = 1000,
        batch_delay: float = 0.05,
        queue_limit: int = 100_000,
    ) -> None:
        self.backend = backend
        self.server_id = server_id
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.queue_limit = queue_limit
        self._queue: collections.deque[tuple[float, Record]] = collections.deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._drain_until = float("inf")
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False
        self._available = False
        self._error: str | None = None
        self._written = 0
        self._dropped = 0
        self._errors = 0
        # Called on the writer thread with each written batch's duration (metrics).
        self.on_batch: Callable[[float], None] | None = None

    # -- IOLoop side -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer; returns once the database is connected and migrated.

        Raises :class:`StoreError` when the database cannot be reached or migrated, so a
        misconfigured service fails at start instead of serving with nowhere to write.
        """
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._started)

    def submit(self, record: Record) -> None:
        """Queue ``record`` for writing; never blocks, safe from any thread."""
        if len(self._queue) >= self.queue_limit:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                logger.error(
                    "store queue full (%d records): %d records dropped so far",
                    self.queue_limit,
                    self._dropped,
                )
            return
        self._queue.append((time.monotonic(), record))
        if len(self._queue) >= self.batch_size:
            self._wakeup.set()

    def status(self) -> StoreStatus:
        queue = self._queue
        oldest = time.monotonic() - queue[0][0] if queue else 0.0
        return StoreStatus(
            available=self._available,
            error=self._error,
            pending=len(queue),
            written=self._written,
            dropped=self._dropped,
            errors=self._errors,
            oldest_pending_age=oldest,
        )

    async def close(self, deadline: float = 10.0) -> None:
        """Write what is queued (for at most ``deadline`` seconds), then disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._drain_until = time.monotonic() + deadline
        self._stopping.set()
        self._wakeup.set()
        # A little grace beyond the deadline for the batch in flight to finish.
        await asyncio.get_running_loop().run_in_executor(None, thread.join, deadline + 5.0)
        if thread.is_alive():
            logger.error("store writer did not stop within the shutdown deadline")

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.backend.connect()
            applied = self.backend.migrate()
            crashed = self.backend.mark_crashed(self.server_id, time.time())
        except Exception as exc:  # noqa: BLE001 - task boundary: report to start() and stop
            message = f"cannot open store {self.backend.describe()}: {_one_line(exc)}"
            self._started.set_exception(StoreError(message))
            self.backend.close()
            return
        if applied:
            logger.info("store %s: applied schema versions %s", self.backend.describe(), applied)
        if crashed:
            logger.warning("marked %d sessions left open by a previous run as crashed", crashed)
        self._available = True
        self._started.set_result(None)
        try:
            self._loop()
        except Exception:  # task boundary: the writer must never die silently
            logger.critical("store writer stopped unexpectedly", exc_info=True)
        finally:
            self.backend.close()

    def _loop(self) -> None:
        last_activity = time.monotonic()
        while True:
            if not self._stopping.is_set():
                self._wakeup.wait(self.batch_delay)
                self._wakeup.clear()
            batch = self._take_batch()
            if batch:
                if not self._write_with_retry(batch):
                    self._give_up(batch)
                    return
                last_activity = time.monotonic()
            elif self._stopping.is_set():
                return
            elif time.monotonic() - last_activity >= IDLE_PING_INTERVAL:
                self._ping()
                last_activity = time.monotonic()

    def _take_batch(self) -> list[Record]:
        queue = self._queue
        count = min(len(queue), self.batch_size)
        return [queue.popleft()[1] for _ in range(count)]

    def _write_with_retry(self, batch: list[Record]) -> bool:
        """Write ``batch``, retrying while the database is down; False past the drain deadline."""
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                self.backend.write(batch)
            except Exception as exc:  # noqa: BLE001 - any driver failure: not written yet
                self._mark_unavailable(exc)
                remaining = self._drain_until - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, MAX_BACKOFF)
                self.backend.close()
                continue
            self._written += len(batch)
            if self.on_batch is not None:
                self.on_batch(time.monotonic() - started)
            self._mark_available()
            return True

    def _ping(self) -> None:
        try:
            self.backend.ping()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a state, not a crash
            self._mark_unavailable(exc)
            self.backend.close()
        else:
            self._mark_available()

    def _mark_unavailable(self, exc: Exception) -> None:
        message = _one_line(exc)
        self._errors += 1
        if self._available or message != self._error:
            logger.error("store %s unavailable: %s", self.backend.describe(), message)
        self._available = False
        self._error = message

    def _mark_available(self) -> None:
        if not self._available:
            logger.warning("store %s available again", self.backend.describe())
        self._available = True
        self._error = None

    def _give_up(self, batch: list[Record]) -> None:
        lost = len(batch) + len(self._queue)
        self._queue.clear()
        self._dropped += lost
        logger.error("shutdown deadline passed with the store unavailable: %d records lost", lost)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
