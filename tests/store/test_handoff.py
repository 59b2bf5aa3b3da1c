"""The journal writer process, for real: rows handed over once per loop turn, written exactly
once through a writer killed with SIGKILL, a database outage and a close."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from tests.helpers import PgOutage, fetch_rows, make_server, metric
from tests.store.test_backends import opened
from tests.store.test_store import sid, wait_for
from tornado_echo.config import Config
from tornado_echo.connections import Connections
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import MessageReceived, Spool, Store, make_backend, make_store, spool_path
from tornado_echo.store.copyrows import FRAME, decode_rows, encode_row
from tornado_echo.store.handoff import HOLD_LIMIT, JournalHandoff
from tornado_echo.store.journal_process import JournalWriter
from tornado_echo.store.records import decode_record
from tornado_echo.store.spool import writer_spool_path, writer_spool_paths
from tornado_echo.store.writer import BatchWriter, Outcome


def process_store(url: str, tmp_path: Path, **settings: Any) -> Store:
    config = Config(
        database_url=url,
        state_dir=str(tmp_path),
        journal="full",
        journal_writer="process",
        batch_delay=0.01,
        **settings,
    )
    store = make_store(config, "host:1:0")
    assert store.handoff is not None
    return store


def handoff(store: Store) -> JournalHandoff:
    assert store.handoff is not None
    return store.handoff


async def journal(store: Store, sessions: range, messages: int) -> None:
    """``messages`` per session, one loop turn per round, as connections would."""
    for seq in range(1, messages + 1):
        for number in sessions:
            store.journal(sid(number), seq, time.time(), 2, 4, b"ping")
        await asyncio.sleep(0)


def assert_journalled_once(url: str, sessions: range, messages: int) -> None:
    rows = fetch_rows(url, "SELECT session_id, seq, payload FROM ws_messages")
    keys = sorted((str(r["session_id"]), r["seq"]) for r in rows)
    assert keys == sorted((sid(n), seq) for n in sessions for seq in range(1, messages + 1))
    assert {bytes(r["payload"]) for r in rows} == {b"ping"}


@pytest.mark.gen_test(timeout=60)
async def test_rows_go_through_the_writer_process_once(database_url: str, tmp_path: Path) -> None:
    store = process_store(database_url, tmp_path)
    await store.start()
    writer = handoff(store).process
    assert writer is not None and writer.poll() is None
    store.submit(opened(sid(1)))  # sessions still go the store's way
    await journal(store, range(50), 40)
    await wait_for(lambda: handoff(store).status().written == 2000)
    status = handoff(store).status()
    assert (status.queued_rows, status.spilled, status.restarts) == (0, 0, 0)
    await store.close()
    assert_journalled_once(database_url, range(50), 40)
    assert writer.wait(10) == 0  # it ends with its socket
    assert store.status().written == 1 and not store.spool.path.exists()


@pytest.mark.gen_test(timeout=90)
async def test_a_writer_killed_again_and_again_loses_and_repeats_nothing(
    database_url: str, tmp_path: Path
) -> None:
    store = process_store(database_url, tmp_path)
    await store.start()
    kills = 0
    for round_ in range(5):
        await journal(store, range(round_ * 20, round_ * 20 + 20), 50)
        process = handoff(store).process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)  # in the middle of whatever it was doing
        kills += 1
        await wait_for(lambda p=process: handoff(store).process is not p)  # type: ignore[misc]
    await journal(store, range(100, 120), 50)
    await wait_for(lambda: handoff(store).status().queued_rows == 0)
    assert handoff(store).status().restarts == kills
    await store.close()
    assert_journalled_once(database_url, range(120), 50)


@pytest.mark.gen_test(timeout=90)
async def test_a_database_outage_spills_to_the_spool_and_nothing_is_lost(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    # A small byte bound, so that rows spill to the store's queue (and spool) soon.
    store = process_store(pg_outage.url, tmp_path, queue_bytes_limit=1 << 20)
    await store.start()
    await journal(store, range(10), 10)
    await wait_for(lambda: handoff(store).status().written == 100)
    pg_outage.cut()
    seq = 10
    while not handoff(store).status().spilled:
        seq += 1
        for number in range(10):
            store.journal(sid(number), seq, time.time(), 2, 2000, b"x" * 2000)
        await asyncio.sleep(0.001)
    await wait_for(lambda: store.status().spooled > 0)
    # The writer's own failures, as it reported them, are the store's (/readyz, metrics).
    await wait_for(lambda: handoff(store).status().errors > 0)
    reported = handoff(store).status()
    assert not reported.available and reported.error
    status = store.status()
    assert not status.available and status.errors >= reported.errors
    # Its bound (a quarter of queue_bytes_limit, at least 1 MiB), give or take the chunk of
    # the turn that crossed it.
    assert handoff(store).status().queued_bytes <= (1 << 20) + 64 * 1024
    pg_outage.restore()
    await wait_for(lambda: handoff(store).status().queued_rows == 0 and store.status().pending == 0)
    assert handoff(store).status().available and store.status().available
    await store.close()
    rows = fetch_rows(pg_outage.url, "SELECT session_id, seq FROM ws_messages")
    keys = sorted((str(r["session_id"]), r["seq"]) for r in rows)
    assert keys == sorted((sid(n), s) for n in range(10) for s in range(1, seq + 1))
    assert store.status().dropped == 0


@pytest.mark.gen_test(timeout=30)
async def test_rows_already_written_are_merged_not_refused(
    database_url: str, tmp_path: Path
) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    rows = bytearray()
    for seq in range(1, 11):
        encode_row(rows, sid(1), seq, time.time(), 2, 4, b"ping", 100)
    writer = BatchWriter(backend, threading.Event())
    assert writer.write_rows(bytes(rows[: len(rows) // 2]), 5) is Outcome.DONE
    assert writer.write_rows(bytes(rows), 10) is Outcome.DONE  # five again: a replay
    backend.close()
    assert_journalled_once(database_url, range(1, 2), 10)
    assert writer.poisoned == 0


@pytest.mark.gen_test(timeout=60)
async def test_metrics_show_the_writer_process(sqlite_url: str, tmp_path: Path) -> None:
    store = process_store(sqlite_url, tmp_path)
    await store.start()
    await journal(store, range(10), 30)
    await wait_for(lambda: handoff(store).status().written == 300)
    metrics = Metrics()
    metrics.refresh(Connections(), store)
    text = metrics.exposition()[0].decode()
    assert metric(text, "tornado_echo_journal_rows_written_total") == 300
    assert metric(text, "tornado_echo_journal_queue_rows") == 0
    assert metric(text, "tornado_echo_journal_queue_bytes") == 0
    assert metric(text, "tornado_echo_journal_lag_seconds") == 0
    assert metric(text, "tornado_echo_journal_writer_restarts_total") == 0
    assert metric(text, "tornado_echo_store_spool_bytes") == 0
    await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_server_journals_through_its_writer_process(
    postgres_url: str, tmp_path: Path
) -> None:
    server = make_server(tmp_path, postgres_url, journal="meta", journal_writer="process")
    await server.start()
    try:
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        for number in range(200):
            if number == 100:
                process = handoff(server.store).process
                assert process is not None
                os.kill(process.pid, signal.SIGKILL)
            await client.write_message(f"m{number}")
            assert await client.read_message() == f"m{number}"
        client.close(1000)
    finally:
        assert await server.shutdown() == 0
    rows = fetch_rows(postgres_url, "SELECT seq, size, payload FROM ws_messages ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 201))
    assert {r["payload"] for r in rows} == {None}  # meta: sizes and times only
    [session] = fetch_rows(postgres_url, "SELECT messages_in FROM ws_sessions")
    assert session == {"messages_in": 200}


@pytest.mark.gen_test(timeout=90)
async def test_close_sends_everything_then_hangs_up(postgres_url: str, tmp_path: Path) -> None:
    # A 4 MiB bound, so at most 2 MiB in flight: a third of the 3 MB below waits for acks.
    store = process_store(postgres_url, tmp_path, queue_bytes_limit=16 << 20)
    await store.start()
    for turn in range(1, 31):
        for number in range(50):
            store.journal(sid(number), turn, time.time(), 2, 2000, b"x" * 2000)
        await asyncio.sleep(0)
    writer = handoff(store).process
    assert writer is not None
    started = time.monotonic()
    await store.close(deadline=30)
    # Not held to the deadline: the writer confirmed everything, then saw EOF and ended.
    assert time.monotonic() - started < 15
    assert writer.wait(15) == 0
    assert (handoff(store).status().written, handoff(store).status().spilled) == (1500, 0)
    rows = fetch_rows(
        postgres_url, "SELECT count(DISTINCT (session_id, seq)) AS n FROM ws_messages"
    )
    assert rows == [{"n": 1500}]


@pytest.mark.gen_test(timeout=60)
async def test_a_busy_loop_turn_is_cut_into_batch_sized_chunks(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = process_store(sqlite_url, tmp_path, queue_bytes_limit=64 << 20)
    await store.start()
    batch_bytes = handoff(store).batch_bytes
    for seq in range(1, 1001):  # about 10 batches in one turn of the loop
        store.journal(sid(1), seq, time.time(), 2, 10_000, b"y" * (batch_bytes // 100))
    chunks = list(handoff(store)._chunks)
    assert len(chunks) >= 9
    assert max(len(chunk.frame) for chunk in chunks) < 2 * batch_bytes
    await wait_for(lambda: handoff(store).status().written == 1000)
    await store.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
@pytest.mark.gen_test(timeout=60)
async def test_the_writer_leaves_the_cpu_its_server_is_pinned_to(
    sqlite_url: str, tmp_path: Path
) -> None:
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})  # as taskset -c would pin the server
    try:
        store = process_store(sqlite_url, tmp_path)
        await store.start()
    finally:
        os.sched_setaffinity(0, everything)
    process = handoff(store).process
    assert process is not None
    await wait_for(lambda: min(everything) not in os.sched_getaffinity(process.pid))
    await store.close()


def test_a_writer_left_alone_with_the_database_away_spools_to_its_own_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("not a directory")
    unreachable = make_backend(f"sqlite:///{tmp_path / 'file' / 'db.sqlite'}")
    server_spool = spool_path(tmp_path, "host:1:0")
    ours, theirs = socket.socketpair()
    writer = JournalWriter(theirs, unreachable, 1 << 20, 0.01, 8 << 20, 0.3, server_spool)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    rows = bytearray()
    for seq in range(1, 6):
        encode_row(rows, sid(1), seq, time.time(), 2, 4, b"ping", 100)
    ours.sendall(FRAME.pack(len(rows), 1, 5) + rows)
    ours.close()  # the server is gone (kill -9)
    thread.join(30)
    assert not thread.is_alive()
    theirs.close()
    [spooled] = writer_spool_paths(server_spool)
    assert spooled == writer_spool_path(server_spool, os.getpid())
    records = [decode_record(line) for line in spooled.read_bytes().splitlines()]
    assert [(r.session_id, r.seq) for r in records] == [(sid(1), seq) for seq in range(1, 6)]


@pytest.mark.gen_test(timeout=60)
async def test_the_next_start_replays_what_writers_spooled(
    database_url: str, tmp_path: Path
) -> None:
    server_spool = spool_path(tmp_path, "host:1:0")
    for pid, number in ((101, 1), (102, 2)):
        leftover = Spool(writer_spool_path(server_spool, pid))
        leftover.open()
        leftover.append(
            [MessageReceived(sid(number), s, time.time(), 2, 4, b"ping") for s in (1, 2)]
        )
        leftover.close()
    busy = Spool(writer_spool_path(server_spool, 103))  # its writer still at work
    busy.open()
    busy.append([MessageReceived(sid(3), 1, time.time(), 2, 4, b"ping")])
    store = process_store(database_url, tmp_path)
    await store.start()
    await store.close()
    rows = fetch_rows(database_url, "SELECT session_id, seq FROM ws_messages")
    assert sorted((str(r["session_id"]), r["seq"]) for r in rows) == [
        (sid(1), 1),
        (sid(1), 2),
        (sid(2), 1),
        (sid(2), 2),
    ]
    assert writer_spool_paths(server_spool) == [busy.path]  # left for the next start
    busy.close()


def test_a_writer_retrying_an_outage_notices_its_server_die(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    unreachable = make_backend(f"sqlite:///{tmp_path / 'file' / 'db.sqlite'}")
    server_spool = spool_path(tmp_path, "host:1:0")
    ours, theirs = socket.socketpair()
    writer = JournalWriter(theirs, unreachable, 1 << 20, 0.01, 8 << 20, 0.3, server_spool)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    rows = bytearray()
    encode_row(rows, sid(1), 1, time.time(), 2, 4, b"ping", 100)
    ours.sendall(FRAME.pack(len(rows), 1, 1) + rows)
    # The socket stays open: while it retries, the writer does not read it. Its server dies.
    writer._parent = -1
    thread.join(10)
    assert not thread.is_alive()
    ours.close()
    theirs.close()
    [spooled] = writer_spool_paths(server_spool)
    assert [decode_record(line).seq for line in spooled.read_bytes().splitlines()] == [1]


@pytest.mark.gen_test(timeout=60)
async def test_held_echoes_go_after_their_rows_and_not_forever(
    postgres_url: str, tmp_path: Path
) -> None:
    # A 1 MiB bound: 512 KiB in flight, then chunks wait here, unsent.
    store = process_store(postgres_url, tmp_path, queue_bytes_limit=4 << 20)
    await store.start()
    gate = handoff(store)
    released: list[int] = []
    store.journal(sid(1), 1, time.time(), 2, 4, b"ping")
    assert gate.hold(lambda: released.append(1))
    assert released == []  # the row is not in the socket before the turn ends
    await wait_for(lambda: released == [1])
    assert not gate.hold(lambda: released.append(0))  # nothing new to wait for
    writer = gate.process
    assert writer is not None
    os.kill(writer.pid, signal.SIGSTOP)  # it reads nothing: the socket fills
    try:
        seq = 1
        while not gate._unsent():
            seq += 1
            store.journal(sid(1), seq, time.time(), 2, 2000, b"x" * 2000)
            await asyncio.sleep(0)
        assert gate.hold(lambda: released.append(2))
        held_at = time.monotonic()
        await asyncio.sleep(0)
        assert released == [1]  # the writer is behind: the write waits (backpressure)
        await wait_for(lambda: released == [1, 2])
        # Not forever: after HOLD_LIMIT its rows went to the store's queue instead.
        assert time.monotonic() - held_at >= HOLD_LIMIT * 0.9
        assert gate.status().spilled > 0
    finally:
        os.kill(writer.pid, signal.SIGCONT)
    await wait_for(lambda: store.status().pending == 0)
    await store.close()
    rows = fetch_rows(
        postgres_url, "SELECT count(*) AS n, count(DISTINCT seq) AS d FROM ws_messages"
    )
    assert rows == [{"n": seq, "d": seq}]


@pytest.mark.gen_test(timeout=60)
async def test_each_sessions_journal_writes_its_own_rows(postgres_url: str, tmp_path: Path) -> None:
    # What a connection binds at open: rows carry its session (the start of its rows is made
    # per session, never shared), the time of the call, and once the handoff has closed they
    # go to the store as records all the same.
    store = process_store(postgres_url, tmp_path)
    await store.start()
    journals = {number: store.journal_for(sid(number)) for number in range(3)}
    before = time.time()
    for seq in (1, 2):
        for journal_of in journals.values():
            journal_of(seq, 2, 4, b"ping", False)
        await asyncio.sleep(0)
    await wait_for(lambda: handoff(store).status().written == 6)
    after = time.time()
    await handoff(store).close(5)
    journals[1](3, 1, 7, None, True)
    await store.close()
    rows = fetch_rows(
        postgres_url,
        "SELECT session_id, seq, opcode, size, payload, truncated, received_at FROM ws_messages",
    )
    got = sorted(
        (
            str(r["session_id"]),
            r["seq"],
            r["opcode"],
            r["size"],
            None if r["payload"] is None else bytes(r["payload"]),
            r["truncated"],
        )
        for r in rows
    )
    assert got == sorted(
        [(sid(n), seq, 2, 4, b"ping", False) for n in range(3) for seq in (1, 2)]
        + [(sid(1), 3, 1, 7, None, True)]
    )
    timed = [r["received_at"].timestamp() for r in rows if r["seq"] < 3]
    assert all(before - 1e-6 <= at <= after for at in timed)


def test_held_writes_go_in_order_once_their_turns_rows_are_in_the_socket() -> None:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    gate = JournalHandoff("postgresql://unused", overflow=lambda records: None)
    gate._loop, gate._sock = loop, ours  # started, minus the writer process
    released: list[str] = []

    def failing() -> None:
        raise RuntimeError("one connection's failure")

    try:
        journal_of = gate.session(sid(1))
        journal_of.add(1, 2, 4, None)
        for release in (lambda: released.append("a"), failing, lambda: released.append("b")):
            assert gate.hold(release)
        assert released == []  # not before the turn's flush
        gate._flush()
        assert released == ["a", "b"]  # in order, the failing one not in the way
        assert not gate.hold(lambda: released.append("never"))  # nothing new to wait for
        journal_of.add(2, 2, 4, None)
        assert gate.hold(lambda: released.append("c"))
        gate._flush()
        assert released == ["a", "b", "c"]
        received = theirs.recv(1 << 16)
        seqs = []
        while received:
            length, _, _ = FRAME.unpack_from(received)
            seqs += [(r.session_id, r.seq) for r in decode_rows(received[FRAME.size :][:length])]
            received = received[FRAME.size + length :]
        assert seqs == [(sid(1), 1), (sid(1), 2)]
    finally:
        ours.close()
        theirs.close()
        loop.close()
