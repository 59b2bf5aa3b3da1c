"""What only the asyncio listener does: its own bounds on a client that does not read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import eventually, started_server
from tornado_echo.http import fast_listener
from tornado_echo.http.fast_listener import WRITE_HIGH_WATER, FastHTTPServer

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
