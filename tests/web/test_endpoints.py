"""The small HTTP answers: /healthz, /readyz and /metrics, for trusted and untrusted peers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tests.helpers import PgOutage, json_body, started_server
from tornado_echo.process.server import Server

REMOTE = {"X-Real-Ip": "203.0.113.9"}  # trusted because behind_proxy is on


async def started(tmp_path: Path, database_url: str, **overrides: Any) -> Server:
    return await started_server(tmp_path, database_url, behind_proxy=True, **overrides)


async def fetch(server: Server, path: str, **headers: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server.port}{path}", headers=headers, raise_error=False
    )


async def head(port: int, path: str) -> tuple[bytes, bytes]:
    """(head of the answer, whatever followed it within 0.2 s) of a raw HEAD request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        try:
            extra = await asyncio.wait_for(reader.read(100), 0.2)
        except TimeoutError:
            extra = b""
        return answer, extra
    finally:
        writer.close()


@pytest.mark.gen_test
async def test_head_answers_like_get_without_a_body(tmp_path: Path, sqlite_url: str) -> None:
    server = await started(tmp_path, sqlite_url)
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            answer, extra = await head(server.port, path)
            assert answer.startswith(b"HTTP/1.1 200 "), (path, answer)
            assert b"\r\nContent-Length: " in answer
            assert extra == b"", path
    finally:
        await server.shutdown()


@pytest.mark.gen_test
async def test_metrics_refused_403_without_a_token_401_with_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    server = await started(tmp_path, sqlite_url)
    try:
        refused = await fetch(server, "/metrics", **REMOTE, Authorization="Bearer guess")
        assert refused.code == 403  # no token is set: no credentials can help
        assert "WWW-Authenticate" not in refused.headers
        assert server.app is not None
        server.live_config.current = dataclasses.replace(server.config, metrics_token="s3cret")
        for auth in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "Basic s3cret"}):
            denied = await fetch(server, "/metrics", **REMOTE, **auth)
            assert denied.code == 401, auth
            assert denied.headers["WWW-Authenticate"] == 'Bearer realm="tornado-echo"'
            assert json_body(denied.body) == {
                "status": 401,
                "error": "missing or wrong bearer token",
            }
        allowed = await fetch(server, "/metrics", **REMOTE, Authorization="Bearer s3cret")
        assert allowed.code == 200
        assert b"tornado_echo_connections_open" in allowed.body
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=60)
async def test_readyz_tells_only_trusted_peers_about_the_database(
    tmp_path: Path, pg_outage: PgOutage
) -> None:
    server = await started(tmp_path, pg_outage.url, metrics_token="s3cret")
    try:
        remote = await fetch(server, "/readyz", **REMOTE)
        assert (remote.code, json_body(remote.body)) == (200, {"status": "ok"})
        pg_outage.cut()
        deadline = time.monotonic() + 20
        while server.store.status().available:
            assert time.monotonic() < deadline, "the store never noticed the outage"
            await asyncio.sleep(0.05)
        remote = await fetch(server, "/readyz", **REMOTE)
        assert remote.code == 503
        assert json_body(remote.body) == {"status": "unavailable", "reason": "store unavailable"}
        assert pg_outage.role.encode() not in remote.body
        for headers in ({}, {**REMOTE, "Authorization": "Bearer s3cret"}):
            trusted = await fetch(server, "/readyz", **headers)
            body = json_body(trusted.body)
            assert trusted.code == 503
            assert body["reason"].startswith("store unavailable: OperationalError"), body
            assert body["store"]["available"] is False
    finally:
        pg_outage.restore()
        await server.shutdown()
