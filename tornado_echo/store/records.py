"""The records the server hands to the store: plain, immutable, serialisable values."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError


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
    """One journalled message; ``payload`` is None unless the journal is "full"."""

    session_id: str
    seq: int
    received_at: float
    opcode: int
    size: int
    payload: bytes | None

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


def as_row(record: Record) -> tuple[Any, ...]:
    """The record's fields in declaration order (the column order of its table)."""
    return tuple(getattr(record, name) for name in record.__slots__)


# -- spool encoding: one JSON array per line, kind tag first, bytes as base64 ----------------

_KINDS: dict[str, type[SessionOpened] | type[SessionClosed] | type[MessageReceived]] = {
    "o": SessionOpened,
    "c": SessionClosed,
    "m": MessageReceived,
}
_TAGS = {kind: tag for tag, kind in _KINDS.items()}


def encode_record(record: Record) -> bytes:
    """One spool line (with its newline) for ``record``."""
    fields: list[Any] = [_TAGS[type(record)], *as_row(record)]
    if isinstance(record, MessageReceived) and record.payload is not None:
        fields[-1] = base64.b64encode(record.payload).decode("ascii")
    return json.dumps(fields, separators=(",", ":")).encode("ascii") + b"\n"


def decode_record(line: bytes) -> Record:
    """The record of one spool line; raises :class:`StoreError` if it is not one."""
    try:
        tag, *values = json.loads(line)
        kind = _KINDS[tag]
        if kind is MessageReceived and values[-1] is not None:
            values[-1] = base64.b64decode(values[-1], validate=True)
        return kind(*values)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"not a spool record: {line[:80]!r}: {exc}") from None
