"""The batching writer: batches, poison records, outages, the spool, crash leftovers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest

from tests.helpers import PgOutage, fetch_rows
from tests.store.test_backends import closed, opened
from tornado_echo.errors import StoreError
from tornado_echo.store import (
    MessageReceived,
    Spool,
    Store,
    StoreStatus,
    make_backend,
    spool_path,
)
from tornado_echo.store import store as store_module
from tornado_echo.store.records import Record, decode_record
from tornado_echo.store.sqlite import SQLiteBackend


def sid(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


def make(url: str, tmp_path: Path, server_id: str = "host:1:0", **settings: float) -> Store:
    return Store(
        make_backend(url),
        server_id,
        spool_path(tmp_path, server_id),
        **settings,  # type: ignore[arg-type]
    )


def session(number: int, messages: int = 3) -> list[Record]:
    """Open, ``messages`` journal entries, close: the records one session produces."""
    records: list[Record] = [opened(sid(number))]
    for seq in range(1, messages + 1):
        records.append(MessageReceived(sid(number), seq, time.time(), 2, 4, b"\x00\x01\x02\x03"))
    records.append(closed(sid(number)))
    return records


async def wait_for(predicate: object, timeout: float = 20.0) -> StoreStatus | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return None
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def assert_sessions_arrived_once(url: str, count: int, messages: int = 3, extra: int = 0) -> None:
    sessions = fetch_rows(
        url, "SELECT id, end_state, messages_in FROM ws_sessions WHERE end_state <> 'open'"
    )
    assert len(sessions) == count
    assert len(fetch_rows(url, "SELECT id FROM ws_sessions")) == count + extra
    assert {(s["end_state"], s["messages_in"]) for s in sessions} == {("closed", 3)}
    rows = fetch_rows(url, "SELECT session_id, seq FROM ws_messages")
    assert len(rows) == count * messages
    assert len({(str(r["session_id"]), r["seq"]) for r in rows}) == count * messages


@pytest.mark.gen_test(timeout=30)
async def test_records_are_written_in_batches_and_drained_on_close(
    database_url: str, tmp_path: Path
) -> None:
    store = make(database_url, tmp_path, batch_size=100, batch_delay=0.01)
    await store.start()
    await store.start()  # idempotent
    for number in range(1050):
        store.submit(opened(sid(number)))
        store.submit(closed(sid(number)))
    await store.close()
    await store.close()  # idempotent
    status = store.status()
    assert (status.pending, status.written, status.dropped) == (0, 2100, 0)
    [count] = fetch_rows(
        database_url, "SELECT count(*) AS n FROM ws_sessions WHERE end_state = 'closed'"
    )
    assert count["n"] == 1050
    assert not store.spool.path.exists()


@pytest.mark.gen_test(timeout=30)
async def test_a_partial_batch_is_written_within_its_batch_delay(
    database_url: str, tmp_path: Path
) -> None:
    store = make(database_url, tmp_path, batch_size=1000, batch_delay=0.25)
    await store.start()
    submitted = time.monotonic()
    store.submit(opened(sid(1)))
    await wait_for(lambda: store.status().written == 1, timeout=5)
    # Not held until the batch fills (1000 records) or the idle ping (5 s): the batch delay,
    # plus scheduling slack for a busy machine.
    assert time.monotonic() - submitted < 0.25 + 1.0
    await store.close()


@pytest.mark.gen_test
async def test_unreachable_database_fails_start_with_a_masked_reason(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    store = make("postgresql://echo:hunter2@127.0.0.1:1/echo", tmp_path)
    with pytest.raises(StoreError) as raised:
        await store.start()
    message = str(raised.value)
    assert message.startswith("cannot open store postgresql://echo:***@127.0.0.1:1/echo:")
    assert "hunter2" not in message
    await store.close()


@pytest.mark.gen_test
async def test_unusable_state_dir_fails_start(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = make(sqlite_url, tmp_path / "file")
    with pytest.raises(StoreError, match="cannot use spool file"):
        await store.start()
    await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_poison_record_is_isolated_logged_and_skipped(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(database_url, tmp_path, batch_size=64, batch_delay=0.01)
    await store.start()
    records = [record for number in range(40) for record in session(number)]
    # A counter beyond 64 bits: both databases refuse this close, whatever the batch around it.
    poison = dataclasses.replace(closed(sid(999)), messages_in=2**70)
    records[77:77] = [opened(sid(999)), poison]
    with caplog.at_level(logging.ERROR, logger="tornado_echo.store.store"):
        for record in records:
            store.submit(record)
        await store.close()
    status = store.status()
    assert (status.poisoned, status.pending, status.dropped) == (1, 0, 0)
    [stays_open] = fetch_rows(
        database_url, f"SELECT end_state FROM ws_sessions WHERE id = '{sid(999)}'"
    )
    assert stays_open["end_state"] == "open"
    assert_sessions_arrived_once(database_url, 40, extra=1)
    [logged] = [r for r in caplog.records if "refused a record" in r.getMessage()]
    assert logged.exc_info is not None and sid(999) in logged.getMessage()


@pytest.mark.gen_test(timeout=30)
async def test_many_poison_records_cost_one_log_line_per_interval(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(database_url, tmp_path, batch_size=64, batch_delay=0.01)
    await store.start()
    with caplog.at_level(logging.ERROR, logger="tornado_echo.store.store"):
        for number in range(20):
            store.submit(opened(sid(number)))
            store.submit(dataclasses.replace(closed(sid(number)), messages_in=2**70))
        await store.close()
    assert store.status().poisoned == 20
    assert len([r for r in caplog.records if "refused a record" in r.getMessage()]) == 1


@pytest.mark.gen_test(timeout=60)
async def test_outage_spills_to_the_spool_and_replays_exactly_once(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    store = make(pg_outage.url, tmp_path, batch_size=50, batch_delay=0.01, queue_limit=100)
    await store.start()
    for record in session(0):
        store.submit(record)
    await wait_for(lambda: store.status().pending == 0)
    pg_outage.cut()
    for number in range(1, 300):
        for record in session(number):
            store.submit(record)
        if number == 150:
            pg_outage.terminate()  # a second blow while records wait
    await wait_for(lambda: not store.status().available and store.status().queued <= 100)
    status = store.status()
    assert status.spooled > 0 and status.spool_bytes > 0 and status.dropped == 0
    assert status.oldest_pending_age >= 0.0
    assert store.spool.path.stat().st_size > 0
    pg_outage.restore()
    await wait_for(lambda: store.status().pending == 0 and store.status().available)
    await store.close()
    assert_sessions_arrived_once(pg_outage.url, 300)
    assert not store.spool.path.exists()


@pytest.mark.gen_test(timeout=60)
async def test_close_during_an_outage_keeps_records_in_the_spool_for_the_next_start(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    store = make(pg_outage.url, tmp_path, batch_size=50, batch_delay=0.01)
    await store.start()
    pg_outage.cut()
    for number in range(100):
        for record in session(number):
            store.submit(record)
    await store.close(deadline=0.5)
    status = store.status()
    assert (status.dropped, status.queued) == (0, 0)
    assert status.spooled == 500
    assert len(store.spool.path.read_bytes().splitlines()) == 500
    pg_outage.restore()
    again = make(pg_outage.url, tmp_path)
    await again.start()
    await again.close()
    assert_sessions_arrived_once(pg_outage.url, 100)
    assert not again.spool.path.exists()


@pytest.mark.gen_test(timeout=30)
async def test_crash_leftovers_spool_replayed_before_open_sessions_are_marked_crashed(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A previous run wrote the opens of A and B, then died with A's close and all of C
    # still in its spool, the last line torn by the crash.
    first = make(database_url, tmp_path)
    await first.start()
    first.submit(opened(sid(1)))
    first.submit(opened(sid(2)))
    await first.close()
    leftover = Spool(spool_path(tmp_path, "host:1:0"))
    leftover.open()
    leftover.append([closed(sid(1)), *session(3)])
    leftover.close()
    with leftover.path.open("ab") as handle:
        handle.write(b'["c","00000000-0000-4000-8000-0000000')
    with caplog.at_level(logging.WARNING):
        second = make(database_url, tmp_path)
        await second.start()
        await second.close()
    rows = fetch_rows(database_url, "SELECT id, end_state FROM ws_sessions")
    assert {str(r["id"]): r["end_state"] for r in rows} == {
        sid(1): "closed",  # the replayed close won over mark_crashed
        sid(2): "crashed",
        sid(3): "closed",
    }
    assert len(fetch_rows(database_url, "SELECT seq FROM ws_messages")) == 3
    assert not second.spool.path.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("torn last line" in m for m in messages)
    assert any("replayed 6 records" in m for m in messages)
    assert any("marked 1 sessions" in m for m in messages)


@pytest.mark.gen_test(timeout=60)
async def test_full_disk_loses_only_what_it_counts(
    pg_outage: PgOutage, tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(pg_outage.url, tiny_disk, batch_size=20, batch_delay=0.01, queue_limit=50)
    await store.start()
    pg_outage.cut()
    submitted = 0
    with caplog.at_level(logging.CRITICAL, logger="tornado_echo.store.store"):
        for number in range(400):
            store.submit(opened(sid(number)))
            for seq in range(1, 4):
                store.submit(MessageReceived(sid(number), seq, time.time(), 2, 300, b"x" * 300))
            submitted += 4
            await asyncio.sleep(0)
        await wait_for(lambda: store.status().dropped > 0)
        for number in range(1000, 1005):  # five more moves, each failing
            lost = store.status().dropped
            for seq in range(1, 21):
                store.submit(MessageReceived(sid(number), seq, time.time(), 2, 300, b"x" * 300))
            submitted += 20
            await wait_for(lambda: store.status().dropped >= lost + 20)  # noqa: B023
    # Every move to the spool failed, but the log says so once per interval.
    assert len([r for r in caplog.records if "LOST" in r.getMessage()]) == 1
    # What made it into the spool is intact: every whole line decodes. (Read as a file: the
    # store holds the spool, and a second Spool on it would be refused.)
    data = store.spool.path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    assert lines and all(decode_record(line) for line in lines)
    pg_outage.restore()
    await wait_for(lambda: store.status().pending == 0 and store.status().available)
    await store.close()
    arrived = fetch_rows(pg_outage.url, "SELECT count(*) AS n FROM ws_sessions")[0]["n"]
    arrived += fetch_rows(pg_outage.url, "SELECT count(*) AS n FROM ws_messages")[0]["n"]
    assert arrived + store.status().dropped == submitted


@pytest.mark.gen_test(timeout=30)
async def test_records_of_a_store_that_never_started_are_spooled_not_dropped(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    never = make(database_url, tmp_path)
    for record in session(7):
        never.submit(record)
    await never.close()
    assert (never.status().spooled, never.status().dropped) == (5, 0)
    never.submit(opened(sid(8)))  # after close nothing can be kept: counted and logged
    assert never.status().dropped == 1
    assert any("store already closed" in r.getMessage() for r in caplog.records)
    later = make(database_url, tmp_path)
    await later.start()
    await later.close()
    assert_sessions_arrived_once(database_url, 1)


async def spool_outage(pg_outage: PgOutage, tmp_path: Path, sessions: int) -> Store:
    """A started store whose database is down, holding ``sessions`` sessions in its spool."""
    store = make(pg_outage.url, tmp_path, batch_size=50, batch_delay=0.01)
    await store.start()
    pg_outage.cut()
    for number in range(sessions):
        for record in session(number):
            store.submit(record)
    await wait_for(lambda: store.status().spooled == 5 * sessions)
    return store


@pytest.mark.gen_test(timeout=60)
async def test_spool_deleted_while_running_is_counted_once_and_the_writer_goes_on(
    pg_outage: PgOutage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await spool_outage(pg_outage, tmp_path, 20)
    with caplog.at_level(logging.CRITICAL):
        store.spool.path.unlink()
        for number in range(100, 110):
            for record in session(number):
                store.submit(record)
        await wait_for(lambda: store.status().dropped >= 50)
        pg_outage.restore()
        await wait_for(lambda: store.status().pending == 0 and store.status().available)
    status = store.status()
    assert status.running and status.loss == "spool file deleted or damaged while running"
    await store.close()
    # What came after the deletion arrived; what went with the file is counted, not written,
    # except a batch the writer had read from it (sessions 0-9), if it was retrying one then
    # (test_spool_lost_under_the_batch_in_flight... makes sure of that case).
    arrived = {str(r["id"]) for r in fetch_rows(pg_outage.url, "SELECT id FROM ws_sessions")}
    in_flight = {sid(n) for n in range(10)} if sid(0) in arrived else set()
    assert store.status().dropped == 100 - 5 * len(in_flight)
    assert arrived == {sid(n) for n in range(100, 110)} | in_flight
    assert_sessions_arrived_once(pg_outage.url, len(arrived))
    [logged] = [r for r in caplog.records if "deleted, replaced or cut short" in r.getMessage()]
    assert f"{100 - 5 * len(in_flight)} pending records LOST" in logged.getMessage()


@pytest.mark.gen_test(timeout=60)
async def test_spool_cut_short_or_overwritten_while_running_is_counted(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    store = await spool_outage(pg_outage, tmp_path, 20)
    lines = store.spool.path.read_bytes().splitlines(keepends=True)
    # Another program scribbles over lines 10-19, then the file loses its last 30 lines.
    with store.spool.path.open("r+b") as handle:
        handle.seek(sum(map(len, lines[:10])))
        handle.write(b"".join(b"#" * (len(line) - 1) + b"\n" for line in lines[10:20]))
        handle.truncate(sum(map(len, lines[:70])))
    store.submit(opened(sid(500)))  # the next move to the spool notices
    await wait_for(lambda: store.status().dropped == 30)
    pg_outage.restore()
    await wait_for(lambda: store.status().pending == 0 and store.status().available)
    await store.close()
    assert store.status().dropped == 40  # 30 cut off, 10 unreadable
    # Lines 0-69 were sessions 0-13 (five records each); 10-19 were sessions 2 and 3.
    kept = {sid(number) for number in (0, 1, *range(4, 14), 500)}
    rows = fetch_rows(pg_outage.url, "SELECT id FROM ws_sessions")
    assert {str(row["id"]) for row in rows} == kept
    messages = fetch_rows(pg_outage.url, "SELECT count(*) AS n FROM ws_messages")
    assert messages == [{"n": 3 * 12}]


@pytest.mark.gen_test(timeout=60)
async def test_spool_path_unusable_for_a_while_costs_only_what_it_counts(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    store = await spool_batch_in_flight(pg_outage, tmp_path)
    store.spool.path.unlink()
    store.spool.path.mkdir()  # nothing can be spooled at that path now
    for record in session(100):
        store.submit(record)
    # Sessions 10-19 went with the file, session 100 found nowhere to go; the batch in
    # flight (sessions 0-9) is held until the path is usable again.
    await wait_for(lambda: store.status().dropped == 50 + 5)
    assert store.status().running
    store.spool.path.rmdir()  # usable again: the store reopens it
    for record in session(101):
        store.submit(record)
    await wait_for(lambda: store.status().spooled == 50 + 5)
    pg_outage.restore()
    await wait_for(lambda: store.status().pending == 0 and store.status().available)
    await store.close()
    assert store.status().dropped == 55
    rows = fetch_rows(pg_outage.url, "SELECT id FROM ws_sessions")
    assert {str(r["id"]) for r in rows} == {sid(n) for n in (*range(10), 101)}
    assert_sessions_arrived_once(pg_outage.url, 11)


async def spool_batch_in_flight(pg_outage: PgOutage, tmp_path: Path) -> Store:
    """:func:`spool_outage` with 20 sessions, once the writer retries a batch read from the
    spool: sessions 0-9, batch_size being 50 records (five per session)."""
    store = await spool_outage(pg_outage, tmp_path, 20)
    # A memory batch fails at most once more after its records moved to the spool (the writer
    # then drops it), so the second failure from now is a batch read from the spool.
    errors = store.status().errors
    await wait_for(lambda: store.status().errors >= errors + 2)
    return store


def cut_spool(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    else:  # cut in place inside the batch in flight: its first 20 lines are left
        lines = path.read_bytes().splitlines(keepends=True)
        with path.open("r+b") as handle:
            handle.truncate(sum(map(len, lines[:20])))


@pytest.mark.parametrize("how", ["deleted", "truncated"])
@pytest.mark.gen_test(timeout=60)
async def test_spool_lost_under_the_batch_in_flight_loses_exactly_what_it_counts(
    pg_outage: PgOutage, tmp_path: Path, how: str
) -> None:
    store = await spool_batch_in_flight(pg_outage, tmp_path)
    cut_spool(store.spool.path, how)
    for number in range(100, 110):
        for record in session(number):
            store.submit(record)
    await wait_for(lambda: store.status().dropped > 0)
    pg_outage.restore()
    await wait_for(lambda: store.status().pending == 0 and store.status().available)
    await store.close()
    # The batch in flight (sessions 0-9) was held in memory, so it is written, not counted;
    # sessions 10-19 went with the file; everything submitted afterwards arrives.
    assert store.status().dropped == 50
    rows = fetch_rows(pg_outage.url, "SELECT id, end_state FROM ws_sessions")
    assert {str(r["id"]) for r in rows} == {sid(n) for n in (*range(10), *range(100, 110))}
    assert {r["end_state"] for r in rows} == {"closed"}
    messages = fetch_rows(pg_outage.url, "SELECT session_id, seq FROM ws_messages")
    assert len(messages) == 3 * 20
    assert not store.spool.path.exists()


class CountingSQLite(SQLiteBackend):
    """A real SQLite backend that notes the size of each batch it writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def write(self, batch: list[Record]) -> None:
        super().write(batch)
        self.batches.append(len(batch))


