"""The engines under EchoWebSocket, over real sockets: flow control, keepalive, strictness,
and the Tornado handler surface on the fast engine."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from tests.helpers import (
    assert_no_traceback,
    client_frame,
    deflated,
    eventually,
    open_raw_websocket,
    read_server_frame,
    upgrade_request,
)
from tornado_echo.compat import unsent_bytes
from tornado_echo.connections import Connections
from tornado_echo.engines.budget import TURN_FRAMES, loop_budgets
from tornado_echo.engines.fast import FastProtocol
from tornado_echo.engines.flow_control import WRITE_HIGH_WATER
from tornado_echo.engines.stock import EchoProtocol
from tornado_echo.engines.timerwheel import RESOLUTION
from tornado_echo.wire import DEFLATE_TAIL, FEED_MAX_INFLATED


async def read_close(reader: asyncio.StreamReader) -> tuple[int | None, bytes]:
    """Skip frames up to the server's close frame: (code, reason)."""
    while True:
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 10)
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if payload else None
            return code, payload[2:]


def server_backlog(connections: Connections) -> int:
    """Bytes the server holds for its (only) peer, whichever engine carries it."""
    [session] = list(connections._open)
    protocol = session._protocol  # type: ignore[attr-defined]
    if isinstance(protocol, FastProtocol):
        assert protocol.transport is not None
        return int(protocol.transport.get_write_buffer_size())
    assert isinstance(protocol, EchoProtocol)
    return unsent_bytes(protocol.stream)


