"""Log-bucketed latency histogram (HDR style), lossless to merge.

Values are non-negative integers (the load tester records nanoseconds). Values below
``2**SUB_BITS`` get a bucket each; above that every power-of-two range is split into
``2**(SUB_BITS-1)`` equal buckets, so a bucket never spans more than ``1/1024`` of its
lower bound. Percentiles report the bucket's upper bound (capped at the exact maximum),
so a reported latency is never below the true one and at most 0.1% above it.

Merging adds bucket counts: the merge of two histograms is identical to the histogram
of the concatenated samples, which is what lets workers and hosts combine exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tornado_echo.loadtest.errors import ResultFormatError

SUB_BITS = 11
_LINEAR = 1 << SUB_BITS  # values below this are exact
_HALF_BITS = SUB_BITS - 1
MAX_VALUE = (1 << 64) - 1  # larger values are recorded as this


def bucket_index(value: int) -> int:
    """Bucket of ``value`` (``value >= 0``); monotonic in ``value``."""
    if value < _LINEAR:
        return value
    shift = value.bit_length() - SUB_BITS
    return (shift << _HALF_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Lowest and highest value that fall into bucket ``index``."""
    if index < _LINEAR:
        return index, index
    shift = (index >> _HALF_BITS) - 1
    low = (index - (shift << _HALF_BITS)) << shift
    return low, low + (1 << shift) - 1


_MAX_INDEX = bucket_index(MAX_VALUE)
_INITIAL_BUCKETS = bucket_index(1 << 40)  # values up to 2**40 ns (18 minutes) need no growth


class Histogram:
    """Counts of values per log bucket, plus exact count, sum, min and max."""

    __slots__ = ("counts", "maximum", "minimum", "total", "total_sum")

    def __init__(self) -> None:
        # A flat list indexed by bucket, not a dict: recording is on every echo's path
        # and a list increment costs half a dict get-and-set. It grows on demand.
        self.counts: list[int] = [0] * _INITIAL_BUCKETS
        self.total = 0
        self.total_sum = 0
        self.minimum = 0
        self.maximum = 0

    def record(self, value: int) -> None:
        """Add one sample; negative values (clock skew) count as zero.

        Values above ``MAX_VALUE`` (2**64 - 1, centuries in nanoseconds) count as it.
        """
        # The bucket arithmetic is bucket_index(), inlined for speed.
        if value < _LINEAR:
            if value < 0:
                value = 0
            index = value
        else:
            shift = value.bit_length() - SUB_BITS
            index = (shift << _HALF_BITS) + (value >> shift)
        try:
            self.counts[index] += 1
        except IndexError:
            if value > MAX_VALUE:
                value = MAX_VALUE
                index = _MAX_INDEX
            self._grow(index)
            self.counts[index] += 1
        total = self.total
        if value > self.maximum:
            self.maximum = value
        if value < self.minimum or not total:
            self.minimum = value
        self.total = total + 1
        self.total_sum += value

    def _grow(self, index: int) -> None:
        counts = self.counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))

    @classmethod
    def of_buckets(cls, pairs: Iterable[tuple[int, int]]) -> Histogram:
        """A histogram of (bucket index, count) pairs, e.g. one interval's new samples.

        Without the samples themselves, minimum and maximum are the bounds of the lowest
        and highest bucket and the mean is unknown (0).
        """
        hist = cls()
        for index, count in pairs:
            if count > 0:
                hist._grow(index)
                hist.counts[index] += count
                hist.total += count
        filled = hist.buckets()
        if filled:
            hist.minimum = bucket_bounds(filled[0][0])[0]
            hist.maximum = bucket_bounds(filled[-1][0])[1]
        return hist

    def new_since(self, earlier: list[int]) -> list[tuple[int, int]]:
        """(bucket index, count) of the samples added since ``earlier`` (a copy of counts)."""
        return [
            (index, count - (earlier[index] if index < len(earlier) else 0))
            for index, count in enumerate(self.counts)
            if count and (index >= len(earlier) or count != earlier[index])
        ]

    def buckets(self) -> list[tuple[int, int]]:
        """(bucket index, count) of every non-empty bucket, in ascending order."""
        return [(index, count) for index, count in enumerate(self.counts) if count]

    def merge(self, other: Histogram) -> None:
        """Add all of ``other``'s samples to this histogram (exact)."""
        if other.total == 0:
            return
        self._grow(len(other.counts) - 1)
        counts = self.counts
        for index, count in other.buckets():
            counts[index] += count
        self.minimum = other.minimum if self.total == 0 else min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.total += other.total
        self.total_sum += other.total_sum

    @property
    def mean(self) -> float:
        return self.total_sum / self.total if self.total else 0.0

    def percentile(self, percent: float) -> int:
        """Value at or below which ``percent`` percent of the samples fall (0 if empty)."""
        if self.total == 0:
            return 0
        if percent <= 0:
            return self.minimum
        # Integer ceil of percent/100*total, so p99.99 of 10_000 samples is exactly rank 9_999.
        rank = max(1, -(-round(percent * 1000) * self.total // 100_000))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.maximum)
        return self.maximum

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` restores it exactly."""
        return {
            "sub_bucket_bits": SUB_BITS,
            "count": self.total,
            "sum": self.total_sum,
            "min": self.minimum,
            "max": self.maximum,
            "buckets": [[index, count] for index, count in self.buckets()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild from :meth:`to_dict` output; raises ResultFormatError if inconsistent."""
        try:
            if data["sub_bucket_bits"] != SUB_BITS:
                raise ResultFormatError(
                    f"histogram has sub_bucket_bits={data['sub_bucket_bits']}, expected {SUB_BITS}"
                )
            hist = cls()
            pairs: Iterable[list[int]] = data["buckets"]
            for raw_index, raw_count in pairs:
                index, count = int(raw_index), int(raw_count)
                if not 0 <= index <= _MAX_INDEX or count < 0:
                    raise ResultFormatError(f"histogram bucket {index} count {count} is invalid")
                hist._grow(index)
                hist.counts[index] += count
            hist.total = int(data["count"])
            hist.total_sum = int(data["sum"])
            hist.minimum = int(data["min"])
            hist.maximum = int(data["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFormatError(f"malformed histogram: {exc!r}") from exc
        if sum(hist.counts) != hist.total:
            raise ResultFormatError("histogram bucket counts do not add up to its count")
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
