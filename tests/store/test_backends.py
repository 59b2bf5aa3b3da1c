"""Both backends against real databases: migrations, batches, idempotent retries, crashes."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.helpers import admin_sql, fetch_rows
from tornado_echo.store import MessageReceived, SessionClosed, SessionOpened, make_backend
from tornado_echo.store.base import journal_page
from tornado_echo.store.copyrows import encode_row
from tornado_echo.store.records import MESSAGE_COLUMNS, SESSION_COLUMNS, Record
from tornado_echo.store.sqlite import (
    INSERT_CLOSED_SESSIONS,
    INSERT_SESSIONS,
    MAX_VARIABLES,
    SQLiteBackend,
)


def opened(session_id: str, server_id: str = "host:1:0") -> SessionOpened:
    return SessionOpened(
        session_id=session_id,
        server_id=server_id,
        opened_at=time.time(),
        peer="127.0.0.1",
        path="/ws",
        origin="https://app.example",
        user_agent="pytest",
        subprotocol=None,
        compression=True,
    )


def closed(session_id: str) -> SessionClosed:
    return SessionClosed(
        session_id=session_id,
        closed_at=time.time(),
        close_code=1000,
        close_reason="bye",
        messages_in=3,
        messages_out=3,
        bytes_in=30,
        bytes_out=30,
        end_state="closed",
    )


SID = "6f1c1d1e-0000-4000-8000-000000000001"
SID2 = "6f1c1d1e-0000-4000-8000-000000000002"


def versions(database_url: str) -> list[int]:
    """Every schema version of the dialect: PostgreSQL's third partitions the journal."""
    return [1, 2] if database_url.startswith("sqlite:///") else [1, 2, 3]


