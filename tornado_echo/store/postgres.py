"""PostgreSQL backend (psycopg2): the production store, batched with execute_values."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from ..config import mask_url
from .base import Backend, load_migrations
from .records import Record, as_row, split_batch

# Any constant works; it only has to be the same for every tornado-echo process.
MIGRATION_LOCK_ID = 0x7E_EC40

INSERT_SESSION = (
    "INSERT INTO ws_sessions (id, server_id, opened_at, peer, path, origin, user_agent,"
    " subprotocol, compression) VALUES %s ON CONFLICT (id) DO NOTHING"
)
INSERT_SESSION_TEMPLATE = "(%s::uuid, %s, to_timestamp(%s), %s, %s, %s, %s, %s, %s)"
CLOSE_SESSION = (
    "UPDATE ws_sessions AS s SET closed_at = v.closed_at, close_code = v.close_code,"
    " close_reason = v.close_reason, messages_in = v.messages_in, messages_out = v.messages_out,"
    " bytes_in = v.bytes_in, bytes_out = v.bytes_out, end_state = v.end_state"
    " FROM (VALUES %s) AS v (id, closed_at, close_code, close_reason, messages_in,"
    " messages_out, bytes_in, bytes_out, end_state) WHERE s.id = v.id"
)
CLOSE_SESSION_TEMPLATE = (
    "(%s::uuid, to_timestamp(%s), %s::integer, %s::text, %s::bigint, %s::bigint, %s::bigint,"
    " %s::bigint, %s::text)"
)
INSERT_MESSAGE = (
    "INSERT INTO ws_messages (session_id, seq, received_at, opcode, size, payload)"
    " VALUES %s ON CONFLICT (session_id, seq) DO NOTHING"
)
INSERT_MESSAGE_TEMPLATE = "(%s::uuid, %s, to_timestamp(%s), %s, %s, %s::bytea)"


class PostgresBackend(Backend):
    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None

    def describe(self) -> str:
        return mask_url(self.dsn)

    def connect(self) -> None:
        self.close()
        self._conn = psycopg2.connect(
            self.dsn,
            connect_timeout=self.connect_timeout,
            application_name="tornado-echo",
            # Notice a vanished server within seconds instead of hanging on a dead socket.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    def migrate(self) -> list[int]:
        conn = self._connection()
        applied_now = []
        with conn, conn.cursor() as cur:
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
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(migration.version)
        return applied_now

    def write(self, batch: list[Record]) -> None:
        conn = self._connection()
        opened, closed, messages = split_batch(batch)
        with conn, conn.cursor() as cur:
            if opened:
                psycopg2.extras.execute_values(
                    cur,
                    INSERT_SESSION,
                    [as_row(o) for o in opened],
                    template=INSERT_SESSION_TEMPLATE,
                    page_size=len(opened),
                )
            if closed:
                psycopg2.extras.execute_values(
                    cur,
                    CLOSE_SESSION,
                    [as_row(c) for c in closed],
                    template=CLOSE_SESSION_TEMPLATE,
                    page_size=len(closed),
                )
            if messages:
                psycopg2.extras.execute_values(
                    cur,
                    INSERT_MESSAGE,
                    [as_row(m) for m in messages],
                    template=INSERT_MESSAGE_TEMPLATE,
                    page_size=len(messages),
                )

    def mark_crashed(self, server_id: str, now: float) -> int:
        conn = self._connection()
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE ws_sessions SET end_state = 'crashed', closed_at = to_timestamp(%s)"
                " WHERE server_id = %s AND end_state = 'open'",
                (now, server_id),
            )
            return int(cur.rowcount)

    def ping(self) -> None:
        conn = self._connection()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not conn.closed:
                conn.close()
