from __future__ import annotations

import io
import random

from tornado_echo.loadtest.protocol import TimerLateness
from tornado_echo.loadtest.report import (
    Thresholds,
    check_thresholds,
    render,
    summarize,
    timeline,
    timeline_lines,
)
from tornado_echo.loadtest.stats import Stats


def stats_with(latencies_ms: list[float], lost: int = 0, cpu: float = 0.2) -> Stats:
    stats = Stats()
    for ms in latencies_ms:
        stats.histograms["latency"].record(int(ms * 1e6))
    stats.counters["connections_attempted"] = 1
    stats.counters["connections_established"] = 1
    stats.counters["messages_sent"] = len(latencies_ms) + lost
    stats.counters["messages_received"] = len(latencies_ms)
    stats.counters["lost"] = lost
    stats.elapsed = 2.0
    stats.workers = [
        {
            "index": 0,
            "elapsed": 2.0,
            "cpu_fraction": cpu,
            "loop_lag_p99_ms": 0.1,
            "schedule_lag_p99_ms": 0.0,
        }
    ]
    return stats


def test_thresholds_name_each_failure() -> None:
    summary = summarize(stats_with([1.0] * 98 + [30.0] * 2, lost=1), {"mode": "closed"})
    assert summary["throughput"]["msgs_per_s"] == 50.0
    assert check_thresholds(summary, Thresholds(50.0, 0.05, 10.0)) == []
    failed = check_thresholds(summary, Thresholds(10.0, 0.001, 100.0))
    assert [f.split(":")[0] for f in failed] == [
        "--max-p99-ms",
        "--max-error-rate",
        "--min-throughput",
    ]


def test_no_samples_fails_latency_threshold() -> None:
    summary = summarize(Stats(), {})
    assert check_thresholds(summary, Thresholds(max_p99_ms=1.0))


def test_saturation_guard_flags_a_busy_client() -> None:
    calm = summarize(stats_with([1.0]), {"mode": "closed"})["saturation"]
    busy = summarize(stats_with([1.0], cpu=0.99), {"mode": "closed"})["saturation"]
    assert not calm["client_bound"]
    assert busy["client_bound"] and "99%" in busy["reasons"][0]
    out = io.StringIO()
    render(summarize(stats_with([1.0], cpu=0.99), {}), out)
    assert "CLIENT-BOUND" in out.getvalue()


def test_a_run_too_short_to_judge_is_not_client_bound_on_cpu() -> None:
    stats = stats_with([1.0], cpu=1.0)
    stats.workers[0]["elapsed"] = 0.05  # e.g. every connection refused at once
    assert not summarize(stats, {"mode": "closed"})["saturation"]["client_bound"]


def test_open_loop_shortfall_is_client_bound() -> None:
    stats = stats_with([1.0] * 10)
    stats.counters["messages_intended"] = 100
    stats.workers[0]["schedule_lag_p99_ms"] = 5.0
    sat = summarize(stats, {"mode": "open", "rate_per_connection": 1000.0})["saturation"]
    assert sat["client_bound"] and "sent 10 of 100 messages due" in sat["reasons"][0]


def test_open_loop_slow_ramp_up_is_not_a_shortfall() -> None:
    # Every due send was made, though fewer than rate x established x elapsed: the
    # connections opened late (a slow server), which is not the client's fault.
    stats = stats_with([1.0] * 10)
    stats.counters["messages_intended"] = 10
    stats.workers[0]["schedule_lag_p99_ms"] = 5.0
    sat = summarize(stats, {"mode": "open", "rate_per_connection": 1000.0})["saturation"]
    assert not sat["client_bound"], sat["reasons"]


def test_stats_round_trip_and_merge() -> None:
    a, b = stats_with([1.0, 2.0]), stats_with([3.0], lost=2)
    a.error("close_1011")
    a.tick("received", 3, 5)
    merged = Stats.from_dict(a.to_dict())
    merged.merge(Stats.from_dict(b.to_dict()))
    assert merged.counters["messages_received"] == 3
    assert merged.counters["lost"] == 2
    assert merged.errors["close_1011"] == 1
    assert merged.series["received"] == [0, 0, 0, 5]
    assert merged.histograms["latency"].total == 3
    assert len(merged.workers) == 2


def test_timeline_of_a_short_run_has_a_row_per_second() -> None:
    series = {"established": [3, 1, 0], "failed": [0, 2, 0], "dropped": [0, 0, 1]}
    series["received"] = [10, 40, 5]
    assert timeline(series) == [
        {"from_s": 0, "to_s": 1, "established": 3, "failed": 0, "dropped": 0, "received": 10},
        {"from_s": 1, "to_s": 2, "established": 1, "failed": 2, "dropped": 0, "received": 40},
        {"from_s": 2, "to_s": 3, "established": 0, "failed": 0, "dropped": 1, "received": 5},
    ]


def test_timeline_folds_a_long_run_into_equal_intervals_that_keep_the_totals() -> None:
    series = {
        "established": [i % 7 for i in range(601)],
        "failed": [i % 3 for i in range(601)],
        "dropped": [1 if i % 50 == 0 else 0 for i in range(601)],
        "received": [1000 + i for i in range(601)],
    }
    rows = timeline(series)
    assert len(rows) == 20
    assert [r["to_s"] - r["from_s"] for r in rows] == [31] * 19 + [12]
    assert [r["from_s"] for r in rows] == list(range(0, 601, 31))
    for name, values in series.items():
        assert sum(r[name] for r in rows) == sum(values)
    assert rows[1]["received"] == sum(series["received"][31:62])
    assert len(timeline({"received": [1] * 100})) == 20  # exactly 5 s per row
    assert len(timeline({"received": [1] * 100}, max_rows=7)) == 7  # 15 s, then 10 s


