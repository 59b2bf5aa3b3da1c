"""The spooler: the spool file as the head of the store's FIFO, and the count of what is lost.

Spool + memory form one FIFO, the spool being its head. :meth:`Spooler.spill` moves records
from the head of memory to the end of the spool and :meth:`Spooler.next_batch` reads the
writer's next batch from the spool if anything is pending there, else from memory, both under
:attr:`lock`, so a record is never read ahead of an older one being moved. The spool file is
fsynced after each move (off the IOLoop).

Whatever is lost (the spool full, deleted or damaged; a record submitted after close) is
counted here, with the reason, and logged at a throttled rate: nothing is dropped silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tornado_echo.errors import StoreError
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.queue import MemoryQueue
from tornado_echo.store.records import Record
from tornado_echo.store.spool import Lease, Spool

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """The writer's next records: a spool lease, or a peek at memory from ``head``."""

    records: list[Record]
    head: int = 0
    lease: Lease | None = None


class Spooler:
    def __init__(self, path: Path) -> None:
        self.spool = Spool(path)
        # Guards the spool; taken before the memory queue's lock.
        self.lock = threading.Lock()
        self._loss_lock = threading.Lock()
        self.dropped = 0
        self.loss: str | None = None
        # Closed and spooled: nothing submitted now can be kept.
        self.sealed = False
        self._throttle = LogThrottle(logger)

    def open(self) -> None:
        with self.lock:
            self.spool.open()

    def lose(self, count: int, reason: str) -> int:
        """Count ``count`` records lost for ``reason``; returns the total lost so far."""
        with self._loss_lock:
            self.dropped += count
            self.loss = reason
            return self.dropped

    def next_batch(self, queue: MemoryQueue, batch_bytes: int) -> Batch | None:
        """The oldest pending records: the spool's head, else memory's (peeked)."""
        with self.lock:
            self._check()
            if self.spool.pending:
                lease = self.spool.read(queue.batch_size, batch_bytes)
                if len(lease.records) < lease.lines:
                    dropped = self.lose(
                        lease.lines - len(lease.records), "corrupt lines in the spool file"
                    )
                    self._throttle.log(
                        "spool-corrupt",
                        logging.ERROR,
                        "spool %s: corrupt lines skipped, %d records lost so far",
                        self.spool.path,
                        dropped,
                    )
                return Batch(lease.records, lease=lease)
            head, records = queue.peek()
        return Batch(records, head=head) if records else None

    def commit(self, lease: Lease) -> None:
        with self.lock:
            self.spool.commit(lease)

    def _check(self) -> None:
        """Notice a spool file deleted or damaged under us: count, say so, go on. Under lock."""
        if self.sealed:
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
        dropped = self.lose(lost, "spool file deleted or damaged while running")
        self._throttle.log(
            "spool",
            logging.CRITICAL,
            "spool %s was deleted, replaced or cut short while running: %d pending records"
            " LOST (%d lost so far); going on with the file now at that path",
            self.spool.path,
            lost,
            dropped,
        )

    def spill(self, take: Callable[[], list[Record]]) -> None:
        """Move the records ``take`` removes from memory to the spool, and fsync it."""
        with self.lock:
            records = take()
            count = len(records)
            if not count:
                return
            self._check()
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
                dropped = self.lose(lost, f"spool not writable: {error.strerror}")
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
                "store behind: records go to the spool %s",
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

    def seal(self, take: Callable[[], list[Record]]) -> int:
        """Spool what ``take`` gives, then close the spool; returns what it holds."""
        self.sealed = True
        if self.spool.is_open:
            self.spill(take)
        with self.lock:
            left = self.spool.pending
            held = len(self.spool.held)
            self.spool.close()
        if held:  # the spool path stayed unusable: whether they were written is not known
            dropped = self.lose(held, "spool file unusable at close")
            logger.critical("%d records could not be spooled at close (%d lost)", held, dropped)
        return left