def test_migrate_is_idempotent(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    assert backend.migrate() == versions(database_url)
    assert backend.migrate() == []
    backend.close()
    backend.close()  # idempotent
    found = fetch_rows(database_url, "SELECT version FROM schema_version")
    assert sorted(v["version"] for v in found) == versions(database_url)


def test_the_tables_have_exactly_the_columns_the_records_name(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    backend.close()
    for table, expected in (
        ("ws_sessions", SESSION_COLUMNS),
        ("ws_messages", ("session_id", *MESSAGE_COLUMNS)),
    ):
        found = table_columns(database_url, table)
        assert sorted(found) == sorted(expected), table


def table_columns(database_url: str, table: str) -> list[str]:
    if database_url.startswith("sqlite:///"):
        rows = fetch_rows(database_url, f"SELECT name FROM pragma_table_info('{table}')")
        return [row["name"] for row in rows]
    rows = fetch_rows(
        database_url,
        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'",
    )
    return [row["column_name"] for row in rows]


def test_a_version_1_database_with_journal_rows_is_upgraded_in_place(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    backend.write([opened(SID), MessageReceived(SID, 1, time.time(), 2, 3, b"abc")])
    backend.close()
    for sql in (
        "ALTER TABLE ws_messages DROP COLUMN truncated",
        "DELETE FROM schema_version WHERE version = 2",
    ):
        execute(database_url, sql)
    backend.connect()
    assert backend.migrate() == [2]
    backend.write([MessageReceived(SID, 2, time.time(), 2, 9000, b"def", truncated=True)])
    session = backend.get_session(SID, 10)
    backend.close()
    assert session is not None
    assert [(j["seq"], j["size"], j["truncated"]) for j in session["journal"]] == [
        (1, 3, False),
        (2, 9000, True),
    ]


def execute(database_url: str, sql: str) -> None:
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :])
        with conn:
            conn.execute(sql)
        conn.close()
    else:
        admin_sql(database_url, sql)


def test_concurrent_migrations_apply_once(database_url: str) -> None:
    applied: list[list[int]] = []

    def start() -> None:
        backend = make_backend(database_url)
        backend.connect()
        applied.append(backend.migrate())
        backend.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(applied) == [[], [], [], versions(database_url)]


def test_batch_with_open_close_and_journal_in_one_transaction(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    batch: list[Record] = [
        opened(SID),
        MessageReceived(SID, 1, time.time(), 1, 5, b"hello"),
        MessageReceived(SID, 2, time.time(), 2, 3, None),
        closed(SID),
        opened(SID2),
    ]
    backend.write(batch)
    backend.write(batch)  # a retried batch must not duplicate anything
    backend.close()
    sessions = fetch_rows(
        database_url, "SELECT id, end_state, close_code, messages_in FROM ws_sessions ORDER BY id"
    )
    assert [(str(s["id"]), s["end_state"], s["close_code"]) for s in sessions] == [
        (SID, "closed", 1000),
        (SID2, "open", None),
    ]
    messages = fetch_rows(database_url, "SELECT seq, size, payload FROM ws_messages ORDER BY seq")
    assert [(m["seq"], m["size"], m["payload"] and bytes(m["payload"])) for m in messages] == [
        (1, 5, b"hello"),
        (2, 3, None),
    ]


HOSTILE = "a\x00b\ud800c\udfffd"  # NUL and lone surrogates: PostgreSQL refuses both
STORED = "a\ufffdb\ufffdc\ufffdd"


def test_any_client_chosen_text_is_stored_with_replacement_characters(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    backend.write(
        [
            dataclasses.replace(
                opened(SID), path="/ws" + HOSTILE, origin=HOSTILE, user_agent=HOSTILE
            ),
            dataclasses.replace(closed(SID), close_reason=HOSTILE),
        ]
    )
    session = backend.get_session(SID, 10)
    backend.close()
    assert session is not None
    assert (session["path"], session["origin"]) == ("/ws" + STORED, STORED)
    assert (session["user_agent"], session["close_reason"]) == (STORED, STORED)
    assert session["end_state"] == "closed"


def test_mark_crashed_touches_only_this_servers_open_sessions(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    other = "6f1c1d1e-0000-4000-8000-000000000003"
    backend.write([opened(SID), opened(SID2), closed(SID2), opened(other, server_id="elsewhere")])
    assert backend.mark_crashed("host:1:0", time.time()) == 1
    assert backend.mark_crashed("host:1:0", time.time()) == 0
    backend.close()
    states = fetch_rows(database_url, "SELECT id, end_state FROM ws_sessions")
    assert {str(r["id"]): r["end_state"] for r in states} == {
        SID: "crashed",
        SID2: "closed",
        other: "open",
    }


def open_connections(database_url: str) -> int:
    """tornado-echo's connections to this database: PostgreSQL backends, or this process's
    file descriptors on the SQLite file."""
    if database_url.startswith("sqlite:///"):
        path = os.path.realpath(database_url[len("sqlite:///") :])
        fds = Path("/proc/self/fd").iterdir()
        return sum(1 for fd in fds if os.path.realpath(fd) == path)
    [row] = fetch_rows(
        database_url,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'tornado-echo'"
        f" AND datname = '{urlsplit(database_url).path[1:]}'",
    )
    return int(row["n"])


def assert_connections(database_url: str, expected: int) -> None:
    # A PostgreSQL backend leaves pg_stat_activity a moment after its client hangs up.
    deadline = time.monotonic() + 5
    while open_connections(database_url) != expected:
        assert time.monotonic() < deadline, f"not {expected} connections"
        time.sleep(0.01)


def test_ping_and_reconnect(database_url: str) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.ping()
    assert_connections(database_url, 1)
    backend.close()
    assert_connections(database_url, 0)
    backend.ping()  # reconnects on demand
    assert_connections(database_url, 1)
    backend.close()
    assert_connections(database_url, 0)


def test_postgres_dropped_connection_raises_its_cause_then_reconnects(
    postgres_url: str, pg_admin_dsn: str
) -> None:
    backend = make_backend(postgres_url)
    backend.migrate()
    admin_sql(
        pg_admin_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{urlsplit(postgres_url).path[1:]}'"
        " AND application_name = 'tornado-echo'",
    )
    # Not "InterfaceError: connection already closed" from a rollback on the dead link:
    # the operator (log, /readyz) sees why the write failed.
    with pytest.raises(psycopg2.OperationalError):
        backend.write([opened("00000000-0000-4000-8000-000000000001")])
    backend.write([opened("00000000-0000-4000-8000-000000000001")])  # a new connection
    assert fetch_rows(postgres_url, "SELECT count(*) AS n FROM ws_sessions") == [{"n": 1}]
    backend.close()


def test_postgres_describe_masks_the_password() -> None:
    backend = make_backend("postgresql://echo:hunter2@127.0.0.1:1/echo")
    assert backend.describe() == "postgresql://echo:***@127.0.0.1:1/echo"


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ([], 10, (0, False)),
        ([(1, 10), (2, 10)], 10, (2, False)),  # everything fits
        ([(1, 10), (2, 10), (3, 10)], 2, (2, True)),  # the entry past the limit says "more"
        ([(1, 60), (2, 40), (3, 1)], 10, (2, True)),  # 60 + 40 = 100 fits, one byte more not
        ([(1, 500), (2, 1)], 10, (1, True)),  # one entry over the bound still comes alone
        ([(5, None), (6, None)], 10, (2, False)),  # meta journal: no payload bytes
    ],
)
def test_journal_page_bounds_entries_and_bytes(
    sizes: list[tuple[int, int | None]], limit: int, expected: tuple[int, bool]
) -> None:
    assert journal_page(sizes, limit, 100) == expected


def test_a_session_opened_and_closed_in_one_batch_lands_closed_even_over_a_replayed_open(
    database_url: str,
) -> None:
    # Short sessions come as an open and its close in one batch (SQLite writes them as one
    # row); a replayed open already written must not keep the close from landing.
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    backend.write([opened(SID)])
    backend.write([opened(SID2), opened(SID), closed(SID), closed(SID2)])
    backend.write([opened(SID2)])  # replayed after its close: the close stays
    backend.close()
    sessions = fetch_rows(
        database_url, "SELECT id, end_state, close_reason, messages_in FROM ws_sessions ORDER BY id"
    )
    assert [
        (str(s["id"]), s["end_state"], s["close_reason"], s["messages_in"]) for s in sessions
    ] == [
        (SID, "closed", "bye", 3),
        (SID2, "closed", "bye", 3),
    ]


class TracedSQLite(SQLiteBackend):
    """A real SQLite backend that notes each statement its connection runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.statements: list[str] = []

    def connect(self) -> None:
        super().connect()
        self._connection().set_trace_callback(self.statements.append)


def test_sqlite_writes_a_batch_of_sessions_in_a_few_statements_not_one_per_row(
    tmp_path: Path,
) -> None:
    backend = TracedSQLite(tmp_path / "db.sqlite")
    backend.connect()
    backend.migrate()
    ids = [f"00000000-0000-4000-8000-{number:012d}" for number in range(300)]
    backend.write([opened(ids[0])])  # its open written before: replayed below
    batch: list[Record] = [opened(sid) for sid in ids[:250]]  # 250 closed within the batch
    batch += [closed(sid) for sid in ids[:250]] + [opened(sid) for sid in ids[250:]]
    del backend.statements[:]
    backend.write(batch)
    backend.close()
    inserts = [sql for sql in backend.statements if sql.startswith("INSERT")]
    whole = MAX_VARIABLES // INSERT_CLOSED_SESSIONS.width
    assert len(inserts) == -(-250 // whole) + -(-50 // (MAX_VARIABLES // INSERT_SESSIONS.width))
    assert len(backend.statements) == len(inserts) + 2  # BEGIN IMMEDIATE, COMMIT
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    rows = fetch_rows(url, "SELECT id, end_state FROM ws_sessions")
    assert sorted((row["id"], row["end_state"]) for row in rows) == [
        (sid, "closed" if number < 250 else "open") for number, sid in enumerate(ids)
    ]


def test_sqlite_journal_rows_land_once_whatever_the_batch_and_the_replays(sqlite_url: str) -> None:
    """SQLite inserts rows a hundred to a statement, then the rest one by one; a batch of
    rows of several widths goes through the general decoder: every row lands, once, with its
    values, also when the batch (or a part of it) is written again. (PostgreSQL refuses such
    a batch: its writer then merges, tests/store/test_partitions.py.)"""
    database_url = sqlite_url
    backend = make_backend(database_url)
    backend.migrate()
    first, mixed = bytearray(), bytearray()
    for seq in range(1, 251):
        encode_row(first, SID, seq, 1_767_000_000.0 + seq, 2, 8, b"payload!", 100, seq == 7)
    for seq in range(1, 6):
        encode_row(mixed, SID2, seq, 1_767_000_000.0, 1, seq, b"x" * seq if seq % 2 else None, 3)
    try:
        backend.write_journal(bytes(first))
        backend.write_journal(bytes(first[: 69 + 8]) + bytes(mixed))  # a replay and new rows
        backend.write_journal(bytes(first))
    finally:
        backend.close()
    rows = fetch_rows(
        database_url,
        "SELECT session_id, seq, opcode, size, payload, truncated FROM ws_messages"
        " ORDER BY session_id, seq",
    )
    assert [(str(r["session_id"]), r["seq"]) for r in rows] == [
        *((SID, seq) for seq in range(1, 251)),
        *((SID2, seq) for seq in range(1, 6)),
    ]
    assert {bytes(r["payload"]) for r in rows[:250]} == {b"payload!"}
    assert [bool(r["truncated"]) for r in rows[:250]].count(True) == 1
    assert [None if r["payload"] is None else bytes(r["payload"]) for r in rows[250:]] == [
        b"x",
        None,
        b"xxx",
        None,
        b"xxx",
    ]
    assert [bool(r["truncated"]) for r in rows[250:]] == [False, False, False, False, True]