def test_timeline_series_of_unequal_length_and_without_echoes() -> None:
    rows = timeline({"established": [2], "failed": [0, 0, 4], "dropped": []}, max_rows=2)
    assert rows == [
        {"from_s": 0, "to_s": 2, "established": 2, "failed": 0, "dropped": 0},
        {"from_s": 2, "to_s": 3, "established": 0, "failed": 4, "dropped": 0},
    ]
    assert timeline({"established": [], "received": []}) == []
    assert timeline({"sent": [5, 5]}) == []  # not a series the timeline shows


def test_timeline_lines_count_connections_and_rate_echoes() -> None:
    rows = [
        {"from_s": 0, "to_s": 5, "established": 40, "failed": 2, "dropped": 0, "received": 500},
        {"from_s": 5, "to_s": 7, "established": 0, "failed": 0, "dropped": 3, "received": 7},
    ]
    lines = timeline_lines(rows)
    assert lines[:2] == ["", "connections over time (5 s per row)"]
    assert lines[2].split() == ["seconds", "established", "failed", "dropped", "echoed/s"]
    assert lines[3].split() == ["0-5", "40", "2", "0", "100.0"]
    assert lines[4].split() == ["5-7", "0", "0", "3", "3.5"]  # the last row is 2 s wide
    without = timeline_lines([{k: v for k, v in r.items() if k != "received"} for r in rows])
    assert without[2].split()[-1] == "dropped" and without[3].split() == ["0-5", "40", "2", "0"]
    assert timeline_lines([]) == []


def test_render_shows_the_timeline_only_when_there_is_one() -> None:
    stats = stats_with([1.0])
    out = io.StringIO()
    render(summarize(stats, {}), out)
    assert "connections over time" not in out.getvalue()
    stats.tick("established", 0)
    stats.tick("received", 1, 9)
    out = io.StringIO()
    render(summarize(stats, {}), out)
    text = out.getvalue().splitlines()
    start = text.index("connections over time (1 s per row)")
    assert [line.split() for line in text[start + 2 : start + 4]] == [
        ["0-1", "1", "0", "0", "0.0"],
        ["1-2", "0", "0", "0", "9.0"],
    ]


def test_merged_elapsed_is_the_union_of_the_run_windows() -> None:
    def run(start: float, end: float) -> Stats:
        stats = Stats()
        stats.windows = [[start, end]]
        stats.elapsed = end - start
        return stats

    side_by_side = Stats()
    for start, end in ((100.0, 110.0), (105.0, 112.0), (100.0, 110.0)):
        side_by_side.merge(run(start, end))
    assert side_by_side.elapsed == 12.0
    apart = Stats()
    apart.merge(run(100.0, 110.0))
    apart.merge(run(400.0, 405.0))
    assert apart.elapsed == 15.0
    assert Stats.from_dict(apart.to_dict()).windows == [[100.0, 110.0], [400.0, 405.0]]


def test_saturation_guard_counts_time_waiting_for_a_cpu() -> None:
    # 60% on a CPU is not busy by itself; 60% + 35% in the run queue is a client that
    # wanted a whole core, and 35% of its timings are scheduler delay.
    stats = stats_with([1.0], cpu=0.6)
    stats.workers[0]["run_queue_fraction"] = 0.35
    sat = summarize(stats, {"mode": "closed"})["saturation"]
    assert sat["client_bound"]
    assert [r.split(" ")[2:4] for r in sat["reasons"]] == [["was", "ready"], ["waited", "for"]]
    stats.workers[0]["run_queue_fraction"] = 0.05
    assert not summarize(stats, {"mode": "closed"})["saturation"]["client_bound"]
    stats.workers[0]["run_queue_fraction"] = None  # no schedstat on this kernel
    assert not summarize(stats, {"mode": "closed"})["saturation"]["client_bound"]


def test_open_loop_warns_when_the_testers_own_lateness_is_a_noticeable_share() -> None:
    def warnings(lateness_ms: float) -> list[str]:
        stats = stats_with([1.0] * 100)
        for _ in range(100):
            stats.histograms["latency_uncorrected"].record(1_000_000)
            stats.histograms["schedule_lag"].record(int(lateness_ms * 1e6))
        return summarize(stats, {"mode": "open"})["warnings"]

    assert warnings(0.0) == [] and warnings(0.02) == []
    [warning] = warnings(0.5)
    assert "tester's own lateness" in warning and "50%" in warning


def test_timer_lateness_learns_how_early_to_set_timers() -> None:
    lateness = TimerLateness()
    rng = random.Random(1)
    # Sends 0.4-0.5 ms late when timers are set on time: it learns to set them earlier
    # until about one in ten is still late, and never more than its cap.
    for _ in range(2000):
        lateness.observe(int(rng.uniform(400_000, 500_000)) - lateness.early_ns)
    assert 440_000 <= lateness.early_ns <= 520_000
    for _ in range(2000):
        lateness.observe(10**9)
    assert lateness.early_ns == TimerLateness.CAP_NS
