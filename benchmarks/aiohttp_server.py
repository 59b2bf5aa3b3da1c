#!/usr/bin/env python3
"""An aiohttp WebSocket echo server, a peer for benchmarks/engine_vs_peers.py.

Prints its port on the first line of stdout, then serves /ws until killed. aiohttp is a
benchmark dependency only (``pip install -e '.[bench]'``). Runs on uvloop when installed,
as the other servers here do.
"""

from __future__ import annotations

import functools
import ssl

from _peer import main, serve_forever
from aiohttp import WSMsgType, web


async def echo(request: web.Request, max_msg_size: int) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=True, max_msg_size=max_msg_size)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def serve(max_msg_size: int, context: ssl.SSLContext | None) -> None:
    app = web.Application()
    app.router.add_get("/ws", functools.partial(echo, max_msg_size=max_msg_size))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096, ssl_context=context)
    await site.start()
    assert site._server is not None and site._server.sockets
    await serve_forever(site._server.sockets[0].getsockname()[1])


if __name__ == "__main__":
    main(__doc__, serve)
