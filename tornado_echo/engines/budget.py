"""What one turn of the event loop may do, and what messages in flight may hold, shared by
every connection of a process.

Each connection's reads are already cut into slices (``FEED_MAX_FRAMES`` frames, about
``FEED_MAX_INFLATED`` inflated bytes), but thousands of connections each taking a slice in
the same turn still hold the loop for thousands of slices: 5,000 one-kilobyte frames that
inflate to 1 MiB each kept a worker's loop away for more than five seconds. Two budgets
bound the sum:

* :class:`TurnBudget`: frames parsed and bytes inflated or deflated on the loop per turn,
  across connections. A connection whose slice finds the turn spent waits for a later
  turn in one of three lanes: plain reads (cheap, bounded by what came on the wire),
  reads that go on inflating (where a few bytes cost a megabyte), and background work
  (connections' ends). Each lane is served in order of arrival (round-robin: who yields
  again goes to the back) and has a share of every turn reserved, so none starves; what
  is left goes to the lanes in that order. A probe's small echo thus waits at most about
  a turn, not behind every deflate bomb queued before it, and a mass disconnect neither
  stalls the survivors nor waits forever.
* :class:`MemoryBudget`: bytes of messages in flight (inflated and not yet echoed, waiting
  for their turn to be deflated off the loop included). Over the limit, a connection that
  holds nothing in flight inflates nothing more until enough is released (its plain frames
  go on: they cost what came on the wire); those that hold some go on, as finishing their
  messages is how memory is released. Known limit: a peer that leaves a compressed
  message unfinished keeps what it inflated so far (at most ``max_message_size``) in the
  budget for as long as it stays; enough such peers (``max_inflight_bytes`` /
  ``max_message_size``, 64 at the defaults) make the others' compressed messages wait
  (backpressure, not failure) until they leave. ``max_connections_per_ip`` bounds how many
  one address can bring.

Both are pure logic: the caller hands in how to book a callback for the next turn
(``loop.call_soon``), so tests drive the turns by hand.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

# Per turn, across the connections of a process. One slice of one connection (256 frames
# or 1 MiB inflated) fits many times; a turn at the limit takes some tens of milliseconds.
TURN_FRAMES = 4096
TURN_BYTES = 4 << 20
# A connection's close (session record, metrics, log line) costs about as much as this many
# frames.
CLOSE_COST = 16
# The lanes of waiting work, in order of priority; each has 1/SHARE of a turn reserved, and
# as much is kept for the reads that arrive in the turn itself.
PLAIN, INFLATING, BACKGROUND = range(3)
SHARE = 4
# What one resumed reader may add before the budget is checked again (one slice).
RESUME_ALLOWANCE = 1 << 20

Book = Callable[[Callable[[], None]], object]
_NOTHING = (0, 0)


class TurnBudget:
    """Work per turn of the loop, for every connection of a process (see the module docs).

    ``grant(frames, nbytes)`` gives the room a slice may take now ((0, 0): the turn is
    spent); ``spend(frames, nbytes)`` takes it off; ``wait(resume, lane)`` calls
    ``resume()`` on a later turn with room. ``beats`` counts the turns that did work (a
    budget bounds each): the supervisor reads it to tell a busy loop from a stuck one.
    """

    def __init__(self, book: Book, frames: int = TURN_FRAMES, nbytes: int = TURN_BYTES) -> None:
        self.frames = frames
        self.nbytes = nbytes
        self._book = book
        self.frames_left = frames
        self.bytes_left = nbytes
        self.booked = False
        self._lanes: tuple[deque[Callable[[], None]], ...] = (deque(), deque(), deque())
        self.turns = 0
        # A counter others may read: by default private, a shared-memory slot in a worker.
        self.beats = memoryview(bytearray(8)).cast("Q")

    @property
    def spent(self) -> bool:
        return self.frames_left <= 0 or self.bytes_left <= 0

    @property
    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes)

    def grant(self, frames: int, nbytes: int) -> tuple[int, int]:
        """The most a slice that wants ``frames``/``nbytes`` may take this turn (a caller on
        a hot path may read :attr:`frames_left` and :attr:`bytes_left` first: when both
        cover its slice, that is the answer)."""
        # On every read of every connection: comparisons rather than min().
        frames_left, bytes_left = self.frames_left, self.bytes_left
        if frames_left <= 0 or bytes_left <= 0:
            return _NOTHING
        return (
            frames if frames < frames_left else frames_left,
            nbytes if nbytes < bytes_left else bytes_left,
        )

    def spend(self, frames: int, nbytes: int) -> None:
        self.frames_left -= frames
        self.bytes_left -= nbytes
        if not self.booked:
            self.book_turn()

    def book_turn(self) -> None:
        """Have the next turn start afresh (a hot path that spends inline calls this once
        :attr:`booked` is false)."""
        self.booked = True
        self._book(self._next_turn)

    def wait(self, resume: Callable[[], None], lane: int = PLAIN) -> None:
        """Call ``resume()`` on a later turn, after those that waited before in ``lane``."""
        self._lanes[lane].append(resume)
        if not self.booked:
            self.book_turn()

    def defer(self, resume: Callable[[], None]) -> None:
        """:meth:`wait` in the background lane."""
        self.wait(resume, BACKGROUND)

    def _next_turn(self) -> None:
        self.booked = False
        self.turns += 1
        self.beats[0] += 1
        self.frames_left, self.bytes_left = self.frames, self.nbytes
        share_frames, share_bytes = self.frames // SHARE, self.nbytes // SHARE
        # Each lane its reserved share first; then what is left, lane by lane, but for a
        # share kept for this turn's own arrivals. Each lane is gone through at most once
        # per pass: who yields again waits for the next turn.
        for lane in self._lanes:
            stop_frames = self.frames_left - share_frames
            stop_bytes = self.bytes_left - share_bytes
            self._serve(lane, stop_frames, stop_bytes)
        for lane in self._lanes:
            self._serve(lane, share_frames, share_bytes)
        if any(self._lanes) and not self.booked:
            self.book_turn()

    def _serve(self, lane: deque[Callable[[], None]], frames: int, nbytes: int) -> None:
        """Resume ``lane``'s oldest while more than ``frames`` and ``nbytes`` are left."""
        for _ in range(len(lane)):
            if self.frames_left <= max(frames, 0) or self.bytes_left <= max(nbytes, 0):
                return
            lane.popleft()()


