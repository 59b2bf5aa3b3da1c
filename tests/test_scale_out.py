"""Two instances on one PostgreSQL behind the shipped nginx conf: spread, one view, drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.helpers import Service, fetch_rows, metric, start_service
from tests.test_nginx import NGINX, NGINX_CONF, free_port

CLIENTS = 12
COMMAND = [sys.executable, "-m", "tornado_echo"]
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (nginx-light)")


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Yields (directory, port); the caller writes the upstream ports and starts it."""
    directory = tmp_path / "nginx"
    directory.mkdir()
    yield directory, free_port()
    pid_file = directory / "nginx.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGQUIT)


def start_nginx(directory: Path, port: int, upstreams: list[int]) -> subprocess.Popen[str]:
    assert NGINX is not None
    fragment = NGINX_CONF.read_text()
    for shipped, actual in zip(("127.0.0.1:8081", "127.0.0.1:8082"), upstreams, strict=True):
        assert shipped in fragment
        fragment = fragment.replace(shipped, f"127.0.0.1:{actual}")
    fragment = fragment.replace("listen 80;", f"listen 127.0.0.1:{port};")
    fragment = fragment.replace("listen [::]:80;", "")
    (directory / "tornado-echo.conf").write_text(fragment)
    conf = directory / "nginx.conf"
    # Debian's nginx has absolute compile-time temp paths; keep everything in directory.
    temp_paths = "".join(
        f"    {kind}_temp_path {directory / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"pid {directory / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp_paths}"
        f"    include {directory / 'tornado-echo.conf'};\n}}\n"
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)


async def connect(url: str) -> WebSocketClientConnection:
    """Through nginx, retrying while it finds no upstream (an instance just went away)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await websocket_connect(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def open_connections(service: Service) -> float:
    body = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{service.port}/metrics")
    return metric(body.body.decode(), "tornado_echo_connections_open")


@pytest.mark.gen_test(timeout=120)
async def test_two_instances_behind_nginx_share_one_database_and_drain_one_at_a_time(
    tmp_path: Path,
    postgres_url: str,
    services: list[Service],
    nginx_in_front: tuple[Path, int],
) -> None:
    instances = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        conf = f'database_url = "{postgres_url}"\nstate_dir = "."\njournal = "full"\n'
        instances.append(start_service(home, conf))
    services.extend(instances)
    first, second = instances
    directory, port = nginx_in_front
    nginx = start_nginx(directory, port, [first.port, second.port])
    url = f"ws://127.0.0.1:{port}/ws"

    clients = {number: await connect(url) for number in range(CLIENTS)}
    sent: list[str] = []
    for number, client in clients.items():
        sent.append(f"{number}-before")
        await client.write_message(sent[-1])
        assert await client.read_message() == sent[-1]
    # least_conn spread them over both instances.
    spread = [await open_connections(instance) for instance in instances]
    assert sum(spread) == CLIENTS
    assert min(spread) > 0, spread

    # Drain the first instance: its clients get 1001, then reconnect through nginx.
    first.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while first.process.poll() is None:  # our clients answer its close frames meanwhile
        assert time.monotonic() < deadline, "the drained instance did not exit"
        await asyncio.sleep(0.05)
    assert first.process.returncode == 0
    moved = 0
    for number, client in list(clients.items()):
        sent.append(f"{number}-after")
        if client.close_code is not None:
            assert client.close_code == 1001
            moved += 1
            clients[number] = client = await connect(url)
        await client.write_message(sent[-1])
        assert await client.read_message() == sent[-1]
    assert moved == spread[0]
    assert await open_connections(second) == CLIENTS
    for client in clients.values():
        client.close(1000)
        assert await client.read_message() is None  # the server answered the close
    second.process.send_signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(10)

    # One command lists the sessions of both instances; every message is in the journal.
    listed = subprocess.run(
        [*COMMAND, "sessions", "--database-url", postgres_url, "--json", "--limit", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sessions = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(sessions) == CLIENTS + moved
    # The drained instance's sessions ended with its shutdown, the other's closed by us.
    assert sorted(s["end_state"] for s in sessions) == sorted(
        ["server_shutdown"] * moved + ["closed"] * CLIENTS
    )
    payloads = fetch_rows(
        postgres_url, "SELECT convert_from(payload, 'UTF8') AS p FROM ws_messages"
    )
    assert sorted(row["p"] for row in payloads) == sorted(sent)
