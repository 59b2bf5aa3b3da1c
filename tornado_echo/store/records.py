"""The records the server hands to the store: plain, immutable, serialisable values.

The records are the one place where the stored columns are named: each field is a column
of its table, under the same name, except ``session_id``, which is ``id`` in ``ws_sessions``.
Backends, the spool and the read side derive their column lists and value kinds from here.
Every ``float`` field is a Unix time.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import operator
import re
import typing
from dataclasses import dataclass
from typing import Any

from tornado_echo.errors import StoreError


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """A WebSocket handshake completed."""

    session_id: str
    server_id: str
    opened_at: float
    peer: str
    path: str
    origin: str | None
    user_agent: str | None
    subprotocol: str | None
    compression: bool

    @property
    def at(self) -> float:
        return self.opened_at


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """A WebSocket session ended; ``end_state`` is closed, aborted or server_shutdown."""

    session_id: str
    closed_at: float
    close_code: int | None
    close_reason: str | None
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    end_state: str

    @property
    def at(self) -> float:
        return self.closed_at


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One journalled message; ``payload`` is None unless the journal is "full".

    ``size`` is always the message's real size; ``truncated`` says ``payload`` holds only
    its first bytes (``journal_max_payload``, or none when the store had to shed memory).
    """

    session_id: str
    seq: int
    received_at: float
    opcode: int
    size: int
    payload: bytes | None
    truncated: bool = False

    def cut(self, limit: int) -> MessageReceived:
        """This message with at most ``limit`` payload bytes kept."""
        if self.payload is None or len(self.payload) <= limit:
            return self
        return dataclasses.replace(self, payload=self.payload[:limit], truncated=True)

    @property
    def at(self) -> float:
        return self.received_at


Record = SessionOpened | SessionClosed | MessageReceived


def split_batch(
    batch: list[Record],
) -> tuple[list[SessionOpened], list[SessionClosed], list[MessageReceived]]:
    """Group a batch by kind, keeping order within each kind.

    Writing every kind's group in one transaction, opens before closes, is correct because a
    session's close is always submitted after its open.
    """
    opened: list[SessionOpened] = []
    closed: list[SessionClosed] = []
    messages: list[MessageReceived] = []
    for record in batch:
        if isinstance(record, SessionOpened):
            opened.append(record)
        elif isinstance(record, SessionClosed):
            closed.append(record)
        else:
            messages.append(record)
    return opened, closed, messages


def pair_sessions(
    opened: list[SessionOpened], closed: list[SessionClosed]
) -> tuple[list[tuple[SessionOpened, SessionClosed]], list[SessionOpened], list[SessionClosed]]:
    """(sessions opened and closed in one batch, opens without their close, closes without
    their open), each in batch order: a short session's row can be written whole, once.

    A session's first close pairs with its first open; any repeat (a replayed record) stays
    single, so writing the pairs before the singles ends as the records would in order.
    """
    first_open: dict[str, SessionOpened] = {}
    single_opened: list[SessionOpened] = []
    for record in opened:
        if first_open.setdefault(record.session_id, record) is not record:
            single_opened.append(record)
    pairs: list[tuple[SessionOpened, SessionClosed]] = []
    single_closed: list[SessionClosed] = []
    for close in closed:
        match = first_open.pop(close.session_id, None)
        if match is None:
            single_closed.append(close)
        else:
            pairs.append((match, close))
    single_opened.extend(first_open.values())
    return pairs, single_opened, single_closed


RecordKind = type[SessionOpened] | type[SessionClosed] | type[MessageReceived]
KEY = "session_id"


def columns(kind: RecordKind) -> tuple[str, ...]:
    """The columns ``kind`` writes, in field order, its key (the session id) first."""
    names = tuple(field.name for field in dataclasses.fields(kind))
    assert names[0] == KEY, f"{kind.__name__}: the session id must be the first field"
    if kind is MessageReceived:
        return names
    return ("id", *names[1:])


def field_kinds(kind: RecordKind) -> dict[str, type]:
    """Column name -> the Python type of its values (``None`` aside)."""
    hints = typing.get_type_hints(kind)
    found: dict[str, type] = {}
    for column, field in zip(columns(kind), dataclasses.fields(kind), strict=True):
        hint = hints[field.name]
        found[column] = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    return found