class MemoryBudget:
    """Bytes of messages in flight in a process, against ``limit`` (0: no limit).

    Connections :meth:`charge` what they come to hold and take it back with a negative
    charge. While :attr:`over`, a connection holding nothing calls :meth:`wait`; once the
    total is below the limit again, waiters are resumed oldest first, each counted as one
    more slice (``RESUME_ALLOWANCE``) until the limit would be reached, the rest on later
    releases.
    """

    def __init__(self, book: Book, limit: int) -> None:
        self._limit = limit
        self.held = 0
        self.peak = 0
        # Read on every read of every connection: kept up to date rather than computed.
        self.over = False
        self._book = book
        self._waiting: deque[Callable[[], None]] = deque()
        self._booked = False

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._limit = limit
        self.charge(0)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def charge(self, delta: int) -> None:
        held = self.held = self.held + delta
        if held > self.peak:
            self.peak = held
        self.over = 0 < self._limit <= held
        if delta <= 0 and self._waiting and not self._booked and not self.over:
            self._booked = True
            self._book(self._release)

    def wait(self, resume: Callable[[], None]) -> None:
        self._waiting.append(resume)
        if not self._booked and not self.over:
            self._booked = True
            self._book(self._release)

    def _release(self) -> None:
        self._booked = False
        room = self.limit - self.held if self.limit else len(self._waiting) * RESUME_ALLOWANCE
        waiting = self._waiting
        while waiting and room > 0:
            room -= RESUME_ALLOWANCE
            waiting.popleft()()


class LoopBudgets:
    """The two budgets of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, memory_limit: int) -> None:
        self.turn = TurnBudget(loop.call_soon)
        self.memory = MemoryBudget(loop.call_soon, memory_limit)


# Until the server sets it (max_inflight_bytes), a loop's memory budget is this.
DEFAULT_INFLIGHT_BYTES = 64 << 20
_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBudgets] = (
    weakref.WeakKeyDictionary()
)


def loop_budgets() -> LoopBudgets:
    """The running loop's budgets (one per loop, made on first use)."""
    loop = asyncio.get_running_loop()
    budgets = _budgets.get(loop)
    if budgets is None:
        budgets = _budgets[loop] = LoopBudgets(loop, DEFAULT_INFLIGHT_BYTES)
    return budgets


def made_budgets() -> LoopBudgets | None:
    """The running loop's budgets if it has any (none outside a loop), for reading them."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _budgets.get(loop)
