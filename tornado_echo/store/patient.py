"""A backend that lets the server start before its database answers.

A network database may be down when the service starts (a host reboot, a failover): echo
needs no database to serve, and records wait in memory and the spool. So the start's
:meth:`~PatientBackend.connect` does not raise: it remembers why the database did not
answer (:meth:`~PatientBackend.unreachable`), and the writer serves, spools and retries
with its usual back-off. What start would have done runs when the database first answers,
in the same order: connect, apply the schema migrations, mark the sessions a previous run
of this ``server_id`` left open as crashed; then the write or ping that reached it goes on.

The crash marks run before the writer replays a spool the previous run left: none of this
run's records is written before them, so only the previous run's sessions are marked, and
the closes in that spool, written afterwards, still set their sessions' end. A session
whose open record the previous run had only spooled (it was killed while the database was
away) is written open and marked at the next start.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado_echo.errors import StoreError, one_line
from tornado_echo.store.base import JOURNAL_BYTES, Backend
from tornado_echo.store.records import Record

logger = logging.getLogger(__name__)


class PatientBackend(Backend):
    """Wraps ``inner``; used by the writer thread only, like any backend."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._reached = False
        self._applied: list[int] = []
        self._unreachable: Exception | None = None
        self._crashed: tuple[str, float] | None = None  # mark_crashed asked before reaching

    def describe(self) -> str:
        return self.inner.describe()

    def unreachable(self) -> Exception | None:
        return None if self._reached else self._unreachable

    def connect(self) -> None:
        if self._reached:
            self.inner.connect()
            return
        try:
            self._applied, _ = self._reach()
        except Exception as exc:  # noqa: BLE001 - the writer serves without it and retries
            self._unreachable = exc

    def migrate(self, unbounded: bool = False) -> list[int]:
        applied, self._applied = self._applied, []
        return applied

    def mark_crashed(self, server_id: str, now: float) -> int:
        if self._reached:
            return self.inner.mark_crashed(server_id, now)
        self._crashed = (server_id, now)
        return 0

    def write(self, batch: list[Record]) -> None:
        if not self._reached:
            self._reach_late()
        self.inner.write(batch)

    def ping(self) -> None:
        if not self._reached:
            self._reach_late()
        self.inner.ping()

    def _reach(self) -> tuple[list[int], int]:
        """Connect, migrate, and mark crashed what start asked for: (versions applied,
        sessions marked). What fails here is never a bad record: the writer must retry it,
        not skip the batch in hand."""
        try:
            self.inner.connect()
            applied = self.inner.migrate()
            crashed = 0 if self._crashed is None else self.inner.mark_crashed(*self._crashed)
        except Exception as exc:
            self.inner.close()
            if self.inner.is_data_error(exc):
                raise StoreError(f"cannot open store {self.describe()}: {one_line(exc)}") from exc
            raise
        self._reached = True
        self._crashed = None
        return applied, crashed

    def _reach_late(self) -> None:
        applied, crashed = self._reach()
        logger.warning("store %s answered for the first time since start", self.describe())
        if applied:
            logger.info("store %s: applied schema versions %s", self.describe(), applied)
        if crashed:
            logger.warning("marked %d sessions left open by a previous run as crashed", crashed)

    def is_data_error(self, exc: Exception) -> bool:
        return self.inner.is_data_error(exc)

    def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        return self.inner.list_sessions(limit, since)

    def get_session(
        self,
        session_id: str,
        journal_limit: int,
        journal_after: int = 0,
        journal_bytes: int = JOURNAL_BYTES,
    ) -> dict[str, Any] | None:
        return self.inner.get_session(session_id, journal_limit, journal_after, journal_bytes)

    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        return self.inner.delete_sessions_before(cutoff, sessions, messages)

    def close(self) -> None:
        self.inner.close()
