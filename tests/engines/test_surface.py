"""The Tornado handler surface on the fast engine: a user's own FastWebSocketHandler."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import socket
import struct
import time
from typing import Any

import pytest
import tornado.web
from tornado.websocket import WebSocketHandler, websocket_connect

from tests.helpers import (
    assert_no_traceback,
    client_frame,
    eventually,
    open_raw_websocket,
    read_server_frame,
    upgrade_request,
)
from tornado_echo.engines.fast import CLOSE_TIMEOUT, FastWebSocketHandler


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed = asyncio.Event()


class SurfaceHandler(FastWebSocketHandler):
    """Uses every documented hook: coroutine open and on_message, pongs, close codes."""

    def initialize(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "chat" if "chat" in subprotocols else None

    async def open(self, *args: str, **kwargs: str) -> None:
        await asyncio.sleep(0.05)  # messages that arrive meanwhile must wait for open
        self.recorder.events.append(("open", self.selected_subprotocol))
        await self.write_message({"hello": "json"})

    async def on_message(self, message: str | bytes) -> None:
        self.recorder.events.append(("message", message))
        if message == "slow":
            await asyncio.sleep(0.1)  # the next message must wait for this one
        if message == "ping me":
            self.ping(b"p")
            return
        if message == "close me":
            self.close(4001, "as you wish")
            return
        await self.write_message(message, binary=isinstance(message, bytes))

    def on_pong(self, data: bytes) -> None:
        self.recorder.events.append(("pong", data))

    def on_close(self) -> None:
        self.recorder.events.append(("close", self.close_code, self.close_reason))
        self.recorder.closed.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class SlowToAcceptHandler(FastWebSocketHandler):
    """Holds the upgrade in an async ``prepare`` until the test opens ``gate``."""

    def initialize(self, recorder: Recorder, gate: asyncio.Event) -> None:
        self.recorder = recorder
        self.gate = gate

    async def prepare(self) -> None:
        self.recorder.events.append(self)
        await self.gate.wait()

    def on_close(self) -> None:
        self.recorder.closed.set()


class FireAndForgetHandler(FastWebSocketHandler):
    """Echoes without waiting for the echo to be written."""

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class RaisingHandler(FastWebSocketHandler):
    """Echoes, but raises on "boom": Tornado logs the error and aborts the connection."""

    def initialize(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def on_message(self, message: str | bytes) -> None:
        self.recorder.events.append(("message", message))
        if message == "boom":
            raise RuntimeError("boom")
        self.write_message(message)

    def on_close(self) -> None:
        self.recorder.closed.set()


class CloseAtOpenHandler(FastWebSocketHandler):
    """Closes from ``open`` with keepalive on: the server's close comes before any ping."""

    @property
    def ping_interval(self) -> float:
        return 0.1

    def open(self, *args: str, **kwargs: str) -> None:
        self.close(4002, "not today")


class DefaultHeadersHandler(FastWebSocketHandler):
    """Sets its own default headers, as Tornado documents (a custom Server, say)."""

    def set_default_headers(self) -> None:
        self.set_header("Server", "echo-test")
        self.set_header("X-Default", "yes")

    def prepare(self) -> None:
        self.set_cookie("session", "abc")


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def app(recorder: Recorder, gate: asyncio.Event) -> tornado.web.Application:
    return tornado.web.Application(
        [
            ("/ws", SurfaceHandler, {"recorder": recorder}),
            ("/slow", SlowToAcceptHandler, {"recorder": recorder, "gate": gate}),
            ("/big", FireAndForgetHandler),
            ("/close-at-open", CloseAtOpenHandler),
            ("/raises", RaisingHandler, {"recorder": recorder}),
            ("/defaults", DefaultHeadersHandler),
        ]
    )


@pytest.mark.gen_test(timeout=15)
async def test_tornado_handler_surface_on_the_fast_engine(
    http_server: Any, http_port: int, recorder: Recorder
) -> None:
    client = await websocket_connect(f"ws://127.0.0.1:{http_port}/ws", subprotocols=["chat"])
    assert client.selected_subprotocol == "chat"
    for message in ("slow", "after slow", b"\x00bin"):
        client.write_message(message, binary=isinstance(message, bytes))
    assert await client.read_message() == '{"hello": "json"}'
    assert await client.read_message() == "slow"
    assert await client.read_message() == "after slow"
    assert await client.read_message() == b"\x00bin"
    await client.write_message("ping me")
    await client.write_message("close me")
    assert await client.read_message() is None
    assert (client.close_code, client.close_reason) == (4001, "as you wish")
    await asyncio.wait_for(recorder.closed.wait(), 5)
    assert recorder.events[0] == ("open", "chat")
    assert [e for e in recorder.events if e[0] == "message"] == [
        ("message", "slow"),
        ("message", "after slow"),
        ("message", b"\x00bin"),
        ("message", "ping me"),
        ("message", "close me"),
    ]
    assert ("pong", b"p") in recorder.events
    assert recorder.events[-1] == ("close", 4001, None)


