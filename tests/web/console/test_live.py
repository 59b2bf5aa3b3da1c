"""The live view's arithmetic: rates and lag from consecutive readings, bounded history."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tornado_echo.connections import Connections
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import Store
from tornado_echo.web.console.live import History, LiveFeed, Reading


def reading(
    at: float, messages: int = 0, size: int = 0, lag: tuple[float, float] = (0, 0)
) -> Reading:
    return Reading(
        at=at,
        wall=1000.0 + at,
        open=2,
        messages_in=messages,
        messages_out=messages,
        bytes_in=size,
        bytes_out=size,
        lag_sum=lag[0],
        lag_count=lag[1],
    )


def test_first_reading_makes_no_point() -> None:
    history = History()
    assert history.add(reading(0.0)) is None
    assert list(history.points) == []


def test_rates_are_per_second_of_the_elapsed_time() -> None:
    history = History()
    history.add(reading(10.0, messages=100, size=1000, lag=(0.002, 4)))
    point = history.add(reading(12.0, messages=300, size=5000, lag=(0.005, 6)))
    assert point is not None
    assert (point.messages_in, point.messages_out) == (100.0, 100.0)
    assert (point.bytes_in, point.bytes_out) == (2000.0, 2000.0)
    assert point.lag_ms == pytest.approx(1.5)  # 3 ms over 2 observations
    assert point.wall == 1012.0 and point.open == 2


def test_no_lag_observed_is_unknown_not_zero() -> None:
    history = History()
    history.add(reading(0.0, lag=(0.1, 3)))
    point = history.add(reading(1.0, lag=(0.1, 3)))
    assert point is not None and point.lag_ms is None


def test_counters_going_back_show_zero_and_a_stalled_clock_no_point() -> None:
    history = History()
    history.add(reading(0.0, messages=50))
    point = history.add(reading(1.0, messages=10))
    assert point is not None and point.messages_in == 0.0
    assert history.add(reading(1.0, messages=20)) is None


def test_history_keeps_only_the_last_points() -> None:
    history = History(limit=3)
    for second in range(10):
        history.add(reading(float(second), messages=second))
    assert [point.wall for point in history.points] == [1007.0, 1008.0, 1009.0]


class CountingFeed(LiveFeed):
    """A real feed that notes each time it makes the figures the page is sent."""

    made = 0

    def figures(self) -> dict[str, Any]:
        self.made += 1
        return super().figures()


@pytest.mark.gen_test
async def test_the_feed_makes_its_figures_only_when_asked_and_keeps_its_history(
    store: Store, connections: Connections
) -> None:
    metrics = Metrics()
    feed = CountingFeed(connections, store, metrics)
    feed.start()
    try:
        for _ in range(3):  # seconds with nobody watching
            metrics.observe_loop_lag(0.004)
            feed.sample()
        assert feed.made == 0
        figures, body = feed.current()
        assert feed.made == 1 and len(figures["history"]["points"]) == 3
        assert figures["rates"]["lag_ms"] == 4.0
        assert json.loads(body)["history"]["points"] == figures["history"]["points"]
        assert feed.current()[1] is body  # a second viewer within the second: the same
        assert feed.made == 1
    finally:
        feed.close()