@pytest.mark.usefixtures("engine")
class TestBothEngines:
    @pytest.mark.gen_test(timeout=30)
    @pytest.mark.app_config(max_message_size=1 << 20)
    async def test_a_slow_reader_gets_backpressure_not_server_memory(
        self, http_server: Any, http_port: int, connections: Connections
    ) -> None:
        reader, writer = await open_raw_websocket(http_port)
        writer.write(client_frame(0x1, b"open?"))
        assert await read_server_frame(reader) == (0x1, b"open?")  # the session is open
        frame = client_frame(0x2, b"\xab" * 65536)
        sent = 0
        highest = 0
        # Send without reading until the server stops reading us: our drain stalls.
        while True:
            writer.write(frame)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except asyncio.TimeoutError:
                break
            sent += 1
            highest = max(highest, server_backlog(connections))
            assert sent < 2000, "the server never pushed back"
        highest = max(highest, server_backlog(connections))
        # Its buffer stays near the high-water mark (one read's echoes may go past it).
        assert highest <= WRITE_HIGH_WATER + 512 * 1024
        writer.transport.abort()

    @pytest.mark.gen_test(timeout=60)
    async def test_a_pipelining_peer_does_not_hold_the_loop(
        self, http_server: Any, http_port: int
    ) -> None:
        # 150,000 one-byte messages in one write: several full reads of the server's. A
        # newcomer's whole upgrade and echo (many turns of the loop) must fit between
        # slices of them, not wait for the lot (before, it waited seconds per read).
        count = 150_000
        hog_reader, hog_writer = await open_raw_websocket(http_port)
        hog_writer.write(client_frame(0x2, b"x") * count)
        echoed = 0

        async def read_echoes() -> None:
            nonlocal echoed
            while echoed < count:
                await read_server_frame(hog_reader)
                echoed += 1

        hog = asyncio.ensure_future(read_echoes())
        await eventually(lambda: echoed > 0)
        reader, writer = await open_raw_websocket(http_port)
        writer.write(client_frame(0x1, b"me too"))
        assert await read_server_frame(reader) == (0x1, b"me too")
        assert echoed < count // 2
        await asyncio.wait_for(hog, 50)  # and none of the hog's messages is lost
        hog_writer.close()
        writer.close()

    @pytest.mark.gen_test(timeout=15)
    @pytest.mark.app_config(ping_interval=0.2, ping_timeout=0.2)
    async def test_a_peer_that_stops_answering_pings_is_closed(
        self, http_server: Any, http_port: int, engine: str
    ) -> None:
        reader, writer = await open_raw_websocket(http_port)
        opcode, _ = await asyncio.wait_for(read_server_frame(reader), 5)
        assert opcode == 0x9  # a ping, which this peer never answers
        code, reason = await read_close(reader)
        # Tornado's stock engine closes with a bare reason, which means 1000.
        assert (code, reason) == (1011 if engine == "fast" else 1000, b"ping timed out")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the server hangs up
        writer.close()

    @pytest.mark.gen_test(timeout=15)
    @pytest.mark.app_config(ping_interval=0.1, ping_timeout=0.1)
    async def test_a_peer_that_answers_pings_stays(self, http_server: Any, http_port: int) -> None:
        reader, writer = await open_raw_websocket(http_port)
        for _ in range(5):
            opcode, payload = await asyncio.wait_for(read_server_frame(reader), 5)
            assert opcode == 0x9
            writer.write(client_frame(0xA, payload))
        writer.write(client_frame(0x1, b"still here"))
        while True:
            opcode, payload = await asyncio.wait_for(read_server_frame(reader), 5)
            if opcode != 0x9:
                break
            writer.write(client_frame(0xA, payload))  # more pings may come first
        assert (opcode, payload) == (0x1, b"still here")
        writer.close()

    @pytest.mark.gen_test
    @pytest.mark.app_config(compression=False)
    async def test_compression_off_declines_the_offer(self, ws_url: str) -> None:
        client = await websocket_connect(ws_url, compression_options={})
        assert "Sec-WebSocket-Extensions" not in client.headers
        await client.write_message("plain " * 100)
        assert await client.read_message() == "plain " * 100
        client.close()

    @pytest.mark.gen_test
    async def test_frames_sent_with_the_upgrade_request_are_echoed(
        self, http_port: int, http_server: Any
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(upgrade_request() + client_frame(0x1, b"early") + client_frame(0x2, b"bird"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert await read_server_frame(reader) == (0x1, b"early")
        assert await read_server_frame(reader) == (0x2, b"bird")
        writer.close()


# -- strictness, on both engines (Tornado's own protocol drops these without a close frame)


def rsv_frame(frame: bytes, bits: int) -> bytes:
    return bytes([frame[0] | bits]) + frame[1:]


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (rsv_frame(client_frame(0x1, b"x"), 0x40), 1002),
        (rsv_frame(client_frame(0x1, b"x"), 0x10), 1002),
        (client_frame(0x3, b"x"), 1002),
        (b"\x81\x01x", 1002),  # not masked
        (client_frame(0x1, b"abc", fin=False) + client_frame(0x1, b"def"), 1002),
        (client_frame(0x1, b"ok \xff", fin=False), 1007),  # fails before the last fragment
    ],
    ids=["rsv1-without-deflate", "rsv3", "unknown-opcode", "unmasked", "interleaved", "utf8-early"],
)
async def test_protocol_violations_get_a_close_frame_with_their_code(
    http_server: Any, http_port: int, frame: bytes, code: int
) -> None:
    reader, writer = await open_raw_websocket(http_port)
    writer.write(client_frame(0x1, b"first") + frame)
    assert await read_server_frame(reader) == (0x1, b"first")
    assert (await read_close(reader))[0] == code
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test
async def test_invalid_deflate_data_closes_with_1007(http_server: Any, http_port: int) -> None:
    reader, writer = await open_raw_websocket(http_port, deflate=True)
    writer.write(rsv_frame(client_frame(0x2, b"\xff\xff\xff\xff"), 0x40))
    assert (await read_close(reader))[0] == 1007
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=30)
async def test_compressed_message_in_small_fragments_with_pings_between(
    http_server: Any, http_port: int
) -> None:
    reader, writer = await open_raw_websocket(http_port, deflate=True)
    text = " ".join(f"fragment {i}" for i in range(1000)).encode()
    body = deflated(text)
    chunks = [body[i : i + 256] for i in range(0, len(body), 256)]
    assert len(chunks) > 2  # a ping after the first fragment and after a middle one
    for index, chunk in enumerate(chunks):
        frame = client_frame(0x1 if index == 0 else 0x0, chunk, fin=index == len(chunks) - 1)
        if index == 0:
            frame = rsv_frame(frame, 0x40)
        writer.write(frame + client_frame(0x9, b"between"))
    inflater = zlib.decompressobj(wbits=-15)
    while True:
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 10)
        if opcode == 0x1:
            break
        assert (opcode, payload) == (0xA, b"between")
    assert inflater.decompress(payload + b"\x00\x00\xff\xff") == text
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=30)
async def test_large_deflated_echoes_keep_their_order_and_the_close_comes_last(
    http_server: Any, http_port: int
) -> None:
    # The fast engine deflates large messages in a worker thread; what follows them (small
    # echoes deflated at once, a pong, the close frame) must still go out after them, and
    # the deflate context must run through every message in order.
    reader, writer = await open_raw_websocket(http_port, deflate=True)
    big_binary = bytes(range(256)) * 800 + os.urandom(64 * 1024)
    big_text = " ".join(f"word{i % 977}" for i in range(40_000)).encode()
    messages = [(0x1, b"first"), (0x2, big_binary), (0x1, b"between"), (0x1, big_text)]
    sent = [client_frame(opcode, payload) for opcode, payload in messages]
    sent.insert(2, client_frame(0x9, b"ping"))
    writer.write(b"".join(sent) + client_frame(0x8, struct.pack("!H", 1000)))
    inflater = zlib.decompressobj(wbits=-15)
    received = []
    while True:
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 10)
        if opcode in (0x1, 0x2):
            payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
        received.append((opcode, payload))
        if opcode == 0x8:
            break
    assert received == [
        *messages[:2],
        (0xA, b"ping"),
        *messages[2:],
        (0x8, struct.pack("!H", 1000)),
    ]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=30)
