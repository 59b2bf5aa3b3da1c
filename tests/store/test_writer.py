"""The batching writer: start, batches, drain on close, failures at start."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import fetch_rows
from tests.store.test_backends import closed, opened
from tornado_echo.errors import StoreError
from tornado_echo.store import Store, make_backend


def sid(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


@pytest.mark.gen_test(timeout=30)
async def test_records_are_written_in_batches_and_drained_on_close(database_url: str) -> None:
    store = Store(make_backend(database_url), "host:1:0", batch_size=100, batch_delay=0.01)
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


@pytest.mark.gen_test(timeout=30)
async def test_records_arrive_within_the_batch_delay(database_url: str) -> None:
    store = Store(make_backend(database_url), "host:1:0", batch_size=1000, batch_delay=0.01)
    await store.start()
    store.submit(opened(sid(1)))
    for _ in range(500):
        if store.status().written:
            break
        await asyncio.sleep(0.01)
    assert store.status().written == 1
    await store.close()


@pytest.mark.gen_test
async def test_unreachable_database_fails_start_with_a_masked_reason() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    store = Store(make_backend("postgresql://echo:hunter2@127.0.0.1:1/echo"), "host:1:0")
    with pytest.raises(StoreError) as raised:
        await store.start()
    message = str(raised.value)
    assert message.startswith("cannot open store postgresql://echo:***@127.0.0.1:1/echo:")
    assert "hunter2" not in message
    await store.close()


@pytest.mark.gen_test
async def test_full_queue_counts_dropped_records(sqlite_url: str) -> None:
    store = Store(make_backend(sqlite_url), "host:1:0", queue_limit=3)
    for number in range(5):  # not started: nothing drains the queue
        store.submit(opened(sid(number)))
    status = store.status()
    assert (status.pending, status.dropped) == (3, 2)
