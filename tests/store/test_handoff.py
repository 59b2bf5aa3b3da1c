"""The journal writer process, for real: rows handed over once per loop turn, written exactly
once through a writer killed with SIGKILL, a database outage and a close."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PgOutage, fetch_rows
from tests.store.test_backends import opened
from tests.store.test_store import sid, wait_for
from tornado_echo.config import Config
from tornado_echo.store import Store, make_store
from tornado_echo.store.copyrows import encode_row
from tornado_echo.store.handoff import JournalHandoff
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
    # Its bound (a quarter of queue_bytes_limit, at least 1 MiB), give or take the chunk of
    # the turn that crossed it.
    assert handoff(store).status().queued_bytes <= (1 << 20) + 64 * 1024
    pg_outage.restore()
    await wait_for(lambda: handoff(store).status().queued_rows == 0 and store.status().pending == 0)
    await store.close()
    rows = fetch_rows(pg_outage.url, "SELECT session_id, seq FROM ws_messages")
    keys = sorted((str(r["session_id"]), r["seq"]) for r in rows)
    assert keys == sorted((sid(n), s) for n in range(10) for s in range(1, seq + 1))
    assert store.status().dropped == 0


@pytest.mark.gen_test(timeout=30)
async def test_rows_already_written_are_merged_not_refused(
    database_url: str, tmp_path: Path
) -> None:
    from tornado_echo.store import make_backend

    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    rows = bytearray()
    for seq in range(1, 11):
        encode_row(rows, sid(1), seq, time.time(), 2, 4, b"ping", 100)
    writer = BatchWriter(backend, asyncio.Event())  # type: ignore[arg-type]
    assert writer.write_rows(bytes(rows[: len(rows) // 2]), 5) is Outcome.DONE
    assert writer.write_rows(bytes(rows), 10) is Outcome.DONE  # five again: a replay
    backend.close()
    assert_journalled_once(database_url, range(1, 2), 10)
    assert writer.poisoned == 0
