"""PostgreSQL backend (psycopg2): the production store, batched with COPY."""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from tornado_echo.config import mask_url
from tornado_echo.errors import StoreError
from tornado_echo.store.base import (
    JOURNAL_BYTES,
    Backend,
    Migration,
    journal_answer,
    journal_page,
    load_migrations,
    row_dict,
)
from tornado_echo.store.copyrows import COPY_SQL, HEADER, PG_EPOCH, TRAILER, pg_microseconds
from tornado_echo.store.records import (
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    MessageReceived,
    Record,
    RecordKind,
    SessionClosed,
    SessionOpened,
    columns,
    split_batch,
    storable_row,
)

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every tornado-echo process.
MIGRATION_LOCK_ID = 0x7E_EC40

# A batch is COPYed into per-connection temporary tables, then merged with one statement per
# table. COPY + INSERT ... SELECT ... ON CONFLICT DO NOTHING keeps retries idempotent and
# measured 2.5-4x faster than execute_values here (50-80k vs 18-21k journal rows/s).
# Each temporary table has the columns (and column types) its record writes.
STAGING = {SessionOpened: "in_opened", SessionClosed: "in_closed", MessageReceived: "in_messages"}
TARGET = {
    SessionOpened: "ws_sessions",
    SessionClosed: "ws_sessions",
    MessageReceived: "ws_messages",
}
TEMP_TABLES = ";".join(
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING[kind]} ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(columns(kind))} FROM {TARGET[kind]} WITH NO DATA"
    for kind in STAGING
)


def _insert(kind: RecordKind, key: str) -> str:
    names = ", ".join(columns(kind))
    return (
        f"INSERT INTO {TARGET[kind]} ({names}) SELECT {names} FROM {STAGING[kind]}"
        f" ON CONFLICT {key} DO NOTHING"
    )


MERGE = {
    SessionOpened: _insert(SessionOpened, "(id)"),
    SessionClosed: "UPDATE ws_sessions AS s SET "
    + ", ".join(f"{name} = v.{name}" for name in columns(SessionClosed)[1:])
    + " FROM in_closed AS v WHERE s.id = v.id",
    # Any key: (session_id, seq, received_at) on the partitioned journal (see
    # 003_journal_partitioned.sql), (session_id, seq) on a table not yet migrated.
    MessageReceived: _insert(MessageReceived, ""),
}
SELECT_SESSIONS = "SELECT " + ", ".join(SESSION_COLUMNS) + " FROM ws_sessions"
# Privileges revoked or tables gone are outages to wait out, not bad records to skip.
RETRY_SQLSTATES = frozenset({"42501", "42P01"})
PG_EPOCH_UTC = datetime.datetime.fromtimestamp(PG_EPOCH, datetime.timezone.utc)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: Any) -> str:
    """One value in COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):  # a Unix time, for a timestamptz column
        # The microseconds binary rows carry for the same time (see pg_microseconds).
        return (PG_EPOCH_UTC + datetime.timedelta(microseconds=pg_microseconds(value))).isoformat()
    if isinstance(value, bytes):
        # COPY text format unescapes "\\x" to "\x", bytea's hex input format.
        return "\\\\x" + value.hex()
    return str(value)


def copy_text(records: Sequence[Record]) -> str:
    """COPY text-format lines for the staging table of the records' kind."""
    return "".join("\t".join(map(_copy_value, storable_row(record))) + "\n" for record in records)


# Migrations that copy a whole table (version: table), and the size up to which a start does
# them itself: beyond it the copy could outlast systemd's TimeoutStartSec (30 s), which would
# kill the start, roll the migration back and begin again, forever. Measured rate in
# docs/operations.md.
REWRITES = {3: "ws_messages"}
MIGRATE_AT_START_BYTES = 256 * 2**20
PARTITIONS_AHEAD = 7  # days of journal partitions made beyond today
# Waited for the parent's lock when making or dropping a partition; past it the work is left
# for the next pass rather than queueing the writer's inserts behind a long reader.
PARTITION_LOCK_TIMEOUT = "2s"
PARTITION_PREFIX = "ws_messages_p"
DEFAULT_PARTITION = "ws_messages_default"
IS_PARTITIONED = "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('ws_messages')"
# The journal's partitions (the default one too; partition_day() tells them apart).
PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'ws_messages'::regclass"
)


