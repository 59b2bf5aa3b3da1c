"""One EchoConnection against a scripted peer on a socketpair: no server, no Worker.

The test plays the server byte by byte (upgrade answer, frames, close), so each rule of the
connection is checked in isolation through its narrow owner interface.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from websockets.utils import accept_key

from tests.helpers import eventually
from tornado_echo import wire
from tornado_echo.loadtest.config import LoadConfig, SizeSpec, Target
from tornado_echo.loadtest.errors import HandshakeError
from tornado_echo.loadtest.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeRequest,
)
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.protocol import EchoConnection
from tornado_echo.loadtest.tracker import EchoTracker, Filler, LiveCounters


class Owner:
    """Records what the connection reports."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.dropped = 0
        self.stopped = 0
        self.closed = asyncio.Event()

    def on_error(self, category: str) -> None:
        self.errors[category] += 1

    def on_dropped(self) -> None:
        self.dropped += 1

    def on_stopped(self, conn: EchoConnection) -> None:
        self.stopped += 1

    def on_closed(self, conn: EchoConnection) -> None:
        self.closed.set()


class Peer:
    """The server end of the socketpair, scripted by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def upgrade(self, status: str = "101 Switching Protocols") -> None:
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        self.writer.write(
            f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )

    async def frame(self) -> tuple[int, bytes]:
        """One client frame: (opcode, unmasked payload); it must be masked."""
        b0, b1 = await self.reader.readexactly(2)
        assert b1 & 0x80, "client frames are masked"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        mask = await self.reader.readexactly(4)
        return b0 & 0x0F, wire.apply_mask(await self.reader.readexactly(length), mask)

    def send(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        self.writer.write(bytes((0x80 | opcode, len(payload))) + payload)


async def connected(
    script: Callable[[EchoConnection, Peer, Owner, LiveCounters], Awaitable[None]],
    **options: object,
) -> None:
    """Run ``script`` with an opened connection (or a handshake under test)."""
    cfg = LoadConfig.validated(target=Target.parse("ws://127.0.0.1:9/"), **options)
    client, server = socket.socketpair()
    owner, live = Owner(), LiveCounters()
    tracker = EchoTracker(
        live, Histogram(), Histogram(), cfg.sizes, Filler(cfg.sizes.high), random.Random(1)
    )
    conn = EchoConnection(
        owner, cfg, HandshakeRequest("127.0.0.1:9", "/"), tracker, live, Histogram()
    )
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: conn, sock=client)
    peer = Peer(*await asyncio.open_connection(sock=server))
    try:
        await asyncio.wait_for(script(conn, peer, owner, live), 10)
    finally:
        peer.writer.close()
        conn.abort()


def run(script: Callable[..., Awaitable[None]], **options: object) -> None:
    asyncio.run(connected(script, **options))


async def opened(conn: EchoConnection, peer: Peer) -> None:
    await peer.upgrade()
    await conn.opened


def test_echoes_then_the_closing_handshake() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        for _ in range(2):  # each echo is answered with the next message, up to the budget
            opcode, payload = await peer.frame()
            assert opcode == OP_TEXT and len(payload) == 64
            peer.send(OP_TEXT, payload)
        assert await peer.frame() == (OP_CLOSE, (1000).to_bytes(2, "big"))
        peer.send(OP_CLOSE, (1000).to_bytes(2, "big"))
        await owner.closed.wait()
        assert live.received == 2 and live.lost == 0
        assert not owner.errors and owner.dropped == 0

    run(script, messages=2)


@pytest.mark.parametrize("code", [1001, 1011, 4000])
def test_a_server_close_is_a_drop_counted_by_code_and_answered(code: int) -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        await peer.frame()
        peer.send(OP_CLOSE, code.to_bytes(2, "big") + b"bye")
        assert await peer.frame() == (OP_CLOSE, code.to_bytes(2, "big"))
        await owner.closed.wait()
        assert owner.errors == {f"close_{code}": 1} and owner.dropped == 1
        assert live.lost == 1  # the message in flight never came back

    run(script)


@pytest.mark.parametrize(
    ("body", "category", "answer"),
    [
        ((1005).to_bytes(2, "big"), "close_invalid_1005", 1002),  # may not be sent
        ((1006).to_bytes(2, "big"), "close_invalid_1006", 1002),
        ((999).to_bytes(2, "big"), "close_invalid_999", 1002),
        (b"\x03", "close_invalid", 1002),  # a one-byte body
        ((1000).to_bytes(2, "big") + b"\xff", "close_invalid", 1007),  # reason not UTF-8
        (b"", "close_1005", 1000),  # no code at all is allowed: reported as 1005
    ],
)
def test_a_close_frame_against_the_rules_is_flagged(
    body: bytes, category: str, answer: int
) -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        peer.send(OP_CLOSE, body)
        assert await peer.frame() == (OP_CLOSE, answer.to_bytes(2, "big"))
        await owner.closed.wait()
        assert owner.errors == {category: 1} and owner.dropped == 1

    run(script)


def test_an_echo_of_the_other_frame_type_is_retyped() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        _, payload = await peer.frame()
        peer.send(OP_BINARY, payload)
        opcode, following = await peer.frame()  # answered: the loop goes on
        assert opcode == OP_TEXT and following != payload
        assert live.retyped == 1 and live.received == 0 and live.sent == 2

    run(script, sizes=SizeSpec(32, 32))


def test_a_server_that_repeats_each_echo_gets_one_message_per_echo_within_the_budget() -> None:
    # Each echo and its repeat in reads of their own, so both take the one-step answer's
    # way: only the first is answered, and the budget ends the loop all the same.
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        opcode, payload = await peer.frame()
        messages = 0
        while opcode == OP_TEXT:
            messages += 1
            peer.send(OP_TEXT, payload)
            following = await peer.frame()  # the echo was read: its answer came
            peer.send(OP_TEXT, payload)
            await eventually(lambda n=messages: live.duplicates == n)  # and the repeat was read
            assert live.sent == min(messages + 1, 3)  # one message per echo, none per repeat
            opcode, payload = following
        assert (opcode, payload) == (OP_CLOSE, (1000).to_bytes(2, "big"))
        peer.send(OP_CLOSE, (1000).to_bytes(2, "big"))
        assert await peer.reader.read() == b""  # and nothing after the close
        await owner.closed.wait()
        assert messages == live.sent == live.received == 3
        assert live.duplicates == 3 and live.lost == live.mismatches == 0
        assert not owner.errors and owner.dropped == 0

    run(script, messages=3, inflight=1)


def test_ping_is_answered_with_pong_of_the_same_body() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        peer.send(OP_PING, b"are you there")
        assert await peer.frame() == (OP_PONG, b"are you there")

    run(script)


def test_masked_server_frame_is_a_protocol_error_closed_with_1002() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        peer.writer.write(bytes((0x81, 0x80 | 4)) + b"\x00\x00\x00\x00" + b"abcd")
        assert await peer.frame() == (OP_CLOSE, (1002).to_bytes(2, "big"))
        await owner.closed.wait()
        assert owner.errors["protocol_error"] == 1

    run(script)


def test_refused_upgrade_fails_the_opened_future() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await peer.upgrade("403 Forbidden")
        with pytest.raises(HandshakeError) as info:
            await conn.opened
        assert info.value.category == "handshake_403"
        await owner.closed.wait()
        assert owner.dropped == 0  # never open, so not a drop

    run(script)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_a_control_frame_over_125_bytes_is_a_protocol_error_closed_with_1002(
    opcode: int,
) -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        await peer.frame()  # the first message, left unanswered
        body = (1000).to_bytes(2, "big") + b"x" * 124  # 126 bytes, a 16-bit length
        peer.writer.write(bytes((0x80 | opcode, 126)) + len(body).to_bytes(2, "big") + body)
        assert await peer.frame() == (OP_CLOSE, (1002).to_bytes(2, "big"))
        await owner.closed.wait()
        assert owner.errors["protocol_error"] == 1

    run(script)


def test_a_session_closes_with_its_scenarios_code() -> None:
    async def script(conn: EchoConnection, peer: Peer, owner: Owner, live: LiveCounters) -> None:
        await opened(conn, peer)
        conn.start()
        opcode, payload = await peer.frame()
        peer.send(opcode, payload)
        assert await peer.frame() == (OP_CLOSE, (4000).to_bytes(2, "big"))
        peer.send(OP_CLOSE, (4000).to_bytes(2, "big"))
        await owner.closed.wait()
        assert live.received == 1 and not owner.errors

    run(script, messages=1, close_code=4000)
