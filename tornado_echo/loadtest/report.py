"""Derived figures, verdicts and output of a run (or of merged runs).

:func:`summarize` turns a :class:`Stats` into the figures people read; the
saturation guard and the CI thresholds are decided here, from those figures only,
so a merged result gets exactly the verdicts a single run would.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from tornado_echo.loadtest.errors import ResultFormatError
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.stats import ECHO_ERRORS, Stats

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
# The client is deemed the bottleneck past any of these (see the saturation guard).
CPU_BOUND = 0.90
# A shorter run's CPU share is its start-up work (e.g. every connection refused at once),
# not the load, so it is not judged on CPU.
CPU_MIN_ELAPSED_S = 1.0
# A worker that waited this share of its time for a CPU that other processes held measured
# its own scheduling delay along with the server's answers.
RUN_QUEUE_BOUND = 0.20
LOOP_LAG_BOUND_MS = 50.0
SCHEDULE_LAG_BOUND_MS = 50.0
RATE_SHORTFALL = 0.95
# Closed loop: a maximum this many times the p99 (and this much above it) means stalls
# that the closed-loop percentiles hide.
STALL_FACTOR = 10.0
STALL_MIN_GAP_MS = 50.0
# Open loop: a median send lateness above both of these is worth a warning (the tester's
# timers are set early by the lateness they learn, so it is normally 0).
SELF_LATENESS_MIN_MS = 0.05
SELF_LATENESS_SHARE = 0.10
CLOSED_LOOP_NOTE = (
    "closed loop: latency is NOT corrected for coordinated omission (a stalled server also "
    "holds back the sends, so the percentiles miss the stall); measure tail latency in open "
    "loop (--rate)"
)
# A long run's per-second series fold into at most this many rows of equal width.
TIMELINE_ROWS = 20
TIMELINE_SERIES = ("established", "failed", "dropped", "received")


@dataclass(frozen=True)
class Thresholds:
    """CI limits; None means unchecked."""

    max_p99_ms: float | None = None
    max_error_rate: float | None = None
    min_throughput: float | None = None
    max_p50_ms: float | None = None
    max_p999_ms: float | None = None
    max_latency_ms: float | None = None
    max_conn_failure_rate: float | None = None


# Latency limits: the Thresholds field, its option and the summary figure it bounds.
LATENCY_LIMITS = (
    ("max_p50_ms", "p50"),
    ("max_p99_ms", "p99"),
    ("max_p999_ms", "p99.9"),
    ("max_latency_ms", "max"),
)


def hist_summary(hist: Histogram, scale: float = 1e6) -> dict[str, float]:
    """Count, mean, percentiles and max of ``hist`` in ms (ns / ``scale``)."""
    out: dict[str, float] = {"count": hist.total}
    if hist.total:
        out["min"] = hist.minimum / scale
        out["mean"] = hist.mean / scale
        for p in PERCENTILES:
            out[f"p{p:g}"] = hist.percentile(p) / scale
        out["max"] = hist.maximum / scale
    return out


def summarize(stats: Stats, config: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run: throughput, errors, latency, connections over time, saturation."""
    c = stats.counters
    elapsed = stats.elapsed or 0.0
    attempts = c["connections_attempted"] + c["connections_not_attempted"] + c["messages_sent"]
    conn_errors = (
        c["connections_failed"] + c["connections_dropped"] + c["connections_not_attempted"]
    )
    msg_errors = sum(c[name] for name in ECHO_ERRORS)
    summary: dict[str, Any] = {
        "elapsed_s": elapsed,
        "interrupted": stats.interrupted,
        "connections": {
            "attempted": c["connections_attempted"],
            "not_attempted": c["connections_not_attempted"],
            "established": c["connections_established"],
            "failed": c["connections_failed"],
            "dropped": c["connections_dropped"],
            "peak_open": stats.peak_open,
            "last_opened_after_s": stats.ramp_seconds,
            "opened_per_s": opened_per_s(stats, config),
        },
        "messages": {
            "sent": c["messages_sent"],
            "received": c["messages_received"],
            "mismatches": c["mismatches"],
            "lost": c["lost"],
            "late": c["late"],
            "duplicates": c["duplicates"],
            "retyped": c["retyped"],
            "reordered": c["reordered"],
        },
        "throughput": {
            "msgs_per_s": c["messages_received"] / elapsed if elapsed else 0.0,
            "mb_per_s": c["bytes_received"] / elapsed / 1e6 if elapsed else 0.0,
            "sent_msgs_per_s": c["messages_sent"] / elapsed if elapsed else 0.0,
        },
        "error_rate": (conn_errors + msg_errors) / attempts if attempts else 0.0,
        "errors": dict(sorted(stats.errors.items())),
        "latency_ms": hist_summary(stats.histograms["latency"]),
        "latency_uncorrected_ms": hist_summary(stats.histograms["latency_uncorrected"]),
        "handshake_ms": hist_summary(stats.histograms["handshake"]),
    }
    summary["scenarios"] = {
        name.partition(":")[2]: count
        for name, count in sorted(c.items())
        if name.startswith("scenario:")
    }
    summary["timeline"] = timeline(stats.series)
    summary["saturation"] = saturation(stats, config)
    summary["latency_corrected"] = config.get("mode") == "open"
    summary["timeout_s"] = config.get("timeout")
    summary["warnings"] = latency_warnings(summary)
    return summary


