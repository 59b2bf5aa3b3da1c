"""Retention on both backends: what goes, what stays, in small batches, beside the writer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import fetch_rows
from tornado_echo.config import Config
from tornado_echo.store import (
    MessageReceived,
    SessionClosed,
    SessionOpened,
    make_backend,
    make_store,
)
from tornado_echo.store.base import Backend
from tornado_echo.store.records import Record
from tornado_echo.store.retention import DAY, MESSAGES_PER_BATCH, Retention, prune

NOW = time.time()


def session(opened_at: float, messages: int, ended: bool = True) -> list[Record]:
    sid = str(uuid.uuid4())
    records: list[Record] = [
        SessionOpened(sid, "host:1:0", opened_at, "127.0.0.1", "/ws", None, None, None, False)
    ]
    records += [
        MessageReceived(sid, seq, opened_at + seq / 1000, 1, 3, None)
        for seq in range(1, messages + 1)
    ]
    if ended:
        records.append(SessionClosed(sid, opened_at + 1, 1000, "", messages, 0, 0, 0, "closed"))
    return records


def counts(database_url: str) -> tuple[int, int]:
    sessions = fetch_rows(database_url, "SELECT count(*) AS n FROM ws_sessions")[0]["n"]
    messages = fetch_rows(database_url, "SELECT count(*) AS n FROM ws_messages")[0]["n"]
    return int(sessions), int(messages)


class CountingBackend:
    """The real backend, counting the transactions retention asks of it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.batches: list[tuple[int, int]] = []

    def drop_journal_before(self, cutoff: float) -> int:
        return self.backend.drop_journal_before(cutoff)

    def delete_sessions_before(
        self, cutoff: float, sessions: int, messages: int
    ) -> tuple[int, int]:
        done = self.backend.delete_sessions_before(cutoff, sessions, messages)
        self.batches.append(done)
        return done


def test_prune_deletes_old_ended_sessions_and_their_journal_in_batches(
    database_url: str,
) -> None:
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    old, long_journal = NOW - 10 * DAY, MESSAGES_PER_BATCH + 10
    backend.write(session(old, long_journal))
    for _ in range(3):
        backend.write(session(old, 2))
    backend.write(session(old, 4, ended=False))  # still open: kept whatever its age
    backend.write(session(NOW - 1 * DAY, 5))  # younger than the cutoff: kept
    assert counts(database_url) == (6, long_journal + 6 + 4 + 5)

    counting = CountingBackend(backend)
    pruned = prune(counting, NOW - 7 * DAY, pause=0)  # type: ignore[arg-type]
    if database_url.startswith("sqlite:///"):
        assert (pruned.sessions, pruned.messages) == (4, long_journal + 6)
        assert counts(database_url) == (2, 4 + 5)
    else:  # the partitioned journal goes by age: the open session's old rows too
        assert (pruned.sessions, pruned.messages) == (4, long_journal + 6 + 4)
        assert counts(database_url) == (2, 5)
    # No transaction deleted more than a batch of journal rows.
    assert len(counting.batches) >= 3
    assert max(messages for _, messages in counting.batches) <= MESSAGES_PER_BATCH
    assert prune(backend, NOW - 7 * DAY, pause=0).sessions == 0  # nothing left to do
    backend.close()


@pytest.mark.gen_test(timeout=60)
async def test_retention_runs_beside_a_writing_store(database_url: str, tmp_path: Path) -> None:
    seed = make_backend(database_url)
    seed.connect()
    seed.migrate()
    for _ in range(20):
        seed.write(session(NOW - 40 * DAY, 300))
    seed.close()

    config = Config(database_url=database_url, state_dir=str(tmp_path), batch_delay=0.005)
    store = make_store(config, "host:2:0")
    await store.start()
    retention = Retention(lambda: make_backend(database_url), days=30, first_after=0)
    retention.start()
    try:
        fresh = 0
        while retention.passes == 0:  # keep the writer busy while retention deletes
            for record in session(time.time(), 20):
                store.submit(record)
            fresh += 1
            await asyncio.sleep(0.01)
        assert store.status().available
    finally:
        retention.close()
        await store.close()
    assert (retention.deleted.sessions, retention.deleted.messages) == (20, 20 * 300)
    assert counts(database_url) == (fresh, fresh * 20)
    assert not retention.running


def test_prune_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/echo.db"
    backend = make_backend(url)
    backend.connect()
    backend.migrate()
    backend.write(session(NOW - 3 * DAY, 2))
    backend.write(session(NOW, 2))
    backend.close()
    conf = tmp_path / "echo.toml"
    conf.write_text(f'database_url = "{url}"\nstate_dir = "{tmp_path}"\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tornado_echo", "prune", *args, "--config", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = run("--older-than", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 1 sessions and 2 journal rows opened before 20")
    assert counts(url) == (1, 2)
    for bad in ("soon", "-1", "nan"):
        refused = run("--older-than", bad)
        assert refused.returncode == 2
        assert refused.stderr == (
            f"tornado-echo: --older-than must be a number of days, got {bad!r}\n"
        )
