"""The WebSocket route's requests started without a Task (``compat.EagerHandlerDelegate``):
what a handler may do in its hooks still works as Tornado documents, on both listeners."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.websocket import websocket_connect

from tests.helpers import client_frame, raw_http, read_server_frame, upgrade_request
from tornado_echo.compat import (
    HandlerDelegate,
    RequestHeaders,
    eager_handler_delegate,
    runs_eagerly,
    start_eagerly,
)
from tornado_echo.engines.fast import FastWebSocketHandler


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []


class SyncHooks(FastWebSocketHandler):
    """Every hook synchronous: served without a Task while nothing suspends. ``open`` returns
    a Future (Tornado awaits what open returns): the upgrade suspends there, and must go on
    from where it stopped, open's result awaited before the first message is handled."""

    def initialize(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def prepare(self) -> None:
        self.recorder.events.append(("prepare", self.request.headers.get("X-Absent", "none")))
        if self.request.headers.get("X-Refuse"):
            raise tornado.web.HTTPError(500)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(f"refused by the subclass ({status_code})")

    def open(self, *args: str, **kwargs: str) -> asyncio.Future[None]:
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, opened.set_result, None)
        opened.add_done_callback(lambda _: self.recorder.events.append(("opened",)))
        return opened

    def on_message(self, message: str | bytes) -> None:
        self.recorder.events.append(("message", message))
        self.write_message(message)


class AwaitingPrepare(FastWebSocketHandler):
    """A coroutine ``prepare`` of the application's: it runs in a Task of its own, as on
    Tornado (asyncio.timeout needs one), and the upgrade goes on after it has waited."""

    def initialize(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def prepare(self) -> None:
        task = asyncio.current_task()
        self.recorder.events.append(("prepare task", task is not None and not task.done()))
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(5):
                await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(0.01)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self.recorder.events.append(("get",))
        await super().get(*args, **kwargs)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


class EagerApplication(tornado.web.Application):
    """Routes every request through the eager delegate, as EchoApplication its WebSocket
    route."""

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HandlerDelegate:
        handler_class, handler_kwargs = self.routes[request.path]
        return eager_handler_delegate(self, request, handler_class, handler_kwargs)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app(recorder: Recorder) -> tornado.web.Application:
    app = EagerApplication()
    app.routes = {  # type: ignore[attr-defined]
        "/sync": (SyncHooks, {"recorder": recorder}),
        "/awaiting": (AwaitingPrepare, {"recorder": recorder}),
    }
    return app


def test_only_the_application_s_own_coroutine_hooks_keep_their_task() -> None:
    assert runs_eagerly(SyncHooks)
    assert not runs_eagerly(AwaitingPrepare)


@pytest.mark.gen_test(timeout=15)
async def test_an_upgrade_that_suspends_in_open_goes_on_from_there(
    http_server: Any, http_port: int, recorder: Recorder
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    # The first message comes with the request: it waits for open()'s Future.
    writer.write(upgrade_request("/sync") + client_frame(0x1, b"first"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert await asyncio.wait_for(read_server_frame(reader), 5) == (0x1, b"first")
    assert recorder.events == [("prepare", "none"), ("opened",), ("message", "first")]
    writer.close()


@pytest.mark.gen_test(timeout=15)
async def test_a_subclass_s_write_error_answers_a_refused_upgrade(
    http_server: Any, http_port: int, recorder: Recorder
) -> None:
    status, _, body = await raw_http(http_port, upgrade_request("/sync", X_Refuse="yes"))
    assert (status, body) == (500, b"refused by the subclass (500)")


@pytest.mark.gen_test(timeout=15)
async def test_a_coroutine_prepare_and_get_override_run_in_a_task(
    http_server: Any, http_port: int, recorder: Recorder
) -> None:
    client = await websocket_connect(f"ws://127.0.0.1:{http_port}/awaiting")
    await client.write_message("hello")
    assert await client.read_message() == "hello"
    client.close()
    assert recorder.events == [("prepare task", True), ("get",)]


def test_request_headers_get_is_mapping_get() -> None:
    headers = RequestHeaders()
    headers.add("Sec-WebSocket-Protocol", "a")
    headers.add("sec-websocket-protocol", "b")
    assert headers.get("SEC-WEBSOCKET-PROTOCOL") == "a,b"
    assert headers.get("Origin") is None
    assert headers.get("Origin", "x") == "x"
    assert dict(headers) == {"Sec-Websocket-Protocol": "a,b"}
    headers.add("Sec-WebSocket-Protocol", "c")  # the combined value follows
    assert headers.get("Sec-WebSocket-Protocol") == "a,b,c"


def test_a_suspended_upgrade_closed_after_its_coroutine_closes_quietly() -> None:
    # A Task destroyed pending (a loop closed under it) has its coroutine and ours closed
    # by the garbage collector, in either order: as with ``yield from``, closing ours after
    # the handler's coroutine has closed is no error.
    async def suspended() -> None:
        await asyncio.get_running_loop().create_future()

    async def main() -> None:
        coro = suspended()
        start_eagerly(coro)
        [task] = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        carried = task.get_coro()
        await asyncio.sleep(0)  # the Task has taken the coroutine over
        with pytest.raises(ValueError):
            coro.throw(ValueError())  # ended (the collector got to it first)
        carried.close()  # type: ignore[union-attr]
        task.cancel()

    asyncio.run(main())


def test_a_suspended_upgrade_closed_while_its_coroutine_is_closing_closes_quietly() -> None:
    # The other order, as the collector at interpreter exit finalizes a cycle: the handler's
    # coroutine is being closed and, meanwhile, so is ours. Closing it again would raise
    # "coroutine already executing" out of the collector ("Exception ignored in").
    carried: list[Any] = []

    async def suspended() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            carried[0].close()

    async def main() -> None:
        coro = suspended()
        start_eagerly(coro)
        [task] = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        carried.append(task.get_coro())
        await asyncio.sleep(0)
        coro.close()
        task.cancel()

    asyncio.run(main())