@pytest.mark.gen_test(timeout=15)
async def test_the_101_carries_tornado_s_default_headers_cookies_and_a_current_date(
    http_server: Any, http_port: int
) -> None:
    before = time.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(upgrade_request("/defaults"))
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    after = time.time()
    writer.close()
    assert lines[0].startswith("HTTP/1.1 101 ")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert (headers["Server"], headers["X-Default"]) == ("echo-test", "yes")
    assert "Content-Type" not in headers
    assert headers["Set-Cookie"] == "session=abc; Path=/"
    sent = email.utils.parsedate_to_datetime(headers["Date"]).timestamp()
    assert int(before) - 1 <= sent <= after


@pytest.mark.gen_test(timeout=15)
async def test_what_the_peer_sends_after_the_server_closes_is_dropped_unread(
    http_server: Any, http_port: int, recorder: Recorder
) -> None:
    reader, writer = await open_raw_websocket(http_port)
    assert await read_server_frame(reader) == (0x1, b'{"hello": "json"}')
    writer.write(client_frame(0x1, b"close me"))
    assert await asyncio.wait_for(read_server_frame(reader), 5) == (
        0x8,
        struct.pack("!H", 4001) + b"as you wish",
    )
    # Before our close arrives: text that is not UTF-8 (read, it would fail the connection
    # with 1007), then our close.
    writer.write(client_frame(0x1, b"\xff" * 100) + client_frame(0x8, struct.pack("!H", 4001)))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(recorder.closed.wait(), 5)
    assert recorder.events[-1] == ("close", 4001, None)
    writer.close()


@pytest.mark.gen_test(timeout=CLOSE_TIMEOUT + 10)
async def test_a_close_from_open_hangs_up_after_the_close_timeout_with_keepalive_on(
    http_server: Any, http_port: int
) -> None:
    # Keepalive used to be started after open() returned, replacing the close timeout's
    # deadline with a ping's that found the connection closing and did nothing: a peer
    # that never answers the close kept its connection for good.
    reader, writer = await open_raw_websocket(http_port, "/close-at-open")
    assert await asyncio.wait_for(read_server_frame(reader), 5) == (
        0x8,
        struct.pack("!H", 4002) + b"not today",
    )
    # No ping either (the connection is closing); then the server hangs up on its own.
    assert await asyncio.wait_for(reader.read(), CLOSE_TIMEOUT + 5) == b""
    writer.close()


@pytest.mark.gen_test(timeout=15)
async def test_an_exception_in_on_message_is_logged_and_aborts_the_connection(
    http_server: Any, http_port: int, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # As Tornado's _run_callback does: the error logged with its traceback, the connection
    # dropped without a close frame, and what came in the same read after it not handled.
    reader, writer = await open_raw_websocket(http_port, "/raises")
    writer.write(client_frame(0x1, b"before"))
    assert await asyncio.wait_for(read_server_frame(reader), 5) == (0x1, b"before")
    with caplog.at_level(logging.ERROR):
        writer.write(client_frame(0x1, b"boom") + client_frame(0x1, b"after"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.wait_for(recorder.closed.wait(), 5)
    writer.close()
    assert recorder.events == [("message", "before"), ("message", "boom")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "boom"


def test_surface_handler_is_a_tornado_handler() -> None:
    assert issubclass(SurfaceHandler, WebSocketHandler)


@pytest.mark.gen_test(timeout=15)
async def test_a_peer_gone_before_its_upgrade_is_accepted_just_closes(
    http_server: Any,
    http_port: int,
    recorder: Recorder,
    gate: asyncio.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(upgrade_request("/slow"))
    [handler] = await eventually(lambda: recorder.events)
    # Reset, not FIN: Tornado notices an error on a stream it is not reading.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    stream = getattr(handler.request.connection, "stream", None)
    if stream is not None:
        await eventually(stream.closed)
    # (The asyncio listener does not read while a request is served: it learns of the
    # reset when the 101 is written.)
    gate.set()
    await asyncio.wait_for(recorder.closed.wait(), 5)
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=15)
async def test_a_close_right_after_a_large_deflated_write_comes_after_it(
    http_server: Any, http_port: int
) -> None:
    # The handler does not wait for its echo of 768 KB of random data, deflated off the loop
    # (tens of milliseconds); the peer's close frame is handled meanwhile: the echo and then
    # the close frame must both be sent before the server hangs up.
    client = await websocket_connect(f"ws://127.0.0.1:{http_port}/big", compression_options={})
    message = os.urandom(768 * 1024)
    client.write_message(message, binary=True)
    client.close(1000)
    assert await client.read_message() == message
    assert await client.read_message() is None
    assert client.close_code == 1000
