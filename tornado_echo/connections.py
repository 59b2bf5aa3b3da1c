"""The set of open WebSocket sessions, for limits, draining and graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

from tornado_echo.wire import CloseCode

logger = logging.getLogger(__name__)


class Session(Protocol):
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int

    def close_for_shutdown(self, code: int, reason: str) -> None: ...

    def on_connection_close(self) -> None: ...


# Session ids: time-ordered (version 7) UUIDs, their random bits read SESSION_IDS_PER_READ
# at a time: one os.urandom() per session was 3% of a handshake (getrandom is slow in a VM).
# Time-ordered so that new sessions' rows land on the last pages of the id's index: with
# random ids each session dirtied a page of its own, written at every batch (SQLite, 100k
# sessions in the table: 1.25 WAL pages a session at 175 sessions a batch, 0.12 ordered).
SESSION_IDS_PER_READ = 256
_random = b""
_taken = 0


def new_session_id() -> str:
    """A fresh UUID (version 7, RFC 9562: Unix time in milliseconds, then 74 random bits)
    as text, for a session."""
    global _random, _taken
    if _taken >= len(_random):
        _random, _taken = os.urandom(16 * SESSION_IDS_PER_READ), 0
    raw = bytearray(_random[_taken : _taken + 16])
    _taken += 16
    raw[:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _forget_random() -> None:
    # A forked worker must not hand out the ids its parent has left in the pool.
    global _random, _taken
    _random, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_random)


@dataclass
class Traffic:
    """Messages and payload bytes each way, summed over sessions."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, session: Session) -> None:
        self.messages_in += session.messages_in
        self.messages_out += session.messages_out
        self.bytes_in += session.bytes_in
        self.bytes_out += session.bytes_out


class AddressCounts:
    """Upgrades admitted per client address, for ``max_connections_per_ip``.

    IPv6 clients are counted per /64, the block one subscriber usually holds: otherwise one
    client could take a fresh address per connection. Only addresses with connections open
    are kept, so memory follows the open connections, not what strangers send.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @staticmethod
    def key(address: str) -> str:
        if ":" not in address:
            # Not IPv6: either an IPv4 address that ipaddress would spell the same way (it
            # takes only the canonical dotted quad) or not an address at all; as it is.
            return address
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)

    def admit(self, address: str, limit: int) -> bool:
        """Count one more for ``address`` unless it has ``limit`` already (0: no limit)."""
        key = self.key(address)
        count = self._counts.get(key, 0)
        if limit and count >= limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, address: str) -> None:
        key = self.key(address)
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


class Connections:
    """Tracks open sessions; used only on the IOLoop thread."""

    def __init__(self) -> None:
        self._open: set[Session] = set()
        self._ended_traffic = Traffic()
        self.total = 0
        # Upgrades admitted and not yet ended, handshakes in flight included: the count
        # max_connections limits, so a burst of handshakes cannot overshoot it.
        self.admitted = 0
        self.per_address = AddressCounts()
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, address: str, limit: int, per_address_limit: int) -> tuple[str, str] | None:
        """Count one more upgrade from ``address``, or say why not: (metric label, reason).

        Refused while draining, at ``limit`` admitted, or at ``per_address_limit`` from the
        address (0: none). Every admission is ended by one :meth:`release`.
        """
        if self.draining:
            return "draining", "server is shutting down"
        if self.admitted >= limit:
            return "connection_limit", "connection limit reached"
        if not self.per_address.admit(address, per_address_limit):
            return "address_limit", "too many connections from your address"
        self.admitted += 1
        return None

    def release(self, address: str) -> None:
        """End an admission of :meth:`admit`."""
        self.admitted -= 1
        self.per_address.release(address)

    def add(self, session: Session) -> None:
        self._open.add(session)
        self.total += 1
        self._empty.clear()

    def discard(self, session: Session) -> None:
        """Forget an ended session, keeping its traffic in the totals."""
        if session in self._open:
            self._open.remove(session)
            self._ended_traffic.add(session)
        if not self._open:
            self._empty.set()

    def traffic(self) -> Traffic:
        """Totals since start, ended and open sessions alike (for metrics; O(open sessions))."""
        ended = self._ended_traffic
        total = Traffic(ended.messages_in, ended.messages_out, ended.bytes_in, ended.bytes_out)
        for session in self._open:
            total.add(session)
        return total

    def start_draining(self) -> None:
        """From now on new upgrades are refused (503) and /readyz reports draining."""
        self.draining = True

    def close_all(self, reason: str = "server shutting down") -> int:
        """Send every open session a 1001 Going Away close; returns how many."""
        sessions = list(self._open)
        for session in sessions:
            session.close_for_shutdown(CloseCode.GOING_AWAY, reason)
        return len(sessions)

    def abort_all(self) -> int:
        """Drop every session still open now. Their ends (and close records) follow within
        a few turns of the loop (the turn budget's), so wait_closed() before the store
        seals. Returns how many."""
        sessions = list(self._open)
        for session in sessions:
            session.on_connection_close()
        return len(sessions)

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every session has ended; False if some are still open after ``timeout``."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