def opened_per_s(stats: Stats, config: dict[str, Any]) -> float:
    """Connections opened a second: over the time it took to open them all, or, where
    connections come and go all run long (stages, churn, reconnect, scenarios), over the run."""
    established = stats.counters["connections_established"]
    replacing = any(config.get(key) for key in ("stages", "churn", "reconnect", "scenarios"))
    span = stats.elapsed if replacing or not stats.ramp_seconds else stats.ramp_seconds
    return established / span if span else 0.0


def latency_warnings(summary: dict[str, Any]) -> list[str]:
    """Open loop: the tester's own lateness is a noticeable part of the corrected latency.
    Closed loop: a maximum far above the p99 is a stall the percentiles hide."""
    latency = summary["latency_ms"]
    if not latency.get("count"):
        return []
    if summary["latency_corrected"]:
        late = summary["saturation"]["schedule_lag_ms"].get("p50", 0.0)
        sent = summary["latency_uncorrected_ms"].get("p50", 0.0)
        if late < SELF_LATENESS_MIN_MS or late < SELF_LATENESS_SHARE * sent or not sent:
            return []
        return [
            f"half the sends went out {late:.3f} ms or more after their time (the tester's "
            f"own lateness, {late / sent:.0%} of the p50 as sent): the corrected latency "
            "includes it; use fewer connections per worker or more workers"
        ]
    p99, peak = latency["p99"], latency["max"]
    if peak < STALL_FACTOR * p99 or peak - p99 < STALL_MIN_GAP_MS:
        return []
    return [
        f"max latency {peak:.1f} ms is {peak / p99:.0f}x the p99 ({p99:.3f} ms): the server "
        "stalled, and closed-loop percentiles do not show for how long; run open loop "
        "(--rate) for tail latency"
    ]


