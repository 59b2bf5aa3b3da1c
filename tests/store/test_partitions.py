"""The PostgreSQL journal partitioned by day: keys across replays, partitions ahead, retention
by whole days, and the migration of an unpartitioned journal (docs/journal.md)."""

from __future__ import annotations

import datetime
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.helpers import admin_sql, eventually_blocking, fetch_rows
from tests.store.test_store import sid
from tornado_echo.config import Config
from tornado_echo.errors import StoreError
from tornado_echo.store import (
    MessageReceived,
    SessionClosed,
    SessionOpened,
    Spool,
    make_backend,
    make_store,
    postgres,
    spool_path,
)
from tornado_echo.store.base import load_migrations
from tornado_echo.store.copyrows import FRAME, decode_rows, encode_record, pg_microseconds
from tornado_echo.store.journal_process import JournalWriter
from tornado_echo.store.postgres import (
    DEFAULT_PARTITION,
    DURING,
    PARTITIONS_AHEAD,
    PostgresBackend,
    days_to_drop,
    days_to_make,
    journal_days,
    partition_day,
    partition_name,
)
from tornado_echo.store.retention import DAY, Retention, prune
from tornado_echo.store.writer import BatchWriter, Outcome

NOW = time.time()
TODAY = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).date()
MIDNIGHT = datetime.datetime.combine(TODAY, datetime.time(), datetime.timezone.utc).timestamp()


# -- pure logic -------------------------------------------------------------------------------


def test_days_made_run_from_yesterday_to_some_days_ahead() -> None:
    days = days_to_make(MIDNIGHT + 5)
    assert days[0] == TODAY - datetime.timedelta(days=1)
    assert days[-1] == TODAY + datetime.timedelta(days=PARTITIONS_AHEAD)
    assert len(days) == PARTITIONS_AHEAD + 2
    assert days_to_make(MIDNIGHT - 0.000001)[1] == TODAY - datetime.timedelta(days=1)


def test_only_partitions_of_whole_days_before_the_cut_are_dropped() -> None:
    names = [partition_name(TODAY - datetime.timedelta(days=n)) for n in range(5)]
    names += [DEFAULT_PARTITION, "ws_messages_pnotaday", "ws_messages_p20261399"]
    # The cut in the middle of the day before yesterday: that day stays, older ones go.
    cut = MIDNIGHT - 2 * DAY + 3600
    assert days_to_drop(names, cut) == [names[4], names[3]]
    assert days_to_drop(names, MIDNIGHT - 2 * DAY) == [names[4], names[3]]  # ended at the cut
    assert days_to_drop(names, MIDNIGHT - 4 * DAY) == []
    assert partition_day(DEFAULT_PARTITION) is None
    assert partition_day(names[0]) == TODAY


def test_a_time_keeps_its_microsecond_through_every_encoding() -> None:
    """The partition key must not move on a replay: the time a decoded row carries encodes
    to the very value stored, in binary rows and in COPY text alike."""
    chooser = random.Random(20)
    times = [MIDNIGHT, MIDNIGHT - 0.0000005, MIDNIGHT - 0.000001, 0.0, 946684800.0]
    times += [chooser.uniform(0, 4e9) for _ in range(20000)]
    for at in times:
        out = bytearray()
        encode_record(out, MessageReceived(sid(1), 1, at, 2, 0, None))
        [decoded] = decode_rows(out)
        again = bytearray()
        encode_record(again, decoded)
        assert again == out, at
        assert pg_microseconds(decoded.received_at) == pg_microseconds(at), at


# -- on PostgreSQL ----------------------------------------------------------------------------


def pg(url: str) -> PostgresBackend:
    backend = make_backend(url)
    assert isinstance(backend, PostgresBackend)
    backend.connect()
    return backend


def partitions(url: str) -> dict[str, str]:
    rows = fetch_rows(
        url,
        "SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'ws_messages'::regclass",
    )
    return {row["name"]: row["bound"] for row in rows}


