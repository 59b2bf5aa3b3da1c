#!/usr/bin/env python3
"""A picows WebSocket echo server, a peer for benchmarks/engine_vs_peers.py.

picows (Cython, frames handed over as they are parsed) is the fastest asyncio WebSocket
server measured here: beside it, the distance from tornado-echo to the best a Python
process does. Prints its port on the first line of stdout, then echoes every frame on /ws
until killed; a bench dependency only (``pip install -e '.[bench]'``). Runs on uvloop.
No permessage-deflate (picows has none).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(frame.msg_type, frame.get_payload_as_bytes(), frame.fin)


def listener(request: WSUpgradeRequest) -> Echo | None:
    return Echo() if request.path == b"/ws" else None


async def serve(max_msg_size: int, context: ssl.SSLContext | None) -> None:
    server = await ws_create_server(
        listener,
        "127.0.0.1",
        0,
        max_frame_size=max_msg_size,
        ssl=context,
        backlog=4096,
    )
    sys.stdout.write(f"{server.sockets[0].getsockname()[1]}\n")
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
    uvloop.run(serve(args.max_msg_size, context))


if __name__ == "__main__":
    main()