def counting_store(tmp_path: Path) -> tuple[Store, CountingSQLite]:
    backend = CountingSQLite(tmp_path / "db.sqlite")
    # A batch window far longer than the test: only a full batch can wake the writer.
    store = Store(backend, "host:1:0", spool_path(tmp_path, "host:1:0"), 10, batch_delay=600)
    return store, backend


@pytest.mark.gen_test(timeout=30)
async def test_a_full_batch_wakes_the_writer_without_waiting_for_batch_delay(
    tmp_path: Path,
) -> None:
    store, backend = counting_store(tmp_path)
    await store.start()
    for number in range(10):
        store.submit(opened(sid(number)))
    await wait_for(lambda: store.status().written == 10, timeout=15)
    assert backend.batches == [10]
    await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_batches_hold_batch_size_records(tmp_path: Path) -> None:
    store, backend = counting_store(tmp_path)
    for number in range(25):  # queued before the writer runs: all there at its first batch
        store.submit(opened(sid(number)))
    await store.start()
    # The last five go without waiting for batch_delay: the full event set before start
    # still stands when the writer comes to wait.
    await wait_for(lambda: store.status().written == 25, timeout=15)
    assert backend.batches == [10, 10, 5]
    await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_sessions_submitted_within_one_batch_window_are_one_commit(tmp_path: Path) -> None:
    backend = CountingSQLite(tmp_path / "db.sqlite")
    store = Store(backend, "host:1:0", spool_path(tmp_path, "host:1:0"), 10_000, batch_delay=2)
    await store.start()
    for number in range(400):  # handshake churn: each session opened and closed at once
        store.submit(opened(sid(number)))
        store.submit(closed(sid(number)))
    await wait_for(lambda: store.status().written == 800, timeout=15)
    assert backend.batches == [800]
    await store.close()


@pytest.mark.gen_test(timeout=30)
async def test_records_are_durable_once_close_returns_however_long_the_batch_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing but close() may wake the writer: not a batch window, not an idle ping.
    monkeypatch.setattr(store_module, "IDLE_PING_INTERVAL", 600.0)
    store, backend = counting_store(tmp_path)  # batch_delay 600 s
    await store.start()
    started = time.monotonic()
    await store.close()  # a writer idle, waiting for a first record
    assert time.monotonic() - started < 10
    store, backend = counting_store(tmp_path)
    await store.start()
    for number in range(3):  # a partial batch: the writer waits in its window
        store.submit(opened(sid(number)))
    started = time.monotonic()
    await store.close()
    assert time.monotonic() - started < 10  # woken, not left to the join's deadline
    assert backend.batches == [3]
    rows = fetch_rows(f"sqlite:///{tmp_path / 'db.sqlite'}", "SELECT id FROM ws_sessions")
    assert sorted(row["id"] for row in rows) == [sid(number) for number in range(3)]
    assert not store.spool.path.exists()
