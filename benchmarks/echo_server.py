#!/usr/bin/env python3
"""A minimal Tornado WebSocket echo server for the load-tester benchmarks.

Prints its port on the first line of stdout, then serves /ws until killed. This is the
stock Tornado handler (write_message per echo), the baseline the benchmarks compare
tornado-echo and the load tester against.
"""

from __future__ import annotations

import ssl

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from _peer import main, serve_forever


class Echo(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


async def serve(port: int, context: ssl.SSLContext | None) -> None:
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", backlog=4096)
    server = tornado.httpserver.HTTPServer(
        tornado.web.Application([(r"/ws", Echo)]), ssl_options=context
    )
    server.add_sockets(sockets)
    await serve_forever(sockets[0].getsockname()[1])


if __name__ == "__main__":
    main(__doc__, serve, "--port", 0)
