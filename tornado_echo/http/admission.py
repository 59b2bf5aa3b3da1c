"""Who gets a slot in the HTTP phase (requests, keep-alive, handshakes before the upgrade).

A pure decision, shared by every listener: :class:`HTTPAdmission` is told of each accepted
connection, of each request starting and ending, and of each connection closing; it answers
whether a new connection may be served, and which idle connection must go to make room.

* **Per address.** No client address (IPv6: its /64, as for WebSockets) holds more than
  ``per_address`` slots; more are refused. Trusted proxies carry many clients and are
  exempt (the caller says so).
* **Fair eviction.** With every slot taken, a newcomer takes the slot of an idle connection
  (no request under way: never sent one, or kept alive after its answer) of the address
  holding the most slots, its longest idle one, provided that address holds at least as many
  as the newcomer's would. Closing an idle keep-alive connection is always allowed to a
  server (RFC 9112 section 9.6); a client that opens connections and sends nothing, or
  trickles its headers, cannot keep others out. A connection with a request under way is
  never evicted; when every slot is busy, the newcomer is refused.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tornado_echo.connections import AddressCounts

C = TypeVar("C", bound=Hashable)

# Why a connection was refused: the metric labels (tornado_echo_rejections_total).
FULL = "connection_limit_http"
ADDRESS_FULL = "address_limit_http"


@dataclass(frozen=True)
class Verdict(Generic[C]):
    """``admitted``; else ``refusal`` (FULL or ADDRESS_FULL). ``evict``: a connection the
    caller must close now (already forgotten here) to make room for the admitted one."""

    admitted: bool
    refusal: str | None = None
    evict: C | None = None


class HTTPAdmission(Generic[C]):
    """Slots of the HTTP phase; ``limit`` and ``per_address`` (0: none) may change at any
    time (a reload) and apply to connections admitted from then on."""

    def __init__(self, limit: int, per_address: int = 0) -> None:
        self.limit = limit
        self.per_address = per_address
        self._key: dict[C, str] = {}  # every admitted connection: its address key
        self._counts: dict[str, int] = {}
        # Per address key, its idle connections in the order they became idle.
        self._idle: dict[str, dict[C, None]] = {}

    def __len__(self) -> int:
        return len(self._key)

    def held_by(self, address: str) -> int:
        return self._counts.get(AddressCounts.key(address), 0)

    def admit(self, conn: C, address: str, *, exempt: bool = False) -> Verdict[C]:
        """Admit ``conn`` from ``address`` (idle until :meth:`busy`), or say why not."""
        key = AddressCounts.key(address)
        held = self._counts.get(key, 0)
        if not exempt and self.per_address and held >= self.per_address:
            return Verdict(False, ADDRESS_FULL)
        victim = None
        if len(self._key) >= self.limit:
            victim = self._victim(key, held)
            if victim is None:
                return Verdict(False, FULL)
            self.release(victim)
        self._key[conn] = key
        self._counts[key] = self._counts.get(key, 0) + 1
        self._idle.setdefault(key, {})[conn] = None
        return Verdict(True, None, victim)

    def _victim(self, newcomer: str, held: int) -> C | None:
        """The longest idle connection of the address holding the most slots (the
        newcomer's own among equals), if that is the newcomer's address or holds more than
        the ``held`` the newcomer's address holds now."""
        best: str | None = None
        for key in self._idle:
            if best is None or self._counts[key] > self._counts[best]:
                best = key
            elif key == newcomer and self._counts[key] == self._counts[best]:
                best = key
        if best is None or (best != newcomer and self._counts[best] <= held):
            return None
        return next(iter(self._idle[best]))

    def busy(self, conn: C) -> None:
        """A request has come on ``conn``: it may not be evicted until :meth:`idle`."""
        key = self._key.get(conn)
        if key is not None:
            self._not_idle(key, conn)

    def idle(self, conn: C) -> None:
        """``conn`` waits for its next request (its answer is sent)."""
        key = self._key.get(conn)
        if key is not None:
            idle = self._idle.setdefault(key, {})
            idle.pop(conn, None)  # to the end: idle from now
            idle[conn] = None

    def release(self, conn: C) -> None:
        """``conn`` closed or left the HTTP phase (upgraded); idempotent."""
        key = self._key.pop(conn, None)
        if key is None:
            return
        self._not_idle(key, conn)
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]

    def _not_idle(self, key: str, conn: C) -> None:
        idle = self._idle.get(key)
        if idle is not None:
            idle.pop(conn, None)
            if not idle:
                del self._idle[key]
