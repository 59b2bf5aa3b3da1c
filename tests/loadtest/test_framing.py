from __future__ import annotations

import struct
import zlib

import pytest
from websockets.utils import accept_key

from tornado_echo import wire
from tornado_echo.loadtest.errors import HandshakeError
from tornado_echo.loadtest.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Deflate,
    FrameParser,
    HandshakeParser,
    HandshakeRequest,
    encode_close,
    encode_frame,
    frame_header,
    mask_frame,
)


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """An unmasked server-to-client frame, written independently of the code under test."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes([b0, n]) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bool, bytes]:
    b0, b1 = frame[0], frame[1]
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        n = struct.unpack("!H", frame[2:4])[0]
        pos = 4
    elif n == 127:
        n = struct.unpack("!Q", frame[2:10])[0]
        pos = 10
    mask = frame[pos : pos + 4]
    body = frame[pos + 4 :]
    assert len(body) == n
    return b0 & 0x0F, bool(b0 & 0x40), bytes(b ^ mask[i % 4] for i, b in enumerate(body))


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65535, 65536, 100_001])
def test_encode_frame_masks_and_sizes(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    opcode, rsv1, body = unmask_client_frame(encode_frame(OP_BINARY, payload))
    assert (opcode, rsv1, body) == (OP_BINARY, False, payload)


@pytest.mark.parametrize("size", [16, 125, 126, 70_000])
def test_a_prebuilt_header_frames_like_encode_frame(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    header = frame_header(OP_TEXT, size)
    frames = [mask_frame(header, payload) for _ in range(8)]
    assert all(unmask_client_frame(f) == (OP_TEXT, False, payload) for f in frames)
    masks = {f[len(header) : len(header) + 4] for f in frames}
    assert len(masks) > 1  # a fresh mask key per frame, not one per header


def test_parser_handles_split_and_coalesced_frames() -> None:
    stream = server_frame(OP_TEXT, b"hello") + server_frame(OP_BINARY, b"x" * 70_000)
    stream += server_frame(OP_PING, b"p")
    parser = FrameParser(max_size=1 << 20)
    events = []
    for i in range(0, len(stream), 7):
        events += parser.feed(stream[i : i + 7])
    assert events == [(OP_TEXT, b"hello"), (OP_BINARY, b"x" * 70_000), (OP_PING, b"p")]


def test_parser_reassembles_fragments_around_control_frames() -> None:
    stream = (
        server_frame(OP_TEXT, b"ab", fin=False)
        + server_frame(OP_PING, b"")
        + server_frame(OP_CONT, b"cd", fin=False)
        + server_frame(OP_CONT, b"ef")
    )
    assert FrameParser(100).feed(stream) == [(OP_PING, b""), (OP_TEXT, b"abcdef")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes([0x81, 0x85]) + b"mask" + b"hello", 1002),  # masked server frame
        (server_frame(OP_CONT, b"x"), 1002),  # continuation without start
        (server_frame(OP_TEXT, b"x", rsv1=True), 1002),  # rsv1 without deflate
        (server_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control
        (server_frame(0x3, b"x"), 1002),  # reserved opcode
        (server_frame(OP_BINARY, b"x" * 200), 1009),  # over the size limit
        (server_frame(OP_TEXT, b"x" * 120), 1009),  # over it, as one whole small frame
    ],
)
def test_parser_rejects_protocol_violations(data: bytes, code: int) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        FrameParser(max_size=100).feed(data)
    assert info.value.code == code


def test_a_whole_frame_in_one_read_still_respects_an_open_fragment() -> None:
    parser = FrameParser(100)
    assert parser.feed(server_frame(OP_TEXT, b"ab", fin=False)) == []
    with pytest.raises(wire.ProtocolError):
        parser.feed(server_frame(OP_TEXT, b"cd"))


def test_a_whole_frame_after_a_buffered_tail_is_joined_to_it() -> None:
    parser = FrameParser(100)
    first = server_frame(OP_TEXT, b"hello")
    assert parser.feed(first[:3]) == []
    assert parser.feed(first[3:]) == [(OP_TEXT, b"hello")]
    assert parser.feed(server_frame(OP_BINARY, b"world")) == [(OP_BINARY, b"world")]


def test_close_frames_carry_code_and_reason() -> None:
    opcode, _, body = unmask_client_frame(encode_close(1001, "bye"))
    assert opcode == OP_CLOSE
    assert wire.parse_close_payload(body) == (1001, "bye")


@pytest.mark.parametrize(
    "params", [{}, {"client_no_context_takeover": None, "server_no_context_takeover": None}]
)
def test_deflate_round_trip_against_zlib(params: dict[str, str | None]) -> None:
    client = Deflate.accepted(list(params.items()))
    server_out = zlib.compressobj(6, zlib.DEFLATED, -15)
    server_in = zlib.decompressobj(-15)
    for message in [b"hello hello hello", b"x" * 5000, b"hello hello hello"]:
        wire = client.compress(message)
        assert server_in.decompress(wire + b"\x00\x00\xff\xff") == message
        if "server_no_context_takeover" in params:
            server_out = zlib.compressobj(6, zlib.DEFLATED, -15)
        reply = server_out.compress(message) + server_out.flush(zlib.Z_SYNC_FLUSH)
        parser = FrameParser(1 << 20, client)
        assert parser.feed(server_frame(OP_TEXT, reply[:-4], rsv1=True)) == [(OP_TEXT, message)]


def test_bad_deflate_data_is_a_1007_protocol_error() -> None:
    with pytest.raises(wire.ProtocolError) as info:
        FrameParser(1000, Deflate.accepted([])).feed(server_frame(OP_TEXT, b"\xff" * 8, rsv1=True))
    assert info.value.code == 1007


def test_deflate_bomb_is_refused() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"\x00" * 1_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(wire.ProtocolError) as info:
        FrameParser(1000, Deflate.accepted([])).feed(server_frame(OP_BINARY, data[:-4], rsv1=True))
    assert info.value.code == 1009


def response(
    request: HandshakeRequest, status: str = "101 Switching Protocols", extra: str = ""
) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.key)}\r\n{extra}\r\n"
    ).encode()


def test_handshake_request_carries_options() -> None:
    request = HandshakeRequest(
        "h:1",
        "/p?q=1",
        headers=[("X-A", "b")],
        origin="http://o",
        subprotocols=["chat", "v2"],
        deflate=True,
    )
    text = request.encode().decode()
    assert text.startswith("GET /p?q=1 HTTP/1.1\r\nHost: h:1\r\n")
    for line in [
        "X-A: b",
        "Origin: http://o",
        "Sec-WebSocket-Protocol: chat, v2",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Extensions: permessage-deflate",
    ]:
        assert line in text
    assert text.endswith("\r\n\r\n")


def test_handshake_accepts_split_response_and_keeps_leftover() -> None:
    request = HandshakeRequest("h", "/", subprotocols=["chat"], deflate=True)
    data = response(
        request,
        extra="Sec-WebSocket-Protocol: chat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n",
    )
    data += server_frame(OP_TEXT, b"early")
    parser = HandshakeParser(request)
    assert parser.feed(data[:10]) is None
    result = parser.feed(data[10:])
    assert result is not None
    assert result.subprotocol == "chat"
    assert result.deflate is not None and result.deflate.server_no_takeover
    assert result.leftover == server_frame(OP_TEXT, b"early")


@pytest.mark.parametrize(
    ("status", "category"),
    [
        ("500 Internal Server Error", "handshake_500"),
        ("503 Busy", "handshake_503"),
        ("200 OK", "handshake_200"),
    ],
)
def test_handshake_status_is_classified(status: str, category: str) -> None:
    request = HandshakeRequest("h", "/")
    with pytest.raises(HandshakeError) as info:
        HandshakeParser(request).feed(response(request, status))
    assert info.value.category == category


def test_handshake_rejects_wrong_accept_and_unoffered_things() -> None:
    request = HandshakeRequest("h", "/")
    bad_accept = response(request).replace(accept_key(request.key).encode(), b"AAAA")
    for data in (
        bad_accept,
        response(request, extra="Sec-WebSocket-Protocol: chat\r\n"),
        response(request, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        b"garbage\r\n\r\n",
    ):
        with pytest.raises(HandshakeError) as info:
            HandshakeParser(request).feed(data)
        assert info.value.category.startswith("handshake_")


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_a_control_frame_over_125_bytes_is_refused(opcode: int) -> None:
    parser = FrameParser(max_size=1000)
    assert parser.feed(server_frame(opcode, b"x" * 125)) == [(opcode, b"x" * 125)]
    with pytest.raises(wire.ProtocolError) as info:
        parser.feed(server_frame(opcode, b"x" * 126))
    assert info.value.code == 1002


@pytest.mark.parametrize("in_message", [False, True])
def test_the_parser_keeps_the_shared_frame_rules(in_message: bool) -> None:
    # Every first byte, at control frames' length limit and past it: the parser refuses
    # exactly what the shared RFC 6455 rules (wire.check_frame) refuse, with their code.
    for b0 in range(256):
        for length in (0, 125, 126):
            parser = FrameParser(max_size=1000)
            if in_message:
                assert parser.feed(server_frame(OP_TEXT, b"ab", fin=False)) == []
            try:
                wire.check_frame(b0, length, deflate=False, in_message=in_message)
            except wire.ProtocolError as exc:
                expected: int | None = exc.code
            else:
                expected = None
            try:
                parser.feed(bytes((b0, 126)) + length.to_bytes(2, "big") + b"x" * length)
            except wire.ProtocolError as exc:
                got: int | None = exc.code
            else:
                got = None
            assert got == expected, (hex(b0), length, in_message)
