"""``--html FILE``: one self-contained HTML report of a result, charts included.

The charts are drawn by uPlot (MIT, vendored in ``assets/`` with its licence), inlined
with the data, so the file opens anywhere without a network. Everything shown is derived
from the same result document as the text summary and the JSON: figures are computed
here, in Python, and the page's script only draws them.
"""

from __future__ import annotations

import html
import json
import math
import time
from itertools import accumulate
from pathlib import Path
from typing import Any

from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.stats import SECOND_BUCKET_SHIFT, Stats

ASSETS = Path(__file__).with_name("assets")
UPLOT_VERSION = "1.6.32"  # assets/uPlot.iife.min.js and uPlot.min.css, from npm "uplot"
# The percentile spectrum's points: x = 1 / (1 - p), log-spaced up to what the samples
# resolve (HdrHistogram's plot); every point is a percentile of the exact histogram.
_SPECTRUM_STEP = 0.05  # in decades of 1 / (1 - p)


def _per_second_latency(stats: Stats, seconds: int) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {"p50": [], "p99": [], "max": []}
    top = (1 << SECOND_BUCKET_SHIFT) - 1
    for second in range(seconds):
        buckets = stats.latency_seconds[second] if second < len(stats.latency_seconds) else {}
        # Each coarse bucket stands for its upper end, so no figure is below the truth.
        hist = Histogram.of_buckets(
            ((coarse << SECOND_BUCKET_SHIFT) + top, count) for coarse, count in buckets.items()
        )
        for name, percent in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
            out[name].append(hist.percentile(percent) / 1e6 if hist.total else None)
    return out


def spectrum(hist: Histogram) -> list[list[float]]:
    """[x = 1 / (1 - p), latency ms] points of ``hist``'s percentile curve."""
    if not hist.total:
        return []
    points = []
    decades = math.log10(hist.total) if hist.total > 1 else 0.0
    steps = int(decades / _SPECTRUM_STEP) + 1
    for step in range(steps + 1):
        x = 10 ** min(step * _SPECTRUM_STEP, decades)
        percent = 100.0 * (1.0 - 1.0 / x)
        points.append([x, hist.percentile(percent) / 1e6])
    return points


def chart_data(doc: dict[str, Any]) -> dict[str, Any]:
    """What the page plots, from a result document (as written by ``--json``)."""
    stats = Stats.from_dict(doc["stats"])
    series = stats.series
    seconds = max((len(values) for values in series.values()), default=0)

    def per_second(name: str) -> list[int]:
        values = series.get(name, [])
        return values + [0] * (seconds - len(values))

    opened = accumulate(
        a - b for a, b in zip(per_second("established"), per_second("closed"), strict=True)
    )
    data: dict[str, Any] = {
        "seconds": list(range(seconds)),
        "received": per_second("received"),
        "sent": per_second("sent"),
        "open": list(opened),
        "established": per_second("established"),
        "failed": per_second("failed"),
        "dropped": per_second("dropped"),
        "echo_errors": per_second("echo_errors"),
        "latency": _per_second_latency(stats, seconds),
        "spectrum": {"round trip": spectrum(stats.histograms["latency"])},
    }
    if doc["summary"].get("latency_corrected"):
        data["spectrum"] = {
            "round trip (corrected)": spectrum(stats.histograms["latency"]),
            "round trip (as sent)": spectrum(stats.histograms["latency_uncorrected"]),
        }
    return data


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
    )


def _verdicts(summary: dict[str, Any], failures: list[str]) -> str:
    items: list[tuple[str, str]] = [("bad", line) for line in failures]
    sat = summary["saturation"]
    if sat["client_bound"]:
        items.append(("bad", "CLIENT-BOUND: " + "; ".join(sat["reasons"])))
    else:
        items.append(("good", "client kept up (not client-bound)"))
    items += [("warn", warning) for warning in summary.get("warnings", ())]
    if not summary.get("latency_corrected"):
        items.append(("warn", "closed loop: latency not corrected for coordinated omission"))
    if summary.get("interrupted"):
        items.append(("bad", "interrupted: a partial result"))
    if not failures:
        items.insert(0, ("good", "every check and threshold passed"))
    return "".join(f'<li class="{cls}">{html.escape(text)}</li>' for cls, text in items)


