"""The server as systemd runs it: a real process, a real notify socket, SIGHUP and /metrics."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from tests.helpers import (
    BASE_CONF,
    PgOutage,
    Service,
    eventually,
    fetch_rows,
    json_body,
    metric,
    raw_http,
    start_service,
    upgrade_request,
)
from tests.test_units import CONF, EXEC_PATH, unit_settings


def test_ready_watchdog_stopping_in_order(tmp_path: Path, services: list[Service]) -> None:
    # 1 s watchdog: the loop pings every 0.5 s.
    service = start_service(tmp_path, BASE_CONF, watchdog_usec=1_000_000)
    services.append(service)
    assert "WATCHDOG=1" in service.messages("WATCHDOG=1")[-1]
    service.process.send_signal(signal.SIGTERM)
    received = service.messages("STOPPING=1")
    assert received[-1] == "STOPPING=1"
    assert service.wait_exit() == 0


@pytest.mark.gen_test(timeout=60)
async def test_reload_applies_new_limit_and_keeps_connections(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "max_connections = 5\n")
    services.append(service)
    url = f"ws://127.0.0.1:{service.port}/ws"
    first = await websocket_connect(url)
    await first.write_message("before reload")
    assert await first.read_message() == "before reload"

    service.conf.write_text(BASE_CONF + 'max_connections = 1\nhost = "0.0.0.0"\n')
    service.process.send_signal(signal.SIGHUP)
    reload_messages = service.messages("READY=1")
    assert reload_messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")

    status, _, body = await raw_http(service.port, upgrade_request())
    assert (status, json_body(body)["error"]) == (503, "connection limit reached")
    await first.write_message("after reload")
    assert await first.read_message() == "after reload"
    log = service.log.read_text()
    assert "applied: max_connections" in log
    assert "reload: changing host needs a restart; keeping the running values" in log

    service.conf.write_text(BASE_CONF + "max_connections = -3\n")
    service.process.send_signal(signal.SIGHUP)
    refused = service.messages("READY=1")[-1]  # the status line says so, not only the log
    assert "\nSTATUS=reload refused: " in refused
    assert "key 'max_connections': must be between 1 and 10000000, got -3; 1 connections" in (
        refused
    )
    assert "reload refused, keeping the running configuration:" in service.log.read_text()
    assert "key 'max_connections': must be between 1 and 10000000, got -3" in (
        service.log.read_text()
    )
    status, _, _ = await raw_http(service.port, upgrade_request())
    assert status == 503  # still the limit of 1 from the last good reload
    await first.write_message("after a refused reload")
    assert await first.read_message() == "after a refused reload"
    service.conf.write_text(BASE_CONF + "max_connections = 2\n")
    service.process.send_signal(signal.SIGHUP)
    assert "reload refused" not in service.messages("READY=1")[-1]  # until the next good one
    first.close()
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0


def reload_commands(unit: Path, conf: Path, pid: int) -> list[list[str]]:
    """The unit's ExecReload= command lines as systemd would run them for ``pid``, with the
    installed binary and conf file replaced by this checkout's and ``conf``."""
    binary = str(Path(sys.executable).parent / "tornado-echo")
    commands = []
    for value in [v for _, k, v in unit_settings(unit) if k == "ExecReload"]:
        assert not value.startswith(("-", "@", "+", "!", ":")), value  # failures count
        value = value.replace(EXEC_PATH, binary).replace(
            "/etc/tornado-echo/tornado-echo.toml", str(conf)
        )
        commands.append(shlex.split(value.replace("$MAINPID", str(pid))))
    return commands


def systemctl_reload(commands: list[list[str]]) -> subprocess.CompletedProcess[str]:
    """Run them in order and stop at the first failure, as systemd does; its result."""
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            break
    return result


@pytest.mark.parametrize("unit", ["tornado-echo.service", "tornado-echo@.service"])
def test_the_units_reload_fails_on_a_bad_conf_before_signalling(
    tmp_path: Path, services: list[Service], unit: str
) -> None:
    service = start_service(tmp_path, BASE_CONF + "max_connections = 5\n")
    services.append(service)
    commands = reload_commands(CONF / unit, service.conf, service.process.pid)
    assert commands[-1] == ["/bin/kill", "-HUP", str(service.process.pid)]

    service.conf.write_text(BASE_CONF + "max_connections = -5\n")
    refused = systemctl_reload(commands)
    assert refused.returncode == 2  # so systemctl reload fails, and says why
    assert "key 'max_connections': must be between 1 and 10000000, got -5" in refused.stderr
    assert refused.args != commands[-1]  # the server was not signalled

    service.conf.write_text(BASE_CONF + "max_connections = 7\n")
    assert systemctl_reload(commands).returncode == 0
    assert service.messages("READY=1")[0].startswith("RELOADING=1")
    assert "applied: max_connections" in service.log.read_text()
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0


