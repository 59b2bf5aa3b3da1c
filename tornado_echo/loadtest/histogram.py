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


class Histogram:
    """Counts of values per log bucket, plus exact count, sum, min and max."""

    __slots__ = ("counts", "maximum", "minimum", "total", "total_sum")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.total_sum = 0
        self.minimum = 0
        self.maximum = 0

    def record(self, value: int) -> None:
        """Add one sample; negative values (clock skew) count as zero."""
        if value < 0:
            value = 0
        if value < _LINEAR:
            index = value
        else:
            shift = value.bit_length() - SUB_BITS
            index = (shift << _HALF_BITS) + (value >> shift)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        if self.total == 0 or value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        self.total += 1
        self.total_sum += value

    def merge(self, other: Histogram) -> None:
        """Add all of ``other``'s samples to this histogram (exact)."""
        if other.total == 0:
            return
        counts = self.counts
        for index, count in other.counts.items():
            counts[index] = counts.get(index, 0) + count
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
        for index in sorted(self.counts):
            seen += self.counts[index]
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
            "buckets": [[index, self.counts[index]] for index in sorted(self.counts)],
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
            for index, count in pairs:
                hist.counts[int(index)] = hist.counts.get(int(index), 0) + int(count)
            hist.total = int(data["count"])
            hist.total_sum = int(data["sum"])
            hist.minimum = int(data["min"])
            hist.maximum = int(data["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFormatError(f"malformed histogram: {exc!r}") from exc
        if sum(hist.counts.values()) != hist.total:
            raise ResultFormatError("histogram bucket counts do not add up to its count")
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
