"""conf/grafana-dashboard.json asks only for metrics and labels the server exports."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from tests.helpers import check_dashboard, dashboard_queries, make_server, raw_http, upgrade_request

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(?:tornado_echo|process)_[a-z_]+\b")


@pytest.mark.gen_test(timeout=30)
async def test_every_dashboard_query_names_an_exported_metric_and_label(
    tmp_path: Path, sqlite_url: str
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(dashboard["panels"]) >= 10
    server = make_server(tmp_path, sqlite_url)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        # A fresh server has every series a panel asks for (no "No data"), a busy one too.
        fresh = (await AsyncHTTPClient().fetch(url)).body.decode()
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        await client.write_message("hello")
        assert await client.read_message() == "hello"
        client.close(1000)
        await raw_http(server.port, upgrade_request(Upgrade=None))
        deadline = time.monotonic() + 10
        while True:
            text = (await AsyncHTTPClient().fetch(url)).body.decode()
            if 'tornado_echo_close_codes_total{code="1000",end_state="closed"} 1.0' in text:
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.05)
    finally:
        await server.shutdown()
    for scrape in (fresh, text):
        assert check_dashboard(dashboard, scrape, METRIC) > 20


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tornado-echo"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [t["refId"] for t in panel["targets"]] == [
            chr(65 + i) for i in range(len(panel["targets"]))
        ]


PER_SECOND = {"ops", "reqps"}


def query_unit(expr: str) -> str:
    """The unit of what ``expr`` returns, read from the metric names it uses (their
    suffixes follow Prometheus's naming rules: _seconds, _bytes, _total)."""
    names = METRIC.findall(expr)
    if expr.startswith("histogram_quantile("):
        [name] = names
        return "s" if name.endswith("_seconds_bucket") else "bytes"
    if "rate(" in expr:
        if names == ["process_cpu_seconds_total"]:
            return "none"  # CPU seconds per second: cores
        if all(name.endswith(("_bytes_sum", "_bytes_count")) for name in names):
            return "bytes"  # a mean size: sum over count
        if all(name.endswith("_bytes_total") for name in names):
            return "Bps"
        assert all(name.endswith("_total") for name in names), expr
        return "ops"
    [name] = names
    if name.endswith("_seconds"):
        return "s"
    if name.endswith("_bytes"):
        return "bytes"
    return "none" if name.endswith(("_available", "_info")) else "short"


def test_each_panel_has_one_unit_and_it_is_the_unit_of_its_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        units = {query_unit(target["expr"]) for target in panel["targets"]}
        declared = panel["fieldConfig"]["defaults"]["unit"]
        assert len(units) == 1, f"{panel['title']!r} mixes {units}"
        [unit] = units
        assert declared == unit or {declared, unit} <= PER_SECOND, (panel["title"], declared)


def test_the_store_and_tls_failure_counters_are_charted() -> None:
    asked = " ".join(dashboard_queries(json.loads(DASHBOARD.read_text())))
    for name in (
        "tornado_echo_store_errors_total",
        "tornado_echo_store_payloads_shed_total",
        "tornado_echo_tls_failures_total",
        "tornado_echo_store_records_lost_total",
    ):
        assert f"rate({name}{{" in asked, name
