#!/usr/bin/env python3
"""A picows WebSocket echo server, a peer for benchmarks/engine_vs_peers.py.

picows (Cython, frames handed over as they are parsed) is the fastest asyncio WebSocket
server measured here: beside it, the distance from tornado-echo to the best a Python
process does. Prints its port on the first line of stdout, then echoes every frame on /ws
until killed; a bench dependency only (``pip install -e '.[bench]'``). Runs on uvloop.
No permessage-deflate (picows has none).
"""

from __future__ import annotations

import ssl

from _peer import main, serve_forever
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
    await serve_forever(server.sockets[0].getsockname()[1])


if __name__ == "__main__":
    main(__doc__, serve)