def timeline(
    series: Mapping[str, Sequence[int]], max_rows: int = TIMELINE_ROWS
) -> list[dict[str, int]]:
    """The per-second series folded into at most ``max_rows`` (>= 1) rows.

    Each row covers the seconds ``from_s`` up to (not including) ``to_s`` and holds the
    counts of :data:`TIMELINE_SERIES` in them, for each of those series that exists. All
    rows are equally wide except perhaps the last, so a row's counts add up exactly to
    what happened in it and the rows to the series' totals. No series: no rows.
    """
    names = [name for name in TIMELINE_SERIES if name in series]
    length = max((len(series[name]) for name in names), default=0)
    if not length:
        return []
    width = -(-length // max_rows)  # ceiling division
    rows: list[dict[str, int]] = []
    for start in range(0, length, width):
        end = min(start + width, length)
        row = {"from_s": start, "to_s": end}
        for name in names:
            row[name] = sum(series[name][start:end])
        rows.append(row)
    return rows


def saturation(stats: Stats, config: dict[str, Any]) -> dict[str, Any]:
    """Was the load generator itself the bottleneck? Reasons say why."""
    reasons: list[str] = []
    for worker in stats.workers:
        # Merged runs each have a worker 0: named by the run they came from.
        index = f"{worker.get('index')}" + (f" of {worker['run']}" if worker.get("run") else "")
        cpu = worker.get("cpu_fraction", 0.0)
        waited = worker.get("run_queue_fraction") or 0.0
        if worker.get("elapsed", 0.0) >= CPU_MIN_ELAPSED_S:
            if cpu >= CPU_BOUND:
                reasons.append(f"worker {index} used {cpu:.0%} of a core")
            elif cpu + waited >= CPU_BOUND:
                # Busy by CPU it got plus CPU it waited for: it wanted a whole core.
                reasons.append(
                    f"worker {index} was ready to run {cpu + waited:.0%} of the time "
                    f"(on a CPU {cpu:.0%}, waiting for one {waited:.0%})"
                )
            if waited >= RUN_QUEUE_BOUND:
                reasons.append(
                    f"worker {index} waited for a CPU {waited:.0%} of the time (other "
                    "processes had it): its latencies include that delay"
                )
        if worker.get("loop_lag_p99_ms", 0.0) > LOOP_LAG_BOUND_MS:
            reasons.append(f"worker {index} event-loop lag p99 {worker['loop_lag_p99_ms']:.1f} ms")
        if worker.get("schedule_lag_p99_ms", 0.0) > SCHEDULE_LAG_BOUND_MS:
            reasons.append(
                f"worker {index} send-schedule lag p99 {worker['schedule_lag_p99_ms']:.1f} ms"
            )
    # Open loop: the schedule's due sends (counted by the connections, so a slow ramp-up
    # does not inflate them) against those made.
    due = stats.counters["messages_intended"]
    sent = stats.counters["messages_sent"]
    if config.get("mode") == "open" and due and sent < RATE_SHORTFALL * due and stats.workers:
        lag = max(w.get("schedule_lag_p99_ms", 0.0) for w in stats.workers)
        if lag > 1.0:
            reasons.append(
                f"sent {sent} of {due} messages due on schedule (schedule lag p99 {lag:.1f} ms)"
            )
    return {
        "client_bound": bool(reasons),
        "reasons": reasons,
        "loop_lag_ms": hist_summary(stats.histograms["loop_lag"]),
        "schedule_lag_ms": hist_summary(stats.histograms["schedule_lag"]),
        "workers": stats.workers,
    }


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_thresholds(summary: dict[str, Any], limits: Thresholds) -> list[str]:
    """Messages naming each CI threshold the run failed (empty: all passed)."""
    failed: list[str] = []
    latency = summary["latency_ms"]
    for field, figure in LATENCY_LIMITS:
        limit = getattr(limits, field)
        if limit is None:
            continue
        value = latency.get(figure, math.inf)  # no echo at all fails every latency limit
        if value > limit:
            failed.append(f"{_option(field)}: {figure} latency {value:.3f} ms > {limit:g} ms")
    if limits.max_error_rate is not None and summary["error_rate"] > limits.max_error_rate:
        failed.append(
            f"--max-error-rate: error rate {summary['error_rate']:.6f} > {limits.max_error_rate:g}"
        )
    if limits.max_conn_failure_rate is not None:
        c = summary["connections"]
        rate = c["failed"] / c["attempted"] if c["attempted"] else 0.0
        if rate > limits.max_conn_failure_rate:
            failed.append(
                f"--max-conn-failure-rate: {c['failed']} of {c['attempted']} connections "
                f"failed ({rate:.6f} > {limits.max_conn_failure_rate:g})"
            )
    if limits.min_throughput is not None:
        rate = summary["throughput"]["msgs_per_s"]
        if rate < limits.min_throughput:
            failed.append(f"--min-throughput: {rate:.1f} msgs/s < {limits.min_throughput:g} msgs/s")
    return failed


def check_errors(summary: dict[str, Any]) -> list[str]:
    """The default check: any wrong echo or failed/dropped connection fails the run."""
    errors = summary["errors"]
    if not errors:
        return []
    listed = ", ".join(f"{name} {count}" for name, count in errors.items())
    return [f"errors: {listed} (--allow-errors accepts them)"]


# Settings that must agree for runs to be merged into one result.
MERGE_KEYS = ("url", "mode", "size", "binary", "deflate")


def run_record(stats: Stats, config: dict[str, Any], label: str) -> dict[str, Any]:
    """One run as a source of a (merged) result: identity, settings and headline figures."""
    c = stats.counters
    return {
        "run_id": uuid.uuid4().hex,
        "label": label,
        **{key: config.get(key) for key in MERGE_KEYS},
        "start_time": stats.start_time,
        "elapsed_s": stats.elapsed,
        "received": c["messages_received"],
        "msgs_per_s": c["messages_received"] / stats.elapsed if stats.elapsed else 0.0,
        "errors": sum(stats.errors.values()),
    }


def document(
    stats: Stats,
    config: dict[str, Any],
    runs: list[dict[str, Any]],
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole result as JSON-ready data (``merge`` reads it back)."""
    summary = summarize(stats, config)
    summary["warnings"] = [*warnings, *summary["warnings"]]
    summary["runs"] = runs
    return {
        "tool": "tornado-echo-loadtest",
        "config": config,
        "sources": [run["label"] for run in runs],
        "runs": runs,
        "summary": summary,
        "stats": stats.to_dict(),
    }


@dataclass
class Result:
    """A ``--json`` file read back: its Stats, settings and the runs it holds."""

    stats: Stats
    config: dict[str, Any]
    runs: list[dict[str, Any]]


def load(path: str) -> Result:
    """A ``--json`` file; ResultFormatError if it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ResultFormatError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ResultFormatError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict) or data.get("tool") != "tornado-echo-loadtest":
        raise ResultFormatError(f"{path}: not a tornado-echo-loadtest result")
    try:
        stats = Stats.from_dict(data["stats"])
        config = dict(data.get("config") or {})
        runs = data.get("runs")
        if runs is None:  # written before runs were recorded: the file is the run
            runs = [run_record(stats, config, path)]
        if not isinstance(runs, list) or not all(
            isinstance(run, dict)
            and isinstance(run.get("run_id"), str)
            and isinstance(run.get("label"), str)
            for run in runs
        ):
            raise ResultFormatError("malformed runs")
    except ResultFormatError as exc:
        raise ResultFormatError(f"{path}: {exc}") from None
    except KeyError:
        raise ResultFormatError(f"{path}: no stats") from None
    if len(runs) == 1 and "runs" in data:
        runs = [{**runs[0], "label": path}]  # one run: named by the file it is in
    return Result(stats, config, runs)


def merge(
    results: Sequence[tuple[str, Result]], allow_mixed: bool = False
) -> tuple[Stats, dict[str, Any], list[dict[str, Any]], list[str]]:
    """Merged Stats, settings, source runs and warnings of ``results`` (path, Result).

    Refuses (ResultFormatError) a run given twice, directly or inside a merged file, and
    runs with different settings (:data:`MERGE_KEYS`) unless ``allow_mixed``, which
    turns that into a warning.
    """
    merged = Stats()
    runs: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path, result in results:
        for run in result.runs:
            earlier = seen.get(run["run_id"])
            if earlier is not None:
                raise ResultFormatError(
                    f"{path}: run {run['label']!r} is already in {earlier}; "
                    "merging it twice would count it twice"
                )
            seen[run["run_id"]] = path
        if len(results) > 1:
            for worker in result.stats.workers:
                worker.setdefault("run", path)
        merged.merge(result.stats)
        runs.extend(result.runs)
    config = dict(results[0][1].config)
    warnings: list[str] = []
    for key in MERGE_KEYS:
        values = {json.dumps(run.get(key)) for run in runs}
        if len(values) > 1:
            listed = ", ".join(sorted(values))
            if not allow_mixed:
                raise ResultFormatError(
                    f"runs differ in {key} ({listed}); merging them would report one figure "
                    "for different loads (--allow-mixed merges them anyway)"
                )
            warnings.append(f"merged runs with different {key}: {listed}")
            config[key] = "mixed"
    return merged, config, runs, warnings


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=1)
        handle.write("\n")


