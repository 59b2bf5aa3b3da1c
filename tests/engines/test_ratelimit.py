from __future__ import annotations

from tornado_echo.engines.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_second_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock)
    assert all(bucket.take() for _ in range(10))
    assert not bucket.take()
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(10)) == 5


def test_idle_time_does_not_bank_more_than_a_second() -> None:
    clock = Clock()
    bucket = TokenBucket(100, clock)
    clock.now += 60
    assert bucket.take(100)
    assert not bucket.take(1)


def test_an_amount_above_a_second_never_passes() -> None:
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    clock.now += 10
    assert not bucket.take(1001)
    assert bucket.take(1000)
