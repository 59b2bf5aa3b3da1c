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

from tests.helpers import check_dashboard, make_server, raw_http, upgrade_request

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
    try:  # traffic, so that every labelled series has a sample
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        await client.write_message("hello")
        assert await client.read_message() == "hello"
        client.close(1000)
        await raw_http(server.port, upgrade_request(Upgrade=None))
        url = f"http://127.0.0.1:{server.port}/metrics"
        deadline = time.monotonic() + 10
        while True:
            text = (await AsyncHTTPClient().fetch(url)).body.decode()
            if "tornado_echo_close_codes_total{" in text:
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.05)
    finally:
        await server.shutdown()
    assert check_dashboard(dashboard, text, METRIC) > 20


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
