"""Journal rows in binary COPY format, without I/O: what the loop encodes, the writer decodes."""

from __future__ import annotations

import struct
import time
import uuid

import pytest

from tests.store.test_store import sid
from tornado_echo.errors import StoreError
from tornado_echo.store.copyrows import (
    PG_EPOCH,
    append_row,
    decode_row_values,
    decode_rows,
    encode_record,
    encode_row,
    pg_microseconds,
    session_prefix,
    sqlite_row_values,
    uniform_width,
)
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


def layout(session: str, seq: int, usec: int, size: int, payload: bytes | None, flag: int) -> bytes:
    """A row as docs/journal.md lays it out, written field by field."""
    length = -1 if payload is None else len(payload)
    return (
        struct.pack(">hi16s", 7, 16, uuid.UUID(session).bytes)
        + struct.pack(">iqiqihii", 8, seq, 8, usec, 2, 2, 4, size)
        + struct.pack(">i", length)
        + (payload or b"")
        + struct.pack(">ib", 1, flag)
    )


@pytest.mark.parametrize(
    ("payload", "truncated", "expected", "flag"),
    [
        (None, False, None, 0),
        (None, True, None, 1),
        (b"\x00\xffabc", False, b"\x00\xffabc", 0),
        (b"abc", True, b"abc", 1),
        (b"y" * 20, False, b"y" * 10, 1),  # over max_payload: cut, marked truncated
    ],
)
def test_a_sessions_prefix_gives_the_rows_bytes_field_by_field(
    payload: bytes | None, truncated: bool, expected: bytes | None, flag: int
) -> None:
    usec = pg_microseconds(AT)
    by_prefix, by_id = bytearray(), bytearray()
    append_row(by_prefix, session_prefix(sid(5)), 3, usec, 2, 20, payload, 10, truncated)
    encode_row(by_id, sid(5), 3, AT, 2, 20, payload, 10, truncated)
    assert bytes(by_prefix) == bytes(by_id) == layout(sid(5), 3, usec, 20, expected, flag)


def test_each_session_has_its_own_prefix() -> None:
    assert session_prefix(sid(1)) != session_prefix(sid(2))
    out = bytearray()
    append_row(out, session_prefix(sid(1)), 1, 0, 2, 1, None, 10)
    append_row(out, session_prefix(sid(2)), 1, 0, 2, 1, None, 10)
    assert [row.session_id for row in decode_rows(out)] == [sid(1), sid(2)]


def test_integer_microseconds_are_stable_through_a_round_trip() -> None:
    # What a session's journal stores (the clock truncated to the microsecond) comes back as
    # itself when a decoded row is encoded again (a replay lands on the same key).
    now = time.time_ns() // 1000 - PG_EPOCH * 1_000_000
    for usec in (now, now + 1, now + 499_999, now + 999_999):
        assert pg_microseconds(usec / 1_000_000 + PG_EPOCH) == usec


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


def rows_of_width(count: int, payload: bytes | None, truncated_every: int = 3) -> bytearray:
    out = bytearray()
    for seq in range(1, count + 1):
        truncated = seq % truncated_every == 0
        encode_row(out, sid(seq % 5), seq, AT + seq, 2, 40, payload, 1000, truncated)
    return out


@pytest.mark.parametrize("payload", [None, b"", b"abc\x00\xff", b"x" * 300])
def test_rows_of_one_width_give_what_the_general_decoder_gives(payload: bytes | None) -> None:
    data = bytes(rows_of_width(250, payload))
    assert uniform_width(data) == len(data) // 250
    values = sqlite_row_values(data)
    assert values == list(decode_row_values(data))
    assert {type(row[6]) for row in values} == {int}  # bound as is, not adapted
    assert sum(row[6] for row in values) == 250 // 3


def test_rows_of_several_widths_take_the_general_decoder() -> None:
    data = rows_of_width(3, b"ab") + rows_of_width(3, None) + rows_of_width(3, b"")
    data += rows_of_width(3, b"ab")
    assert uniform_width(bytes(data)) is None
    assert sqlite_row_values(bytes(data)) == [
        (*row[:6], int(row[6])) for row in decode_row_values(data)
    ]


# The bytes a 69-byte row (no payload) holds whatever its values: field count, lengths, flag.
CONSTANT = [*range(6), *range(22, 26), *range(34, 38), *range(46, 50), *range(52, 56)]
CONSTANT += [*range(60, 69)]


@pytest.mark.parametrize("damage", CONSTANT)
def test_rows_of_one_width_with_one_damaged_row_are_not_cut_by_width(damage: int) -> None:
    data = rows_of_width(10, None)
    assert uniform_width(bytes(data)) == 69
    data[5 * 69 + damage] ^= 0x40
    assert uniform_width(bytes(data)) is None


@pytest.mark.parametrize("damage", [0, 1, 5, 64, 67, 68])
def test_garbage_among_rows_of_one_width_is_refused(damage: int) -> None:
    data = rows_of_width(10, None)
    data[5 * 69 + damage] ^= 0x40
    with pytest.raises(StoreError, match="not journal rows"):
        sqlite_row_values(bytes(data))


@pytest.mark.parametrize("cut", [1, 10, 22, 40, 63, 64, 70, 69 + 2 + 10])
def test_rows_of_several_widths_cut_short_are_refused(cut: int) -> None:
    data = rows_of_width(1, b"ab") + rows_of_width(1, None)
    with pytest.raises(StoreError, match="not journal rows"):
        sqlite_row_values(bytes(data[:cut]))
    data[1] = 6  # the field count
    with pytest.raises(StoreError, match="not journal rows"):
        sqlite_row_values(bytes(data))