def where_rows_are(url: str) -> dict[tuple[str, int], str]:
    rows = fetch_rows(
        url, "SELECT tableoid::regclass::text AS part, session_id, seq FROM ws_messages"
    )
    return {(str(row["session_id"]), row["seq"]): row["part"] for row in rows}


# A day's edges (0.4 us before midnight is stored as midnight, in every path), a row 20 days
# old (the default partition), and one of now.
TIMES = [MIDNIGHT, MIDNIGHT - 0.0000004, MIDNIGHT - 0.000001, MIDNIGHT - 20 * DAY, NOW]


def journal(number: int) -> list[MessageReceived]:
    return [
        MessageReceived(sid(number), seq, at, 2, 4, b"ping")
        for seq, at in enumerate(TIMES, start=1)
    ]


def rows_of(records: list[MessageReceived]) -> bytes:
    out = bytearray()
    for record in records:
        encode_record(out, record)
    return bytes(out)


def test_the_journal_is_partitioned_by_day_with_a_default(postgres_url: str) -> None:
    backend = pg(postgres_url)
    assert backend.migrate() == [1, 2, 3]
    backend.close()
    found = partitions(postgres_url)
    assert found.pop(DEFAULT_PARTITION) == "DEFAULT"
    assert sorted(found) == [partition_name(day) for day in days_to_make(time.time())]
    [key] = fetch_rows(
        postgres_url,
        "SELECT pg_get_constraintdef(oid) AS key FROM pg_constraint"
        " WHERE conrelid = 'ws_messages'::regclass AND contype = 'p'",
    )
    assert key["key"] == "PRIMARY KEY (session_id, seq, received_at)"


def test_each_writer_path_twice_leaves_one_copy(postgres_url: str, tmp_path: Path) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    writer = BatchWriter(backend, threading.Event())
    # 1. The thread writer's merge (COPY text, ON CONFLICT DO NOTHING), twice.
    assert writer.write(journal(1)) is Outcome.DONE
    assert writer.write(journal(1)) is Outcome.DONE
    # 2. The writer process's binary COPY, twice: the second is refused, then merged.
    assert writer.write_rows(rows_of(journal(2)), 5) is Outcome.DONE
    assert writer.write_rows(rows_of(journal(2)), 5) is Outcome.DONE
    # 3. Binary first, then the same rows through the merge, as records decoded from them
    # (what a writer hands back to the store's queue, or spools).
    assert writer.write_rows(rows_of(journal(3)), 5) is Outcome.DONE
    assert writer.write(list(decode_rows(rows_of(journal(3))))) is Outcome.DONE
    # ... and the merge first, then binary.
    assert writer.write(journal(4)) is Outcome.DONE
    assert writer.write_rows(rows_of(journal(4)), 5) is Outcome.DONE
    assert writer.poisoned == 0
    backend.close()
    placed = where_rows_are(postgres_url)
    assert len(placed) == 4 * len(TIMES)
    assert len(fetch_rows(postgres_url, "SELECT 1 FROM ws_messages")) == 4 * len(TIMES)
    yesterday = partition_name(TODAY - datetime.timedelta(days=1))
    for number in range(1, 5):
        assert [placed[(sid(number), seq)] for seq in range(1, 6)] == [
            partition_name(TODAY),
            partition_name(TODAY),
            yesterday,
            DEFAULT_PARTITION,
            partition_name(TODAY),
        ]


def test_the_writer_process_loop_given_a_chunk_twice_writes_it_once(postgres_url: str) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    ours, theirs = socket.socketpair()
    writer = JournalWriter(theirs, backend, 1 << 20, 0.01, 8 << 20, 5.0, None)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    rows = rows_of(journal(1))
    ours.sendall(FRAME.pack(len(rows), 1, 5) + rows)  # as sent to a writer that then died ...
    ours.sendall(FRAME.pack(len(rows), 2, 5) + rows)  # ... and again to its successor
    ours.shutdown(socket.SHUT_WR)
    thread.join(30)
    assert not thread.is_alive()
    ours.close()
    theirs.close()
    backend.close()
    assert len(where_rows_are(postgres_url)) == len(TIMES)
    assert len(fetch_rows(postgres_url, "SELECT 1 FROM ws_messages")) == len(TIMES)


