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
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .records import Record

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
    def migrate(self) -> list[int]:
        """Apply missing schema versions; safe when several processes start at once."""

    @abc.abstractmethod
    def write(self, batch: list[Record]) -> None:
        """Write ``batch`` in one transaction; idempotent if retried after a failure."""

    @abc.abstractmethod
    def is_data_error(self, exc: Exception) -> bool:
        """True when ``exc`` from :meth:`write` is about the data (a poison record), not about
        reaching the database (which must be retried, whatever it is)."""

    @abc.abstractmethod
    def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        """The ``limit`` most recently opened sessions (opened at or after ``since``)."""

    @abc.abstractmethod
    def get_session(self, session_id: str, journal_limit: int) -> dict[str, Any] | None:
        """One session with up to ``journal_limit`` journal entries (key ``journal``)."""

    @abc.abstractmethod
    def mark_crashed(self, server_id: str, now: float) -> int:
        """Mark sessions that ``server_id`` left open (a crash) as crashed; returns how many."""

    @abc.abstractmethod
    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        """One short transaction of retention: among the ``sessions`` oldest ended sessions
        opened before ``cutoff``, delete up to ``messages`` journal rows, then those sessions
        if none of their rows is left. Returns (sessions, journal rows) deleted."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the database does not answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; idempotent."""


SESSION_COLUMNS = (
    "id",
    "server_id",
    "opened_at",
    "closed_at",
    "peer",
    "path",
    "origin",
    "user_agent",
    "subprotocol",
    "compression",
    "close_code",
    "close_reason",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "end_state",
)
MESSAGE_COLUMNS = ("seq", "received_at", "opcode", "size", "payload")
TIME_COLUMNS = frozenset({"opened_at", "closed_at", "received_at"})


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
        if name in TIME_COLUMNS:
            value = iso_utc(value)
        elif name == "id":
            value = str(value)
        elif name == "compression":
            value = bool(value)
        elif isinstance(value, memoryview):
            value = bytes(value)
        out[name] = value
    return out
