"""Small real servers (correct and misbehaving) for the load tester's tests.

They run on a Tornado IOLoop in a background thread, on OS-chosen ports, because the
load tester under test owns the main thread's event loop (asyncio.run).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
import tornado.websocket

DATA = Path(__file__).parent / "data"


class EchoHandler(tornado.websocket.WebSocketHandler):
    """Correct echo (permessage-deflate offered when the client asks)."""

    def check_origin(self, origin: str) -> bool:
        return True

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return subprotocols[0] if subprotocols else None

    def open(self, *args: str) -> None:
        self.seen = 0
        header = self.request.headers.get("X-Require")
        # Lets a test prove custom headers and Origin reach the server.
        if header is not None and header != "yes":
            self.close(1008, "missing header")

    def on_message(self, message: str | bytes) -> None:
        self.seen += 1
        self.reply(message)

    def reply(self, message: str | bytes) -> None:
        # The client may close while echoes are still queued; that is not a test failure.
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            self.write_message(message, binary=isinstance(message, bytes))


class WrongEchoHandler(EchoHandler):
    """Changes the last byte of every echo."""

    def reply(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        data = data[:-1] + (b"?" if data[-1:] != b"?" else b"!")
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            self.write_message(data.decode(), binary=False)


class DropHandler(EchoHandler):
    """Never echoes every third message."""

    def reply(self, message: str | bytes) -> None:
        if self.seen % 3 != 0:
            super().reply(message)


class DuplicateHandler(EchoHandler):
    """Echoes every message twice."""

    def reply(self, message: str | bytes) -> None:
        super().reply(message)
        super().reply(message)


class ReorderHandler(EchoHandler):
    """Echoes messages in swapped pairs (needs two in flight)."""

    held: str | bytes | None = None

    def reply(self, message: str | bytes) -> None:
        if self.held is None:
            self.held = message
            return
        super().reply(message)
        super().reply(self.held)
        self.held = None


class StallHandler(EchoHandler):
    """Stalls for a second at the 50th message of each connection, then catches up."""

    held: list[str | bytes] | None = None

    def reply(self, message: str | bytes) -> None:
        if self.seen == 50:
            self.held = []
            tornado.ioloop.IOLoop.current().call_later(1.0, self.resume)
        if self.held is not None:
            self.held.append(message)
        else:
            super().reply(message)

    def resume(self) -> None:
        held, self.held = self.held or [], None
        for message in held:
            super().reply(message)


class CorruptSequenceHandler(EchoHandler):
    """Changes the last digit of the sequence number (the 16th byte) of every third echo."""

    def reply(self, message: str | bytes) -> None:
        if self.seen % 3 == 0:
            text = message.decode() if isinstance(message, bytes) else message
            digit = "%x" % (int(text[15], 16) ^ 1)
            garbled = text[:15] + digit + text[16:]
            message = garbled.encode() if isinstance(message, bytes) else garbled
        super().reply(message)


class RetypeHandler(EchoHandler):
    """Echoes every fifth message as the other frame type (text as binary and back)."""

    def reply(self, message: str | bytes) -> None:
        if self.seen % 5 == 0:
            swapped = message.encode() if isinstance(message, str) else message.decode()
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                self.write_message(swapped, binary=isinstance(swapped, bytes))
        else:
            super().reply(message)


class CloseHandler(EchoHandler):
    """Closes with the code in the path after the first echo (1006: ends TCP cleanly, FIN
    without a close frame; a shutdown, since closing a socket with unread data (the client's
    next message) would make the kernel answer with a reset instead)."""

    def reply(self, message: str | bytes) -> None:
        super().reply(message)
        code = int(self.path_args[0])
        if code == 1006:
            assert self.ws_connection is not None
            stream = self.ws_connection.stream
            assert stream is not None and stream.socket is not None
            stream.socket.shutdown(socket.SHUT_WR)
        else:
            self.close(code, "test close")


class ResetHandler(EchoHandler):
    """Resets the TCP connection (RST, SO_LINGER 0) right after the first echo."""

    def reply(self, message: str | bytes) -> None:
        super().reply(message)
        assert self.ws_connection is not None
        stream = self.ws_connection.stream
        assert stream is not None and stream.socket is not None
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()


class HoldFirstHandler(EchoHandler):
    """Holds each connection's first message back until the second one has been echoed: a
    reorder that a closed loop with one message in flight only sees after its timeout."""

    held: str | bytes | None = None

    def reply(self, message: str | bytes) -> None:
        if self.seen == 1:
            self.held = message
            return
        super().reply(message)
        if self.held is not None:
            super().reply(self.held)
            self.held = None


class FlakyUpgradeHandler(EchoHandler):
    """Refuses every second upgrade with 503 (counted over the server's life)."""

    upgrades = 0

    async def get(self, *args: str, **kwargs: str) -> None:
        FlakyUpgradeHandler.upgrades += 1
        if FlakyUpgradeHandler.upgrades % 2 == 0:
            self.set_status(503)
            self.finish("try again")
            return
        await super().get(*args, **kwargs)


class StatusHandler(tornado.web.RequestHandler):
    """Refuses the upgrade with the HTTP status in the path."""

    def get(self, status: str) -> None:
        self.set_status(int(status))
        self.finish("no upgrade for you")


@dataclass
class Servers:
    """Base URLs of the running test servers."""

    port: int
    small_port: int  # websocket_max_message_size=100
    refused_port: int
    silent_port: int
    tls_port: int  # wss with a self-signed certificate for localhost

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


def _app(**settings: Any) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/echo", EchoHandler),
            (r"/wrong", WrongEchoHandler),
            (r"/drop", DropHandler),
            (r"/dup", DuplicateHandler),
            (r"/reorder", ReorderHandler),
            (r"/retype", RetypeHandler),
            (r"/corrupt-seq", CorruptSequenceHandler),
            (r"/close/(\d+)", CloseHandler),
            (r"/status/(\d+)", StatusHandler),
            (r"/flaky", FlakyUpgradeHandler),
            (r"/stall", StallHandler),
            (r"/reset", ResetHandler),
            (r"/hold-first", HoldFirstHandler),
        ],
        **settings,
    )


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    main_sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    tls_sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(DATA / "cert.pem", DATA / "key.pem")
    small_sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    # Bound but never listening: connecting to it is refused at once.
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    # Listening but never accepting: TCP connects, the upgrade never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            tornado.httpserver.HTTPServer(_app()).add_sockets(main_sockets)
            tornado.httpserver.HTTPServer(_app(), ssl_options=tls).add_sockets(tls_sockets)
            tornado.httpserver.HTTPServer(_app(websocket_max_message_size=100)).add_sockets(
                small_sockets
            )

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    yield Servers(
        port=main_sockets[0].getsockname()[1],
        small_port=small_sockets[0].getsockname()[1],
        refused_port=refused.getsockname()[1],
        silent_port=silent.getsockname()[1],
        tls_port=tls_sockets[0].getsockname()[1],
    )
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    refused.close()
    silent.close()