def _figures(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    c, m, t = summary["connections"], summary["messages"], summary["throughput"]
    figures: list[tuple[str, Any]] = [
        ("duration", f"{summary['elapsed_s']:.2f} s"),
        ("throughput", f"{t['msgs_per_s']:.1f} echoes/s, {t['mb_per_s']:.3f} MB/s"),
        (
            "connections",
            f"attempted {c['attempted']}, established {c['established']}, failed "
            f"{c['failed']}, dropped {c['dropped']}, peak open {c['peak_open']}"
            + (f", not attempted {c['not_attempted']}" if c.get("not_attempted") else ""),
        ),
        (
            "messages",
            f"sent {m['sent']}, echoed ok {m['received']}, late {m.get('late', 0)}, mismatched "
            f"{m['mismatches']}, lost {m['lost']}, duplicated {m['duplicates']}, "
            f"retyped {m['retyped']}, reordered {m['reordered']}",
        ),
        ("error rate", f"{summary['error_rate']:.6f}"),
    ]
    rows = [("latency_ms", "latency ms, corrected for coordinated omission")]
    if summary.get("latency_corrected"):
        rows.append(("latency_uncorrected_ms", "latency ms, as sent"))
    else:
        rows = [("latency_ms", "latency ms, closed loop (not corrected)")]
    for key, label in rows:
        lat = summary[key]
        if lat.get("count"):
            figures.append(
                (
                    label,
                    ", ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
                )
            )
    errors = summary["errors"]
    figures.append(("errors", ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"))
    return figures


def _setting(value: Any) -> str:
    # As a person reads it: no JSON null, no quotes around a plain string.
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def render(doc: dict[str, Any], failures: list[str]) -> str:
    """The whole HTML page of ``doc``; ``failures`` are the FAILED lines of the run."""
    summary = doc["summary"]
    data = json.dumps(chart_data(doc), separators=(",", ":")).replace("</", "<\\/")
    runs = doc.get("runs") or []
    started = min((run.get("start_time") or 0 for run in runs), default=0)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else ""
    config = doc.get("config", {})
    title = f"tornado-echo-loadtest: {config.get('url') or ', '.join(doc.get('sources', []))}"
    if len(runs) > 1:
        title += f" ({len(runs)} runs merged)"
    settings = [(key, _setting(value)) for key, value in config.items()]
    sources = [
        (run["label"], f"{run.get('msgs_per_s', 0.0):.1f} echoes/s, {run.get('errors', 0)} errors")
        for run in runs
    ]
    return _PAGE.format(
        title=html.escape(title),
        when=html.escape(when),
        verdicts=_verdicts(summary, failures),
        figures=_rows(_figures(summary)),
        settings=_rows(settings),
        sources=_rows(sources),
        uplot_css=(ASSETS / "uPlot.min.css").read_text(encoding="utf-8"),
        uplot_js=(ASSETS / "uPlot.iife.min.js").read_text(encoding="utf-8"),
        data=data,
        script=_SCRIPT,
        version=UPLOT_VERSION,
    )


def write(path: str, doc: dict[str, Any], failures: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(doc, failures))


_SCRIPT = """
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const W = Math.min(1100, document.body.clientWidth - 40);
const H = 260;
const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
function line(label, i, extra) {
  return Object.assign({label: label, stroke: colors[i % colors.length], width: 1.5}, extra);
}
function chart(id, title, x, ys, labels, opts) {
  const series = [{label: opts.xLabel || "second"}];
  labels.forEach((label, i) => series.push(line(label, i, {})));
  const o = {
    title: title, width: W, height: H, series: series,
    scales: Object.assign({x: {time: false}}, opts.scales || {}),
    axes: [{label: opts.xLabel || "seconds since start"}, {label: opts.yLabel, size: 70}],
  };
  if (opts.xAxis) o.axes[0] = Object.assign(o.axes[0], opts.xAxis);
  return new uPlot(o, [x].concat(ys), document.getElementById(id));
}
const logY = {y: {distr: 3, log: 10}};
function positive(values) { return values.map(v => (v && v > 0) ? v : null); }
if (D.seconds.length) {
  chart("throughput", "Throughput", D.seconds, [D.received, D.sent],
        ["echoed/s", "sent/s"], {yLabel: "messages per second"});
  chart("latency", "Echo latency per second (log scale)", D.seconds,
        [positive(D.latency.p50), positive(D.latency.p99), positive(D.latency.max)],
        ["p50 ms", "p99 ms", "max ms"], {yLabel: "ms", scales: logY});
  chart("connections", "Connections and errors", D.seconds,
        [D.open, D.established, D.failed, D.dropped, D.echo_errors],
        ["open", "opened/s", "failed/s", "dropped/s", "echo errors/s"],
        {yLabel: "connections / events"});
}
const names = Object.keys(D.spectrum).filter(n => D.spectrum[n].length);
if (names.length) {
  const xs = Array.from(new Set([].concat(...names.map(n => D.spectrum[n].map(p => p[0])))))
    .sort((a, b) => a - b);
  const ys = names.map(n => {
    const at = new Map(D.spectrum[n].map(p => [p[0], p[1]]));
    return xs.map(x => at.has(x) ? at.get(x) : null);
  });
  // Label the decades only: 1 = 0%, 10 = 90%, 100 = 99%, 1000 = 99.9% ...
  const nines = v => {
    if (!(v > 0)) return "";  // uPlot passes null for unlabelled minor ticks
    const k = Math.round(Math.log10(v));
    if (Math.abs(Math.log10(v) - k) > 1e-9) return "";
    return k === 0 ? "0%" : (100 - 100 / v).toFixed(Math.max(0, k - 2)) + "%";
  };
  chart("spectrum", "Latency by percentile (HdrHistogram style, log scales)", xs, ys, names,
        {xLabel: "percentile", yLabel: "ms",
         scales: {x: {time: false, distr: 3, log: 10}, y: {distr: 3, log: 10}},
         xAxis: {values: (u, splits) => splits.map(nines)}});
}
document.body.setAttribute("data-rendered", document.querySelectorAll(".uplot").length);
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{uplot_css}
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 20px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.when {{ color: #666; margin-bottom: 12px; }}
ul.verdicts {{ list-style: none; padding: 0; }}
ul.verdicts li {{ padding: 6px 10px; margin: 4px 0; border-radius: 4px; }}
li.good {{ background: #e6f4ea; }} li.bad {{ background: #fce8e6; font-weight: 600; }}
li.warn {{ background: #fef7e0; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
th, td {{ text-align: left; padding: 3px 12px 3px 0; vertical-align: top; }}
th {{ color: #555; font-weight: 500; }}
.chart {{ margin: 12px 0 24px; }}
footer {{ color: #888; font-size: 12px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<div class="when">{when}</div>
<ul class="verdicts">{verdicts}</ul>
<table>{figures}</table>
<div class="chart" id="throughput"></div>
<div class="chart" id="latency"></div>
<div class="chart" id="spectrum"></div>
<div class="chart" id="connections"></div>
<h2>Settings</h2>
<table>{settings}</table>
<h2>Sources</h2>
<table>{sources}</table>
<footer>Charts: uPlot {version} (MIT licence).</footer>
<script>{uplot_js}</script>
<script id="data" type="application/json">{data}</script>
<script>{script}</script>
</body>
</html>
"""
