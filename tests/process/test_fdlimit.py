"""The descriptor limit raised at start, shared by the server and the load tester."""

from __future__ import annotations

import resource

from tornado_echo.process.fdlimit import raise_soft_limit


def test_soft_limit_is_raised_to_the_hard_one(lowered_nofile: int) -> None:
    hard = lowered_nofile
    assert raise_soft_limit(300) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_the_hard_limit_is_never_raised(lowered_nofile: int) -> None:
    hard = lowered_nofile
    assert raise_soft_limit(hard * 2) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