@pytest.mark.app_config(max_message_size=8 << 20)
async def test_one_frame_that_inflates_to_megabytes_is_echoed_whole_and_in_order(
    http_server: Any, http_port: int
) -> None:
    # The fast engine inflates such a frame a slice at a time, turns of the loop apart.
    reader, writer = await open_raw_websocket(http_port, deflate=True)
    text = ("é" * (3 << 20)).encode()  # 6 MiB, in one frame of a few KB
    writer.write(rsv_frame(client_frame(0x1, deflated(text)), 0x40) + client_frame(0x1, b"after"))
    inflater = zlib.decompressobj(wbits=-15)
    echoes = []
    for _ in range(2):
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 20)
        echoes.append((opcode, inflater.decompress(payload + b"\x00\x00\xff\xff")))
    assert echoes == [(0x1, text), (0x1, b"after")]
    writer.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.app_config(max_message_size=1 << 20)
async def test_a_read_that_inflates_to_far_more_waits_for_a_slow_reader(
    http_server: Any, http_port: int, connections: Connections
) -> None:
    # One read of deflated messages that the server's own deflate (a 512-byte window, as
    # the client may ask) cannot shrink again: each 8 KB on the wire is a 1 MB echo. A peer
    # that does not read them must be pushed back between slices of that read, not have
    # every echo of it (13 MB here) buffered for it.
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    offer = "permessage-deflate; server_max_window_bits=9"
    writer.write(upgrade_request(Sec_WebSocket_Extensions=offer))
    assert b"server_max_window_bits=9" in await reader.readuntil(b"\r\n\r\n")
    block = os.urandom(32_000)  # within the client's 32 KiB window, far beyond the server's
    messages = [block] + [block * 32] * 30
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    wire = b""
    for message in messages:
        wire += rsv_frame(client_frame(0x2, deflated(message, compressor)), 0x40)
    writer.write(wire)
    [session] = await eventually(lambda: list(connections._open))
    protocol = session._protocol
    assert isinstance(protocol, FastProtocol)
    await eventually(lambda: server_backlog(connections) > WRITE_HIGH_WATER)
    # Settled: nothing deflating, no slice booked, the handler idle.
    await eventually(
        lambda: protocol._outbox is None and not protocol._backlog_due and not protocol._busy,
        timeout=20,
    )
    # At most one slice (about FEED_MAX_INFLATED, plus the message that crosses it) past
    # the high-water mark.
    assert server_backlog(connections) <= WRITE_HIGH_WATER + FEED_MAX_INFLATED + 2 * (1 << 20)
    # Reading on, the peer gets every echo, in order.
    inflater = zlib.decompressobj(wbits=-15)
    for message in messages:
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 10)
        assert opcode == 0x2
        assert inflater.decompress(payload + b"\x00\x00\xff\xff") == message
    writer.close()


TCP_CLOSE = 7  # Linux's tcp_states.h: what a socket that took a reset is in


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def socket_of(protocol: FastProtocol | EchoProtocol) -> socket.socket:
    """The server's socket of a connection, whichever engine carries it."""
    if isinstance(protocol, FastProtocol):
        assert protocol.transport is not None
        sock: socket.socket = protocol.transport.get_extra_info("socket")
        return sock
    return protocol.stream.socket


