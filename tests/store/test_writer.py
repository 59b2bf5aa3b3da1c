"""The batch writer on a real SQLite database: poison isolated, outages retried or given up."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from tests.helpers import fetch_rows
from tests.store.test_backends import closed, opened
from tests.store.test_store import sid
from tornado_echo.store.sqlite import SQLiteBackend
from tornado_echo.store.writer import BatchWriter, Outcome


def test_a_poison_record_is_isolated_and_the_rest_written(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "db.sqlite")
    backend.connect()
    backend.migrate()
    writer = BatchWriter(backend, threading.Event())
    records = [opened(sid(number)) for number in range(9)]
    records.insert(4, dataclasses.replace(closed(sid(3)), messages_in=2**70))
    assert writer.write(records) is Outcome.DONE
    assert (writer.written, writer.poisoned, writer.errors) == (9, 1, 0)
    rows = fetch_rows(f"sqlite:///{tmp_path / 'db.sqlite'}", "SELECT id FROM ws_sessions")
    assert len(rows) == 9
    backend.close()


def unreachable(tmp_path: Path) -> BatchWriter:
    (tmp_path / "file").write_text("not a directory")
    return BatchWriter(SQLiteBackend(tmp_path / "file" / "db.sqlite"), threading.Event())


def test_an_outage_is_retried_until_the_drain_deadline(tmp_path: Path) -> None:
    writer = unreachable(tmp_path)
    writer.drain_until = time.monotonic() + 0.5
    assert writer.write([opened(sid(1))]) is Outcome.GAVE_UP
    assert writer.errors >= 3  # 0.1 s, then 0.2 s apart: retried, with backoff
    assert not writer.available and writer.error is not None and writer.written == 0


def test_a_batch_moved_elsewhere_meanwhile_is_abandoned(tmp_path: Path) -> None:
    writer = unreachable(tmp_path)
    assert writer.write([opened(sid(1))], abandon=lambda: True) is Outcome.ABANDONED
    assert writer.errors == 1
