"""SQLite backend: the embedded default, one file, WAL mode, one transaction per batch."""

from __future__ import annotations

import functools
import itertools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado_echo.errors import StoreError
from tornado_echo.store.base import (
    JOURNAL_BYTES,
    Backend,
    journal_answer,
    journal_page,
    load_migrations,
    row_dict,
)
from tornado_echo.store.copyrows import sqlite_row_values
from tornado_echo.store.records import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    MessageReceived,
    Record,
    RecordKind,
    SessionClosed,
    SessionOpened,
    columns,
    pair_sessions,
    split_batch,
    storable_row,
)

LOCK_TIMEOUT = 10.0


def _insert(table: str, kind: RecordKind) -> str:
    names = columns(kind)
    return (
        f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    )


INSERT_MESSAGE = _insert("ws_messages", MessageReceived)
# Journal rows are inserted this many to a statement: one step, reset and halt of the VM per
# 100 rows rather than per row (a sixth fewer instructions a row; 700 values, under every
# SQLite's limit of bound parameters).
ROWS_PER_INSERT = 100
MESSAGE_FIELDS = columns(MessageReceived)
_ONE_MESSAGE = INSERT_MESSAGE[INSERT_MESSAGE.index(" VALUES ") + len(" VALUES ") :]
INSERT_MESSAGES = INSERT_MESSAGE + ", " + ", ".join([_ONE_MESSAGE] * (ROWS_PER_INSERT - 1))
# The key goes last, after the values it sets (see close_params).
CLOSE_SESSION = (
    "UPDATE ws_sessions SET "
    + ", ".join(f"{name} = ?" for name in columns(SessionClosed)[1:])
    + " WHERE id = ?"
)


# Every SQLite's bound on a statement's variables (999 before 3.32).
MAX_VARIABLES = 999


@functools.cache  # a few statements, each for up to MAX_VARIABLES rows
def _rows_statement(head: str, width: int, tail: str, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * rows)}{tail}"


@dataclass(frozen=True)
class RowsInsert:
    """An INSERT of many rows a statement: executemany() steps the statement once per row,
    and each step releases and takes back the GIL, which the IOLoop thread, busy under load,
    then has to hand back (a futex wake and wait each way, per session record). Here a
    statement carries up to MAX_VARIABLES values, so a batch of sessions is a few steps."""

    head: str  # INSERT ... (columns)
    width: int  # values a row
    tail: str = ""  # after the VALUES rows: ON CONFLICT ...

    def run(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        per = MAX_VARIABLES // self.width
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            conn.execute(
                _rows_statement(self.head, self.width, self.tail, len(chunk)),
                list(itertools.chain.from_iterable(chunk)),
            )


_OPENED_COLUMNS = columns(SessionOpened)
INSERT_SESSIONS = RowsInsert(
    f"INSERT OR IGNORE INTO ws_sessions ({', '.join(_OPENED_COLUMNS)})", len(_OPENED_COLUMNS)
)
# A session opened and closed within one batch: its whole row in one statement (an insert,
# then an update of the same row, was most of the writer's time per session in handshake
# churn). Should the row be there already (a replay), the close still lands. Each session
# appears once among a batch's pairs (pair_sessions), so no statement upserts a row twice.
_CLOSED_COLUMNS = columns(SessionClosed)[1:]
INSERT_CLOSED_SESSIONS = RowsInsert(
    f"INSERT INTO ws_sessions ({', '.join(_OPENED_COLUMNS + _CLOSED_COLUMNS)})",
    len(_OPENED_COLUMNS) + len(_CLOSED_COLUMNS),
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _CLOSED_COLUMNS),
)


def closed_session_row(pair: tuple[SessionOpened, SessionClosed]) -> tuple[Any, ...]:
    return storable_row(pair[0]) + storable_row(pair[1])[1:]


def close_params(record: SessionClosed) -> tuple[Any, ...]:
    key, *values = storable_row(record)
    return (*values, key)


# Errors about the records, not the database: constraint violations, values SQLite cannot bind.
DATA_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    ValueError,
    TypeError,
    OverflowError,
)
SELECT_SESSIONS = "SELECT " + ", ".join(SESSION_COLUMNS) + " FROM ws_sessions"


def split_statements(script: str) -> list[str]:
    """Statements of a schema file; executescript() would commit our open transaction."""
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [statement for statement in code.split(";") if statement.strip()]


