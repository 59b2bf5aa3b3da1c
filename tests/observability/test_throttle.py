from __future__ import annotations

import logging

import pytest

from tornado_echo.observability.throttle import LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_occurrence_logged_then_withheld_then_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t"), interval=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        assert throttle.log("emfile", logging.ERROR, "accept failed: %s", "EMFILE")
        for _ in range(99):
            assert not throttle.log("emfile", logging.ERROR, "accept failed: %s", "EMFILE")
        clock.now += 10
        assert throttle.log("emfile", logging.ERROR, "accept failed: %s", "EMFILE")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "accept failed: EMFILE",
        "accept failed: EMFILE (99 more like this in the last 10 s)",
    ]
    assert throttle.counts == {"emfile": 101}


def test_kinds_are_independent() -> None:
    throttle = LogThrottle(logging.getLogger("t"), interval=10, clock=Clock())
    assert throttle.log("a", logging.WARNING, "a")
    assert throttle.log("b", logging.WARNING, "b")
    assert not throttle.log("a", logging.WARNING, "a")
    assert throttle.counts == {"a": 2, "b": 1}