@pytest.mark.gen_test(timeout=60)
async def test_a_spool_replayed_over_rows_already_written_adds_none(
    postgres_url: str, tmp_path: Path
) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    backend.write_journal(rows_of(journal(1)))  # written, then spooled too (say, a timeout)
    backend.close()
    leftover = Spool(spool_path(tmp_path, "host:1:0"))
    leftover.open()
    leftover.append(list(decode_rows(rows_of(journal(1)))))
    leftover.close()
    store = make_store(Config(database_url=postgres_url, state_dir=str(tmp_path)), "host:1:0")
    await store.start()
    await store.close()
    assert not leftover.path.exists()  # replayed
    assert len(fetch_rows(postgres_url, "SELECT 1 FROM ws_messages")) == len(TIMES)


def test_a_day_made_late_takes_its_rows_from_the_default(postgres_url: str) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    ahead = MIDNIGHT + (PARTITIONS_AHEAD + 3) * DAY  # a clock far ahead
    backend.write([MessageReceived(sid(1), 1, ahead, 2, 4, b"ping")])
    assert where_rows_are(postgres_url) == {(sid(1), 1): DEFAULT_PARTITION}
    assert backend.make_partitions(ahead) == PARTITIONS_AHEAD + 2  # none made yet
    assert backend.make_partitions(ahead) == 0
    day = TODAY + datetime.timedelta(days=PARTITIONS_AHEAD + 3)
    assert where_rows_are(postgres_url) == {(sid(1), 1): partition_name(day)}
    backend.write([MessageReceived(sid(1), 1, ahead, 2, 4, b"ping")])  # still one copy
    backend.close()
    assert len(fetch_rows(postgres_url, "SELECT 1 FROM ws_messages")) == 1


def test_prune_drops_whole_days_and_deletes_the_default_by_row(postgres_url: str) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    for days in (10, 9):  # days -11 .. -2 exist, as a server running then made them
        backend.make_partitions(NOW - days * DAY)
    records = [
        MessageReceived(sid(1), seq, NOW - (seq % 12) * DAY, 2, 4, b"ping") for seq in range(1, 121)
    ]
    records.append(MessageReceived(sid(2), 1, NOW - 400 * DAY, 2, 4, b"ping"))  # the default
    backend.write(records)
    before = where_rows_are(postgres_url)
    assert list(before.values()).count(DEFAULT_PARTITION) == 1
    pruned = prune(backend, NOW - 7 * DAY, pause=0)
    backend.close()
    # Days -11 .. -8 ended before the cut: dropped, with their 40 rows. Day -7 holds the cut:
    # kept whole (its rows older than the cut too). The default's old row: deleted.
    assert (pruned.partitions, pruned.messages) == (4, 1)
    cut_day = TODAY - datetime.timedelta(days=7)
    gone = {partition_name(cut_day - datetime.timedelta(days=n)) for n in range(1, 5)}
    assert not gone & set(partitions(postgres_url))
    assert where_rows_are(postgres_url) == {
        key: part for key, part in before.items() if part not in gone and part != DEFAULT_PARTITION
    }
    assert len(where_rows_are(postgres_url)) == 120 - 40


# -- the migration of an unpartitioned journal -------------------------------------------------

OLD_ROWS = 200_000


