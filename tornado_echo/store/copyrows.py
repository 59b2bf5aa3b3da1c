"""Journal rows in PostgreSQL's binary COPY format: what the IOLoop hands the writer process.

One row is a few ``bytearray`` appends on the loop (no record object, no lock), and the writer
process sends a batch of them to PostgreSQL as it is, between :data:`HEADER` and
:data:`TRAILER` (``COPY ws_messages (...) FROM STDIN (FORMAT binary)``): no Python work per
row on either side. SQLite, the spool and the poison-isolating path decode rows back into
:class:`MessageReceived` records with :func:`decode_rows`.

Row layout (all integers big-endian): int16 field count, then per field an int32 length
(-1: NULL) and the value: uuid (16 bytes), int8 seq, timestamptz (int8 microseconds since
2000-01-01 UTC), int2 opcode, int4 size, bytea payload, bool truncated; the columns of
:data:`COLUMNS`, in the order of :class:`MessageReceived`'s fields.
"""

from __future__ import annotations

import functools
import struct
import uuid
from collections.abc import Iterator
from typing import Any

from tornado_echo.errors import StoreError
from tornado_echo.store.records import MessageReceived, columns

COLUMNS = columns(MessageReceived)
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
COPY_SQL = f"COPY ws_messages ({', '.join(COLUMNS)}) FROM STDIN (FORMAT binary)"
PG_EPOCH = 946_684_800  # 2000-01-01 UTC as a Unix time
# The handoff to the writer process (journal_process.py): a frame of rows, and its answer.
FRAME = struct.Struct(">IQI")  # payload bytes, chunk id, rows
# The writer's report: the last chunk id committed, whether its database answers, its failed
# database operations so far, and the length of the UTF-8 error text that follows.
REPORT = struct.Struct(">QBIH")
REPORT_ERROR_MAX = 1000  # bytes of error text in one report

_FIELDS = struct.Struct(">iqiqihiii")  # seq, received_at, opcode, size, payload length
_PREFIX = struct.Struct(">hi")
_NOT_TRUNCATED = b"\x00\x00\x00\x01\x00"
_TRUNCATED = b"\x00\x00\x00\x01\x01"
_ROW_START = _PREFIX.size + 16
# Writing a row: its start up to the seq's value, the same in every row of a session (field
# count, uuid length, uuid, seq length; see session_prefix), then one pack of the rest of a
# row without payload, or of what comes before a payload; constant fields as bytes (cheaper
# to pack than ints).
_SESSION = struct.Struct(_PREFIX.format + "16si")
_L8, _L2, _L4 = (struct.pack(">i", length) for length in (8, 2, 4))
_META_TAIL = {
    flag: struct.pack(">i", -1) + tail
    for flag, tail in ((False, _NOT_TRUNCATED), (True, _TRUNCATED))
}
_HEAD_ROW = struct.Struct(f">{_SESSION.size}sq4sq4sh4sii")  # ... size, payload length
_META_ROW = struct.Struct(f"{_HEAD_ROW.format[:-1]}{len(_META_TAIL[False])}s")  # ... _META_TAIL
PG_EPOCH_US = PG_EPOCH * 1_000_000


def pg_microseconds(received_at: float) -> int:
    """A Unix time as PostgreSQL's timestamptz: microseconds since 2000-01-01, rounded.

    Every writer path turns a record's time into the stored value through this one function
    (the binary rows here, COPY text in postgres.py), and it is stable through a round trip
    (``pg_microseconds(decoded time) == stored value``): a replayed row carries the very time
    it was first written with, so it lands in the same day's partition and conflicts on the
    key (session_id, seq, received_at) instead of becoming a second copy. Truncating (``int``)
    would not be stable: a decoded time a quarter microsecond under its value would lose one.
    """
    return round((received_at - PG_EPOCH) * 1_000_000)


def session_prefix(session_id: str) -> bytes:
    """The start of every row of a session, up to its seq's value: what the loop's journal
    of a session computes once, at its open (handoff.SessionJournal)."""
    return _SESSION.pack(len(COLUMNS), 16, uuid.UUID(session_id).bytes, 8)


# Rows encoded from a session id (records, tests): once per session all the same.
cached_session_prefix = functools.lru_cache(maxsize=65536)(session_prefix)


