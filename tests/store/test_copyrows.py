"""Journal rows in binary COPY format, without I/O: what the loop encodes, the writer decodes."""

from __future__ import annotations

import pytest

from tests.store.test_store import sid
from tornado_echo.errors import StoreError
from tornado_echo.store.copyrows import decode_rows, encode_record, encode_row
from tornado_echo.store.records import MessageReceived

AT = 1_767_000_000.123456


def test_rows_decode_to_the_records_they_were_made_from() -> None:
    out = bytearray()
    encode_row(out, sid(1), 1, AT, 2, 3, b"\x00\xff\n", 100)
    encode_row(out, sid(1), 2, AT, 1, 7, None, 100)
    encode_row(out, sid(2), 9, AT, 2, 300, b"x" * 300, 10)
    encode_row(out, sid(2), 10, AT, 2, 0, b"", 10)
    rows = list(decode_rows(out))
    assert [(r.session_id, r.seq, r.opcode, r.size) for r in rows] == [
        (sid(1), 1, 2, 3),
        (sid(1), 2, 1, 7),
        (sid(2), 9, 2, 300),
        (sid(2), 10, 2, 0),
    ]
    assert [(r.payload, r.truncated) for r in rows] == [
        (b"\x00\xff\n", False),
        (None, False),
        (b"x" * 10, True),  # cut to max_payload, the real size kept
        (b"", False),
    ]
    assert all(abs(r.received_at - AT) < 1e-6 for r in rows)  # microseconds, as stored


def test_a_record_encodes_as_its_row() -> None:
    record = MessageReceived(sid(3), 4, AT, 2, 9000, b"abc", True)
    out = bytearray()
    encode_record(out, record)
    [back] = decode_rows(out)
    assert back == MessageReceived(sid(3), 4, back.received_at, 2, 9000, b"abc", True)


@pytest.mark.parametrize("cut", [1, 10, 22, 40, 50])
def test_rows_cut_short_or_garbage_are_refused(cut: int) -> None:
    out = bytearray()
    encode_row(out, sid(1), 1, AT, 2, 5, b"hello", 100)
    with pytest.raises(StoreError, match="not journal rows"):
        list(decode_rows(out[:cut]))
    with pytest.raises(StoreError, match="not journal rows"):
        list(decode_rows(b"\x00\x07" + bytes(60)))
