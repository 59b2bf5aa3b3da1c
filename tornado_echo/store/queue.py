"""The memory queue: records submitted and not yet written or spooled, bounded in count and bytes.

The IOLoop's whole share of the store is :meth:`MemoryQueue.put`: a journal payload cut to
``max_payload``, a deque append under a short lock and, when a threshold is crossed, an event
(``arrived``: the first record into an empty queue, which opens the writer's batch window;
``full``: a batch is ready for the writer; ``overflow``: the spooler must move records out).
So the writer is woken once a batch, never per record, and not at all while nothing comes.

The writer *peeks* batches (they stay queued while they are written, so a crash of the writer
loses nothing) and removes them once written; the spooler *takes* records from the head when
memory is over its limits. Both count from ``removed`` (records ever removed from the head), so
the writer can tell whether the spooler moved the batch it is writing in the meantime.

Thread-safe; the lock is held only for O(1) steps or one C-level copy of at most a batch.
"""

from __future__ import annotations

import collections
import itertools
import threading

from tornado_echo.store.records import RECORD_OVERHEAD, MessageReceived, Record, footprint

SPILL_STEP = 1000  # records taken per hold of the lock, so put() never waits long


class MemoryQueue:
    def __init__(
        self,
        batch_size: int = 1000,
        limit: int = 100_000,
        bytes_limit: int = 64 * 1024 * 1024,
        max_payload: int = 65536,
    ) -> None:
        self.batch_size = batch_size
        self.limit = limit
        self.bytes_limit = bytes_limit
        self.max_payload = max_payload
        # A batch is bounded in bytes too, so neither the COPY data nor the spool lines of one
        # batch hold the GIL (and so the IOLoop) for long.
        self.batch_bytes = max(RECORD_OVERHEAD, bytes_limit // 16)
        self.arrived = threading.Event()
        self.full = threading.Event()
        self.overflow = threading.Event()
        self._lock = threading.Lock()
        self._records: collections.deque[Record] = collections.deque()
        # Each record's footprint, computed once when it is queued (in step with _records).
        self._sizes: collections.deque[int] = collections.deque()
        self._bytes = 0
        self._removed = 0
        self._shed = 0

    def put(self, record: Record) -> bool:
        """Queue ``record``; True when its payload was shed (memory over twice its byte
        limit: the spooler is not keeping up, so the facts are kept, not the bytes)."""
        if type(record) is MessageReceived:
            record = record.cut(self.max_payload)
        size = footprint(record)
        shed = False
        with self._lock:
            if self._bytes + size > 2 * self.bytes_limit:
                if type(record) is MessageReceived and record.payload:
                    record = record.cut(0)
                    size = footprint(record)
                    self._shed += 1
                    shed = True
            self._records.append(record)
            self._sizes.append(size)
            self._bytes += size
            depth, queued_bytes = len(self._records), self._bytes
        if depth == 1 and not self.arrived.is_set():
            self.arrived.set()
        if depth >= self.batch_size and not self.full.is_set():
            self.full.set()
        if (depth > self.limit or queued_bytes > self.bytes_limit) and not self.overflow.is_set():
            self.overflow.set()
        return shed

    def wake(self) -> None:
        """Wake the writer wherever it waits (it is to stop)."""
        self.arrived.set()
        self.full.set()

    def has_batch(self) -> bool:
        with self._lock:
            return len(self._records) >= self.batch_size

    def peek(self) -> tuple[int, list[Record]]:
        """(head, the oldest records): at most ``batch_size`` of them, within ``batch_bytes``
        (at least one). They stay queued; ``head`` is for :meth:`remove` and :meth:`moved`."""
        with self._lock:
            head = self._removed
            records = list(itertools.islice(self._records, self.batch_size))
            sizes = list(itertools.islice(self._sizes, len(records)))
        # Cut to the byte bound outside the lock; the rest stays queued for the next batch.
        total = 0
        for count, size in enumerate(sizes):
            total += size
            if total > self.batch_bytes and count:
                del records[count:]
                break
        return head, records

    def moved(self, head: int) -> bool:
        """Whether records were taken from the head since :meth:`peek` returned ``head``."""
        with self._lock:
            return self._removed > head

    def remove(self, head: int, count: int) -> None:
        """Remove a written batch (``count`` records peeked at ``head``), except what the
        spooler took meanwhile."""
        with self._lock:
            for _ in range(head + count - self._removed):
                self._records.popleft()
                self._bytes -= self._sizes.popleft()
                self._removed += 1

    def take(self, everything: bool) -> list[Record]:
        """Remove from the head what is over the limits (or everything), oldest first."""
        taken: list[Record] = []
        while True:
            step = 0
            with self._lock:
                records = self._records
                while (
                    records
                    and step < SPILL_STEP
                    and (everything or len(records) > self.limit or self._bytes > self.bytes_limit)
                ):
                    taken.append(records.popleft())
                    self._bytes -= self._sizes.popleft()
                    step += 1
                self._removed += step
            if step < SPILL_STEP:
                return taken

    def snapshot(self) -> tuple[int, int, float | None, int]:
        """(records, their bytes, the oldest one's time or None, payloads shed so far)."""
        with self._lock:
            oldest = self._records[0].at if self._records else None
            return len(self._records), self._bytes, oldest, self._shed
