#!/usr/bin/env python3
"""An aiohttp WebSocket echo server, a peer for benchmarks/engine_vs_peers.py.

Prints its port on the first line of stdout, then serves /ws until killed. aiohttp is a
benchmark dependency only (``pip install -e '.[bench]'``). Runs on uvloop when installed,
as the other servers here do.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import resource
import ssl
import sys

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
    sys.stdout.write(f"{site._server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-msg-size", type=int, default=1 << 20)
    parser.add_argument("--tls-cert", help="serve wss:// with this PEM chain (and --tls-key)")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    context = None
    if args.tls_cert:  # the context tornado-echo builds (tls.py): TLS >= 1.2, one pair
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.max_msg_size, context))
    else:
        uvloop.run(serve(args.max_msg_size, context))


if __name__ == "__main__":
    main()
