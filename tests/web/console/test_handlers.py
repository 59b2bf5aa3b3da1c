"""The console over real HTTP: page, assets, the live figures and who sees sessions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.websocket import websocket_connect

from tests.helpers import eventually, started_server
from tornado_echo.config import Config
from tornado_echo.process.server import Server
from tornado_echo.web.console.handlers import relative_ws_path


async def get(server: Server, path: str, **headers: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server.port}{path}",
        headers=headers,
        raise_error=False,
        follow_redirects=False,
    )


async def live(
    server: Server, wanted: Callable[[dict[str, Any]], Any], **headers: str
) -> tuple[HTTPResponse, dict[str, Any]] | None:
    """The live figures and their response once ``wanted(figures)`` holds, else None."""
    answer = await get(server, "/console/live", **headers)
    figures = json.loads(answer.body)
    return (answer, figures) if wanted(figures) else None


@pytest.mark.parametrize(
    ("ws_path", "console_path", "expected"),
    [
        ("/ws", "/", "ws"),
        ("/ws", "/echo/", "../ws"),
        ("/a/ws/", "/", "a/ws/"),
        ("/e/ws", "/e/", "ws"),
    ],
)
def test_ws_path_is_relative_to_the_page(ws_path: str, console_path: str, expected: str) -> None:
    assert relative_ws_path(Config(ws_path=ws_path, console_path=console_path)) == expected


@pytest.mark.gen_test(timeout=30)
async def test_page_and_assets_are_served_from_the_package(tmp_path: Path, sqlite_url: str) -> None:
    server = await started_server(tmp_path, sqlite_url)
    try:
        page = await get(server, "/")
        assert page.code == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
        assert b'<meta name="ws-path" content="ws">' in page.body
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css"), ("icon.svg", "svg")):
            answer = await get(server, f"/console/{asset}")
            assert answer.code == 200 and kind in answer.headers["Content-Type"]
        missing = await get(server, "/console/secret.py")
        assert (missing.code, json.loads(missing.body)["status"]) == (404, 404)
        traversal = await get(server, "/console/..%2f__init__.py")
        assert traversal.code == 404
        delete = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{server.port}/", method="DELETE", raise_error=False
        )
        assert (delete.code, json.loads(delete.body)["status"]) == (405, 405)
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_console_path_moves_everything(tmp_path: Path, sqlite_url: str) -> None:
    server = await started_server(tmp_path, sqlite_url, console_path="/echo/")
    try:
        assert (await get(server, "/")).code == 404
        redirect = await get(server, "/echo")
        assert (redirect.code, redirect.headers["Location"]) == (301, "/echo/")
        page = await get(server, "/echo/")
        assert b'content="../ws"' in page.body
        assert (await get(server, "/echo/console/live")).code == 200
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_console_off_serves_nothing(tmp_path: Path, sqlite_url: str) -> None:
    server = await started_server(tmp_path, sqlite_url, console=False)
    try:
        for path in ("/", "/console/app.js", "/console/live"):
            assert (await get(server, path)).code == 404
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_figures_count_traffic_and_show_no_peer_or_payload(
    tmp_path: Path, sqlite_url: str
) -> None:
    server = await started_server(tmp_path, sqlite_url)
    try:
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        for _ in range(3):
            await client.write_message("secret payload")
            assert await client.read_message() == "secret payload"
        # Figures are taken at most once a second: wait for a reading with the traffic in it.
        answer, figures = await eventually(
            lambda: live(server, lambda f: f["traffic"]["messages_out"] == 3)
        )
        assert answer.headers["Cache-Control"] == "no-store"
        assert figures["connections"] == {"open": 1, "total": 1}
        assert figures["traffic"]["bytes_in"] == 3 * len("secret payload")
        assert figures["handshakes"] == {"accepted": 1}
        assert figures["store"]["lost"] == 0
        assert "sessions" not in figures
        assert b"127.0.0.1" not in answer.body and b"secret" not in answer.body
        client.close(1000)
        _, figures = await eventually(lambda: live(server, lambda f: f["close_codes"]))
        assert figures["close_codes"] == {"1000 closed": 1}
        assert len(figures["history"]["points"]) >= 1
        assert figures["history"]["fields"][0] == "time"
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_sessions_only_with_the_admin_token(tmp_path: Path, sqlite_url: str) -> None:
    # Behind a proxy: the forwarded address is the peer, so the loopback exception is gone.
    server = await started_server(tmp_path, sqlite_url, behind_proxy=True, admin_token="s3cret")
    remote = {"X-Real-Ip": "203.0.113.7"}
    try:
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        client.close(1000)
        _, figures = await eventually(
            lambda: live(
                server, lambda f: f["sessions"]["rows"], Authorization="Bearer s3cret", **remote
            )
        )
        rows = figures["sessions"]["rows"]
        assert rows[0]["peer"] == "127.0.0.1"
        wrong = json.loads(
            (await get(server, "/console/live", Authorization="Bearer no", **remote)).body
        )
        assert wrong["sessions"] == {"error": "wrong admin token"}
        assert wrong["store"]["available"] is True  # the figures still come
        anonymous = json.loads((await get(server, "/console/live", **remote)).body)
        assert "sessions" not in anonymous
    finally:
        await server.shutdown()