# A session's journal rows were received while it was open. Saying so, with the times as
# constants, lets the planner leave out every day partition outside them (each costs
# planning time, ~0.15 ms here, at every page); the margin covers a clock stepped back.
DURING = " AND received_at >= %s AND received_at < %s"
CLOCK_MARGIN = datetime.timedelta(days=1)
OPENED_AT = SESSION_COLUMNS.index("opened_at")
CLOSED_AT = SESSION_COLUMNS.index("closed_at")


def journal_days(
    opened_at: datetime.datetime, closed_at: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    """The received_at range that holds a session's journal: open, give or take a day."""
    if closed_at is None:  # still open (or crashed before it was marked)
        return opened_at - CLOCK_MARGIN, datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    return opened_at - CLOCK_MARGIN, max(closed_at, opened_at) + CLOCK_MARGIN


def partition_name(day: datetime.date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> datetime.date | None:
    """The day of a partition named by :func:`partition_name`, else None."""
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        return datetime.datetime.strptime(name[len(PARTITION_PREFIX) :], "%Y%m%d").date()
    except ValueError:
        return None


def days_to_make(now: float, ahead: int = PARTITIONS_AHEAD) -> list[datetime.date]:
    """Yesterday (a late row, a clock a little behind), today and ``ahead`` days (UTC)."""
    today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
    return [today + datetime.timedelta(days=offset) for offset in range(-1, ahead + 1)]


def days_to_drop(names: Sequence[str], cutoff: float) -> list[str]:
    """The day partitions whose whole day ended at or before ``cutoff``, oldest first."""
    cut = datetime.datetime.fromtimestamp(cutoff, datetime.timezone.utc)
    found = []
    for name in names:
        day = partition_day(name)
        if day is not None:
            end = datetime.datetime.combine(
                day + datetime.timedelta(days=1), datetime.time(), datetime.timezone.utc
            )
            if end <= cut:
                found.append((day, name))
    return [name for _, name in sorted(found)]


class PostgresBackend(Backend):
    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None
        self._temp_tables = False

    def describe(self) -> str:
        return mask_url(self.dsn)

    def connect(self) -> None:
        self.close()
        self._temp_tables = False
        self._conn = psycopg2.connect(
            self.dsn,
            connect_timeout=self.connect_timeout,
            application_name="tornado-echo",
            # Notice a vanished server within seconds instead of hanging on a dead socket.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            # And a write to a vanished server fails within seconds too, not minutes.
            tcp_user_timeout=10_000,
        )

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a transaction: committed at the end, rolled back on an error.

        Unlike ``with conn:``, whose rollback on a connection the server dropped raises
        "InterfaceError: connection already closed" in place of the cause, the error that
        broke the transaction is the one raised (and logged, and shown by /readyz).
        """
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            raise

    def migrate(self, unbounded: bool = False) -> list[int]:
        applied_now = []
        with self._transaction() as cur:
            # Serialises concurrent starts; released at commit.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM schema_version")
            applied = {row[0] for row in cur.fetchall()}
            for migration in load_migrations("postgres"):
                if migration.version in applied:
                    continue
                if not unbounded:
                    self._refuse_if_long(cur, migration)
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(migration.version)
            if self._partitioned(cur):
                self._partitions_or_later(cur, time.time())
        return applied_now

    @classmethod
    def _partitions_or_later(cls, cur: psycopg2.extensions.cursor, now: float) -> int:
        """:meth:`_make_partitions`, or, behind a lock held past the timeout, none: neither a
        start nor a retention pass fails for it; the next pass tries again, and rows go to the
        default partition meanwhile (and move when their day is made)."""
        cur.execute("SAVEPOINT partitions")
        try:
            made = cls._make_partitions(cur, now)
        except psycopg2.errors.LockNotAvailable as exc:
            cur.execute("ROLLBACK TO SAVEPOINT partitions")
            logger.warning("journal partitions not made, next pass tries again: %s", exc)
            return 0
        cur.execute("RELEASE SAVEPOINT partitions")
        return made

    @staticmethod
    def _refuse_if_long(cur: psycopg2.extensions.cursor, migration: Migration) -> None:
        table = REWRITES.get(migration.version)
        if table is None:
            return
        cur.execute("SELECT pg_total_relation_size(to_regclass(%s))", (table,))
        row = cur.fetchone()
        size = int(row[0]) if row and row[0] is not None else 0
        if size > MIGRATE_AT_START_BYTES:
            raise StoreError(
                f"schema version {migration.version} ({migration.name}) rewrites {table},"
                f" {size / 2**20:.0f} MiB here, longer than a start may take: run"
                " `tornado-echo migrate` (with the same conf file) first,"
                " see docs/operations.md"
            )

    @staticmethod
    def _partitioned(cur: psycopg2.extensions.cursor) -> bool:
        cur.execute(IS_PARTITIONED)
        row = cur.fetchone()
        return bool(row and row[0])

    def make_partitions(self, now: float) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            if not self._partitioned(cur):
                return 0
            return self._partitions_or_later(cur, now)

    @staticmethod
    def _make_partitions(cur: psycopg2.extensions.cursor, now: float) -> int:
        """Make the missing day partitions of :func:`days_to_make`, in the caller's
        transaction (under the migration lock); returns how many.

        Each is made as a table of its own and attached, which locks the journal only in
        SHARE UPDATE EXCLUSIVE mode (CREATE TABLE ... PARTITION OF would take ACCESS
        EXCLUSIVE, stopping the writers); rows of that day already in the default partition
        (a clock ahead) move into it first, or the attach would fail.
        """
        cur.execute("SET LOCAL lock_timeout = %s", (PARTITION_LOCK_TIMEOUT,))
        made = 0
        for day in days_to_make(now):
            name = partition_name(day)
            cur.execute("SELECT to_regclass(%s)", (name,))
            row = cur.fetchone()
            if row is not None and row[0] is not None:
                continue
            start = f"{day:%Y-%m-%d} 00:00:00+00"
            end = f"{day + datetime.timedelta(days=1):%Y-%m-%d} 00:00:00+00"
            cur.execute(f"CREATE TABLE {name} (LIKE ws_messages INCLUDING DEFAULTS)")
            cur.execute(
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"
                " WHERE received_at >= %s AND received_at < %s RETURNING *)"
                f" INSERT INTO {name} SELECT * FROM moved",
                (start, end),
            )
            cur.execute(
                f"ALTER TABLE ws_messages ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
                (start, end),
            )
            made += 1
        return made

    def drop_journal_before(self, cutoff: float) -> int:
        with self._transaction() as cur:
            if not self._partitioned(cur):
                return 0
            cur.execute(PARTITIONS)
            names = days_to_drop([row[0] for row in cur.fetchall()], cutoff)
        for name in names:
            # One short transaction each: dropping a partition locks the whole journal in
            # ACCESS EXCLUSIVE mode for a moment, waited for at most PARTITION_LOCK_TIMEOUT
            # (past it, the retention pass fails and the next one tries again).
            with self._transaction() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (PARTITION_LOCK_TIMEOUT,))
                cur.execute(f"DROP TABLE IF EXISTS {name}")
        return len(names)

    def write(self, batch: list[Record]) -> None:
        opened, closed, messages = split_batch(batch)
        with self._transaction() as cur:
            if not self._temp_tables:
                cur.execute(TEMP_TABLES)
            for kind, records in (
                (SessionOpened, opened),
                (SessionClosed, closed),
                (MessageReceived, messages),
            ):
                if records:
                    data = io.StringIO(copy_text(records))
                    cur.copy_expert(f"COPY {STAGING[kind]} FROM STDIN", data)
                    cur.execute(MERGE[kind])
        self._temp_tables = True

    def write_journal(self, rows: bytes) -> None:
        # Straight into the table: no staging, no merge. A replayed row fails the batch with a
        # unique violation, a data error, and the writer process then merges it (write()).
        with self._transaction() as cur:
            cur.copy_expert(COPY_SQL, io.BytesIO(HEADER + rows + TRAILER), size=1 << 20)

    def is_data_error(self, exc: Exception) -> bool:
        if isinstance(exc, (psycopg2.DataError, psycopg2.IntegrityError)):
            return True
        if isinstance(exc, psycopg2.ProgrammingError):
            return exc.pgcode not in RETRY_SQLSTATES
        return isinstance(exc, (ValueError, TypeError, UnicodeError, OverflowError))

    def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        with self._transaction() as cur:
            if since is None:
                cur.execute(SELECT_SESSIONS + " ORDER BY opened_at DESC LIMIT %s", (limit,))
            else:
                cur.execute(
                    SELECT_SESSIONS + " WHERE opened_at >= to_timestamp(%s)"
                    " ORDER BY opened_at DESC LIMIT %s",
                    (since, limit),
                )
            return [row_dict(SESSION_COLUMNS, row) for row in cur.fetchall()]

    def get_session(
        self,
        session_id: str,
        journal_limit: int,
        journal_after: int = 0,
        journal_bytes: int = JOURNAL_BYTES,
    ) -> dict[str, Any] | None:
        with self._transaction() as cur:
            cur.execute(SELECT_SESSIONS + " WHERE id = %s::uuid", (session_id,))
            row = cur.fetchone()
            if row is None:
                return None
            session = row_dict(SESSION_COLUMNS, row)
            since, until = journal_days(row[OPENED_AT], row[CLOSED_AT])
            # Sizes first (octet_length reads no TOASTed payload), then the payloads that fit.
            cur.execute(
                "SELECT seq, octet_length(payload) FROM ws_messages"
                " WHERE session_id = %s::uuid AND seq > %s" + DURING + " ORDER BY seq LIMIT %s",
                (session_id, journal_after, since, until, journal_limit + 1),
            )
            count, more = journal_page(cur.fetchall(), journal_limit, journal_bytes)
            cur.execute(
                "SELECT " + ", ".join(MESSAGE_COLUMNS) + " FROM ws_messages"
                " WHERE session_id = %s::uuid AND seq > %s" + DURING + " ORDER BY seq LIMIT %s",
                (session_id, journal_after, since, until, count),
            )
            return journal_answer(session, cur.fetchall(), more)

    def mark_crashed(self, server_id: str, now: float) -> int:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE ws_sessions SET end_state = 'crashed', closed_at = to_timestamp(%s)"
                " WHERE server_id = %s AND end_state = 'open'",
                (now, server_id),
            )
            return int(cur.rowcount)

    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        with self._transaction() as cur:
            if self._partitioned(cur):
                return self._delete_partitioned(cur, cutoff, sessions, messages)
            cur.execute(
                "SELECT id FROM ws_sessions WHERE opened_at < to_timestamp(%s)"
                " AND end_state <> 'open' ORDER BY opened_at LIMIT %s",
                (cutoff, sessions),
            )
            ids = [str(row[0]) for row in cur.fetchall()]
            cur.execute(
                "DELETE FROM ws_messages WHERE ctid = ANY(ARRAY(SELECT ctid FROM ws_messages"
                " WHERE session_id = ANY(%s::uuid[]) LIMIT %s))",
                (ids, messages),
            )
            deleted_messages = int(cur.rowcount)
            deleted_sessions = 0
            if deleted_messages < messages:  # no journal row of these sessions is left
                cur.execute("DELETE FROM ws_sessions WHERE id = ANY(%s::uuid[])", (ids,))
                deleted_sessions = int(cur.rowcount)
        return deleted_sessions, deleted_messages

    @staticmethod
    def _delete_partitioned(
        cur: psycopg2.extensions.cursor, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        """Retention on the partitioned journal, after :meth:`drop_journal_before`: journal
        rows go by age, day partitions whole; here only the default partition's rows
        received before ``cutoff`` (by row), then ended sessions opened before it."""
        # ctid is unique within one table: the default partition is one.
        cur.execute(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE ctid = ANY(ARRAY(SELECT ctid"
            f" FROM {DEFAULT_PARTITION} WHERE received_at < to_timestamp(%s) LIMIT %s))",
            (cutoff, messages),
        )
        deleted_messages = int(cur.rowcount)
        if deleted_messages >= messages:
            return 0, deleted_messages
        cur.execute(
            "DELETE FROM ws_sessions WHERE id = ANY(ARRAY(SELECT id FROM ws_sessions"
            " WHERE opened_at < to_timestamp(%s) AND end_state <> 'open'"
            " ORDER BY opened_at LIMIT %s))",
            (cutoff, sessions),
        )
        return int(cur.rowcount), deleted_messages

    def ping(self) -> None:
        with self._transaction() as cur:
            cur.execute("SELECT 1")

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not conn.closed:
                conn.close()
