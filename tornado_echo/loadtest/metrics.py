"""Live Prometheus metrics of a run, on an opt-in port (``--metrics-port``).

The parent process serves them from the workers' progress snapshots (about one a second
each), so one scrape shows the whole run however many workers it has: what was sent and
echoed, errors by class, echo latency, connections, and the signals of a client that cannot
keep up (CPU used, event-loop lag). conf/grafana-loadtest-dashboard.json charts them beside
the server's own dashboard.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tornado_echo.loadtest.engine import Progress
from tornado_echo.loadtest.histogram import bucket_bounds

PREFIX = "tornado_echo_loadtest_"
# Upper bounds (seconds) of the exported latency buckets: a log bucket of the tester's own
# histograms (0.1% wide) counts in the first bound not below its upper end.
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


def cumulative(pairs: Iterable[tuple[int, int]], bounds: Sequence[float]) -> list[tuple[str, int]]:
    """Prometheus buckets (``le`` label, cumulative count) of (log bucket, count) pairs in ns."""
    counts = [0] * (len(bounds) + 1)
    for index, count in pairs:
        upper = bucket_bounds(index)[1] / 1e9
        slot = next((i for i, bound in enumerate(bounds) if upper <= bound), len(bounds))
        counts[slot] += count
    out, total = [], 0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        total += count
        out.append((bound, total))
    return out


class LiveMetrics(Collector):
    """A Prometheus collector of the latest snapshot of every worker. ``update`` is called
    with each progress report; ``start`` serves the metrics, ``close`` stops (idempotent)."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._lock = threading.Lock()
        self._latest: dict[int, Progress] = {}
        self._latency: Counter[int] = Counter()  # every echo's latency so far, all workers
        self._server: Any = None

    def update(self, snapshots: Sequence[Progress]) -> None:
        with self._lock:
            for snapshot in snapshots:
                known = self._latest.get(snapshot.worker)
                if known is None or known.elapsed != snapshot.elapsed:
                    self._latest[snapshot.worker] = snapshot
                    self._latency.update(dict(snapshot.latency_buckets))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = list(self._latest.values())
            latency = list(self._latency.items())

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=value)

        yield counter("messages_sent", "Messages sent.", sum(s.sent for s in latest))
        yield counter("echoes", "Right echoes (in time or late).", sum(s.received for s in latest))
        errors = CounterMetricFamily(PREFIX + "errors", "Errors by class.", labels=["class"])
        classes: Counter[str] = Counter()
        for snapshot in latest:
            classes.update(dict(snapshot.error_classes))
        for name, count in sorted(classes.items()):
            errors.add_metric([name], count)
        yield errors
        yield GaugeMetricFamily(
            PREFIX + "connections_open", "Connections open now.", value=sum(s.open for s in latest)
        )
        for name, doc in (
            ("established", "Connections opened."),
            ("failed", "Connections that failed to open."),
            ("dropped", "Open connections the server ended."),
        ):
            value = sum(getattr(s, name) for s in latest)
            yield counter(f"connections_{name}", doc, value)
        yield HistogramMetricFamily(
            PREFIX + "echo_latency_seconds",
            "Echo round trip (corrected for coordinated omission in open loop).",
            buckets=cumulative(latency, LATENCY_BOUNDS),
            # From the log buckets' middles: within their 0.1% of the samples' true sum.
            sum_value=sum(sum(bucket_bounds(i)) / 2e9 * n for i, n in latency),
        )
        cpu = CounterMetricFamily(
            PREFIX + "worker_cpu_seconds", "CPU time of each worker.", labels=["worker"]
        )
        lag = GaugeMetricFamily(
            PREFIX + "event_loop_lag_max_seconds",
            "The latest interval's longest event-loop lag of each worker (over 0.05 s: the "
            "client is saturated).",
            labels=["worker"],
        )
        for snapshot in sorted(latest, key=lambda s: s.worker):
            cpu.add_metric([str(snapshot.worker)], snapshot.cpu_seconds)
            lag.add_metric([str(snapshot.worker)], snapshot.loop_lag_max_ns / 1e9)
        yield cpu
        yield lag

    def start(self) -> None:
        if self._server is not None:
            return
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._server, _thread = start_http_server(self.port, self.address, registry)
        self.port = self._server.server_address[1]

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