class HeldExecutor(ThreadPoolExecutor):
    """One worker thread whose first job waits for :meth:`release`: jobs submitted meanwhile
    (the engines' off-loop deflates) cannot finish before the test says so."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self._gate = threading.Event()
        self.submitted = 0
        self.submit(self._gate.wait)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)

    def release(self) -> None:
        self._gate.set()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=30)
async def test_a_peer_gone_while_its_large_echo_is_deflated_ends_quietly(
    http_server: Any,
    http_port: int,
    connections: Connections,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The echo is deflated in a worker thread, held there until the peer's reset has
    # reached the server's socket: whatever the deflate costs, it finishes after the reset.
    # (Neither engine reads while the echo is pending, so its write finds the reset.) The
    # session must end there: no traceback, and the server serves on.
    loop = asyncio.get_running_loop()
    executor = HeldExecutor()
    loop.set_default_executor(executor)
    try:
        reader, writer = await open_raw_websocket(http_port, deflate=True)
        writer.write(client_frame(0x2, os.urandom(768 * 1024)))
        await eventually(lambda: executor.submitted == 2)  # the echo's deflate waits
        [session] = list(connections._open)
        server_socket = socket_of(session._protocol)  # type: ignore[attr-defined]
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()
        await eventually(lambda: tcp_state(server_socket) == TCP_CLOSE)
        executor.release()
        await eventually(lambda: len(connections) == 0)
        # The server goes on serving.
        reader, writer = await open_raw_websocket(http_port, deflate=True)
        writer.write(client_frame(0x1, b"after"))
        opcode, payload = await read_server_frame(reader)
        assert (opcode, zlib.decompressobj(wbits=-15).decompress(payload + DEFLATE_TAIL)) == (
            0x1,
            b"after",
        )
        writer.close()
    finally:
        executor.release()
        loop.set_default_executor(ThreadPoolExecutor())
        executor.shutdown(wait=False)
    assert_no_traceback(caplog.records)


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test
async def test_sockets_do_not_delay_small_writes(
    http_server: Any, http_port: int, connections: Connections
) -> None:
    # asyncio's transports set TCP_NODELAY themselves; Tornado's stream leaves Nagle's
    # algorithm on after the upgrade, and EchoWebSocket.open turns it off.
    reader, writer = await open_raw_websocket(http_port)
    writer.write(client_frame(0x1, b"hi"))
    assert await read_server_frame(reader) == (0x1, b"hi")
    [session] = list(connections._open)
    sock = socket_of(session._protocol)  # type: ignore[attr-defined]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test
@pytest.mark.app_config(max_message_size=1 << 20)
@pytest.mark.parametrize("b0", [0x89, 0xA2], ids=["64k-ping", "rsv2"])
async def test_a_frame_condemned_by_its_header_closes_before_its_payload(
    http_server: Any, http_port: int, b0: int
) -> None:
    # Only the header of a 64 KiB frame is sent: the close must come without the rest.
    reader, writer = await open_raw_websocket(http_port)
    writer.write(bytes((b0, 0x80 | 126)) + struct.pack("!H", 65535) + os.urandom(4) + b"x")
    assert (await read_close(reader))[0] == 1002
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test
async def test_a_message_ending_in_a_final_deflate_block_does_not_empty_later_echoes(
    http_server: Any, http_port: int
) -> None:
    # RFC 7692 section 7.2.3.4: "Hello" in a block with BFINAL set; then a new stream.
    reader, writer = await open_raw_websocket(http_port, deflate=True)
    compressor = zlib.compressobj(wbits=-15)
    bodies = [bytes.fromhex("f348cdc9c9070000"), deflated(b"world", compressor)]
    bodies.append(deflated(b"world again", compressor))
    writer.write(b"".join(rsv_frame(client_frame(0x2, body), 0x40) for body in bodies))
    inflate = zlib.decompressobj(wbits=-15)
    for expected in (b"Hello", b"world", b"world again"):
        opcode, payload = await read_server_frame(reader)
        assert (opcode, inflate.decompress(payload + b"\x00\x00\xff\xff")) == (0x2, expected)
    # Bytes after a final block are not deflate data.
    writer.write(rsv_frame(client_frame(0x2, bytes.fromhex("f348cdc9c90700") + b"junk"), 0x40))
    assert (await read_close(reader))[0] == 1007
    writer.close()


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=30)
@pytest.mark.app_config(max_message_size=1 << 20)
async def test_a_backpressured_peer_that_hangs_up_ends_quietly(
    http_server: Any, http_port: int, connections: Connections, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await open_raw_websocket(http_port)
    writer.write(client_frame(0x1, b"open?"))
    assert await read_server_frame(reader) == (0x1, b"open?")
    frame = client_frame(0x2, b"\xab" * 65536)
    while server_backlog(connections) <= WRITE_HIGH_WATER:  # the echo now waits on us
        writer.write(frame)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except asyncio.TimeoutError:
            break
    writer.transport.abort()
    await eventually(lambda: len(connections) == 0)
    assert_no_traceback(caplog.records)


async def echo_after_pings(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes
) -> tuple[int, bytes]:
    """Send ``text``; answer the pings that come first; return the next other frame."""
    writer.write(client_frame(0x1, text))
    while True:
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 5)
        if opcode != 0x9:
            return opcode, payload
        writer.write(client_frame(0xA, payload))


def pong_awaited(connections: Connections) -> FastProtocol:
    """The server's (only) connection, once its pong deadline is the pending one."""
    [session] = list(connections._open)
    protocol = session._protocol  # type: ignore[attr-defined]
    assert isinstance(protocol, FastProtocol)
    assert protocol._awaiting_pong and protocol.wheel_slot is not None
    return protocol


