"""The live view's figures: one reading of the server's own counters per second, and the
per-second rates of the last minutes derived from consecutive readings.

Nothing here counts anything: traffic comes from :class:`Connections`, store health from
the store's status, handshakes, close codes and event-loop lag from :class:`Metrics`.
Only figures that are safe to show anyone are kept: counts, rates and times, never a peer
address or a payload.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from tornado.ioloop import PeriodicCallback

from tornado_echo.connections import Connections
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import Store

logger = logging.getLogger(__name__)

SAMPLE_EVERY = 1.0  # seconds
HISTORY_POINTS = 300  # five minutes of one-second points


@dataclass(frozen=True)
class Reading:
    """Cumulative counters at one moment (``at`` is monotonic, ``wall`` is Unix time)."""

    at: float
    wall: float
    open: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    lag_sum: float
    lag_count: float


@dataclass(frozen=True)
class Point:
    """Rates between two readings, stamped with the later one's Unix time."""

    wall: float
    open: int
    messages_in: float
    messages_out: float
    bytes_in: float
    bytes_out: float
    lag_ms: float | None  # mean event-loop lag observed in the interval; None if none was

    def as_json(self) -> list[Any]:
        return [
            round(self.wall, 3),
            self.open,
            round(self.messages_in, 1),
            round(self.messages_out, 1),
            round(self.bytes_in, 1),
            round(self.bytes_out, 1),
            None if self.lag_ms is None else round(self.lag_ms, 3),
        ]


# The order of Point.as_json, sent once with the history so the page needs no copy of it.
POINT_FIELDS = (
    "time",
    "open",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "lag_ms",
)


class History:
    """The last ``limit`` points, each from two consecutive readings. Pure: no I/O, no clock."""

    def __init__(self, limit: int = HISTORY_POINTS) -> None:
        self.points: deque[Point] = deque(maxlen=limit)
        self.last: Reading | None = None

    def add(self, reading: Reading) -> Point | None:
        """Record ``reading``; returns the point it completes (None for the first one)."""
        previous, self.last = self.last, reading
        if previous is None:
            return None
        elapsed = reading.at - previous.at
        if elapsed <= 0:
            return None
        lag_count = reading.lag_count - previous.lag_count
        lag_ms = (
            1000.0 * (reading.lag_sum - previous.lag_sum) / lag_count if lag_count > 0 else None
        )
        point = Point(
            wall=reading.wall,
            open=reading.open,
            # A counter never goes back; max() keeps a restarted source from showing < 0.
            messages_in=max(0, reading.messages_in - previous.messages_in) / elapsed,
            messages_out=max(0, reading.messages_out - previous.messages_out) / elapsed,
            bytes_in=max(0, reading.bytes_in - previous.bytes_in) / elapsed,
            bytes_out=max(0, reading.bytes_out - previous.bytes_out) / elapsed,
            lag_ms=lag_ms,
        )
        self.points.append(point)
        return point


def _totals(metric: MetricWrapperBase, label: str | tuple[str, ...]) -> dict[str, float]:
    """A labelled counter's current values keyed by label value (joined by ' ' if several)."""
    labels = (label,) if isinstance(label, str) else label
    found: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = " ".join(sample.labels[name] for name in labels)
                found[key] = found.get(key, 0.0) + sample.value
    return found


class LiveFeed:
    """Samples the figures every second into a :class:`History` once started.

    Used on the IOLoop thread only. With several worker processes each has its own feed and
    the page shows the worker that answered its request.
    """

    def __init__(self, connections: Connections, store: Store, metrics: Metrics) -> None:
        self.connections = connections
        self.store = store
        self.metrics = metrics
        self.history = History()
        self._timer: PeriodicCallback | None = None
        self._figures: dict[str, Any] = {}
        self._body = b""
        self._taken_at = -SAMPLE_EVERY

    def start(self) -> None:
        if self._timer is None:
            self.sample()
            self._timer = PeriodicCallback(self.sample, SAMPLE_EVERY * 1000)
            self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def reading(self) -> Reading:
        traffic = self.connections.traffic()
        return Reading(
            at=time.monotonic(),
            wall=time.time(),
            open=len(self.connections),
            messages_in=traffic.messages_in,
            messages_out=traffic.messages_out,
            bytes_in=traffic.bytes_in,
            bytes_out=traffic.bytes_out,
            lag_sum=self.metrics.loop_lag_sum,
            lag_count=self.metrics.loop_lag_count,
        )

    def sample(self) -> None:
        # Only the reading, so the history is there when a viewer comes; the figures and
        # their JSON (the history's points among them) are made when asked for (current()).
        self.history.add(self.reading())

    def current(self) -> tuple[dict[str, Any], bytes]:
        """The figures and their JSON, taken at most once per SAMPLE_EVERY however many
        viewers ask: a flood of requests costs writes, not walks over every session."""
        if time.monotonic() - self._taken_at >= SAMPLE_EVERY:
            self._take()
        return self._figures, self._body

    def _take(self) -> None:
        self._figures = self.figures()
        self._body = json.dumps(self._figures, separators=(",", ":")).encode()
        self._taken_at = time.monotonic()

    def figures(self) -> dict[str, Any]:
        """Everything the page shows except sessions: safe for anyone to read."""
        self.metrics.fold_sessions()  # handshakes and close codes up to now
        traffic = self.connections.traffic()
        store = self.store.status()
        latest = self.history.points[-1] if self.history.points else None
        return {
            "time": round(time.time(), 3),
            "connections": {"open": len(self.connections), "total": self.connections.total},
            "traffic": {
                "messages_in": traffic.messages_in,
                "messages_out": traffic.messages_out,
                "bytes_in": traffic.bytes_in,
                "bytes_out": traffic.bytes_out,
            },
            "rates": None
            if latest is None
            else dict(zip(POINT_FIELDS, latest.as_json(), strict=True)),
            "handshakes": _int_values(_totals(self.metrics.handshakes, "outcome")),
            "close_codes": _int_values(_totals(self.metrics.close_codes, ("code", "end_state"))),
            "store": {
                "available": store.available,
                "queued": store.queued,
                "spooled": store.spooled,
                "lost": store.dropped,
                "written": store.written,
            },
            "history": {
                "every_s": SAMPLE_EVERY,
                "fields": POINT_FIELDS,
                "points": [point.as_json() for point in self.history.points],
            },
        }


def _int_values(values: dict[str, float]) -> dict[str, int]:
    # The metrics export every known label value from the start: show only what happened.
    return {key: int(value) for key, value in sorted(values.items()) if value}
