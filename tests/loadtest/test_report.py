from __future__ import annotations

import io

from tornado_echo.loadtest.report import Thresholds, check_thresholds, render, summarize
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
        {"index": 0, "cpu_fraction": cpu, "loop_lag_p99_ms": 0.1, "schedule_lag_p99_ms": 0.0}
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
