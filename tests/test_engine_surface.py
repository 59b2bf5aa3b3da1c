"""The Tornado handler surface on the fast engine: a user's own FastWebSocketHandler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tornado.web
from tornado.websocket import WebSocketHandler, websocket_connect

from tornado_echo.engine import FastWebSocketHandler


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


@pytest.fixture
def app(recorder: Recorder) -> tornado.web.Application:
    return tornado.web.Application([("/ws", SurfaceHandler, {"recorder": recorder})])


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


def test_surface_handler_is_a_tornado_handler() -> None:
    assert issubclass(SurfaceHandler, WebSocketHandler)
