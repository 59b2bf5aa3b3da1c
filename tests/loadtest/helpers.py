"""Run the load tester in-process against a test server and read its summary."""

from __future__ import annotations

from typing import Any

from tornado_echo.loadtest import engine, preflight, report
from tornado_echo.loadtest.config import LoadConfig, SizeSpec, Target
from tornado_echo.loadtest.stats import Stats


def run_load(url: str, **options: Any) -> tuple[Stats, dict[str, Any]]:
    """Stats and summary of one run; short timeouts so failures show quickly."""
    options.setdefault("duration", None)
    options.setdefault("timeout", 0.5)
    options.setdefault("connect_timeout", 2.0)
    if "size" in options:
        options["sizes"] = SizeSpec.parse(str(options.pop("size")))
    loop = options.pop("loop", "asyncio")
    cfg = LoadConfig.validated(target=Target.parse(url), **options)
    pre = preflight.check(cfg)
    stats = engine.run(cfg, preflight.make_plans(cfg, pre), None, loop)
    return stats, report.summarize(stats, cfg.summary())