def encode_row(
    out: bytearray,
    session_id: str,
    seq: int,
    received_at: float,
    opcode: int,
    size: int,
    payload: bytes | None,
    max_payload: int,
    truncated: bool = False,
) -> None:
    """Append one journal row to ``out``; ``payload`` None journals the metadata only, and a
    payload over ``max_payload`` keeps its first bytes, marked truncated (as is a row whose
    caller cut its payload: ``truncated``)."""
    append_row(
        out,
        cached_session_prefix(session_id),
        seq,
        pg_microseconds(received_at),
        opcode,
        size,
        payload,
        max_payload,
        truncated,
    )


def append_row(
    out: bytearray,
    prefix: bytes,
    seq: int,
    usec: int,
    opcode: int,
    size: int,
    payload: bytes | None,
    max_payload: int,
    truncated: bool = False,
) -> None:
    """:func:`encode_row` of a session's :func:`session_prefix` and a time in PostgreSQL's
    microseconds: what the loop calls for each message (one pack for metadata only)."""
    if payload is None:
        out += _META_ROW.pack(prefix, seq, _L8, usec, _L2, opcode, _L4, size, _META_TAIL[truncated])
    elif len(payload) <= max_payload:
        out += _HEAD_ROW.pack(prefix, seq, _L8, usec, _L2, opcode, _L4, size, len(payload))
        out += payload
        out += _TRUNCATED if truncated else _NOT_TRUNCATED
    else:
        out += _HEAD_ROW.pack(prefix, seq, _L8, usec, _L2, opcode, _L4, size, max_payload)
        out += payload[:max_payload]
        out += _TRUNCATED


def encode_record(out: bytearray, record: MessageReceived) -> None:
    """Append ``record`` as a row (its payload as it is)."""
    payload = record.payload
    append_row(
        out,
        cached_session_prefix(record.session_id),
        record.seq,
        pg_microseconds(record.received_at),
        record.opcode,
        record.size,
        payload,
        0 if payload is None else len(payload),
        record.truncated,
    )


@functools.lru_cache(maxsize=65536)
def _session_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))


def decode_rows(data: bytes | bytearray | memoryview) -> Iterator[MessageReceived]:
    """The records of concatenated rows; raises :class:`StoreError` on anything else."""
    for values in decode_row_values(data):
        yield MessageReceived(*values)


def decode_row_values(data: bytes | bytearray | memoryview) -> Iterator[tuple[Any, ...]]:
    """The values of concatenated rows, in :data:`COLUMNS` order (what SQLite's writer
    inserts as they are: no record object per row); raises :class:`StoreError` on anything
    else."""
    view = memoryview(data)
    offset = 0
    end = len(view)
    prefix = _PREFIX.unpack_from
    fields = _FIELDS.unpack_from
    header = (len(COLUMNS), 16)
    try:
        while offset < end:
            if prefix(view, offset) != header:
                raise ValueError(f"row header {prefix(view, offset)}")
            session_id = _session_text(bytes(view[offset + 6 : offset + _ROW_START]))
            offset += _ROW_START
            _, seq, _, usec, _, opcode, _, size, length = fields(view, offset)
            offset += _FIELDS.size
            payload = None
            if length >= 0:
                payload = bytes(view[offset : offset + length])
                offset += length
                if len(payload) != length:
                    raise ValueError("cut short")
            flag = bytes(view[offset : offset + 5])
            if flag == _NOT_TRUNCATED:
                truncated = False
            elif flag == _TRUNCATED:
                truncated = True
            else:
                raise ValueError("cut short")
            offset += 5
            yield (
                session_id,
                seq,
                usec / 1_000_000 + PG_EPOCH,
                opcode,
                size,
                payload,
                truncated,
            )
    except (struct.error, ValueError) as exc:
        raise StoreError(f"not journal rows at byte {offset}: {exc}") from None


# A row's layout around its payload (``p`` bytes, 0 if NULL): what every row of a batch of
# rows of one width has at the same places (see uniform_width).
_LENGTH_AT = _ROW_START + _FIELDS.size - 4  # the payload's int32 length
_FIXED = _ROW_START + _FIELDS.size + 5  # a row's bytes besides its payload
# Bytes equal in every row of one width: field count, uuid length, the lengths of seq,
# received_at, opcode and size, the payload's length (after the payload: the flag's length).
_SAME_BEFORE = (
    *range(0, 6),
    *range(_ROW_START, _ROW_START + 4),
    *range(_ROW_START + 12, _ROW_START + 16),
    *range(_ROW_START + 24, _ROW_START + 28),
    *range(_ROW_START + 30, _ROW_START + 34),
    *range(_LENGTH_AT, _LENGTH_AT + 4),
)
_NULL_LENGTH = b"\xff\xff\xff\xff"


