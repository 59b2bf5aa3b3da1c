"""The backend contract: synchronous database access used only by the writer thread.

A backend never runs on the IOLoop thread. It raises :class:`StoreError` subclasses or the
driver's own errors. The writer asks :meth:`Backend.is_data_error` which failures are about the
records themselves (isolated and skipped); every other failure means "database unavailable"
and is retried.

The read side (:meth:`Backend.list_sessions`, :meth:`Backend.get_session`) serves the operator
API on its own connection, never the writer's: rows come back as plain dicts with times as
ISO-8601 UTC strings, whatever the dialect.
"""

from __future__ import annotations

import abc
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tornado_echo.store.copyrows import decode_rows
from tornado_echo.store.records import COLUMN_KINDS, MESSAGE_COLUMNS, Record

# Payload bytes per journal page: a session's journal can be far larger than any answer.
JOURNAL_BYTES = 4 * 1024 * 1024
SCHEMA_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The packaged ``schema/<dialect>/NNN_name.sql`` files in version order."""
    folder = resources.files(__package__).joinpath("schema").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        match = SCHEMA_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda migration: migration.version)


class Backend(abc.ABC):
    """One database connection owned by one thread."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data goes, safe to log (no password)."""

    @abc.abstractmethod
    def connect(self) -> None:
        """(Re)open the connection; raises when the database is unreachable."""

    @abc.abstractmethod
    def migrate(self, unbounded: bool = False) -> list[int]:
        """Apply missing schema versions; safe when several processes start at once. A
        migration that rewrites a table too large to do at start (PostgreSQL's journal) is
        refused with a :class:`StoreError` naming ``tornado-echo migrate``, which passes
        ``unbounded``."""

    @abc.abstractmethod
    def write(self, batch: list[Record]) -> None:
        """Write ``batch`` in one transaction; idempotent if retried after a failure."""

    def write_journal(self, rows: bytes) -> None:
        """Write journal rows in binary COPY format (see copyrows.py) in one transaction. A row
        already there may fail the whole batch as a data error: :meth:`write` then merges it."""
        self.write(list(decode_rows(rows)))

    @abc.abstractmethod
    def is_data_error(self, exc: Exception) -> bool:
        """True when ``exc`` from :meth:`write` is about the data (a poison record), not about
        reaching the database (which must be retried, whatever it is)."""

    @abc.abstractmethod
    def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        """The ``limit`` most recently opened sessions (opened at or after ``since``)."""

    @abc.abstractmethod
    def get_session(
        self,
        session_id: str,
        journal_limit: int,
        journal_after: int = 0,
        journal_bytes: int = JOURNAL_BYTES,
    ) -> dict[str, Any] | None:
        """One session with a page of its journal: up to ``journal_limit`` entries after
        sequence number ``journal_after`` holding at most ``journal_bytes`` of payload (at
        least one entry), under ``journal``; ``journal_next`` is the ``journal_after`` of the
        next page, None after the last."""

    @abc.abstractmethod
    def mark_crashed(self, server_id: str, now: float) -> int:
        """Mark sessions that ``server_id`` left open (a crash) as crashed; returns how many."""

    def make_partitions(self, now: float) -> int:
        """Make the journal's day partitions from yesterday to some days after ``now``, those
        missing; returns how many. Only PostgreSQL partitions its journal."""
        return 0

    def drop_journal_before(self, cutoff: float) -> int:
        """Drop the journal's day partitions whose whole day is older than ``cutoff``;
        returns how many. Only PostgreSQL partitions its journal: elsewhere rows go one by one
        (:meth:`delete_sessions_before`)."""
        return 0

    @abc.abstractmethod
    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        """One short transaction of retention: among the ``sessions`` oldest ended sessions
        opened before ``cutoff``, delete up to ``messages`` journal rows, then those sessions
        if none of their rows is left. Returns (sessions, journal rows) deleted.

        A partitioned journal (PostgreSQL) goes by age instead: up to ``messages`` rows
        received before ``cutoff`` that are outside the day partitions, then up to
        ``sessions`` ended sessions opened before it."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the database does not answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; idempotent."""

    def unreachable(self) -> Exception | None:
        """Why the database has not answered since start, for a backend that lets the writer
        start without it (see store/patient.py); None once reached, and for every other."""
        return None


def journal_page(
    sizes: Sequence[tuple[int, int | None]], limit: int, max_bytes: int
) -> tuple[int, bool]:
    """How many entries a journal page holds, and whether more follow.

    ``sizes`` are (seq, payload bytes) of up to ``limit + 1`` entries after the cursor, in
    order. The page keeps ``limit`` entries at most, and stops before the entry whose payload
    would take it over ``max_bytes``, except that it always holds one entry. The backends
    then read that many entries after the cursor (``ORDER BY seq LIMIT n``: the limit keeps
    PostgreSQL on the primary key, where a range of seq within one large session made it
    estimate most of the table and scan all of it) and take the next cursor from the last
    entry read.
    """
    total = 0
    for count, (_, size) in enumerate(sizes):
        total += size or 0
        if count == limit or (count and total > max_bytes):
            return count, True
    return len(sizes), False


def journal_answer(
    session: dict[str, Any], rows: Sequence[tuple[Any, ...]], more: bool
) -> dict[str, Any]:
    """``session`` with its journal page (``rows`` of MESSAGE_COLUMNS) and next cursor."""
    session["journal"] = [row_dict(MESSAGE_COLUMNS, row) for row in rows]
    session["journal_next"] = session["journal"][-1]["seq"] if more and rows else None
    return session


def iso_utc(value: float | datetime.datetime | None) -> str | None:
    """A Unix time (SQLite) or an aware datetime (PostgreSQL) as ISO-8601 UTC with ``Z``."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_dict(columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A result row as JSON-ready values: ISO times, text ids, bool flags, bytes kept."""
    out: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        kind = COLUMN_KINDS[name]
        if value is None:
            pass
        elif kind is float:  # every float column is a time
            value = iso_utc(value)
        elif kind is str:  # also PostgreSQL's UUID ids
            value = str(value)
        elif kind is bool:  # SQLite's 0/1
            value = bool(value)
        elif kind is bytes:  # PostgreSQL's memoryview
            value = bytes(value)
        out[name] = value
    return out
