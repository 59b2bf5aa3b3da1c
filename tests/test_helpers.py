"""The test-side waiting helper: it returns what it waited for and fails naming it."""

from __future__ import annotations

import pytest

from tests.helpers import eventually, eventually_blocking


@pytest.mark.gen_test
async def test_eventually_returns_the_first_true_value() -> None:
    polls = iter([0, None, 7])
    assert await eventually(lambda: next(polls)) == 7


@pytest.mark.gen_test
async def test_eventually_awaits_an_async_condition() -> None:
    polls = iter([False, True])

    async def ready() -> bool:
        return next(polls)

    assert await eventually(ready) is True


@pytest.mark.gen_test
async def test_eventually_fails_naming_what_was_awaited_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as failed:
        await eventually(lambda: 0, "the queue to fill", timeout=0.05, detail=lambda: "log tail")
    assert str(failed.value) == (
        "not reached within 0.05 s: the queue to fill (last value: 0)\nlog tail"
    )


def test_eventually_blocking_names_the_condition_by_its_source() -> None:
    with pytest.raises(AssertionError) as failed:
        eventually_blocking(lambda: [], timeout=0.05)
    assert "eventually_blocking(lambda: [], timeout=0.05) (last value: [])" in str(failed.value)
