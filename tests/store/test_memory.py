"""The store's memory is bounded in bytes, whatever a client makes the journal hold."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest
from tornado.websocket import websocket_connect

from tests.helpers import PgOutage, fetch_rows, make_server, metric
from tests.store.test_store import make, sid
from tornado_echo.connections import Connections
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import MessageReceived
from tornado_echo.store.records import RECORD_OVERHEAD

MiB = 1024 * 1024


def message(seq: int, size: int) -> MessageReceived:
    return MessageReceived(sid(1), seq, time.time(), 2, size, b"z" * size)


def test_journal_payloads_are_cut_to_journal_max_payload(tmp_path: Path) -> None:
    store = make("sqlite:///unused", tmp_path, journal_max_payload=1000)
    for seq in range(1, 11):
        store.submit(message(seq, MiB))
    status = store.status()
    assert (status.queued, status.shed) == (10, 0)
    assert status.queued_bytes == 10 * (RECORD_OVERHEAD + 1000)


def test_past_twice_the_byte_limit_payloads_are_shed_and_counted(tmp_path: Path) -> None:
    # Never started: no spooler drains memory, as if the disk could not keep up.
    store = make("sqlite:///unused", tmp_path, queue_bytes_limit=MiB, journal_max_payload=MiB)
    for seq in range(1, 11):
        store.submit(message(seq, MiB // 2))
    status = store.status()
    assert status.queued == 10
    assert status.queued_bytes <= 2 * MiB
    assert status.shed == 7  # the first three fit under 2 MiB
    assert status.dropped == 0  # their metadata is kept
    metrics = Metrics()
    metrics.refresh(Connections(), store)
    assert metric(metrics.exposition()[0].decode(), "tornado_echo_store_payloads_shed_total") == 7


class LoopLag:
    """The worst lateness of a 10 ms timer on the running loop (a stall shows whole).

    The objects earlier tests left in this process are frozen out of the garbage collector
    meanwhile: a full collection over them is a stall of the test run, not of the store.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        gc.collect()
        gc.freeze()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - expected)

    def stop(self) -> None:
        self._task.cancel()
        gc.unfreeze()


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.gen_test(timeout=120)
async def test_inflating_client_keeps_store_memory_and_loop_lag_bounded(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    """Compressed frames of 512 KiB of zeros (about 1 KB on the wire) with journal = full on
    PostgreSQL, through an outage: memory in the store stays within its byte bound, the
    process does not grow with what was sent, and the loop never stalls."""
    server = make_server(
        tmp_path,
        pg_outage.url,
        journal="full",
        journal_max_payload=128 * 1024,
        queue_bytes_limit=MiB,
        shutdown_deadline=10.0,
    )
    await server.start()
    payload = bytes(512 * 1024)
    sent = 120
    client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws", compression_options={})
    baseline = rss()
    lag = LoopLag()
    worst_queued_bytes = worst_rss = 0
    try:
        for number in range(sent):
            if number == sent // 3:
                pg_outage.cut()
            if number == 2 * sent // 3:
                pg_outage.restore()
            await client.write_message(payload, binary=True)
            assert await client.read_message() == payload
            worst_queued_bytes = max(worst_queued_bytes, server.store.status().queued_bytes)
            worst_rss = max(worst_rss, rss())
        client.close(1000)
        deadline = time.monotonic() + 30
        while len(server.connections) or server.store.status().pending:
            assert time.monotonic() < deadline, server.store.status()
            await asyncio.sleep(0.02)
    finally:
        lag.stop()
        pg_outage.restore()
        assert await server.shutdown() == 0
    # 60 MiB were journalled before the cut: nothing like it may stay in memory.
    assert worst_queued_bytes <= 2 * MiB
    assert worst_rss - baseline < 48 * MiB, (baseline, worst_rss)
    assert lag.worst < 0.1, f"event loop stalled {lag.worst * 1000:.0f} ms"
    [stats] = fetch_rows(
        pg_outage.url,
        "SELECT count(*) AS n, min(size) AS size, max(octet_length(payload)) AS kept,"
        " bool_and(truncated) AS truncated FROM ws_messages",
    )
    assert stats == {"n": sent, "size": len(payload), "kept": 128 * 1024, "truncated": True}
    # Should the spool thread fall behind on a busy machine, payloads are shed, never memory
    # exceeded: each row kept its first 128 KiB or, counted as shed, nothing.
    [shed] = fetch_rows(
        pg_outage.url,
        "SELECT count(*) AS n FROM ws_messages WHERE octet_length(payload) <> 131072",
    )
    assert shed["n"] == server.store.status().shed
