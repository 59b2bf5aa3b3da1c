"""The records' pure helpers: pairing a batch's opens and closes, rows, footprints."""

from __future__ import annotations

from tests.store.test_backends import closed, opened
from tornado_echo.store.records import (
    RECORD_OVERHEAD,
    SessionClosed,
    footprint,
    pair_sessions,
    storable_row,
)


def test_a_batch_s_opens_and_closes_pair_by_session_keeping_order() -> None:
    a, b, c, d = (opened(name) for name in "abcd")
    close_b, close_x, close_a = closed("b"), closed("x"), closed("a")
    replayed_a = opened("a")
    pairs, single_opened, single_closed = pair_sessions(
        [a, b, replayed_a, c, d], [close_b, close_x, close_a]
    )
    assert pairs == [(b, close_b), (a, close_a)]
    assert single_opened == [replayed_a, c, d]
    assert single_closed == [close_x]
    assert pair_sessions([], [close_x]) == ([], [], [close_x])


def test_a_row_without_unstorable_text_is_kept_and_one_with_it_is_cleaned() -> None:
    clean = closed("a")
    assert storable_row(clean) == ("a", clean.closed_at, 1000, "bye", 3, 3, 30, 30, "closed")
    dirty = SessionClosed("a\x00", 1.0, None, "x\ud800", 0, 0, 0, 0, "aborted")
    assert storable_row(dirty) == ("a\ufffd", 1.0, None, "x\ufffd", 0, 0, 0, 0, "aborted")


def test_a_session_record_s_footprint_counts_its_text() -> None:
    record = opened("abc")
    text = len("abc") + len(record.server_id) + len("127.0.0.1") + len("/ws")
    text += len("https://app.example") + len("pytest")
    assert footprint(record) == RECORD_OVERHEAD + text