@functools.lru_cache(maxsize=256)
def _row_struct(payload: int) -> struct.Struct:
    """All of a row's fields, for rows whose payload is ``payload`` bytes (-1: NULL)."""
    body = f"{payload}s" if payload >= 0 else ""
    return struct.Struct(f">hi16s{_FIELDS.format.lstrip('>')}{body}ib")


def uniform_width(data: bytes) -> int | None:
    """The width of every row of ``data`` if they all have the first one's shape (its
    payload's length, or none), checked with a few C-level strided slices; else None.

    By induction: row 0 starts at 0; when row k starts at k * width and its length field
    holds the first row's, it ends at (k + 1) * width. The constant bytes' values and the
    truncated flag are checked against the layout here too."""
    end = len(data)
    if end < _FIXED:
        return None
    length = data[_LENGTH_AT : _LENGTH_AT + 4]
    payload = 0 if length == _NULL_LENGTH else int.from_bytes(length, "big")
    width = _FIXED + payload
    if payload > end or end % width:
        return None
    first = _row_struct(-1 if length == _NULL_LENGTH else payload).unpack_from(data)
    if first[:2] != (len(COLUMNS), 16) or first[3::2][:4] != (8, 8, 2, 4) or first[-2] != 1:
        return None
    rows = end // width
    for at in (*_SAME_BEFORE, *range(width - 5, width - 1)):
        if data[at::width].count(data[at]) != rows:
            return None
    if data[width - 1 :: width].translate(None, b"\x00\x01"):
        return None
    return width


def sqlite_row_values(data: bytes) -> list[tuple[Any, ...]]:
    """The values of concatenated rows, in :data:`COLUMNS` order, as SQLite's writer binds
    them: ``truncated`` as an int (a bool is adapted per value, 0.4 us a row). Rows of one
    width (every metadata row; payloads of one size) are cut by ``struct.iter_unpack``
    without Python work per field; others go through :func:`decode_row_values`.
    Raises :class:`StoreError` on anything but rows."""
    width = uniform_width(data)
    if width is None:
        return _mixed_row_values(data)
    text = _session_text
    epoch = PG_EPOCH
    payload = width - _FIXED
    if data[_LENGTH_AT : _LENGTH_AT + 4] == _NULL_LENGTH:
        return [
            (text(raw), seq, usec / 1_000_000 + epoch, opcode, size, None, flag)
            for (_, _, raw, _, seq, _, usec, _, opcode, _, size, _, _, flag) in _row_struct(
                -1
            ).iter_unpack(data)
        ]
    return [
        (text(raw), seq, usec / 1_000_000 + epoch, opcode, size, body, flag)
        for (_, _, raw, _, seq, _, usec, _, opcode, _, size, _, body, _, flag) in _row_struct(
            payload
        ).iter_unpack(data)
    ]


_HEAD = _row_struct(-1).format[:-2]  # a row up to its payload: ">hi16s" and _FIELDS
_HEAD_STRUCT = struct.Struct(_HEAD)


def _mixed_row_values(data: bytes) -> list[tuple[Any, ...]]:
    """:func:`sqlite_row_values` of rows of several widths (the full journal's payloads of
    several sizes, or past its byte budget some without): one ``unpack_from`` a row."""
    head = _HEAD_STRUCT.unpack_from
    text = _session_text
    epoch = PG_EPOCH
    size_of_head = _HEAD_STRUCT.size
    expected = (len(COLUMNS), 16, 8, 8, 2, 4)
    values = []
    offset = 0
    end = len(data)
    try:
        while offset < end:
            count, sixteen, raw, l1, seq, l2, usec, l3, opcode, l4, size, length = head(
                data, offset
            )
            if (count, sixteen, l1, l2, l3, l4) != expected:
                raise ValueError("row header")
            offset += size_of_head
            payload = None
            if length >= 0:
                payload = data[offset : offset + length]
                offset += length
            flag = data[offset : offset + 5]
            if flag == _NOT_TRUNCATED:
                truncated = 0
            elif flag == _TRUNCATED:
                truncated = 1
            else:
                raise ValueError("cut short")
            offset += 5
            values.append(
                (text(raw), seq, usec / 1_000_000 + epoch, opcode, size, payload, truncated)
            )
    except (struct.error, ValueError) as exc:
        raise StoreError(f"not journal rows at byte {offset}: {exc}") from None
    return values
