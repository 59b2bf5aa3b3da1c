"""The store the server talks to: the IOLoop only enqueues, two threads do the rest.

``submit`` is the only call made per record on the IOLoop thread: a journal payload cut to
``journal_max_payload``, a deque append under a short lock and, when a threshold is crossed,
an event. Everything else runs on two threads:

* the *writer* owns the backend connection. At start it connects, migrates, replays a spool a
  previous run left behind, and marks that run's still-open sessions crashed (in that order,
  so replayed closes win). Then it writes batches (``batch_size`` records or after
  ``batch_delay``), spool first, then memory, retrying connection failures with capped
  exponential backoff and bisecting a batch that fails on bad data until the poison record is
  isolated, logged and skipped.
* the *spooler* keeps memory bounded: every batch window (``batch_delay``) records beyond
  ``queue_limit`` or ``queue_bytes_limit`` move, oldest first, to an append-only spool file in
  ``state_dir``, fsynced (off the IOLoop). While the database is unavailable *every* record
  moves there, so a crash (kill -9) during an outage loses at most one batch window.
  Should records come faster than the spool takes them, past twice the byte limit journal
  payloads are shed (the metadata kept, marked truncated, counted). On close, whatever the
  writer could not write before the deadline goes there too, for the next start.

A batch is bounded in bytes too (``queue_bytes_limit / 16``), so neither the COPY text nor the
spool lines of one batch hold the GIL (and so the IOLoop) for long.

Threads: the memory queue, its byte count and the counters are guarded by ``_state_lock``,
held only for O(1) steps or one C-level copy of at most a batch, never for I/O; the spool by
``_lock`` (taken before ``_state_lock`` when both are needed). Nothing relies on the GIL.

Order: spool + memory always form one FIFO, the spool being its head. The writer reads memory
batches without removing them (a peek); if the spooler moves them meanwhile, the writer
abandons the attempt and reads them from the spool instead. Writes are idempotent (keyed on
session id and (session id, seq)), so a record written twice lands once, and a session's
open, journal and close, even when split between spool and memory, arrive in order.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tornado_echo.errors import StoreError, one_line
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.base import Backend
from tornado_echo.store.records import RECORD_OVERHEAD, MessageReceived, Record, footprint
from tornado_echo.store.spool import Lease, Spool

logger = logging.getLogger(__name__)

IDLE_PING_INTERVAL = 5.0
MAX_BACKOFF = 5.0
FIRST_BACKOFF = 0.1
SPILL_STEP = 1000  # records moved per hold of the state lock
DEGRADED_LOG_INTERVAL = 30.0
# How long start may wait for the database while replaying a leftover spool before failing.
START_REPLAY_PATIENCE = 5.0
# Grace for the batch in flight when the drain deadline passes.
JOIN_GRACE = 1.0
RESTART_PAUSE = 1.0  # after an unexpected writer failure


@dataclass(frozen=True)
class StoreStatus:
    """A snapshot for /readyz, logs and metrics."""

    available: bool
    error: str | None
    pending: int  # queued + spooled
    queued: int  # records in memory
    queued_bytes: int  # their approximate size
    spooled: int  # records in the spool file
    spool_bytes: int
    written: int
    poisoned: int  # records the database refused (bad data), logged and skipped
    dropped: int  # records lost: the spool was full, deleted or damaged
    loss: str | None  # why records were last lost
    shed: int  # journal payloads not kept because memory was full (metadata kept)
    errors: int  # failed database operations (each retried)
    oldest_pending_age: float
    running: bool  # the writer thread is alive


class _Outcome(enum.Enum):
    DONE = "done"  # written (or poison skipped)
    MOVED = "moved"  # memory records moved to the spool meanwhile; re-read from there
    GAVE_UP = "gave_up"  # the drain deadline passed with the database unavailable


@dataclass
class _Batch:
    records: list[Record]
    head: int = 0  # memory: records removed from memory before this batch was peeked
    lease: Lease | None = None  # spool: the lines read


class Store:
    """Batching, retrying, spooling writer in front of one :class:`Backend`."""

    def __init__(
        self,
        backend: Backend,
        server_id: str,
        spool_path: Path,
        batch_size: int = 1000,
        batch_delay: float = 0.05,
        queue_limit: int = 100_000,
        queue_bytes_limit: int = 64 * 1024 * 1024,
        journal_max_payload: int = 65536,
    ) -> None:
        self.backend = backend
        self.server_id = server_id
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self.queue_limit = queue_limit
        self.queue_bytes_limit = queue_bytes_limit
        self.journal_max_payload = journal_max_payload
        self.batch_bytes = max(RECORD_OVERHEAD, queue_bytes_limit // 16)
        self.spool = Spool(spool_path)
        # Guards the spool (file and counters); taken before _state_lock.
        self._lock = threading.Lock()
        # Guards _queue, _queued_bytes, _removed and the counters below.
        self._state_lock = threading.Lock()
        self._queue: collections.deque[Record] = collections.deque()
        self._queued_bytes = 0
        self._removed = 0  # records ever removed from the head of the queue
        self._wakeup = threading.Event()
        self._overflow = threading.Event()
        self._stopping = threading.Event()
        self._spooler_stop = threading.Event()
        self._drain_until = float("inf")
        self._thread: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False
        self._sealed = False  # closed and spooled: nothing submitted now can be kept
        self._available = False
        self._error: str | None = None
        self._last_degraded_log = 0.0
        self._written = 0
        self._poisoned = 0
        self._dropped = 0
        self._loss: str | None = None
        self._shed = 0
        self._errors = 0
        self._throttle = LogThrottle(logger)
        # Called on the writer thread with each written batch's duration (metrics).
        self.on_batch: Callable[[float], None] | None = None

    # -- IOLoop side -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer; returns once the database is connected, migrated and caught up.

        Raises :class:`StoreError` when the spool or the database cannot be opened, so a
        misconfigured service fails at start instead of serving with nowhere to write.
        """
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._started)

    def submit(self, record: Record) -> None:
        """Queue ``record`` for writing; never blocks for long, safe from any thread."""
        if self._sealed:
            self._late(record)
            return
        if type(record) is MessageReceived:
            record = record.cut(self.journal_max_payload)
        size = footprint(record)
        shed = False
        with self._state_lock:
            if self._queued_bytes + size > 2 * self.queue_bytes_limit:
                if type(record) is MessageReceived and record.payload:
                    # The spooler is not keeping up: keep the facts, not the bytes.
                    record = record.cut(0)
                    size = footprint(record)
                    self._shed += 1
                    shed = True
            self._queue.append(record)
            self._queued_bytes += size
            depth, queued_bytes = len(self._queue), self._queued_bytes
        if shed:
            self._throttle.log(
                "shed",
                logging.WARNING,
                "store memory over twice queue_bytes_limit (%d bytes): journal payloads are"
                " not kept, only their metadata (%d so far)",
                self.queue_bytes_limit,
                self._shed,
            )
        if depth >= self.batch_size and not self._wakeup.is_set():
            self._wakeup.set()
        overflow = depth > self.queue_limit or queued_bytes > self.queue_bytes_limit
        if overflow and not self._overflow.is_set():
            self._overflow.set()

    def _late(self, record: Record) -> None:
        dropped = self._lose(1, "submitted after the store closed")
        logger.error("store already closed: record lost (%d lost so far): %r", dropped, record)

    def _lose(self, count: int, reason: str) -> int:
        """Count ``count`` records lost for ``reason``; returns the total lost so far."""
        with self._state_lock:
            self._dropped += count
            self._loss = reason
            return self._dropped

    def status(self) -> StoreStatus:
        now = time.time()
        with self._state_lock:
            queued, queued_bytes = len(self._queue), self._queued_bytes
            oldest = [self._queue[0].at] if queued else []
            written, poisoned, dropped = self._written, self._poisoned, self._dropped
            loss = self._loss
            shed, errors = self._shed, self._errors
        spool_oldest = self.spool.oldest
        if spool_oldest is not None:
            oldest.append(spool_oldest)
        thread = self._thread
        return StoreStatus(
            available=self._available,
            error=self._error,
            pending=queued + self.spool.pending,
            queued=queued,
            queued_bytes=queued_bytes,
            spooled=self.spool.pending,
            spool_bytes=self.spool.pending_bytes,
            written=written,
            poisoned=poisoned,
            dropped=dropped,
            loss=loss,
            shed=shed,
            errors=errors,
            oldest_pending_age=max(0.0, now - min(oldest)) if oldest else 0.0,
            running=thread is not None and thread.is_alive() and self._started.done(),
        )

    async def close(self, deadline: float = 10.0) -> None:
        """Write what is pending for at most ``deadline`` seconds, spool the rest. Idempotent.

        Nothing is dropped here: records the database did not take stay in the spool file
        for the next start.
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        thread = self._thread
        if thread is not None:
            self._drain_until = time.monotonic() + deadline
            self._stopping.set()
            self._wakeup.set()
            await loop.run_in_executor(None, thread.join, deadline + JOIN_GRACE)
            if thread.is_alive():
                logger.error("store writer did not stop within the shutdown deadline")
        spooler = self._spooler
        if spooler is not None:
            self._spooler_stop.set()
            self._overflow.set()
            await loop.run_in_executor(None, spooler.join)
        else:  # never started, or failed to: keep whatever was submitted anyway
            await loop.run_in_executor(None, self._spill_unstarted)
        # Sealing fsyncs the spool: never on the IOLoop thread.
        left = await loop.run_in_executor(None, self._seal)
        if left:
            logger.warning(
                "store closed with %d records in the spool %s; the next start replays them",
                left,
                self.spool.path,
            )

    def _seal(self) -> int:
        """Spool what was submitted during close, then close the spool; returns its size."""
        self._sealed = True  # from now on submit() counts records as lost
        if self.spool.is_open:
            self._spill(everything=True)
        with self._lock:
            left = self.spool.pending
            self.spool.close()
        return left

    def _spill_unstarted(self) -> None:
        with self._state_lock:
            if not self._queue:
                return
        try:
            with self._lock:
                self.spool.open()
        except StoreError as exc:
            logger.critical("%s", exc)
        self._spill(everything=True)

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._lock:
                self.spool.open()
            self.backend.connect()
            applied = self.backend.migrate()
            replayed = self._replay_leftover_spool()
            crashed = self.backend.mark_crashed(self.server_id, time.time())
        except Exception as exc:  # noqa: BLE001 - task boundary: report to start() and stop
            message = f"cannot open store {self.backend.describe()}: {one_line(exc)}"
            self._started.set_exception(StoreError(message))
            self.backend.close()
            return
        if applied:
            logger.info("store %s: applied schema versions %s", self.backend.describe(), applied)
        if replayed:
            logger.warning("replayed %d records spooled by a previous run", replayed)
        if crashed:
            logger.warning("marked %d sessions left open by a previous run as crashed", crashed)
        self._available = True
        self._spooler = threading.Thread(target=self._spool_run, name="store-spool", daemon=True)
        self._spooler.start()
        self._started.set_result(None)
        try:
            while True:
                try:
                    self._loop()
                    return
                except Exception:  # noqa: BLE001 - task boundary: logged, and the writer goes on
                    self._throttle.log(
                        "writer", logging.CRITICAL, "store writer failed; restarting", exc_info=True
                    )
                if not self._stopping.is_set():
                    self._stopping.wait(RESTART_PAUSE)
                elif time.monotonic() < self._drain_until:
                    time.sleep(FIRST_BACKOFF)  # close() waits for us: retry, but not in a spin
                else:
                    return
        finally:
            self.backend.close()

    def _replay_leftover_spool(self) -> int:
        """Write a previous run's spool before anything else; raises if the database goes."""
        if not self.spool.pending:
            return 0
        logger.warning(
            "replaying %d records (%d bytes) from %s",
            self.spool.pending,
            self.spool.pending_bytes,
            self.spool.path,
        )
        replayed = 0
        while self.spool.pending:
            with self._lock:
                batch = self._next_batch()
            assert batch is not None and batch.lease is not None
            self._drain_until = time.monotonic() + START_REPLAY_PATIENCE
            if self._write(batch.records, batch) is not _Outcome.DONE:
                raise StoreError(f"database unavailable while replaying {self.spool.path}")
            assert batch.lease is not None
            with self._lock:
                self.spool.commit(batch.lease)
            replayed += batch.lease.lines
        self._drain_until = float("inf")
        return replayed

    def _loop(self) -> None:
        last_activity = time.monotonic()
        while True:
            # A full batch (or a spool to replay) goes at once; a partial one waits its delay.
            with self._state_lock:
                full = len(self._queue) >= self.batch_size
            behind = full or self.spool.pending
            if not self._stopping.is_set() and not behind:
                self._wakeup.wait(self.batch_delay)
                self._wakeup.clear()
            with self._lock:
                batch = self._next_batch()
            if batch is not None:
                outcome = self._write(batch.records, batch)
                if outcome is _Outcome.GAVE_UP:
                    logger.error(
                        "shutdown deadline passed with the store unavailable: %s", self._error
                    )
                    return
                if outcome is _Outcome.DONE:
                    with self._lock:
                        self._finish(batch)
                last_activity = time.monotonic()
            elif self._stopping.is_set():
                return
            elif time.monotonic() - last_activity >= IDLE_PING_INTERVAL:
                self._ping()
                last_activity = time.monotonic()

    def _next_batch(self) -> _Batch | None:
        """The oldest pending records: the spool's head, else memory's (peeked). Under lock."""
        self._check_spool()
        if self.spool.pending:
            lease = self.spool.read(self.batch_size, self.batch_bytes)
            if len(lease.records) < lease.lines:
                dropped = self._lose(
                    lease.lines - len(lease.records), "corrupt lines in the spool file"
                )
                self._throttle.log(
                    "spool-corrupt",
                    logging.ERROR,
                    "spool %s: corrupt lines skipped, %d records lost so far",
                    self.spool.path,
                    dropped,
                )
            return _Batch(lease.records, lease=lease)
        with self._state_lock:
            head = self._removed
            records = list(itertools.islice(self._queue, self.batch_size))
        if not records:
            return None
        # Cut to the byte bound outside the lock; the rest stays queued for the next batch.
        total = 0
        for count, record in enumerate(records):
            total += footprint(record)
            if total > self.batch_bytes and count:
                del records[count:]
                break
        return _Batch(records, head=head)

    def _check_spool(self) -> None:
        """Notice a spool file deleted or damaged under us: count, say so, go on. Under lock."""
        if self._sealed:
            return
        try:
            if not self.spool.is_open:  # a previous check could not recreate it
                self.spool.open()
            lost = self.spool.check()
        except StoreError as exc:
            self._throttle.log("spool", logging.CRITICAL, "%s", exc)
            return
        if not lost:  # intact, or nothing pending went with it
            return
        dropped = self._lose(lost, "spool file deleted or damaged while running")
        self._throttle.log(
            "spool",
            logging.CRITICAL,
            "spool %s was deleted, replaced or cut short while running: %d pending records"
            " LOST (%d lost so far); going on with the file now at that path",
            self.spool.path,
            lost,
            dropped,
        )

    def _finish(self, batch: _Batch) -> None:
        """Remove a written batch from where it was pending. Under lock."""
        if batch.lease is not None:
            self.spool.commit(batch.lease)
            return
        # The spooler may have moved some of these records meanwhile; remove only the rest.
        with self._state_lock:
            for _ in range(batch.head + len(batch.records) - self._removed):
                self._queued_bytes -= footprint(self._queue.popleft())
                self._removed += 1

    def _moved(self, batch: _Batch) -> bool:
        with self._state_lock:
            return batch.lease is None and self._removed > batch.head

    def _write(self, records: list[Record], batch: _Batch) -> _Outcome:
        """Write ``records`` (part of ``batch``): retry outages, bisect around bad data."""
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                self.backend.write(records)
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                if self.backend.is_data_error(exc):
                    return self._isolate(records, batch, exc)
                self._mark_unavailable(exc)
                self.backend.close()
                if self._moved(batch):
                    return _Outcome.MOVED
                remaining = self._drain_until - time.monotonic()
                if remaining <= 0:
                    return _Outcome.GAVE_UP
                pause = min(backoff, remaining)
                if self._stopping.is_set():
                    time.sleep(pause)
                else:  # close() cuts the pause short, so the drain deadline is kept
                    self._stopping.wait(pause)
                backoff = min(backoff * 2, MAX_BACKOFF)
                if self._moved(batch):
                    return _Outcome.MOVED
                continue
            with self._state_lock:
                self._written += len(records)
            if self.on_batch is not None:
                self.on_batch(time.monotonic() - started)
            self._mark_available()
            return _Outcome.DONE

    def _isolate(self, records: list[Record], batch: _Batch, exc: Exception) -> _Outcome:
        if len(records) == 1:
            with self._state_lock:
                self._poisoned += 1
                poisoned = self._poisoned
            self._throttle.log(
                "poison",
                logging.ERROR,
                "store %s refused a record, skipping it (%d so far): %r",
                self.backend.describe(),
                poisoned,
                records[0],
                exc_info=exc,
            )
            return _Outcome.DONE
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            outcome = self._write(half, batch)
            if outcome is not _Outcome.DONE:
                return outcome
        return _Outcome.DONE

    def _ping(self) -> None:
        try:
            self.backend.ping()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a state, not a crash
            self._mark_unavailable(exc)
            self.backend.close()
        else:
            self._mark_available()

    def _mark_unavailable(self, exc: Exception) -> None:
        message = one_line(exc)
        with self._state_lock:
            self._errors += 1
        now = time.monotonic()
        if self._available or message != self._error:
            logger.error("store %s unavailable: %s", self.backend.describe(), message)
            self._last_degraded_log = now
        elif now - self._last_degraded_log >= DEGRADED_LOG_INTERVAL:
            status = self.status()
            logger.warning(
                "store %s still unavailable (%s): %d records in memory, %d spooled (%d bytes),"
                " oldest %.1fs old",
                self.backend.describe(),
                message,
                status.queued,
                status.spooled,
                status.spool_bytes,
                status.oldest_pending_age,
            )
            self._last_degraded_log = now
        self._available = False
        self._error = message

    def _mark_available(self) -> None:
        if not self._available and self._started.done():
            status = self.status()
            logger.warning(
                "store %s available again; catching up on %d records (%d spooled)",
                self.backend.describe(),
                status.pending,
                status.spooled,
            )
        self._available = True
        self._error = None

    # -- spooler thread --------------------------------------------------------------------

    def _spool_run(self) -> None:
        while True:
            self._overflow.wait(self.batch_delay)
            self._overflow.clear()
            stopping = self._spooler_stop.is_set()
            try:
                self._spill(everything=stopping or not self._available)
            except Exception:  # task boundary: memory must stay bounded, so keep going
                logger.critical("store spooler failed; retrying", exc_info=True)
            if stopping:
                return

    def _spill(self, everything: bool) -> None:
        """Move memory beyond its limits (or all of it) to the spool, oldest first."""
        with self._lock:
            records = self._take_overflow(everything)
            count = len(records)
            if not count:
                return
            self._check_spool()
            was_empty = self.spool.pending == 0
            before = self.spool.pending
            try:
                error: OSError | None = self.spool.append(records)
            except Exception as exc:  # noqa: BLE001 - an unencodable record: count, keep spooling
                self._throttle.log(
                    "spool-encode",
                    logging.CRITICAL,
                    "cannot encode records for the spool",
                    exc_info=True,
                )
                error = OSError(0, f"{type(exc).__name__}: {exc}")
            if error is not None:
                lost = count - (self.spool.pending - before)
                dropped = self._lose(lost, f"spool not writable: {error.strerror}")
                # A full disk fails every move: once per interval, with the running count.
                self._throttle.log(
                    "spool-write",
                    logging.CRITICAL,
                    "cannot write the spool %s (%s): %d records LOST, %d lost so far",
                    self.spool.path,
                    error.strerror,
                    lost,
                    dropped,
                )
        if was_empty:
            self._throttle.log(
                "behind",
                logging.WARNING,
                "store behind: %s go to the spool %s",
                "records" if everything else "records beyond the memory limits",
                self.spool.path,
            )
        try:
            self.spool.sync()
        except OSError as exc:
            self._throttle.log(
                "spool-sync",
                logging.CRITICAL,
                "cannot fsync the spool %s: %s",
                self.spool.path,
                exc.strerror,
            )

    def _take_overflow(self, everything: bool) -> list[Record]:
        """Remove from the head of memory what is over its limits (or everything)."""
        taken: list[Record] = []
        while True:
            step = 0
            # In steps, so that submit() never waits long for the lock.
            with self._state_lock:
                queue = self._queue
                while (
                    queue
                    and step < SPILL_STEP
                    and (
                        everything
                        or len(queue) > self.queue_limit
                        or self._queued_bytes > self.queue_bytes_limit
                    )
                ):
                    record = queue.popleft()
                    self._queued_bytes -= footprint(record)
                    taken.append(record)
                    step += 1
                self._removed += step
            if step < SPILL_STEP:
                return taken
