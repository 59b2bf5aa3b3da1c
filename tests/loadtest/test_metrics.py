"""Live Prometheus metrics of a run, and the Grafana board that charts them, against a scrape."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import check_dashboard
from tests.loadtest.conftest import Servers
from tornado_echo.loadtest import engine, preflight
from tornado_echo.loadtest.config import LoadConfig, Target
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.metrics import LATENCY_BOUNDS, LiveMetrics, cumulative

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-loadtest-dashboard.json"
METRIC = re.compile(r"\btornado_echo_loadtest_[a-z_]+\b")


def scrape_during_a_run(servers: Servers) -> str:
    """The metrics text scraped while a run against the drop server (lost echoes) goes."""
    cfg = LoadConfig.validated(
        target=Target.parse(servers.url("/drop")),
        connections=3,
        duration=2.0,
        timeout=0.2,
        progress_interval=0.2,
    )
    live = LiveMetrics("127.0.0.1", 0)
    live.start()
    scraped: list[str] = []

    def scrape() -> None:
        url = f"http://127.0.0.1:{live.port}/metrics"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            if 'class="lost"' in text:
                scraped.append(text)
                return
            time.sleep(0.05)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        plans = preflight.make_plans(cfg, preflight.check(cfg))
        engine.run(cfg, plans, live.update, "asyncio")
    finally:
        scraper.join()
        live.close()
    assert scraped, "no scrape showed the lost echoes while the run went on"
    return scraped[0]


def test_a_live_scrape_shows_the_run_and_the_board_asks_only_for_what_it_shows(
    servers: Servers,
) -> None:
    text = scrape_during_a_run(servers)
    labels: dict[str, set[str]] = {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    prefix = "tornado_echo_loadtest_"
    assert values[prefix + "echoes_total"] > 0
    assert values[prefix + "messages_sent_total"] >= values[prefix + "echoes_total"]
    assert values[prefix + "connections_open"] == 3
    assert values[prefix + "echo_latency_seconds_count"] > 0
    assert labels[prefix + "errors_total"] == {"class"}
    assert labels[prefix + "worker_cpu_seconds_total"] == {"worker"}

    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert len(dashboard["panels"]) >= 6
    assert check_dashboard(dashboard, text, METRIC) >= 10
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_latency_buckets_are_cumulative_and_keep_every_sample() -> None:
    hist = Histogram()
    for ns in (50_000, 200_000, 200_000, 3_000_000, 40_000_000_000):
        hist.record(ns)
    buckets = dict(cumulative(hist.buckets(), LATENCY_BOUNDS))
    assert buckets["0.0001"] == 1 and buckets["0.00025"] == 3 and buckets["0.005"] == 4
    assert buckets["10.0"] == 4 and buckets["+Inf"] == 5


def test_a_port_in_use_is_one_line_and_exit_2(servers: Servers, capsys: Any) -> None:
    from tornado_echo.loadtest.cli import main

    live = LiveMetrics("127.0.0.1", 0)
    live.start()
    try:
        code = main([servers.url("/echo"), "-n", "1", "-q", "--metrics-port", str(live.port)])
    finally:
        live.close()
    err = capsys.readouterr().err
    assert code == 2 and "--metrics-port" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--metrics-port", "70000"],
        ["--metrics-port", "x"],
        ["--metrics-port", "0", "--metrics-address", "no.such.host.invalid"],
    ],
)
def test_a_bad_metrics_port_or_address_is_one_line_and_exit_2(
    servers: Servers, capsys: Any, argv: list[str]
) -> None:
    from tornado_echo.loadtest.cli import main

    code = main([servers.url("/echo"), "-n", "1", "-q", *argv])
    err = capsys.readouterr().err
    assert code == 2 and "--metrics-" in err and err.count("\n") == 1, err
