"""Retention: delete ended sessions, with their journal, older than ``retention_days``.

On PostgreSQL the journal is partitioned by day: whole days older than the cut are dropped
first (one short transaction a partition), and the batches below then delete only the
default partition's old rows and the old sessions. The same thread makes the day partitions
ahead of time, every pass, whatever ``retention_days``.

Deletion runs in short transactions of at most ``SESSIONS_PER_BATCH`` sessions and
``MESSAGES_PER_BATCH`` journal rows, on a thread and connection of its own, with a pause
between batches: the writer thread never waits more than one small batch for the
database's write lock (SQLite) and never for rows it writes (PostgreSQL), and the IOLoop
never waits at all. ``tornado-echo prune --older-than DAYS`` runs the same loop once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.base import Backend

logger = logging.getLogger(__name__)

DAY = 86400.0
SESSIONS_PER_BATCH = 200
MESSAGES_PER_BATCH = 5000
PAUSE = 0.05  # between batches: room for the writer
EVERY = 3600.0  # between passes of the running server
FIRST_PASS_AFTER = 10.0  # after start: out of the way of start-up and migrations


@dataclass
class Pruned:
    sessions: int = 0
    messages: int = 0
    partitions: int = 0  # whole days of journal dropped (PostgreSQL)


def prune(
    backend: Backend,
    cutoff: float,
    pause: float = PAUSE,
    stopped: Callable[[], bool] = lambda: False,
) -> Pruned:
    """Delete, batch after batch, the ended sessions opened before ``cutoff`` and their
    journal; until none is left or ``stopped()``. Blocking: call it off the IOLoop."""
    total = Pruned(partitions=backend.drop_journal_before(cutoff))
    while not stopped():
        sessions, messages = backend.delete_sessions_before(
            cutoff, SESSIONS_PER_BATCH, MESSAGES_PER_BATCH
        )
        total.sessions += sessions
        total.messages += messages
        if not sessions and not messages:
            break
        time.sleep(pause)
    return total


class Retention:
    """Prunes every ``EVERY`` seconds on its own thread; ``days == 0`` keeps everything.
    With ``partitions`` (PostgreSQL) every pass first makes the journal's partitions ahead,
    and the thread runs whatever ``days``.

    ``Retention(...)`` only stores; :meth:`start` starts the thread and :meth:`close`
    asks it to stop after the batch in progress, without waiting for it (it is called on
    the IOLoop). Both are idempotent.
    """

    def __init__(
        self,
        make_backend: Callable[[], Backend],
        days: float,
        every: float = EVERY,
        first_after: float = FIRST_PASS_AFTER,
        partitions: bool = False,
    ) -> None:
        self.make_backend = make_backend
        self.days = days
        self.partitions = partitions
        self.every = every
        self.first_after = first_after
        self.passes = 0
        self.deleted = Pruned()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._throttle = LogThrottle(logger, interval=3600.0)

    def start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        if self.days <= 0 and not self.partitions:
            return
        self._thread = threading.Thread(target=self._run, name="store-retention", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backend = self.make_backend()
        wait = self.first_after
        try:
            while not self._stop.wait(wait):
                wait = self.every
                try:
                    self._pass(backend)
                except Exception:  # noqa: BLE001 - task boundary: try again next pass
                    self._throttle.log(
                        "failed", logging.WARNING, "retention pass failed", exc_info=True
                    )
                    backend.close()  # reconnects on the next pass
        finally:
            backend.close()

    def _pass(self, backend: Backend) -> None:
        if self.partitions:
            made = backend.make_partitions(time.time())
            if made:
                logger.info("journal: made %d day partitions ahead", made)
        if self.days <= 0:
            self.passes += 1
            return
        cutoff = time.time() - self.days * DAY
        pruned = prune(backend, cutoff, stopped=self._stop.is_set)
        self.passes += 1
        self.deleted.sessions += pruned.sessions
        self.deleted.messages += pruned.messages
        self.deleted.partitions += pruned.partitions
        if pruned.sessions or pruned.messages or pruned.partitions:
            logger.info(
                "retention: deleted %d sessions and %d journal rows, dropped %d journal"
                " day partitions, older than %g days",
                pruned.sessions,
                pruned.messages,
                pruned.partitions,
                self.days,
                extra={
                    "sessions": pruned.sessions,
                    "journal_rows": pruned.messages,
                    "journal_partitions": pruned.partitions,
                },
            )
