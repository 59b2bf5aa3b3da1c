"""Event-loop choice, shared by the server and the load tester."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

from tornado_echo.errors import EchoError
from tornado_echo.process import eventloop


async def loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.fixture(autouse=True)
def default_policy() -> Iterator[None]:
    """asyncio's own policy, whatever loop the rest of the suite runs on."""
    saved = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(saved)


@pytest.mark.parametrize(("choice", "expected"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_the_chosen_loop_runs_main(choice: str, expected: str) -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(loop_type(), choice, EchoError("unused")) == expected


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert eventloop.run(loop_type(), "auto", EchoError("unused")) == "asyncio"


def test_uvloop_by_name_without_uvloop_raises_the_callers_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    missing = EchoError("--loop uvloop: uvloop is not installed")
    main = loop_type()
    with pytest.raises(EchoError) as raised:
        eventloop.run(main, "uvloop", missing)
    assert raised.value is missing
    assert main.cr_frame is None  # closed, not left to warn that it was never awaited
