"""Counters, histograms and per-second series of one worker, mergeable without loss.

A :class:`Stats` is what a worker returns and what ``merge`` reads back from JSON;
combining two of them is plain addition (histograms included), so any number of
workers and hosts add up to exactly the figures one big client would have measured.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tornado_echo.loadtest.errors import ResultFormatError
from tornado_echo.loadtest.histogram import Histogram

HISTOGRAMS = (
    "handshake",  # TCP connect + TLS + upgrade, ns
    "latency",  # echo round trip from the intended send time (corrected), ns
    "latency_uncorrected",  # echo round trip from the actual send time, ns
    "schedule_lag",  # open loop: actual send time minus intended, ns
    "loop_lag",  # how late the event loop woke a periodic timer, ns
)
COUNTERS = (
    "connections_attempted",
    "connections_not_attempted",  # wanted, but the run ended before they were tried
    "connections_established",
    "connections_failed",
    "connections_dropped",
    "messages_sent",
    "messages_received",
    "bytes_sent",
    "bytes_received",
    "messages_intended",
    "mismatches",
    "lost",
    "late",
    "duplicates",
    "retyped",
    "reordered",
)
# Wrong echoes: the counter of each class and the error category it is reported under.
# Order is part of the echo contract, so a reordered echo is wrong too.
ECHO_ERRORS = {
    "mismatches": "mismatch",
    "lost": "lost",
    "late": "late",
    "duplicates": "duplicate",
    "retyped": "retyped",
    "reordered": "reordered",
}
SERIES = ("established", "failed", "dropped", "closed", "received", "sent", "echo_errors")
# Per-second latency histograms group this many adjacent buckets (2**5: about 3% wide),
# enough for a plot of percentiles over time at a fraction of the size.
SECOND_BUCKET_SHIFT = 5
FORMAT_VERSION = 1


class Stats:
    """Everything measured by one worker (or the merge of several)."""

    def __init__(self) -> None:
        self.histograms = {name: Histogram() for name in HISTOGRAMS}
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.errors: Counter[str] = Counter()
        self.series: dict[str, list[int]] = {name: [] for name in SERIES}
        self.elapsed = 0.0  # seconds from first connect to last close
        self.cpu_seconds = 0.0  # process CPU time of the worker(s), summed
        self.peak_open = 0  # most connections open at once (summed over workers)
        self.ramp_seconds = 0.0  # from the start until the last connection opened
        self.workers: list[dict[str, Any]] = []  # per-worker saturation figures
        self.start_time = 0.0  # wall clock (time.time()) at the run's start
        self.interrupted = False  # stopped early by a signal: a partial result
        # Wall-clock [start, end] spans of the active phases measured, disjoint and sorted:
        # the elapsed time of merged runs is the length of their union, so runs side by
        # side count once and runs minutes apart count each.
        self.windows: list[list[float]] = []
        # Echo latency per second since the start: {coarse bucket: count} (see
        # SECOND_BUCKET_SHIFT), merged second by second like the series.
        self.latency_seconds: list[dict[int, int]] = []

    def error(self, category: str, count: int = 1) -> None:
        self.errors[category] += count

    def tick(self, name: str, second: int, count: int = 1) -> None:
        """Add ``count`` to series ``name`` at ``second`` since the run's start."""
        series = self.series[name]
        if second < 0:
            second = 0
        if len(series) <= second:
            series.extend([0] * (second + 1 - len(series)))
        series[second] += count

    def tick_latency(self, second: int, buckets: list[tuple[int, int]]) -> None:
        """Add latency samples, as (fine bucket index, count), to ``second``."""
        if not buckets:
            return
        second = max(0, second)
        seconds = self.latency_seconds
        if len(seconds) <= second:
            seconds.extend({} for _ in range(second + 1 - len(seconds)))
        target = seconds[second]
        for index, count in buckets:
            coarse = index >> SECOND_BUCKET_SHIFT
            target[coarse] = target.get(coarse, 0) + count

    def merge(self, other: Stats) -> None:
        for name, hist in other.histograms.items():
            self.histograms.setdefault(name, Histogram()).merge(hist)
        self.counters.update(other.counters)
        self.errors.update(other.errors)
        for name, values in other.series.items():
            mine = self.series.setdefault(name, [])
            if len(mine) < len(values):
                mine.extend([0] * (len(values) - len(mine)))
            for i, value in enumerate(values):
                mine[i] += value
        if not self.windows:
            # Taken as is: a merge of one result reads exactly like that result.
            self.windows = [list(window) for window in other.windows]
            self.elapsed = max(self.elapsed, other.elapsed)
        elif other.windows:
            self.windows = union(self.windows + other.windows)
            self.elapsed = sum(end - start for start, end in self.windows)
        else:
            self.elapsed = max(self.elapsed, other.elapsed)
        self.ramp_seconds = max(self.ramp_seconds, other.ramp_seconds)
        self.interrupted = self.interrupted or other.interrupted
        for second, buckets in enumerate(other.latency_seconds):
            self.tick_latency(second, [(c << SECOND_BUCKET_SHIFT, n) for c, n in buckets.items()])
        self.cpu_seconds += other.cpu_seconds
        self.peak_open += other.peak_open
        self.workers.extend(other.workers)
        if other.start_time and (not self.start_time or other.start_time < self.start_time):
            self.start_time = other.start_time

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "histograms": {name: h.to_dict() for name, h in self.histograms.items()},
            "counters": dict(self.counters),
            "errors": dict(self.errors),
            "series": {name: list(v) for name, v in self.series.items()},
            "elapsed": self.elapsed,
            "cpu_seconds": self.cpu_seconds,
            "peak_open": self.peak_open,
            "ramp_seconds": self.ramp_seconds,
            "interrupted": self.interrupted,
            "workers": list(self.workers),
            "start_time": self.start_time,
            "windows": [list(window) for window in self.windows],
            "latency_seconds": [sorted(second.items()) for second in self.latency_seconds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ResultFormatError(f"not a loadtest result of format {FORMAT_VERSION}")
        stats = cls()
        try:
            for name, hist in data["histograms"].items():
                stats.histograms[str(name)] = Histogram.from_dict(hist)
            stats.counters.update({str(k): int(v) for k, v in data["counters"].items()})
            stats.errors.update({str(k): int(v) for k, v in data["errors"].items()})
            for name, values in data["series"].items():
                stats.series[str(name)] = [int(v) for v in values]
            stats.elapsed = float(data["elapsed"])
            stats.cpu_seconds = float(data["cpu_seconds"])
            stats.peak_open = int(data["peak_open"])
            stats.ramp_seconds = float(data.get("ramp_seconds", 0.0))
            stats.interrupted = bool(data.get("interrupted", False))
            stats.workers = list(data["workers"])
            stats.start_time = float(data["start_time"])
            windows = data.get("windows")
            if windows is None and stats.start_time:  # written before windows existed
                windows = [[stats.start_time, stats.start_time + stats.elapsed]]
            stats.latency_seconds = [
                {int(index): int(count) for index, count in second}
                for second in data.get("latency_seconds", ())
            ]
            stats.windows = union([[float(start), float(end)] for start, end in windows or ()])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResultFormatError(f"malformed result: {exc!r}") from exc
        return stats


def union(spans: list[list[float]]) -> list[list[float]]:
    """The union of [start, end] spans as disjoint spans in ascending order."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
