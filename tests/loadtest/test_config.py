from __future__ import annotations

import random

import pytest

from tornado_echo.loadtest.config import LoadConfig, SizeSpec, Target
from tornado_echo.loadtest.errors import LoadtestConfigError


def test_size_spec_forms() -> None:
    rng = random.Random(0)
    assert SizeSpec.parse("64").sample(rng) == 64
    assert {SizeSpec.parse("16,32").sample(rng) for _ in range(50)} == {16, 32}
    assert all(16 <= SizeSpec.parse("16-20").sample(rng) <= 20 for _ in range(50))
    for bad in ("x", "15", "30-20", "1,2"):
        with pytest.raises(LoadtestConfigError):
            SizeSpec.parse(bad)


def test_target_parsing() -> None:
    t = Target.parse("wss://localhost/a?b=1")
    assert (t.secure, t.port, t.path, t.host_header) == (True, 443, "/a?b=1", "localhost")
    assert Target.parse("ws://[::1]:81").host_header == "[::1]:81"
    for bad in ("http://x/", "ws:///x", "ws://h:99999/", "ws://[::1/ws"):
        with pytest.raises(LoadtestConfigError):
            Target.parse(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"connections": 0},
        {"workers": 3, "connections": 2},
        {"duration": None, "messages": None},
        {"mode": "open"},
        {"mode": "closed", "rate": 3.0},
        {"inflight": 0},
        {"timeout": 0},
        {"headers": (("X\r\nY", "v"),)},
    ],
)
def test_invalid_combinations(options: dict[str, object]) -> None:
    with pytest.raises(LoadtestConfigError):
        LoadConfig.validated(target=Target.parse("ws://127.0.0.1:1/"), **options)