def old_layout(url: str, rows: int = OLD_ROWS) -> None:
    """The schema as versions 1 and 2 left it, with ``rows`` journal rows over 30 days and a
    few 500 days old (older than the days the migration makes partitions for)."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for migration in load_migrations("postgres")[:2]:
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        cur.execute(
            "INSERT INTO ws_messages (session_id, seq, received_at, opcode, size, payload)"
            " SELECT md5((n / 1000)::text)::uuid, n %% 1000, now() - (n %% 30) * interval '1 day'"
            " - CASE WHEN n %% 997 = 0 THEN interval '500 days' ELSE interval '0' END,"
            " 2, 4, 'ping' FROM generate_series(1, %s) AS n",
            (rows,),
        )
    conn.close()


def journal_digest(url: str) -> list[dict[str, Any]]:
    return fetch_rows(
        url,
        "SELECT count(*) AS n, md5(string_agg(session_id::text || seq || received_at::text"
        " || payload::text || truncated::text, ',' ORDER BY session_id, seq)) AS digest"
        " FROM ws_messages",
    )


def test_an_unpartitioned_journal_is_migrated_once_with_every_row(postgres_url: str) -> None:
    old_layout(postgres_url)
    digest = journal_digest(postgres_url)
    backend = pg(postgres_url)
    assert backend.migrate() == [3]
    assert backend.migrate() == []  # the second start: nothing to do
    placed = where_rows_are(postgres_url)
    assert journal_digest(postgres_url) == digest and digest[0]["n"] == OLD_ROWS
    assert list(placed.values()).count(DEFAULT_PARTITION) > 0  # the 500-day-old rows
    assert len(set(placed.values())) >= 31
    # The key holds: a row of the old table written again lands once.
    [row] = fetch_rows(
        postgres_url,
        "SELECT session_id::text AS s, seq, extract(epoch FROM received_at)::float8 AS at"
        " FROM ws_messages ORDER BY session_id, seq LIMIT 1",
    )
    again = MessageReceived(row["s"], row["seq"], row["at"], 2, 4, b"ping")
    backend.write([again])
    with pytest.raises(psycopg2.IntegrityError):
        backend.write_journal(rows_of([again]))
    backend.close()
    assert journal_digest(postgres_url) == digest


def test_a_migration_killed_at_its_last_step_leaves_the_old_table(postgres_url: str) -> None:
    old_layout(postgres_url)
    digest = journal_digest(postgres_url)
    # The migration's last statement records its version: hold that table, let the
    # migration copy every row, then kill its connection while it waits.
    holder = psycopg2.connect(postgres_url)
    holder.cursor().execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
    backend = pg(postgres_url)
    failed: list[BaseException] = []

    def migrate() -> None:
        try:
            backend.migrate()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failed.append(exc)

    thread = threading.Thread(target=migrate)
    thread.start()
    [waiting] = eventually_blocking(
        lambda: fetch_rows(
            postgres_url,
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO schema_version%'",
        ),
        "the migration waiting to record its version",
        timeout=60,
    )
    fetch_rows(postgres_url, f"SELECT pg_terminate_backend({waiting['pid']})")
    thread.join(30)
    holder.close()
    assert failed and isinstance(failed[0], psycopg2.OperationalError)
    [kind] = fetch_rows(
        postgres_url, "SELECT relkind FROM pg_class WHERE oid = 'ws_messages'::regclass"
    )
    assert kind["relkind"] == "r"  # as it was, with every row
    assert journal_digest(postgres_url) == digest
    versions = fetch_rows(postgres_url, "SELECT version FROM schema_version ORDER BY 1")
    assert [v["version"] for v in versions] == [1, 2]
    # The next start migrates it.
    backend.connect()
    assert backend.migrate() == [3]
    backend.close()
    assert journal_digest(postgres_url) == digest
    assert partitions(postgres_url)[DEFAULT_PARTITION] == "DEFAULT"


def test_a_page_reads_the_days_its_session_was_open_give_or_take_a_day(
    postgres_url: str,
) -> None:
    opened_at = NOW - 5 * DAY
    backend = pg(postgres_url)
    backend.migrate()
    for days in (6, 5, 4):
        backend.make_partitions(NOW - days * DAY)
    backend.write(
        [
            SessionOpened(
                sid(1), "host:1:0", opened_at, "127.0.0.1", "/ws", None, None, None, False
            ),
            MessageReceived(sid(1), 1, opened_at - 0.5 * DAY, 2, 4, b"a clock stepped back"),
            MessageReceived(sid(1), 2, opened_at + 60, 2, 4, b"ping"),
            SessionClosed(sid(1), opened_at + 120, 1000, "", 2, 0, 0, 0, "closed"),
        ]
    )
    session = backend.get_session(sid(1), 10)
    assert session is not None
    assert [entry["seq"] for entry in session["journal"]] == [1, 2]
    conn = psycopg2.connect(postgres_url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "EXPLAIN SELECT seq FROM ws_messages WHERE session_id = %s::uuid AND seq > 0"
            + DURING
            + " ORDER BY seq LIMIT 10",
            (
                sid(1),
                *journal_days(
                    *[
                        datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
                        for at in (opened_at, opened_at + 120)
                    ]
                ),
            ),
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
    conn.close()
    backend.close()
    # The days it was open, with a day either side (the default holds none of them).
    scanned = {name for name in partitions(postgres_url) if name in plan}
    assert scanned == {
        partition_name(
            (
                datetime.datetime.fromtimestamp(opened_at, datetime.timezone.utc)
                + datetime.timedelta(days=n)
            ).date()
        )
        for n in (-1, 0, 1)
    }


def test_a_journal_too_large_for_a_start_waits_for_the_migrate_command(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_layout(postgres_url, rows=1000)
    digest = journal_digest(postgres_url)
    monkeypatch.setattr(postgres, "MIGRATE_AT_START_BYTES", 8192)  # this one is "large"
    backend = pg(postgres_url)
    with pytest.raises(StoreError, match=r"rewrites ws_messages, .* run `tornado-echo migrate`"):
        backend.migrate()
    backend.close()
    [kind] = fetch_rows(
        postgres_url, "SELECT relkind FROM pg_class WHERE oid = 'ws_messages'::regclass"
    )
    assert kind["relkind"] == "r"
    conf = tmp_path / "echo.toml"
    conf.write_text(f'database_url = "{postgres_url}"\nstate_dir = "{tmp_path}"\n')

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tornado_echo", "migrate", "--config", str(conf)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied schema versions [3] in ")
    assert run().stdout.startswith("schema up to date in ")
    assert journal_digest(postgres_url) == digest
    assert DEFAULT_PARTITION in partitions(postgres_url)


def test_the_retention_thread_makes_partitions_ahead_even_keeping_everything(
    postgres_url: str,
) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    backend.close()
    last = partition_name(days_to_make(time.time())[-1])
    admin_sql(postgres_url, f"DROP TABLE {last}")  # as if made a week ago, one day short
    retention = Retention(
        lambda: make_backend(postgres_url), days=0, first_after=0, partitions=True
    )
    retention.start()
    try:
        eventually_blocking(lambda: retention.passes, "a retention pass", timeout=30)
    finally:
        retention.close()
    assert last in partitions(postgres_url)
    idle = Retention(lambda: make_backend(postgres_url), days=0)  # SQLite: nothing to do
    idle.start()
    assert not idle.running


def test_a_partition_behind_a_held_lock_is_left_for_later_not_failing_the_start(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = pg(postgres_url)
    backend.migrate()
    last = partition_name(days_to_make(time.time())[-1])
    admin_sql(postgres_url, f"DROP TABLE {last}")
    reader = psycopg2.connect(postgres_url)  # a long query on the default partition
    reader.cursor().execute(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS SHARE MODE")
    assert backend.migrate() == []  # the next start: not failed, the day not made
    assert backend.make_partitions(time.time()) == 0  # nor by a retention pass
    assert last not in partitions(postgres_url)
    assert "journal partitions not made, next pass tries again" in caplog.text
    reader.close()
    assert backend.make_partitions(time.time()) == 1
    backend.close()
    assert last in partitions(postgres_url)
