"""What keeps one connection from costing the others, for both engines: when its peer is
not read (:class:`FlowControl`, the write buffer's marks), and which work leaves the loop.

Backpressure uses the transport's own flow control: while the peer reads slower than it is
sent to and the write buffer is above ``WRITE_HIGH_WATER``, the connection is not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# Write buffer above which the peer is not read until it drains to the low mark.
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = WRITE_HIGH_WATER // 4
# Messages at least this big are deflated in a worker thread (zlib releases the GIL): 1 MiB
# takes 10-25 ms to deflate, which the loop would otherwise take from every other
# connection. Smaller ones cost less than the hand-off.
DEFLATE_OFF_LOOP = 16 * 1024


class JournalGate(Protocol):
    """What journals the messages (the store's handoff to its writer process): an echo may
    leave only once the rows journalled before it are out of this process's memory, so a
    kill -9 of the server cannot lose a message whose echo was sent."""

    def hold(self, release: Callable[[], None]) -> bool:
        """True: the rows journalled so far are not handed off yet, and ``release`` is
        called once they are (releases in the order of the holds). False: write now."""


class FlowControl:
    """Whether a transport may be read: paused while any reason to pause holds.

    Reasons (bits): the peer is not reading what we send (``WRITING``), the handler is
    still busy with an earlier message (``HANDLER``), the last read still has frames
    waiting for their turn (``BACKLOG``), or its echoes wait for their journal rows to be
    handed off for longer than a turn (``JOURNAL``).
    """

    WRITING = 1
    HANDLER = 2
    BACKLOG = 4
    JOURNAL = 8

    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0

    def paused_for(self, reason: int) -> bool:
        return bool(self._reasons & reason)

    def pause(self, reason: int) -> None:
        if not self._reasons:
            self._transport.pause_reading()
        self._reasons |= reason

    def resume(self, reason: int) -> None:
        if self._reasons & reason:
            self._reasons &= ~reason
            if not self._reasons and not self._transport.is_closing():
                self._transport.resume_reading()
