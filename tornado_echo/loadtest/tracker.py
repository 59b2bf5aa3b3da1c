"""Per-connection bookkeeping of sent messages and their echoes, without I/O.

Every payload is ``%016x`` of its sequence number, a fixed filler, and the sequence
number's last (up to 16) hex digits again, so an echo with a garbled sequence number
still names the message it answers by its other end: one mismatch, not a duplicate plus
a loss. Each payload in flight is kept, and its echo is compared with it byte for byte.
The tracker classifies each echo as good (latency recorded), mismatched, duplicate,
retyped or reordered. A message not echoed within the timeout counts as lost; if its echo
still comes, it is moved from lost to late (its latency recorded all the same).
"""

from __future__ import annotations

import random

from tornado_echo.loadtest.config import SEQ_WIDTH, SizeSpec
from tornado_echo.loadtest.histogram import Histogram

# Messages past their timeout that one connection remembers, for their echoes to count as
# late rather than as duplicates.
OVERDUE_KEPT = 10_000
_FILLER_UNIT = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def suffix_width(size: int) -> int:
    """How many of the sequence number's hex digits end a payload of ``size`` bytes."""
    return max(0, min(SEQ_WIDTH, size - SEQ_WIDTH))


class Filler:
    """Cached payload middles by size (shared by all connections of a worker)."""

    def __init__(self, max_size: int) -> None:
        body = max(0, max_size - SEQ_WIDTH)
        self._data = (_FILLER_UNIT * (body // len(_FILLER_UNIT) + 1))[:body]
        self._cache: dict[int, bytes] = {}

    def middle(self, size: int) -> bytes:
        """The bytes between the sequence number and its repeat in a ``size``-byte payload."""
        middle = self._cache.get(size)
        if middle is None:
            middle = self._data[: size - SEQ_WIDTH - suffix_width(size)]
            if len(self._cache) < 4096:
                self._cache[size] = middle
        return middle


class LiveCounters:
    """Hot counters shared by a worker's connections (folded into Stats at the end)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "duplicates",
        "intended",
        "late",
        "lost",
        "mismatches",
        "received",
        "reordered",
        "retyped",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.mismatches = 0
        self.lost = 0  # not echoed within the timeout (so far: a late echo takes one back)
        self.late = 0  # echoed, but after the timeout
        self.duplicates = 0
        self.reordered = 0
        self.retyped = 0
        self.intended = 0  # open loop: sends the schedule made due


class EchoTracker:
    """Sequence numbers in flight on one connection and the checks on their echoes."""

    __slots__ = (
        "_cut",
        "_filler",
        "_fixed_middle",
        "_latency",
        "_live",
        "_rng",
        "_sizes",
        "_uncorrected",
        "_whole_middle",
        "max_received",
        "next_seq",
        "overdue",
        "pending",
    )

    def __init__(
        self,
        live: LiveCounters,
        latency: Histogram,
        uncorrected: Histogram | None,
        sizes: SizeSpec,
        filler: Filler,
        rng: random.Random,
    ) -> None:
        self._live = live
        self._latency = latency
        # None in a closed loop: it sends when it intends to, so its one figure is both.
        self._uncorrected = uncorrected
        self._sizes = sizes
        self._filler = filler
        self._rng = rng
        fixed = sizes.low == sizes.high
        self._fixed_middle = filler.middle(sizes.low) if fixed else None
        self._cut = SEQ_WIDTH - suffix_width(sizes.low) if fixed else 0
        # What answer_and_next() needs: one size whose payload ends in all 16 digits.
        self._whole_middle = self._fixed_middle if fixed and not self._cut else None
        # Keyed by the payload's 16-digit prefix, so that one dict lookup of an echo's
        # first 16 bytes both finds the message and checks those bytes exactly.
        # prefix -> (intended send ns, actual send ns, seq, payload sent);
        # dict order = send order
        self.pending: dict[bytes, tuple[int, int, int, bytes]] = {}
        # Messages past the timeout, counted lost until their echo comes (then late), the
        # oldest let go past OVERDUE_KEPT: same keys and entries as ``pending``.
        self.overdue: dict[bytes, tuple[int, int, int, bytes]] = {}
        self.next_seq = 0
        self.max_received = -1

    def next_payload(self, intended_ns: int, now_ns: int) -> bytes:
        """The payload of the next message; records it as in flight."""
        seq = self.next_seq
        self.next_seq = seq + 1
        prefix = b"%016x" % seq
        middle = self._fixed_middle
        if middle is None:
            size = self._sizes.sample(self._rng)
            middle = self._filler.middle(size)
            suffix = prefix[SEQ_WIDTH - suffix_width(size) :]
        else:
            suffix = prefix[self._cut :]  # the usual 16 digits: prefix itself, no copy
        payload = prefix + middle + suffix
        self.pending[prefix] = (intended_ns, now_ns, seq, payload)
        live = self._live
        live.sent += 1
        live.bytes_sent += len(payload)
        return payload

    def on_echo(self, payload: bytes, now_ns: int) -> bool:
        """Check one echoed message; True if it answered a message in flight."""
        prefix = payload[:SEQ_WIDTH]
        entry = self.pending.pop(prefix, None)
        if entry is None:
            late = self.overdue.pop(prefix, None)
            if late is None:
                return self._unexpected(payload)
            self._late(payload, late, now_ns)
            return False  # its place in the loop was taken when it expired
        intended, sent, seq, expected = entry
        if payload != expected:
            self._mismatched(payload, prefix, entry)
            return True
        live = self._live
        if seq < self.max_received:
            live.reordered += 1
        else:
            self.max_received = seq
        live.received += 1
        live.bytes_received += len(payload)
        self._latency.record(now_ns - intended)
        uncorrected = self._uncorrected
        if uncorrected is not None:
            uncorrected.record(now_ns - sent)
        return True

    def _late(self, payload: bytes, entry: tuple[int, int, int, bytes], now_ns: int) -> None:
        # The echo of a message counted lost at its timeout: it is late instead, and timed
        # like any other, so the maximum latency is the true one.
        live = self._live
        live.lost -= 1
        intended, sent, seq, expected = entry
        if payload != expected:
            live.mismatches += 1
            return
        live.late += 1
        if seq < self.max_received:
            live.reordered += 1
        else:
            self.max_received = seq
        self._latency.record(now_ns - intended)
        uncorrected = self._uncorrected
        if uncorrected is not None:
            uncorrected.record(now_ns - sent)

    def answer_and_next(self, payload: bytes, now_ns: int) -> bytes | None:
        """A closed loop's usual step in one call: on_echo(), then next_payload().

        If ``payload`` is the exact echo of a message in flight and every payload has the
        same size of 32 bytes or more, count it as :meth:`on_echo` does and return the next
        payload, recorded as :meth:`next_payload` ``(now_ns, now_ns)`` does. Otherwise
        return None with nothing changed: the caller then takes the general way.
        """
        middle = self._whole_middle
        pending = self.pending
        prefix = payload[:SEQ_WIDTH]
        entry = pending.get(prefix)
        if entry is None or middle is None or payload != entry[3]:
            return None
        del pending[prefix]
        # on_echo()'s good echo and next_payload(), inlined: this runs once per echo.
        intended, _, seq, _ = entry
        live = self._live
        if seq < self.max_received:
            live.reordered += 1
        else:
            self.max_received = seq
        size = len(payload)
        live.received += 1
        live.bytes_received += size
        self._latency.record(now_ns - intended)  # closed loop: no uncorrected figure
        seq = self.next_seq
        self.next_seq = seq + 1
        prefix = b"%016x" % seq
        payload = prefix + middle + prefix
        pending[prefix] = (now_ns, now_ns, seq, payload)
        live.sent += 1
        live.bytes_sent += size
        return payload

    def on_retyped(self, payload: bytes) -> bool:
        """An echo in the other frame type (text for binary or back): never a good echo.

        True if it answered a message in flight, which then counts as retyped only (not
        also lost); otherwise it is classified like any unexpected echo.
        """
        if self.pending.pop(payload[:SEQ_WIDTH], None) is None:
            return self._unexpected(payload)
        self._live.retyped += 1
        return True

    def _named_by_suffix(self, payload: bytes) -> bytes | None:
        # The prefix that the payload's last digits (and, for a short suffix, its first
        # ones) spell, if that message is in flight.
        width = suffix_width(len(payload))
        if not width:
            return None
        prefix = payload[: SEQ_WIDTH - width] + payload[-width:]
        return prefix if prefix in self.pending else None

    def _mismatched(
        self, payload: bytes, prefix: bytes, entry: tuple[int, int, int, bytes]
    ) -> None:
        # The prefix named a message in flight but the rest differs. If the suffix names
        # another one in flight, the prefix was the garbled part: that one is answered.
        self._live.mismatches += 1
        other = self._named_by_suffix(payload)
        if other is not None and other != prefix:
            del self.pending[other]
            # Back in flight (at the end of the send order: it may expire a little late).
            self.pending[prefix] = entry

    def _unexpected(self, payload: bytes) -> bool:
        # An echo whose prefix is not in flight as sent: classify it (the rare path).
        live = self._live
        named = self._named_by_suffix(payload)
        if named is not None:
            # A garbled sequence number of a message in flight: it answered that message.
            del self.pending[named]
            live.mismatches += 1
            return True
        try:
            seq = int(payload[:SEQ_WIDTH], 16)
        except ValueError:
            live.mismatches += 1
            return False
        prefix = b"%016x" % seq if seq >= 0 else b""
        if prefix in self.pending:
            # A garbled spelling of a sequence number in flight: it answered that message.
            del self.pending[prefix]
            live.mismatches += 1
            return True
        if 0 <= seq < self.next_seq:
            live.duplicates += 1
        else:
            live.mismatches += 1
        return False

    def expire(self, deadline_ns: int) -> int:
        """Count messages sent before ``deadline_ns`` as lost (until an echo makes one
        late); returns how many."""
        expired = 0
        pending = self.pending
        overdue = self.overdue
        while pending:
            prefix = next(iter(pending))
            entry = pending[prefix]
            if entry[1] >= deadline_ns:
                break
            del pending[prefix]
            overdue[prefix] = entry
            expired += 1
        # Bounded: a server that never answers must not grow this. An echo of a message let
        # go counts as a duplicate.
        while len(overdue) > OVERDUE_KEPT:
            del overdue[next(iter(overdue))]
        self._live.lost += expired
        return expired

    def abandon(self) -> int:
        """Count every message still in flight as lost (the connection is gone)."""
        count = len(self.pending)
        self.pending.clear()
        self.overdue.clear()
        self._live.lost += count
        return count