@pytest.mark.gen_test(timeout=15)
@pytest.mark.app_config(ping_interval=0.2, ping_timeout=1.0)
async def test_a_pong_that_waits_for_its_turn_is_not_counted_missing(
    http_server: Any, http_port: int, connections: Connections
) -> None:
    # In a storm of work the turn budget has a connection's read wait for later turns of
    # the loop, which can add up to more than ping_timeout: the pong has come, but this
    # process has not parsed it yet.
    reader, writer = await open_raw_websocket(http_port)
    opcode, payload = await asyncio.wait_for(read_server_frame(reader), 5)
    assert opcode == 0x9
    protocol = pong_awaited(connections)
    pong_slot = protocol.wheel_slot
    turn = loop_budgets().turn
    turn.frames = turn.frames_left = 0  # no frame is parsed from now on: every read waits
    try:
        writer.write(client_frame(0xA, payload))
        assert protocol.reader is not None
        await eventually(lambda: protocol.reader is not None and protocol.reader.backlog)
        await eventually(lambda: protocol.wheel_slot != pong_slot)  # the deadline has come
        assert not protocol.is_closing()
    finally:
        turn.frames = TURN_FRAMES
    assert await echo_after_pings(reader, writer, b"still here") == (0x1, b"still here")
    writer.close()


@pytest.mark.gen_test(timeout=15)
@pytest.mark.app_config(ping_interval=0.2, ping_timeout=1.0)
async def test_a_pong_unread_when_a_long_turn_ends_is_not_counted_missing(
    http_server: Any, http_port: int, connections: Connections
) -> None:
    # The pong reaches the server's socket while the loop handles the I/O of one turn
    # (the sockets that were ready when it polled), and that turn lasts past the pong's
    # deadline, as a turn of an accept storm on a saturated machine does. uvloop runs the
    # due timers before it polls the sockets again.
    reader, writer = await open_raw_websocket(http_port)
    opcode, payload = await asyncio.wait_for(read_server_frame(reader), 5)
    assert opcode == 0x9
    protocol = pong_awaited(connections)
    assert protocol.wheel_slot is not None
    due = protocol.wheel_slot * RESOLUTION  # on the loop's clock, time.monotonic()
    loop = asyncio.get_running_loop()
    trigger, other_end = socket.socketpair()
    turns: list[float] = []

    def long_turn() -> None:
        loop.remove_reader(trigger)
        writer.write(client_frame(0xA, payload))
        time.sleep(max(0.0, due - time.monotonic()) + 0.2)  # the long turn itself
        turns.append(time.monotonic())

    loop.add_reader(trigger, long_turn)
    other_end.send(b"x")
    try:
        await eventually(lambda: turns)
        assert await echo_after_pings(reader, writer, b"still here") == (0x1, b"still here")
    finally:
        trigger.close()
        other_end.close()
    writer.close()
