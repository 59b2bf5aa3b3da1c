"""The store the server talks to: the IOLoop only enqueues; a writer and a spooler thread do
the rest. Three parts, each in its module:

* :class:`MemoryQueue` (queue.py): what :meth:`Store.submit` appends to, bounded in records and
  bytes; it wakes the writer when a batch is full and the spooler when memory is over a limit.
* :class:`BatchWriter` (writer.py): the backend connection; retries with backoff, bisects a
  batch the database refuses until the poison record is isolated, logged and skipped.
* :class:`Spooler` (spooler.py): the spool file in ``state_dir`` at the head of the FIFO, and
  the count of whatever is lost.

This module runs them. The writer thread, at start, connects, migrates, replays a spool a
previous run left behind and marks that run's still-open sessions crashed (in that order, so
replayed closes win); then it writes batches (``batch_size`` records at once, or whatever is
there after ``batch_delay``), spool first, then memory. The spooler thread, every batch
window, moves records beyond ``queue_limit`` or ``queue_bytes_limit`` (oldest first) to the
spool; while the database is unavailable it moves *every* record there, so a crash (kill -9)
during an outage loses at most one batch window. Should records come faster than the spool
takes them, past twice the byte limit journal payloads are shed (the metadata kept, marked
truncated, counted). On close, whatever the writer could not write before the deadline goes
to the spool too, for the next start.

Order: the writer peeks memory batches without removing them; if the spooler moves them
meanwhile, the writer abandons the attempt and reads them from the spool instead. Writes are
idempotent, so a record written twice lands once, and a session's open, journal and close,
even when split between spool and memory, arrive in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tornado_echo.errors import StoreError, one_line
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.base import Backend
from tornado_echo.store.handoff import JournalHandoff
from tornado_echo.store.queue import MemoryQueue
from tornado_echo.store.records import MessageReceived, Record
from tornado_echo.store.spool import Spool, writer_spool_paths
from tornado_echo.store.spooler import Batch, Spooler
from tornado_echo.store.writer import FIRST_BACKOFF, BatchWriter, Outcome

logger = logging.getLogger(__name__)

IDLE_PING_INTERVAL = 5.0
# How long start may wait for the database while replaying a leftover spool before failing.
START_REPLAY_PATIENCE = 5.0
# Grace for the batch in flight when the drain deadline passes.
JOIN_GRACE = 1.0
RESTART_PAUSE = 1.0  # after an unexpected writer failure
# A session's journal (Store.journal_for): (seq, opcode, size, payload, truncated).
SessionJournaller = Callable[[int, int, int, "bytes | None", bool], None]


@dataclass(frozen=True)
class StoreStatus:
    """A snapshot for /readyz, logs and metrics."""

    available: bool
    error: str | None
    pending: int  # queued + spooled + journal rows with the journal writer process (handed)
    queued: int  # records in memory
    handed: int  # journal rows in the handoff to the writer process, not yet committed
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
        self.batch_delay = batch_delay
        self.queue = MemoryQueue(batch_size, queue_limit, queue_bytes_limit, journal_max_payload)
        self.spooler = Spooler(spool_path)
        self.spool = self.spooler.spool
        self._stopping = threading.Event()
        self._spooler_stop = threading.Event()
        self.writer = BatchWriter(backend, self._stopping)
        self.writer.backlog = self._backlog
        self._thread: threading.Thread | None = None
        self._spooler_thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False
        self._throttle = LogThrottle(logger)
        # The journal writer process, when journal_writer = "process" (see handoff.py).
        self.handoff: JournalHandoff | None = None

    @property
    def on_batch(self) -> Callable[[float], None] | None:
        """Called on the writer thread with each written batch's duration (metrics)."""
        return self.writer.on_batch

    @on_batch.setter
    def on_batch(self, callback: Callable[[float], None] | None) -> None:
        self.writer.on_batch = callback

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
        if self.handoff is not None:
            await self.handoff.start()

    def journal(
        self,
        session_id: str,
        seq: int,
        received_at: float,
        opcode: int,
        size: int,
        payload: bytes | None,
        truncated: bool = False,
    ) -> None:
        """Journal one message (``payload`` None: its metadata only): to the journal writer
        process if there is one, else as a :class:`MessageReceived` record. ``truncated``: the
        caller kept only part of the payload, or none of it."""
        handoff = self.handoff
        if handoff is not None and handoff.accepting:
            handoff.add(session_id, seq, received_at, opcode, size, payload, truncated)
        else:
            self.submit(
                MessageReceived(session_id, seq, received_at, opcode, size, payload, truncated)
            )

    def journal_for(self, session_id: str) -> SessionJournaller:
        """:meth:`journal` bound to one session, made once at its open: called with (seq,
        opcode, size, payload, truncated), the message received now. With the journal writer
        process, its rows' start is made once here, not per message (handoff.SessionJournal)."""
        if self.handoff is not None:
            return self.handoff.session(session_id).add
        return functools.partial(self._journal_now, session_id)

    def _journal_now(
        self,
        session_id: str,
        seq: int,
        opcode: int,
        size: int,
        payload: bytes | None,
        truncated: bool = False,
    ) -> None:
        self.journal(session_id, seq, time.time(), opcode, size, payload, truncated)

    def submit_many(self, records: Sequence[Record]) -> None:
        for record in records:
            self.submit(record)

    def submit(self, record: Record) -> None:
        """Queue ``record`` for writing; never blocks for long, safe from any thread."""
        if self.spooler.sealed:
            dropped = self.spooler.lose(1, "submitted after the store closed")
            logger.error("store already closed: record lost (%d lost so far): %r", dropped, record)
            return
        if self.queue.put(record):
            self._throttle.log(
                "shed",
                logging.WARNING,
                "store memory over twice queue_bytes_limit (%d bytes): journal payloads are"
                " not kept, only their metadata (%d so far)",
                self.queue.bytes_limit,
                self.queue.snapshot()[3],
            )

    def status(self) -> StoreStatus:
        now = time.time()
        queued, queued_bytes, queue_oldest, shed = self.queue.snapshot()
        spool, writer = self.spool, self.writer
        oldest = [at for at in (queue_oldest, spool.oldest) if at is not None]
        # Rows with the journal writer process are pending too (not in queued: not in memory
        # as records, and bounded on their own), and its database is this store's as well.
        handed = 0
        available, error, errors = writer.available, writer.error, writer.errors
        if self.handoff is not None:
            journal = self.handoff.status()
            handed = journal.queued_rows
            if handed:
                oldest.append(now - journal.lag)
            if not journal.available:
                available = False
                error = error or f"journal writer: {journal.error}"
            errors += journal.errors
        thread = self._thread
        return StoreStatus(
            available=available,
            error=error,
            pending=queued + spool.pending + handed,
            queued=queued,
            handed=handed,
            queued_bytes=queued_bytes,
            spooled=spool.pending,
            spool_bytes=spool.pending_bytes,
            written=writer.written,
            poisoned=writer.poisoned,
            dropped=self.spooler.dropped,
            loss=self.spooler.loss,
            shed=shed,
            errors=errors,
            oldest_pending_age=max(0.0, now - min(oldest)) if oldest else 0.0,
            running=thread is not None and thread.is_alive() and self._started.done(),
        )

    def _backlog(self) -> str:
        status = self.status()
        return (
            f"{status.queued} records in memory, {status.spooled} spooled"
            f" ({status.spool_bytes} bytes), oldest {status.oldest_pending_age:.1f}s old"
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
        if self.handoff is not None:
            # Its rows not confirmed by then come back through submit_many, so first.
            started = loop.time()
            await self.handoff.close(deadline)
            deadline = max(0.0, deadline - (loop.time() - started))
        thread = self._thread
        if thread is not None:
            self.writer.drain_until = time.monotonic() + deadline
            self._stopping.set()
            self.queue.wake()
            await loop.run_in_executor(None, thread.join, deadline + JOIN_GRACE)
            if thread.is_alive():
                logger.error("store writer did not stop within the shutdown deadline")
        spooler = self._spooler_thread
        if spooler is not None:
            self._spooler_stop.set()
            self.queue.overflow.set()
            await loop.run_in_executor(None, spooler.join)
        else:  # never started, or failed to: keep whatever was submitted anyway
            await loop.run_in_executor(None, self._spill_unstarted)
        # Sealing fsyncs the spool: never on the IOLoop thread.
        left = await loop.run_in_executor(None, self.spooler.seal, self._take_all)
        if left:
            logger.warning(
                "store closed with %d records in the spool %s; the next start replays them",
                left,
                self.spool.path,
            )

    def _take_all(self) -> list[Record]:
        return self.queue.take(everything=True)

    def _spill_unstarted(self) -> None:
        if not self.queue.snapshot()[0]:
            return
        try:
            self.spooler.open()
        except StoreError as exc:
            logger.critical("%s", exc)
        self.spooler.spill(self._take_all)

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.spooler.open()
            self.backend.connect()
            applied = self.backend.migrate()
            # Without the database yet, the loop replays a leftover spool once it answers
            # (writer processes' spools: at the next start that finds the database).
            waiting = self.backend.unreachable()
            replayed = (
                0 if waiting else self._replay_leftover_spool() + self._replay_writer_spools()
            )
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
        if waiting is None:
            self.writer.mark_available()
        else:  # serve, spool and retry, like an outage
            self.writer.mark_unavailable(waiting)
        self._spooler_thread = threading.Thread(
            target=self._spool_run, name="store-spool", daemon=True
        )
        self._spooler_thread.start()
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
                elif time.monotonic() < self.writer.drain_until:
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
            batch = self._next_batch()
            assert batch is not None and batch.lease is not None
            self.writer.drain_until = time.monotonic() + START_REPLAY_PATIENCE
            if self.writer.write(batch.records) is not Outcome.DONE:
                raise StoreError(f"database unavailable while replaying {self.spool.path}")
            self.spooler.commit(batch.lease)
            replayed += batch.lease.lines
        self.writer.drain_until = float("inf")
        return replayed

    def _replay_writer_spools(self) -> int:
        """Write what journal writer processes of a previous run spooled; a spool still in
        use (its writer still trying) is left for the next start."""
        replayed = 0
        for path in writer_spool_paths(self.spool.path):
            leftover = Spool(path)
            try:
                leftover.open()
            except StoreError:
                continue
            try:
                while leftover.pending:
                    lease = leftover.read(self.queue.batch_size, self.queue.batch_bytes)
                    self.writer.drain_until = time.monotonic() + START_REPLAY_PATIENCE
                    if self.writer.write(lease.records) is not Outcome.DONE:
                        raise StoreError(f"database unavailable while replaying {path}")
                    leftover.commit(lease)
                    replayed += lease.lines
            finally:
                leftover.close()  # and gone, once empty
        self.writer.drain_until = float("inf")
        return replayed

    def _next_batch(self) -> Batch | None:
        return self.spooler.next_batch(self.queue, self.queue.batch_bytes)

    def _loop(self) -> None:
        last_activity = time.monotonic()
        queue = self.queue
        while True:
            # A full batch (or a spool to replay) goes at once; a partial one waits its delay,
            # counted from its first record: idle, the writer sleeps until one comes (or it is
            # time to ping the database), so it wakes once a batch, not every batch_delay.
            behind = queue.has_batch() or self.spool.pending
            if not self._stopping.is_set() and not behind:
                queue.arrived.clear()  # before looking, so a record put after is not missed
                if not queue.snapshot()[0]:
                    idle = IDLE_PING_INTERVAL - (time.monotonic() - last_activity)
                    queue.arrived.wait(max(0.0, idle))
                if queue.snapshot()[0] and not self._stopping.is_set():
                    queue.full.wait(self.batch_delay)
                queue.full.clear()
            batch = self._next_batch()
            if batch is not None:
                outcome = self._write(batch)
                if outcome is Outcome.GAVE_UP:
                    logger.error(
                        "shutdown deadline passed with the store unavailable: %s",
                        self.writer.error,
                    )
                    return
                last_activity = time.monotonic()
            elif self._stopping.is_set():
                return
            elif time.monotonic() - last_activity >= IDLE_PING_INTERVAL:
                self.writer.ping()
                last_activity = time.monotonic()

    def _write(self, batch: Batch) -> Outcome:
        """Write ``batch`` and remove it from where it was pending."""
        lease = batch.lease
        if lease is not None:
            outcome = self.writer.write(batch.records)
            if outcome is Outcome.DONE:
                self.spooler.commit(lease)
            return outcome
        head = batch.head
        outcome = self.writer.write(batch.records, lambda: self.queue.moved(head))
        if outcome is Outcome.DONE:
            # Under the spooler's lock, so the removal and a move to the spool never interleave.
            with self.spooler.lock:
                self.queue.remove(head, len(batch.records))
        return outcome

    # -- spooler thread --------------------------------------------------------------------

    def _spool_run(self) -> None:
        while True:
            self.queue.overflow.wait(self.batch_delay)
            self.queue.overflow.clear()
            stopping = self._spooler_stop.is_set()
            everything = stopping or not self.writer.available
            try:
                self.spooler.spill(functools.partial(self.queue.take, everything))
            except Exception:  # task boundary: memory must stay bounded, so keep going
                logger.critical("store spooler failed; retrying", exc_info=True)
            if stopping:
                return
