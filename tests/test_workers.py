"""workers = N: one supervisor speaking for N SO_REUSEPORT workers, with real processes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import WebSocketClosedError, websocket_connect

from tests.helpers import (
    BASE_CONF,
    Service,
    eventually,
    eventually_blocking,
    fetch_rows,
    metric,
    start_service,
)


def worker_pids(service: Service) -> list[int]:
    return [
        int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", service.log.read_text())
    ]


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_workers_share_the_port_metrics_reload_restart_and_stop(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n", watchdog_usec=2_000_000)
    services.append(service)
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"
    url = f"ws://127.0.0.1:{service.port}/ws"
    clients = [await websocket_connect(url) for _ in range(20)]
    for client in clients:
        await client.write_message("hi")
        assert await client.read_message() == "hi"

    # Any worker answers a scrape with the sum over both, once each has folded its figures in.
    http = AsyncHTTPClient()

    async def scrape() -> tuple[float, float]:
        text = (await http.fetch(f"http://127.0.0.1:{service.port}/metrics")).body.decode()
        return (
            metric(text, "tornado_echo_connections_open"),
            metric(text, 'tornado_echo_messages_total{direction="in"}'),
        )

    async def both_workers_counted() -> bool:
        return await scrape() == (20, 20)

    await eventually(
        both_workers_counted, "20 connections and 20 messages in the metrics", timeout=15
    )
    for _ in range(4):
        assert await scrape() == (20, 20)

    service.process.send_signal(signal.SIGHUP)
    reload_messages = service.messages("READY=1")
    assert any(m.startswith("RELOADING=1") for m in reload_messages)

    # A worker killed outright is replaced; the service keeps serving.
    victim = worker_pids(service)[0]
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: service.log.read_text().count("listening on") == 3,
        "the replacement to listen",
        timeout=15,
        detail=service.log.read_text,
    )
    assert "exited unexpectedly with -9" in service.log.read_text()
    fresh = await websocket_connect(url)
    await fresh.write_message("still here")
    assert await fresh.read_message() == "still here"

    survivors = [fresh]
    for client in clients:  # the killed worker's clients find their connection gone
        try:
            await client.write_message("alive?")
        except WebSocketClosedError:
            continue
        if await client.read_message() == "alive?":
            survivors.append(client)
    # Some of the 20 were the killed worker's and are gone; the other worker's still echo
    # (SO_REUSEPORT put all 20 on one worker with a chance of 2 in a million).
    assert 1 < len(survivors) < 21

    service.process.send_signal(signal.SIGTERM)
    assert service.messages("STOPPING=1")[-1] == "STOPPING=1"
    for client in survivors:
        await client.read_message()
    assert {client.close_code for client in survivors} == {1001}
    assert service.wait_exit() == 0

    rows = fetch_rows(
        f"sqlite:///{tmp_path}/echo.db", "SELECT server_id, end_state FROM ws_sessions"
    )
    assert {row["server_id"].rsplit(":", 1)[1] for row in rows} == {"0", "1"}
    states = [row["end_state"] for row in rows]
    assert len(rows) == 21
    # Sessions of the killed worker are marked crashed by its replacement.
    assert set(states) <= {"server_shutdown", "crashed"}
    assert "crashed" in states


@pytest.mark.slow
def test_a_stuck_worker_withholds_the_watchdog(tmp_path: Path, services: list[Service]) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n", watchdog_usec=1_000_000)
    services.append(service)
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"
    stuck = worker_pids(service)[1]
    os.kill(stuck, signal.SIGSTOP)  # its event loop can no longer check in
    try:
        eventually_blocking(
            lambda: "stopped checking in" in service.log.read_text(),
            "the supervisor to notice the stuck worker",
            timeout=15,
            detail=service.log.read_text,
        )
        service.notify.settimeout(0.1)
        while True:  # empty what was queued before the supervisor noticed
            try:
                service.notify.recv(4096)
            except TimeoutError:
                break
        with pytest.raises(AssertionError, match="no 'WATCHDOG=1'"):
            service.messages("WATCHDOG=1", timeout=1.5)
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"  # checked in again
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0
