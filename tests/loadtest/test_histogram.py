from __future__ import annotations

import random

import pytest

from tornado_echo.loadtest.errors import ResultFormatError
from tornado_echo.loadtest.histogram import MAX_VALUE, Histogram, bucket_bounds, bucket_index


def exact_percentile(values: list[int], percent: float) -> int:
    ordered = sorted(values)
    rank = max(1, -(-round(percent * 1000) * len(ordered) // 100_000))
    return ordered[rank - 1]


def test_buckets_are_contiguous_and_tight() -> None:
    previous_high = -1
    for index in range(0, 60_000):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert bucket_index(low) == index and bucket_index(high) == index
        assert (high - low) <= max(0, low) / 1024
        previous_high = high


@pytest.mark.parametrize("percent", [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0])
def test_percentiles_within_a_tenth_of_a_percent(percent: float) -> None:
    rng = random.Random(7)
    # Log-normal latencies from ~10 us to ~1 s, in ns, plus a heavy tail.
    values = [int(rng.lognormvariate(13.0, 1.5)) for _ in range(50_000)]
    values += [rng.randint(10**9, 5 * 10**9) for _ in range(20)]
    hist = Histogram()
    for value in values:
        hist.record(value)
    exact = exact_percentile(values, percent) if percent > 0 else min(values)
    got = hist.percentile(percent)
    assert exact <= got <= exact * 1.001 + 1


def test_small_values_are_exact() -> None:
    hist = Histogram()
    for value in [0, 1, 2, 2, 3, 2047]:
        hist.record(value)
    assert hist.percentile(50) == 2
    assert hist.percentile(100) == 2047
    assert hist.minimum == 0 and hist.total == 6


def test_merge_is_exactly_the_histogram_of_all_samples() -> None:
    rng = random.Random(3)
    parts = [[rng.randint(0, 10**10) for _ in range(3000)] for _ in range(4)]
    whole = Histogram()
    merged = Histogram()
    for part in parts:
        piece = Histogram()
        for value in part:
            piece.record(value)
            whole.record(value)
        merged.merge(Histogram.from_dict(piece.to_dict()))
    assert merged == whole
    assert merged.to_dict() == whole.to_dict()
    assert merged.percentile(99.99) == whole.percentile(99.99)


def test_merge_into_empty_and_of_empty() -> None:
    a = Histogram()
    b = Histogram()
    b.record(5000)
    a.merge(Histogram())
    a.merge(b)
    assert a.minimum == 5000 and a.maximum == 5000 and a.total == 1


def test_negative_values_count_as_zero() -> None:
    hist = Histogram()
    hist.record(-5)
    assert hist.minimum == 0 and hist.percentile(100) == 0


def test_from_dict_rejects_inconsistent_counts() -> None:
    data = Histogram().to_dict()
    data["count"] = 3
    with pytest.raises(ResultFormatError):
        Histogram.from_dict(data)
    with pytest.raises(ResultFormatError):
        Histogram.from_dict({"sub_bucket_bits": 11})


def test_huge_values_grow_the_buckets_and_round_trip() -> None:
    hist = Histogram()
    for value in (7, 3 * 2**50, 2**63 + 5, 2**70):
        hist.record(value)
    assert hist.maximum == MAX_VALUE  # beyond 2**64 - 1 counts as it
    assert hist.percentile(50) <= 3 * 2**50 * 1.001
    assert hist.percentile(100) == MAX_VALUE
    again = Histogram.from_dict(hist.to_dict())
    assert again == hist and again.percentile(75) == hist.percentile(75)


@pytest.mark.parametrize("bucket", [[-1, 1], [bucket_index(MAX_VALUE) + 1, 1], [5, -1]])
def test_from_dict_rejects_impossible_buckets(bucket: list[int]) -> None:
    data = Histogram().to_dict()
    data["buckets"] = [bucket]
    data["count"] = bucket[1]
    with pytest.raises(ResultFormatError):
        Histogram.from_dict(data)