def _fmt_hist(name: str, h: dict[str, float]) -> str:
    if not h.get("count"):
        return f"  {name:<22} (no samples)"
    cols = " ".join(f"{h[f'p{p:g}']:>9.3f}" for p in PERCENTILES)
    return f"  {name:<22} {cols} {h['max']:>9.3f} {int(h['count']):>10}"


def timeline_lines(rows: Sequence[Mapping[str, int]]) -> list[str]:
    """The "connections over time" section of the summary (nothing without rows).

    Connections are counted per row; echoes (when the rows have them) are per second of
    the row, so folded rows of a long run read like the per-second ones of a short run.
    """
    if not rows:
        return []
    width = rows[0]["to_s"] - rows[0]["from_s"]
    echoes = "received" in rows[0]
    title = f"connections over time ({width} s per row)"
    header = f"  {'seconds':>9} {'established':>11} {'failed':>8} {'dropped':>8}"
    lines = ["", title, header + (f" {'echoed/s':>10}" if echoes else "")]
    for row in rows:
        span = f"{row['from_s']}-{row['to_s']}"
        line = f"  {span:>9} {row['established']:>11} {row['failed']:>8} {row['dropped']:>8}"
        if echoes:
            line += f" {row['received'] / (row['to_s'] - row['from_s']):>10.1f}"
        lines.append(line)
    return lines


