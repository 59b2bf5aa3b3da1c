"""Many coarse deadlines on one event-loop timer.

Every connection has at most one pending deadline (its next keepalive ping, the pong it
awaits, or the end of its closing handshake). A ``TimerHandle`` each would cost about half
a kilobyte per idle connection; :class:`TimerWheel` keeps them in slots of ``resolution``
seconds instead, and :class:`LoopWheel` runs the due ones from a single loop timer. A
deadline fires up to one resolution late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Protocol

RESOLUTION = 0.05


class Deadline(Protocol):
    """What the wheel holds: an object that knows its slot and what to do when due."""

    wheel_slot: int | None

    def on_deadline(self) -> None: ...


class TimerWheel:
    """The pure part: slots of deadlines, with no clock or loop of its own."""

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        self._slots: dict[int, set[Deadline]] = {}
        self._heap: list[int] = []  # slot numbers that have (or had) deadlines

    def __len__(self) -> int:
        return sum(len(items) for items in self._slots.values())

    def set(self, item: Deadline, due: float) -> int:
        """Give ``item`` the deadline ``due`` (replacing any it had); returns its slot."""
        self.clear(item)
        slot = math.ceil(due / self.resolution)
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            heapq.heappush(self._heap, slot)
        items.add(item)
        item.wheel_slot = slot
        return slot

    def clear(self, item: Deadline) -> None:
        slot = item.wheel_slot
        if slot is not None:
            item.wheel_slot = None
            items = self._slots.get(slot)
            if items is not None:
                items.discard(item)

    def pop_due(self, now: float) -> list[Deadline]:
        """Remove and return every item whose deadline is at or before ``now``."""
        due: list[Deadline] = []
        heap = self._heap
        while heap and heap[0] * self.resolution <= now:
            items = self._slots.pop(heapq.heappop(heap), None)
            if items:
                for item in items:
                    item.wheel_slot = None
                due.extend(items)
        return due

    def next_due(self) -> float | None:
        """The earliest slot time that may hold a deadline, if any."""
        heap = self._heap
        while heap and not self._slots.get(heap[0]):
            self._slots.pop(heapq.heappop(heap), None)
        return heap[0] * self.resolution if heap else None


class LoopWheel(TimerWheel):
    """A wheel driven by one ``call_at`` timer on ``loop``, armed only while it holds any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        super().__init__(resolution)
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    def call_later(self, item: Deadline, delay: float) -> None:
        """``item.on_deadline()`` runs ``delay`` seconds from now (or a resolution later)."""
        when = self.set(item, self.loop.time() + delay) * self.resolution
        if self._armed_at is None or when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self._timer = self._armed_at = None
        for item in self.pop_due(self.loop.time()):
            item.on_deadline()
        upcoming = self.next_due()
        if upcoming is not None:
            self._arm(upcoming)


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWheel] = (
    weakref.WeakKeyDictionary()
)


def loop_wheel() -> LoopWheel:
    """The running loop's wheel (one per loop, made on first use)."""
    loop = asyncio.get_running_loop()
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = LoopWheel(loop)
    return wheel
