"""Server lifecycle in-process: graceful shutdown order, 1001 closes, store flush."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from tornado.log import gen_log
from tornado.websocket import websocket_connect

from tests.helpers import (
    eventually,
    fetch_rows,
    make_server,
    open_raw_websocket,
    raw_http,
    read_server_frame,
    upgrade_request,
)
from tornado_echo.config import Config, build_config
from tornado_echo.engines.budget import loop_budgets
from tornado_echo.http.fast_listener import FastHTTPServer
from tornado_echo.process import server as server_module
from tornado_echo.process.server import Server, uses_fast_listener


@pytest.mark.gen_test(timeout=30)
async def test_shutdown_closes_clients_with_1001_and_flushes_the_store(
    tmp_path: Path, database_url: str
) -> None:
    server = make_server(tmp_path, database_url)
    serving = asyncio.ensure_future(server.serve())
    await eventually(lambda: server.sockets, "the server to listen")
    url = f"ws://127.0.0.1:{server.port}/ws"
    clients = [await websocket_connect(url) for _ in range(5)]
    for client in clients:
        await client.write_message("before shutdown")
        assert await client.read_message() == "before shutdown"
    server.request_exit()
    assert await asyncio.wait_for(serving, 20) == 0
    for client in clients:
        assert await client.read_message() is None
        assert client.close_code == 1001
    rows = fetch_rows(database_url, "SELECT end_state, close_code, messages_in FROM ws_sessions")
    assert [(r["end_state"], r["close_code"], r["messages_in"]) for r in rows] == [
        ("server_shutdown", 1001, 1)
    ] * 5


@pytest.mark.gen_test(timeout=30)
async def test_draining_server_refuses_upgrades_with_503(tmp_path: Path, sqlite_url: str) -> None:
    server = make_server(tmp_path, sqlite_url, shutdown_deadline=5.0)
    await server.start()
    client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
    server.connections.start_draining()
    status, _, body = await raw_http(server.port, upgrade_request())
    assert (status, body) == (503, b'{"status": 503, "error": "server is shutting down"}')
    client.close()
    assert await server.shutdown() == 0
    assert await server.shutdown() == 0  # idempotent


@pytest.mark.gen_test(timeout=30)
async def test_client_ignoring_the_close_is_dropped_at_the_deadline(
    tmp_path: Path, database_url: str
) -> None:
    server = make_server(tmp_path, database_url, shutdown_deadline=0.5)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request())
    await reader.readuntil(b"\r\n\r\n")
    while not len(server.connections):  # open() may run just after the 101 is sent
        await asyncio.sleep(0.01)
    # This client never answers the close frame: shutdown must not wait past its deadline.
    started = asyncio.get_running_loop().time()
    assert await server.shutdown() == 1
    assert 0.5 <= asyncio.get_running_loop().time() - started < 10
    writer.close()
    # Its close record was written before the store sealed: nothing lost, no row left open.
    assert server.store.status().dropped == 0
    rows = fetch_rows(database_url, "SELECT end_state, close_code, closed_at FROM ws_sessions")
    assert [(r["end_state"], r["close_code"]) for r in rows] == [("server_shutdown", 1006)]
    assert rows[0]["closed_at"] is not None


@pytest.mark.gen_test(timeout=30)
async def test_second_sigint_forces_exit(tmp_path: Path, sqlite_url: str) -> None:
    import signal

    server = make_server(tmp_path, sqlite_url, shutdown_deadline=60.0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request())
    await reader.readuntil(b"\r\n\r\n")
    server.request_exit(signal.SIGINT)
    shutting_down = asyncio.ensure_future(server.shutdown())
    opcode, _ = await asyncio.wait_for(read_server_frame(reader), 5)
    assert opcode == 0x8  # the server's close frame, which this client never answers
    assert not shutting_down.done()  # waiting for the unresponsive client
    server.request_exit(signal.SIGINT)
    assert await asyncio.wait_for(shutting_down, 5) == 1
    writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_ws_path_is_a_literal_path(tmp_path: Path, sqlite_url: str) -> None:
    server = make_server(tmp_path, sqlite_url, ws_path="/ws(")
    await server.start()
    try:
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws(")
        await client.write_message("literal")
        assert await client.read_message() == "literal"
        client.close()
        assert (await raw_http(server.port, upgrade_request("/ws")))[0] == 404
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_reload_of_a_conf_file_that_is_not_utf8_is_refused(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_text(f'database_url = "{sqlite_url}"\nstate_dir = "{tmp_path}"\nport = 0\n')
    config, _ = build_config(str(conf), {})
    server = Server(config, reload_config=lambda: build_config(str(conf), {})[0])
    await server.start()
    try:
        client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
        conf.write_bytes(conf.read_bytes() + b"max_connections = 1\xff\n")
        assert await server.reload() is False
        assert server.config is config
        assert f"{conf}: not UTF-8 text: byte 0xff at line 4" in caplog.text
        await client.write_message("still here")
        assert await client.read_message() == "still here"
        client.close()
    finally:
        await server.shutdown()
    assert "Traceback" not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_a_start_that_cannot_listen_leaves_logging_as_it_was_and_no_spool_file(
    tmp_path: Path, sqlite_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The filter on Tornado's log lines is its HTTPServer's (listener = "tornado").
        server = make_server(
            tmp_path,
            sqlite_url,
            host="127.0.0.1",
            port=taken.getsockname()[1],
            listener="tornado",
        )
        filters_before = list(gen_log.filters)
        with pytest.raises(OSError):
            await server.start()
        assert gen_log.filters == filters_before
        assert not list(tmp_path.glob("spool-*"))  # the store it had opened is closed
        assert not server.store.status().running
        await server.shutdown()
    # And a server that did listen takes its filter away again when it stops.
    server = make_server(tmp_path / "second", sqlite_url, server_id="test:0:1", listener="tornado")
    await server.start()
    assert len(gen_log.filters) == len(filters_before) + 1
    await server.shutdown()
    assert gen_log.filters == filters_before


@pytest.mark.gen_test(timeout=30)
async def test_a_reload_reaches_the_listener_handlers_and_new_connections(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = Config(port=0, database_url=sqlite_url, state_dir=str(tmp_path), max_connections=1)
    reloaded = dataclasses.replace(
        config, behind_proxy=True, max_http_connections=7, max_connections=2
    )
    server = Server(config, reload_config=lambda: reloaded)
    await server.start()
    try:
        first = await open_raw_websocket(server.port)
        assert await server.reload() is True
        assert server.config is server.live_config.current
        assert server.http is not None and server.http.max_http_connections == 7
        # behind_proxy applies to the next request; max_connections to the next upgrade.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request(X_Real_Ip="203.0.113.7"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        peers = await eventually(
            lambda: (
                sorted(s.request.remote_ip for s in server.connections._open)  # type: ignore[attr-defined]
                if len(server.connections) == 2
                else None
            )
        )
        assert peers == ["127.0.0.1", "203.0.113.7"]
        for _, open_writer in (first, (reader, writer)):
            open_writer.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_a_reload_whose_files_never_come_is_refused_and_never_holds_up_shutdown(
    tmp_path: Path,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read that blocks for good (a certificate on a hung mount, say).
    monkeypatch.setattr(server_module, "LOAD_TIMEOUT", 0.3)
    released = threading.Event()
    config = make_server(tmp_path, sqlite_url).config

    def stuck() -> Config:
        released.wait()
        return config

    server = Server(config, reload_config=stuck)
    await server.start()
    try:
        assert await server.reload() is False
        assert "reload refused" in caplog.text and "files took over" in caplog.text
    finally:
        await server.shutdown()
    # And a reload under way when SIGTERM comes: serve() goes on to the shutdown at once.
    monkeypatch.setattr(server_module, "LOAD_TIMEOUT", 3600.0)
    serving = Server(config, reload_config=stuck)
    task = asyncio.ensure_future(serving.serve())
    await eventually(lambda: serving.http is not None)
    serving.request_reload()
    await eventually(
        lambda: any(thread.name == "read-files" for thread in threading.enumerate()),
        "the reload to be under way",
    )
    serving.request_exit()
    assert await asyncio.wait_for(task, 10) == 0
    released.set()


@pytest.mark.parametrize(
    ("settings", "fast"),
    [
        ({}, True),
        ({"listener": "tornado"}, False),
        ({"engine": "tornado"}, False),
        ({"tls_cert": "cert.pem", "tls_key": "key.pem"}, True),
        ({"tls_cert": "cert.pem", "tls_key": "key.pem", "listener": "tornado"}, False),
    ],
)
def test_the_asyncio_listener_serves_the_fast_engine_tls_or_not(
    settings: dict[str, str], fast: bool
) -> None:
    assert uses_fast_listener(Config(**settings)) is fast


@pytest.mark.gen_test(timeout=30)
async def test_the_default_server_listens_with_the_asyncio_listener(
    tmp_path: Path, sqlite_url: str
) -> None:
    server = make_server(tmp_path, sqlite_url)
    await server.start()
    try:
        assert isinstance(server.http, FastHTTPServer)
        _, writer = await open_raw_websocket(server.port)
        writer.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_max_inflight_bytes_sets_the_loops_memory_budget_and_reloads_live(
    tmp_path: Path, sqlite_url: str
) -> None:
    conf = tmp_path / "echo.toml"
    base = f'database_url = "{sqlite_url}"\nstate_dir = "{tmp_path}"\nport = 0\n'
    conf.write_text(base + "max_inflight_bytes = 5000000\n")
    config, _ = build_config(str(conf), {})
    server = Server(config, reload_config=lambda: build_config(str(conf), {})[0])
    await server.start()
    try:
        assert loop_budgets().memory.limit == 5_000_000
        conf.write_text(base + "max_inflight_bytes = 7000000\n")
        assert await server.reload() is True
        assert loop_budgets().memory.limit == 7_000_000
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_the_loop_keeps_beating_while_the_store_drains_at_shutdown(
    tmp_path: Path, sqlite_url: str
) -> None:
    # A supervisor takes a stopping worker whose beats stand still for a stuck one and
    # kills it: a worker awaiting its store's writer must keep beating.
    server = make_server(tmp_path, sqlite_url, shutdown_deadline=0.2)
    await server.start()
    client = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws")
    await client.write_message("hi")
    assert await client.read_message() == "hi"
    # The database is locked: the session's rows wait, and the drain with them until the
    # lock goes, short of the drain's own limit (a writer past it is left running).
    locked_for = server_module.MIN_STORE_DRAIN - 0.3
    lock = sqlite3.connect(sqlite_url[len("sqlite:///") :], timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        beats = loop_budgets().turn.beats
        loop = asyncio.get_running_loop()
        seen = [(loop.time(), beats[0])]
        stopping = asyncio.ensure_future(server.shutdown())
        while not stopping.done():
            await asyncio.sleep(0.02)
            if beats[0] != seen[-1][1]:
                seen.append((loop.time(), beats[0]))
            if lock.in_transaction and loop.time() - seen[0][0] > locked_for:
                lock.rollback()
        seen.append((loop.time(), beats[0]))
        assert await stopping == 0
    finally:
        lock.close()
    assert await client.read_message() is None  # closed by the shutdown
    client.close()
    assert not server.store.status().running
    took = seen[-1][0] - seen[0][0]
    assert took >= locked_for  # it did wait for the store
    longest = max(later[0] - earlier[0] for earlier, later in itertools.pairwise(seen))
    assert longest < 2.5 * server_module.TICK, f"no beat for {longest:.1f} s of {took:.1f} s"
