"""What only the asyncio listener does: its own bounds on a client that does not read."""

from __future__ import annotations

import asyncio
import gc
import socket
from pathlib import Path

import pytest
import tornado.web

from tests.helpers import eventually, open_raw_websocket, started_server
from tornado_echo.config import Config, LiveConfig
from tornado_echo.http import fast_listener
from tornado_echo.http.fast_listener import WRITE_HIGH_WATER, FastHTTPServer, HTTP11Connection

ASSET = b"GET /console/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_does_not_read_its_answers_gets_no_more_and_is_closed(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request of one read parsed (not 64), so that the answers outgrow the kernel's
    # socket buffers and back up in the transport's.
    monkeypatch.setattr(fast_listener, "MAX_PIPELINED", 100_000)
    server = await started_server(tmp_path, sqlite_url, http_timeout=1.0)
    try:
        http = server.http
        assert isinstance(http, FastHTTPServer)
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(ASSET * 3000)  # 42 MB of answers, never read
        await eventually(lambda: http.connections, timeout=5)  # accepted by the loop
        most = 0

        def gone() -> bool:
            nonlocal most
            for connection in http.connections:
                if connection.transport is not None:
                    most = max(most, connection.transport.get_write_buffer_size())
            return not http.connections

        # Closed once http_timeout has passed without the client taking its answers.
        await eventually(gone, timeout=10, interval=0.005)
        assert 0 < most <= WRITE_HIGH_WATER + 64 * 1024, most
        writer.transport.abort()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_closed_before_its_transport_comes_is_closed_when_it_comes(
    app: tornado.web.Application,
) -> None:
    # Shutdown may find a connection accepted whose transport the loop has not made yet.
    http = FastHTTPServer(app, LiveConfig(Config(http_timeout=30.0, max_http_connections=10)))
    ours, theirs = socket.socketpair()
    connection = HTTP11Connection(http, ("127.0.0.1", 1), socket.AF_INET)
    closing = asyncio.ensure_future(http.close_all_connections())
    await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, ours)
    await asyncio.wait_for(closing, 5)  # not the 30 s of http_timeout
    assert (http.open_http, len(http.connections)) == (0, 0)
    theirs.close()


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.mark.gen_test(timeout=30)
async def test_stop_closes_the_listening_sockets_once_and_for_all(
    app: tornado.web.Application,
) -> None:
    http = FastHTTPServer(app, LiveConfig(Config(http_timeout=30.0)))
    sock = listening_socket()
    port = sock.getsockname()[1]
    await http.start_serving([sock])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    http.stop()
    http.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # Sockets handed over after stop() are closed, not served.
    late = listening_socket()
    await http.start_serving([late])
    assert late.fileno() == -1
    await http.close_all_connections()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("ending", ["upgraded", "closed"])
async def test_a_connection_done_with_http_is_freed_without_the_cycle_collector(
    tmp_path: Path, sqlite_url: str, ending: str
) -> None:
    # With tens of thousands of connections alive the collector's full passes are rare:
    # what only they free stays, the more so in a storm of handshakes.
    server = await started_server(tmp_path, sqlite_url)
    gc.collect()
    gc.disable()
    try:
        if ending == "upgraded":
            _, writer = await open_raw_websocket(server.port)
        else:  # by the client, half-way through its request
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(ASSET[:20])
            await eventually(lambda: server.http.connections)  # type: ignore[union-attr]
            writer.close()
        await eventually(lambda: not server.http.connections)  # type: ignore[union-attr]
        left = [o for o in gc.get_objects() if isinstance(o, HTTP11Connection)]
        assert not left
        writer.close()
    finally:
        gc.enable()
        await server.shutdown()
