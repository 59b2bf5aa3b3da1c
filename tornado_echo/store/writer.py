"""The batch writer: one backend connection, retries with backoff, bad records isolated.

:meth:`BatchWriter.write` writes one batch in one transaction. A failure the backend calls a
data error (:meth:`Backend.is_data_error`) is bisected until the poison record is isolated,
logged and skipped; every other failure means "database unavailable": the connection is
dropped and the batch retried with capped exponential backoff, until it is written, until
its records are no longer wanted (``abandon``: the spooler moved them), or until the drain
deadline passes. Writes are idempotent (keyed on the session id and (session id, seq)), so a
batch retried after an ambiguous failure lands once.

Runs on one thread; the counters are read by others for status snapshots.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from tornado_echo.errors import one_line
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.base import Backend
from tornado_echo.store.copyrows import decode_rows
from tornado_echo.store.records import Record

logger = logging.getLogger(__name__)

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
DEGRADED_LOG_INTERVAL = 30.0


class Outcome(enum.Enum):
    DONE = "done"  # written (or poison skipped)
    ABANDONED = "abandoned"  # no longer ours to write (moved to the spool meanwhile)
    GAVE_UP = "gave_up"  # the drain deadline passed with the database unavailable


class BatchWriter:
    def __init__(self, backend: Backend, stopping: threading.Event) -> None:
        self.backend = backend
        # Set by close(): pauses are cut short so the drain deadline is kept.
        self.stopping = stopping
        self.drain_until = float("inf")
        self.available = False
        self.error: str | None = None
        self.written = 0
        self.poisoned = 0
        self.errors = 0
        # Called with each written batch's duration (metrics).
        self.on_batch: Callable[[float], None] | None = None
        # What is still pending, for the "still unavailable" log line.
        self.backlog: Callable[[], str] = lambda: ""
        self._last_degraded_log = 0.0
        self._throttle = LogThrottle(logger)

    def write(self, records: list[Record], abandon: Callable[[], bool] = lambda: False) -> Outcome:
        """Write ``records``: retry outages, bisect around bad data."""
        return self._retry(
            lambda: self.backend.write(records),
            len(records),
            lambda exc: self._isolate(records, abandon, exc),
            abandon,
        )

    def write_rows(
        self, rows: bytes, count: int, abandon: Callable[[], bool] = lambda: False
    ) -> Outcome:
        """Write ``count`` journal rows in binary COPY format (the fast path); should the
        database refuse them (a bad or an already written row), write their records instead,
        merged and bisected like any batch."""
        return self._retry(
            lambda: self.backend.write_journal(rows),
            count,
            lambda exc: self.write(list(decode_rows(rows)), abandon),
            abandon,
        )

    def _retry(
        self,
        attempt: Callable[[], None],
        count: int,
        refused: Callable[[Exception], Outcome],
        abandon: Callable[[], bool],
    ) -> Outcome:
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                attempt()
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                if self.backend.is_data_error(exc):
                    return refused(exc)
                self.mark_unavailable(exc)
                self.backend.close()
                if abandon():
                    return Outcome.ABANDONED
                remaining = self.drain_until - time.monotonic()
                if remaining <= 0:
                    return Outcome.GAVE_UP
                pause = min(backoff, remaining)
                if self.stopping.is_set():
                    time.sleep(pause)
                else:
                    self.stopping.wait(pause)
                backoff = min(backoff * 2, MAX_BACKOFF)
                if abandon():
                    return Outcome.ABANDONED
                continue
            self.written += count
            if self.on_batch is not None:
                self.on_batch(time.monotonic() - started)
            self.mark_available()
            return Outcome.DONE

    def _isolate(
        self, records: list[Record], abandon: Callable[[], bool], exc: Exception
    ) -> Outcome:
        if len(records) == 1:
            self.poisoned += 1
            self._throttle.log(
                "poison",
                logging.ERROR,
                "store %s refused a record, skipping it (%d so far): %r",
                self.backend.describe(),
                self.poisoned,
                records[0],
                exc_info=exc,
            )
            return Outcome.DONE
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            outcome = self.write(half, abandon)
            if outcome is not Outcome.DONE:
                return outcome
        return Outcome.DONE

    def ping(self) -> None:
        try:
            self.backend.ping()
        except Exception as exc:  # noqa: BLE001 - a failed probe is a state, not a crash
            self.mark_unavailable(exc)
            self.backend.close()
        else:
            self.mark_available()

    def mark_unavailable(self, exc: Exception) -> None:
        message = one_line(exc)
        self.errors += 1
        now = time.monotonic()
        if self.available or message != self.error:
            logger.error("store %s unavailable: %s", self.backend.describe(), message)
            self._last_degraded_log = now
        elif now - self._last_degraded_log >= DEGRADED_LOG_INTERVAL:
            logger.warning(
                "store %s still unavailable (%s): %s",
                self.backend.describe(),
                message,
                self.backlog(),
            )
            self._last_degraded_log = now
        self.available = False
        self.error = message

    def mark_available(self) -> None:
        if not self.available and self.error is not None:
            logger.warning(
                "store %s available again; catching up on %s",
                self.backend.describe(),
                self.backlog(),
            )
        self.available = True
        self.error = None