SESSION_COLUMNS = ("id", *dict.fromkeys(columns(SessionOpened)[1:] + columns(SessionClosed)[1:]))
MESSAGE_COLUMNS = columns(MessageReceived)[1:]
COLUMN_KINDS = {
    **field_kinds(SessionOpened),
    **field_kinds(SessionClosed),
    **field_kinds(MessageReceived),
}


# Per kind, a C-level getter of every field in column order (a session's records are made
# into rows, sized and checked once or more each: a generator over getattr was ~5% of a
# handshake).
_ROW_OF = {
    kind: operator.attrgetter(*(field.name for field in dataclasses.fields(kind)))
    for kind in (SessionOpened, SessionClosed, MessageReceived)
}
# Per kind, the positions of its text fields (the only ones storable_row may have to change).
_TEXT_AT = {
    kind: tuple(i for i, t in enumerate(field_kinds(kind).values()) if t is str) for kind in _ROW_OF
}


def as_row(record: Record) -> tuple[Any, ...]:
    """The record's values in :func:`columns` order (the key first)."""
    row: tuple[Any, ...] = _ROW_OF[type(record)](record)
    return row


# Text PostgreSQL refuses (NUL; lone surrogates, which are not UTF-8 at all), and SQLite
# would store but most readers cut at. Clients choose close reasons, user agents, origins
# and paths, so each such character is stored as U+FFFD REPLACEMENT CHARACTER.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_row(record: Record) -> tuple[Any, ...]:
    """:func:`as_row` with every text value made acceptable to every backend."""
    row = as_row(record)
    texts = [text for text in map(row.__getitem__, _TEXT_AT[type(record)]) if text]
    # One search over all of them: such characters are rare, and a row without any is
    # returned as it is.
    if not texts or _UNSTORABLE.search("".join(texts)) is None:
        return row
    return tuple(_UNSTORABLE.sub("\ufffd", value) if type(value) is str else value for value in row)


# What one queued record costs besides its variable-length values: the object, its float
# and int objects, the id string, a deque slot (tracemalloc over 10,000 in a deque: 269
# bytes per journal record, 348 per session close).
RECORD_OVERHEAD = 320


def footprint(record: Record) -> int:
    """Approximate bytes ``record`` holds in memory, for the store's byte bound."""
    if type(record) is MessageReceived:  # the hot path: one per journalled message
        return RECORD_OVERHEAD + (len(record.payload) if record.payload else 0)
    row = as_row(record)
    return RECORD_OVERHEAD + sum(
        len(text) for text in map(row.__getitem__, _TEXT_AT[type(record)]) if text
    )


# -- spool encoding: one JSON array per line, kind tag first, bytes as base64 ----------------

_KINDS: dict[str, RecordKind] = {
    "o": SessionOpened,
    "c": SessionClosed,
    "m": MessageReceived,
}
_TAGS = {kind: tag for tag, kind in _KINDS.items()}


# Positions of the bytes values in each kind's row (base64 in the spool).
_BYTES_AT = {
    kind: [i for i, t in enumerate(field_kinds(kind).values()) if t is bytes]
    for kind in _KINDS.values()
}


def encode_record(record: Record) -> bytes:
    """One spool line (with its newline) for ``record``."""
    values: list[Any] = list(as_row(record))
    for i in _BYTES_AT[type(record)]:
        if values[i] is not None:
            values[i] = base64.b64encode(values[i]).decode("ascii")
    return json.dumps([_TAGS[type(record)], *values], separators=(",", ":")).encode("ascii") + b"\n"


def decode_record(line: bytes) -> Record:
    """The record of one spool line; raises :class:`StoreError` if it is not one.

    Lines written before a field with a default was added decode with that default.
    """
    try:
        tag, *values = json.loads(line)
        kind = _KINDS[tag]
        for i in _BYTES_AT[kind]:
            if values[i] is not None:
                values[i] = base64.b64decode(values[i], validate=True)
        return kind(*values)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"not a spool record: {line[:80]!r}: {exc}") from None