@pytest.mark.gen_test(timeout=60)
async def test_metrics_count_connections_messages_and_rejections(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + 'metrics_token = "s3cret"\nbehind_proxy = true\n')
    services.append(service)
    base = f"http://127.0.0.1:{service.port}"
    client = await websocket_connect(f"ws://127.0.0.1:{service.port}/ws")
    for _ in range(3):
        await client.write_message("12345")
        await client.read_message()
    await raw_http(service.port, upgrade_request(Upgrade=None))

    http = AsyncHTTPClient()
    text = (await http.fetch(base + "/metrics")).body.decode()
    assert metric(text, "tornado_echo_connections_open") == 1
    assert metric(text, "tornado_echo_connections_total") == 1
    assert metric(text, 'tornado_echo_messages_total{direction="in"}') == 3
    assert metric(text, 'tornado_echo_bytes_total{direction="out"}') == 15
    assert metric(text, 'tornado_echo_handshakes_total{outcome="accepted"}') == 1
    assert metric(text, 'tornado_echo_rejections_total{reason="upgrade_header"}') == 1
    assert metric(text, "tornado_echo_store_available") == 1
    assert "tornado_echo_event_loop_lag_seconds_bucket" in text

    client.close(1000)
    await client.read_message()
    # Through a proxy (X-Real-Ip trusted), a remote peer needs the token.
    remote = {"X-Real-Ip": "203.0.113.9"}
    refused = await http.fetch(base + "/metrics", headers=remote, raise_error=False)
    assert refused.code == 401
    wrong = {**remote, "Authorization": "Bearer nope"}
    assert (await http.fetch(base + "/metrics", headers=wrong, raise_error=False)).code == 401
    allowed = await http.fetch(
        base + "/metrics", headers={**remote, "Authorization": "Bearer s3cret"}
    )
    text = allowed.body.decode()
    assert metric(text, 'tornado_echo_close_codes_total{code="1000",end_state="closed"}') == 1
    assert metric(text, 'tornado_echo_messages_total{direction="in"}') == 3  # kept after close
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0


@pytest.mark.gen_test(timeout=90)
async def test_a_database_down_at_start_is_waited_for_while_serving(
    tmp_path: Path, services: list[Service], pg_outage: PgOutage
) -> None:
    # The role may not log in yet, as while PostgreSQL is still starting after a reboot.
    pg_outage.cut()
    conf = f'database_url = "{pg_outage.url}"\nstate_dir = "."\nlog_format = "json"\n'
    service = start_service(tmp_path, conf)  # listens and says READY=1 without it
    services.append(service)
    [ready] = [m for m in service.notify_log if "READY=1" in m]
    assert "store unavailable (OperationalError: " in ready, ready
    assert "not permitted to log in" in ready
    ready_url = f"http://127.0.0.1:{service.port}/readyz"
    answer = await AsyncHTTPClient().fetch(ready_url, raise_error=False)
    assert answer.code == 503
    assert json_body(answer.body)["reason"].startswith("store unavailable: OperationalError")

    client = await websocket_connect(f"ws://127.0.0.1:{service.port}/ws")
    await client.write_message("while the database is away")
    assert await client.read_message() == "while the database is away"
    client.close(1000)
    assert await client.read_message() is None
    spool = tmp_path / f"spool-{socket.gethostname()}_0_0.jsonl"
    await eventually(lambda: '"closed"' in spool.read_text(), "the close in the spool", timeout=10)

    pg_outage.restore()  # the writer retries with back-off, then migrates and catches up
    back = service.messages("store ok", timeout=20)[-1]
    assert "READY=1" not in back and back.startswith("STATUS=")
    answer = await AsyncHTTPClient().fetch(ready_url, raise_error=False)
    assert (answer.code, json_body(answer.body)["status"]) == (200, "ok")
    rows = fetch_rows(pg_outage.url, "SELECT end_state, close_code, messages_in FROM ws_sessions")
    assert rows == [{"end_state": "closed", "close_code": 1000, "messages_in": 1}]
    log = service.log.read_text()
    assert "answered for the first time since start" in log
    assert "applied schema versions [1, 2, 3]" in log
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0
    assert not spool.exists()
