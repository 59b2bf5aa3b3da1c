"""The operator API over real HTTP against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from tests.helpers import eventually, make_server
from tornado_echo.process.server import Server
from tornado_echo.store.base import JOURNAL_BYTES
from tornado_echo.web.api import QueryError, parse_limit, parse_since

ISO_UTC = "%Y-%m-%dT%H:%M:%S.%fZ"
SOME_ID = "00000000-0000-4000-8000-000000000000"


async def get(server: Server, path: str, **headers: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server.port}{path}",
        headers={name.replace("_", "-"): value for name, value in headers.items()},
        raise_error=False,
    )
    return response.code, json.loads(response.body)


async def serve(tmp_path: Path, database_url: str, **overrides: Any) -> Server:
    settings: dict[str, Any] = {"batch_delay": 0.005, "journal": "full", **overrides}
    server = make_server(tmp_path, database_url, "api-test:0:0", **settings)
    await server.start()
    return server


async def run_sessions(server: Server, count: int) -> None:
    """``count`` sessions, one after the other, each echoing "n" then closing with 1000."""
    for number in range(count):
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        await client.write_message(str(number))
        assert await client.read_message() == str(number)
        client.close(1000)
        assert await client.read_message() is None

    async def all_closed() -> bool:
        _, body = await get(server, f"/api/sessions?limit={count}")
        return body["count"] == count and all(s["closed_at"] for s in body["sessions"])

    await eventually(all_closed, f"{count} closed sessions in the store", timeout=10)
    # The journal writer process writes the rows apart from the sessions' records.
    await eventually(lambda: server.store.status().pending == 0, "the journal", timeout=10)


@pytest.mark.gen_test(timeout=30)
async def test_list_and_get_sessions(tmp_path: Path, database_url: str) -> None:
    server = await serve(tmp_path, database_url)
    try:
        before = datetime.datetime.now(datetime.timezone.utc)
        await run_sessions(server, 3)
        code, body = await get(server, "/api/sessions?limit=2")
        assert code == 200 and (body["count"], body["limit"]) == (2, 2)
        newest, older = body["sessions"]
        assert newest["opened_at"] >= older["opened_at"]
        for session in body["sessions"]:
            opened = datetime.datetime.strptime(session["opened_at"], ISO_UTC)
            assert opened.replace(tzinfo=datetime.timezone.utc) >= before - datetime.timedelta(
                seconds=1
            )
            assert session["closed_at"].endswith("Z")
            assert (session["end_state"], session["close_code"]) == ("closed", 1000)
            assert session["server_id"] == "api-test:0:0"

        code, body = await get(server, "/api/sessions")
        assert (code, body["count"]) == (200, 3)
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        code, body = await get(
            server, "/api/sessions?since=" + future.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        assert (code, body["count"]) == (200, 0)
        code, body = await get(server, "/api/sessions?since=2000-01-01T00:00:00%2B02:00")
        assert (code, body["count"]) == (200, 3)

        code, one = await get(server, f"/api/sessions/{newest['id']}")
        assert code == 200 and one["id"] == newest["id"]
        assert [(j["seq"], j["opcode"], j["size"]) for j in one["journal"]] == [(1, 1, 1)]
        assert base64.b64decode(one["journal"][0]["payload_base64"]) == b"2"
        assert one["journal"][0]["received_at"].endswith("Z")
        assert one["journal_next"] is None
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=60)
async def test_a_large_journal_comes_in_pages_bounded_in_bytes(
    tmp_path: Path, database_url: str
) -> None:
    # 9 MiB of payload at once: the journal's byte budget off, or most would go unkept.
    server = await serve(
        tmp_path, database_url, journal_max_payload=1024 * 1024, journal_max_bytes_per_second=0
    )
    try:
        sent = [bytes([number]) * (768 * 1024) for number in range(12)]
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        for payload in sent:
            await client.write_message(payload, binary=True)
            assert await client.read_message() == payload
        client.close(1000)
        await eventually(
            lambda: not len(server.connections) and not server.store.status().pending,
            "the session closed and its records written",
            timeout=20,
        )
        _, listed = await get(server, "/api/sessions")
        path = f"/api/sessions/{listed['sessions'][0]['id']}"

        code, first = await get(server, path + "?limit=3")
        assert code == 200 and [j["seq"] for j in first["journal"]] == [1, 2, 3]
        assert first["journal_next"] == 3

        received: list[bytes] = []
        pages = []
        after = 0
        while after is not None:
            code, page = await get(server, f"{path}?after={after}")
            assert code == 200
            payloads = [base64.b64decode(j["payload_base64"]) for j in page["journal"]]
            assert sum(map(len, payloads)) <= JOURNAL_BYTES
            assert [j["size"] for j in page["journal"]] == [768 * 1024] * len(payloads)
            received += payloads
            pages.append(len(payloads))
            after = page["journal_next"]
        assert received == sent
        assert pages == [5, 5, 2]  # 5 x 768 KiB fit in 4 MiB, a sixth would not
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_journal_is_left_out_when_off(tmp_path: Path, sqlite_url: str) -> None:
    server = await serve(tmp_path, sqlite_url, journal="off")
    try:
        await run_sessions(server, 1)
        _, body = await get(server, "/api/sessions")
        code, one = await get(server, f"/api/sessions/{body['sessions'][0]['id']}")
        assert code == 200 and "journal" not in one
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("path", "code", "error"),
    [
        ("/api/sessions?limit=abc", 400, "limit must be an integer from 1 to 1000, got 'abc'"),
        ("/api/sessions?limit=0", 400, "limit must be an integer from 1 to 1000, got '0'"),
        ("/api/sessions?limit=1001", 400, "limit must be an integer from 1 to 1000, got '1001'"),
        ("/api/sessions?since=yesterday", 400, "since must be an ISO-8601 time"),
        ("/api/sessions?order=asc", 400, "unknown parameter(s): order"),
        (f"/api/sessions/{SOME_ID}?since=x", 400, "unknown parameter(s): since"),
        (f"/api/sessions/{SOME_ID}?after=-1", 400, "after must be a journal sequence number"),
        (f"/api/sessions/{SOME_ID}?after=x", 400, "after must be a journal sequence number"),
        (f"/api/sessions/{SOME_ID}?limit=0", 400, "limit must be an integer from 1 to 1000"),
        ("/api/sessions/42;DROP%20TABLE", 400, "session id must be a UUID, got '42;DROP TABLE'"),
        (
            "/api/sessions/00000000-0000-4000-8000-000000000000",
            404,
            "no session 00000000-0000-4000-8000-000000000000",
        ),
    ],
)
async def test_bad_parameters(
    tmp_path: Path, database_url: str, path: str, code: int, error: str
) -> None:
    server = await serve(tmp_path, database_url)
    try:
        got, body = await get(server, path)
        assert (got, body["status"]) == (code, code)
        assert body["error"].startswith(error)
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_remote_clients_need_the_token_when_configured(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Behind a proxy the client address comes from X-Real-Ip: a remote client.
    server = await serve(tmp_path, sqlite_url, admin_token="s3cret-token", behind_proxy=True)
    remote = {"X_Real_Ip": "203.0.113.7"}
    try:
        code, body = await get(server, "/api/sessions", **remote)
        assert (code, body["error"]) == (401, "missing or wrong bearer token")
        assert (await get(server, "/api/sessions", Authorization="Bearer wrong", **remote))[
            0
        ] == 401
        assert (await get(server, "/api/sessions", Authorization="Basic s3cret-token", **remote))[
            0
        ] == 401
        code, body = await get(
            server, "/api/sessions", Authorization="Bearer s3cret-token", **remote
        )
        assert (code, body["count"]) == (200, 0)
        assert (await get(server, "/api/sessions"))[0] == 200  # loopback needs no token
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_without_token_only_loopback_is_served(tmp_path: Path, sqlite_url: str) -> None:
    # Behind a proxy the client address comes from X-Real-Ip: a remote client.
    server = await serve(tmp_path, sqlite_url, behind_proxy=True)
    try:
        code, body = await get(server, "/api/sessions", X_Real_Ip="203.0.113.7")
        assert code == 403 and "loopback" in body["error"]
        # A header's loopback address is no loopback client: only the socket's is.
        assert (await get(server, "/api/sessions", X_Real_Ip="127.0.0.2"))[0] == 403
        assert (await get(server, "/api/sessions"))[0] == 200
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_database_down_gives_503_and_the_server_keeps_serving(
    tmp_path: Path, pg_outage: Any
) -> None:
    server = await serve(tmp_path, pg_outage.url)
    try:
        pg_outage.cut()
        code, body = await get(server, "/api/sessions")
        assert (code, body["error"]) == (503, "database unavailable")
        assert (await get(server, "/healthz"))[0] == 200
    finally:
        pg_outage.restore()
        await server.shutdown()


def test_parsers() -> None:
    assert parse_limit(None) == 50
    assert parse_since("1970-01-01T00:00:10Z") == 10.0
    assert parse_since("1970-01-01T01:00:10+01:00") == 10.0
    assert parse_since("1970-01-01T00:00:10") == 10.0  # no offset: UTC
    with pytest.raises(QueryError):
        parse_since("10")