def source_lines(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The "merged runs" section: one line per source run (nothing for a single run)."""
    if len(runs) < 2:
        return []
    lines = [
        "",
        "merged runs",
        f"  {'started (UTC)':<19} {'seconds':>8} {'echoed/s':>10} {'errors':>7}  source",
    ]
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.get("start_time") or 0))
        lines.append(
            f"  {started:<19} {run.get('elapsed_s', 0.0):>8.2f} "
            f"{run.get('msgs_per_s', 0.0):>10.1f} {run.get('errors', 0):>7}  {run['label']}"
        )
    return lines


def _timed_note(summary: dict[str, Any]) -> str:
    """What the round-trip row holds and leaves out."""
    m = summary["messages"]
    timeout = summary.get("timeout_s")
    after = f"after the {timeout:g} s --timeout" if timeout else "after --timeout"
    wrong = m["mismatches"] + m["duplicates"] + m["retyped"]
    return (
        f"  (timed: every right echo, {m.get('late', 0)} late ({after}) among them; "
        f"not timed: {m['lost']} lost, {wrong} wrong)"
    )


def render(summary: dict[str, Any], out: TextIO) -> None:
    """The final human-readable table."""
    c = summary["connections"]
    m = summary["messages"]
    t = summary["throughput"]
    not_attempted = c.get("not_attempted", 0)
    lines = [
        f"duration {summary['elapsed_s']:.2f} s"
        + ("  (INTERRUPTED: partial result)" if summary.get("interrupted") else ""),
        f"connections  attempted {c['attempted']}  established {c['established']}  "
        f"failed {c['failed']}  dropped {c['dropped']}  peak open {c['peak_open']}  "
        f"last opened after {c['last_opened_after_s']:.2f} s  opened {c['opened_per_s']:.1f}/s"
        + (f"  not attempted {not_attempted} (the run ended first)" if not_attempted else ""),
        f"messages     sent {m['sent']}  echoed ok {m['received']}  late {m.get('late', 0)}"
        f"  mismatched {m['mismatches']}  lost {m['lost']}  duplicated {m['duplicates']}"
        f"  retyped {m['retyped']}  reordered {m['reordered']}",
        f"throughput   {t['msgs_per_s']:.1f} msgs/s  {t['mb_per_s']:.3f} MB/s",
        f"error rate   {summary['error_rate']:.6f}",
        "",
        "  latency (ms)           "
        + " ".join(f"{'p' + format(p, 'g'):>9}" for p in PERCENTILES)
        + f" {'max':>9} {'count':>10}",
    ]
    if summary.get("latency_corrected"):
        lines.append(_fmt_hist("round trip (corrected)", summary["latency_ms"]))
        lines.append(_fmt_hist("round trip (as sent)", summary["latency_uncorrected_ms"]))
    else:
        lines.append(_fmt_hist("round trip", summary["latency_ms"]))
    lines.append(_timed_note(summary))
    lines += [
        _fmt_hist("handshake", summary["handshake_ms"]),
        _fmt_hist("event-loop lag", summary["saturation"]["loop_lag_ms"]),
    ]
    if summary.get("latency_corrected"):  # a closed loop has no send schedule
        lines.append(_fmt_hist("send-schedule lag", summary["saturation"]["schedule_lag_ms"]))
    if not summary.get("latency_corrected"):
        lines.append(CLOSED_LOOP_NOTE)
    lines += [f"WARNING: {warning}" for warning in summary.get("warnings", ())]
    if summary.get("scenarios"):
        lines.append("")
        lines.append("sessions by scenario")
        lines += [f"  {count:>10}  {spec}" for spec, count in summary["scenarios"].items()]
    lines.extend(timeline_lines(summary["timeline"]))
    lines.extend(source_lines(summary.get("runs", ())))
    if summary["errors"]:
        lines.append("")
        lines.append("errors       " + "  ".join(f"{k} {v}" for k, v in summary["errors"].items()))
    sat = summary["saturation"]
    lines.append("")
    if sat["client_bound"]:
        lines.append("CLIENT-BOUND: the load generator could not keep up; figures understate")
        lines.append("the server. " + "; ".join(sat["reasons"]))
    else:
        lines.append("client kept up (not client-bound)")
    out.write("\n".join(lines) + "\n")
