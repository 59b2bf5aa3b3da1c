#!/usr/bin/env python3
"""A minimal Tornado WebSocket echo server for the load-tester benchmarks.

Prints its port on the first line of stdout, then serves /ws until killed. This is the
stock Tornado handler (write_message per echo), the baseline the benchmarks compare
tornado-echo and the load tester against.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import sys

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket


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
    sys.stdout.write(f"{sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
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
        asyncio.run(serve(args.port, context))
    else:
        uvloop.run(serve(args.port, context))


if __name__ == "__main__":
    main()
