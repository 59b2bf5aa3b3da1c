"""The timer wheel's pure logic, with no loop or clock."""

from __future__ import annotations

import asyncio

import pytest

from tornado_echo.engines.timerwheel import LoopWheel, TimerWheel


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wheel_slot: int | None = None
        self.fired = 0

    def on_deadline(self) -> None:
        self.fired += 1


def test_items_come_due_in_their_slot_never_early() -> None:
    wheel = TimerWheel(resolution=0.1)
    a, b, c = Item("a"), Item("b"), Item("c")
    wheel.set(a, 1.0)
    wheel.set(b, 1.04)  # rounds up to the 1.1 slot: late by less than a resolution
    wheel.set(c, 2.0)
    assert wheel.pop_due(0.99) == []
    assert wheel.pop_due(1.0) == [a]
    assert wheel.pop_due(1.09) == []
    assert wheel.pop_due(1.1) == [b]
    assert wheel.next_due() == pytest.approx(2.0)
    assert len(wheel) == 1


def test_a_new_deadline_replaces_the_old_and_clear_removes_it() -> None:
    wheel = TimerWheel(resolution=0.1)
    a, b = Item("a"), Item("b")
    wheel.set(a, 1.0)
    wheel.set(a, 3.0)
    wheel.set(b, 1.0)
    wheel.clear(b)
    assert wheel.pop_due(2.0) == []
    assert wheel.pop_due(3.0) == [a]
    assert a.wheel_slot is None and b.wheel_slot is None
    assert wheel.next_due() is None


def test_loop_wheel_runs_due_items_from_one_timer() -> None:
    async def scenario() -> list[int]:
        wheel = LoopWheel(asyncio.get_running_loop(), resolution=0.01)
        items = [Item(str(n)) for n in range(100)]
        for n, item in enumerate(items):
            wheel.call_later(item, 0.001 * n)
        wheel.call_later(items[0], 0.05)  # moved later: fires once, at its new time
        while any(item.fired == 0 for item in items):
            await asyncio.sleep(0.01)
        return [item.fired for item in items]

    assert asyncio.run(scenario()) == [1] * 100
