from __future__ import annotations

import random

import pytest

from tornado_echo.loadtest.config import LoadConfig, Profile, Scenario, SizeSpec, Stage, Target
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


def test_profile_ramps_connections_from_zero_and_rate_from_the_start() -> None:
    stages = (Stage(10, 100), Stage(10, 100, 50.0), Stage(5, 0))
    profile = Profile(stages, start_rate=10.0)
    assert profile.duration == 25
    assert profile.at(0) == (0, 10.0)
    assert profile.at(5) == (50, 10.0)
    assert profile.at(15) == (100, 30.0)
    assert profile.at(22.5) == (50, 50.0)
    assert profile.at(99) == (0, 50.0)


@pytest.mark.parametrize(
    ("text", "stage"),
    [("10:100", Stage(10, 100)), ("0.5:0:20", Stage(0.5, 0, 20.0))],
)
def test_stage_parse(text: str, stage: Stage) -> None:
    assert Stage.parse(text) == stage


@pytest.mark.parametrize("text", ["10", "x:1", "0:5", "5:-1", "5:5:0", "1:2:3:4"])
def test_bad_stage_names_the_option(text: str) -> None:
    with pytest.raises(LoadtestConfigError) as info:
        Stage.parse(text)
    assert "--stage" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("weight=0", "weight must be positive"),
        ("kind=shout", "kind must be one of"),
        ("messages=0", "messages must be at least 1"),
        ("think=-1", "think must not be negative"),
        ("hold=0", "hold must be positive"),
        ("close=1006", "may not be sent"),
        ("kind=ping size=200", "at most 125 bytes"),
        ("loud", "unknown word"),
        ("size=x", "expected N, A-B or A,B,C"),
    ],
)
def test_a_bad_scenario_is_named(spec: str, why: str) -> None:
    with pytest.raises(LoadtestConfigError) as info:
        Scenario.parse(spec)
    assert why in str(info.value)


def test_a_scenario_mix_needs_a_duration_and_one_message_in_flight() -> None:
    target = Target.parse("ws://127.0.0.1:1/")
    mix = (Scenario.parse("messages=3"),)
    for options in ({"duration": None, "messages": 3}, {"inflight": 2}, {"churn": 2}):
        with pytest.raises(LoadtestConfigError):
            LoadConfig.validated(target=target, scenarios=mix, **options)
    spec = Scenario.parse("weight=2 kind=echo messages=5 size=64,128 binary think=0.5 close=4000")
    session = spec.apply(LoadConfig.validated(target=target, scenarios=(spec,)))
    assert (session.churn, session.binary, session.think, session.close_code) == (
        5,
        True,
        0.5,
        4000,
    )
    assert session.sizes.choices == (64, 128) and session.scenarios == ()