class SQLiteBackend(Backend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"sqlite:///{self.path.absolute()}"

    def connect(self) -> None:
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_TIMEOUT)
        # Switching to WAL while another process migrates fails at once with "database is
        # locked" (SQLite does not wait for that one), so wait here.
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        return self._conn

    def migrate(self, unbounded: bool = False) -> list[int]:
        conn = self._connection()
        applied_now = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
            for migration in load_migrations("sqlite"):
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied_now.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied_now

    def write(self, batch: list[Record]) -> None:
        conn = self._connection()
        opened, closed, messages = split_batch(batch)
        whole, opened, closed = pair_sessions(opened, closed)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if whole:
                INSERT_CLOSED_SESSIONS.run(conn, list(map(closed_session_row, whole)))
            if opened:
                INSERT_SESSIONS.run(conn, list(map(storable_row, opened)))
            if closed:
                conn.executemany(CLOSE_SESSION, map(close_params, closed))
            if messages:
                conn.executemany(INSERT_MESSAGE, map(storable_row, messages))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def write_journal(self, rows: bytes) -> None:
        # The rows' values straight into the statement: no record object, no text to clean
        # (the only text is the session id, a UUID), rows of one width cut at C level.
        values = sqlite_row_values(rows)
        whole = len(values) - len(values) % ROWS_PER_INSERT
        flat = list(itertools.chain.from_iterable(values[:whole]))
        step = ROWS_PER_INSERT * len(MESSAGE_FIELDS)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                INSERT_MESSAGES, (flat[at : at + step] for at in range(0, len(flat), step))
            )
            conn.executemany(INSERT_MESSAGE, values[whole:])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def is_data_error(self, exc: Exception) -> bool:
        return isinstance(exc, DATA_ERRORS)

    def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        conn = self._connection()
        if since is None:
            rows = conn.execute(SELECT_SESSIONS + " ORDER BY opened_at DESC LIMIT ?", (limit,))
        else:
            rows = conn.execute(
                SELECT_SESSIONS + " WHERE opened_at >= ? ORDER BY opened_at DESC LIMIT ?",
                (since, limit),
            )
        return [row_dict(SESSION_COLUMNS, row) for row in rows]

    def get_session(
        self,
        session_id: str,
        journal_limit: int,
        journal_after: int = 0,
        journal_bytes: int = JOURNAL_BYTES,
    ) -> dict[str, Any] | None:
        conn = self._connection()
        row = conn.execute(SELECT_SESSIONS + " WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        session = row_dict(SESSION_COLUMNS, row)
        # Sizes first (length() of a blob reads no payload), then the payloads that fit.
        sizes = conn.execute(
            "SELECT seq, length(payload) FROM ws_messages WHERE session_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (session_id, journal_after, journal_limit + 1),
        ).fetchall()
        count, more = journal_page(sizes, journal_limit, journal_bytes)
        messages = conn.execute(
            "SELECT " + ", ".join(MESSAGE_COLUMNS) + " FROM ws_messages"
            " WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session_id, journal_after, count),
        ).fetchall()
        return journal_answer(session, messages, more)

    def mark_crashed(self, server_id: str, now: float) -> int:
        conn = self._connection()
        cursor = conn.execute(
            "UPDATE ws_sessions SET end_state = 'crashed', closed_at = ?"
            " WHERE server_id = ? AND end_state = 'open'",
            (now, server_id),
        )
        return cursor.rowcount

    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM ws_sessions WHERE opened_at < ? AND end_state <> 'open'"
                    " ORDER BY opened_at LIMIT ?",
                    (cutoff, sessions),
                )
            ]
            marks = ", ".join("?" * len(ids))
            deleted_messages = conn.execute(
                "DELETE FROM ws_messages WHERE rowid IN (SELECT rowid FROM ws_messages"
                f" WHERE session_id IN ({marks}) LIMIT ?)",
                (*ids, messages),
            ).rowcount
            deleted_sessions = 0
            if deleted_messages < messages:  # no journal row of these sessions is left
                deleted_sessions = conn.execute(
                    f"DELETE FROM ws_sessions WHERE id IN ({marks})", ids
                ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return deleted_sessions, deleted_messages

    def ping(self) -> None:
        self._connection().execute("SELECT 1").fetchone()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
