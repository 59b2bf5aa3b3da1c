"""Journal rows in binary COPY format, without I/O: what the loop encodes, the writer decodes."""

from __future__ import annotations

import pytest

from tests.store.test_store import sid
from tornado_echo.errors import StoreError
from tornado_echo.store.copyrows import (
    decode_row_values,
    decode_rows,
    encode_record,
    encode_row,
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
