"""Property-based fuzzing of handshakes and frame sequences against a live server.

A real ``tornado-echo`` process per engine; hypothesis makes the input. Whatever a client
sends, the server answers in a bounded way: an HTTP status it is entitled to, an echo, or
a close frame with a code RFC 6455 lets it send; it never logs a traceback or an ERROR for
a client's mistake, and after each batch its descriptors and memory are back near where
they started.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import client_frame, eventually_blocking
from tornado_echo.config import ENGINES
from tornado_echo.wire import is_sendable_close_code

pytestmark = pytest.mark.slow
EXAMPLES = 150
ANSWERS = {101, 400, 403, 404, 405, 413, 426, 431, 500, 503}
# A masked close frame with code 1000 (all-zero mask key).
CLOSE = b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", 1000)
# The module-scoped live server is meant to be shared by every example.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class LiveServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.start_descriptors = self.descriptors()
        self.start_rss = self.rss()

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def complaints(self) -> list[str]:
        text = self.log.read_text()
        return [
            line
            for line in text.splitlines()
            if "Traceback" in line or '"level": "error"' in line or '"level": "critical"' in line
        ]


@pytest.fixture(scope="module", params=ENGINES)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    log = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORNADO_ECHO_")}
    env.update(
        TORNADO_ECHO_LOG_FORMAT="json",
        TORNADO_ECHO_ENGINE=request.param,
        TORNADO_ECHO_MAX_MESSAGE_SIZE="65536",
        TORNADO_ECHO_DATABASE_URL=f"sqlite:///{tmp}/fuzz.db",
        TORNADO_ECHO_STATE_DIR=str(tmp),
    )
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tornado_echo", "--port", "0"], cwd=tmp, env=env, stderr=sink
        )
    try:
        port = eventually_blocking(
            lambda: _port(log) if process.poll() is None else pytest.fail(log.read_text()),
            "the server to listen",
            timeout=15,
        )
        yield LiveServer(process, port, log)
    finally:
        process.terminate()
        process.wait(30)


def _port(log: Path) -> int | None:
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
    return int(found.group(1)) if found else None


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it hangs up."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames, pos = [], 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "a server frame must not be masked"
        length, start = b1 & 0x7F, pos + 2
        if length == 126:
            (length,), start = struct.unpack("!H", data[pos + 2 : pos + 4]), pos + 4
        elif length == 127:
            (length,), start = struct.unpack("!Q", data[pos + 2 : pos + 10]), pos + 10
        frames.append((b0 & 0x0F, data[start : start + length]))
        pos = start + length
    return frames


def upgrade(extra: str = "", key: str | None = None) -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode("latin-1")


# -- handshakes ---------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Origin",
        "Content-Length",
        "Transfer-Encoding",
        "X-Forwarded-For",
    ]
)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS"]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    headers=st.dictionaries(header_names, header_values, max_size=6),
)
def test_any_handshake_gets_a_bounded_answer(
    live: LiveServer, method: str, version: str, headers: dict[str, str]
) -> None:
    base = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers)
    request = f"{method} /ws {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in base.items())
    with connect(live.port) as sock:
        sock.sendall(request.encode("latin-1") + b"\r\n")
        head = read_head(sock)
    if head:  # a malformed request may be dropped without an answer (Tornado's parser)
        status = int(head.split(b" ", 2)[1])
        assert status in ANSWERS, head
    assert live.complaints() == []


# -- frame sequences ------------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]))
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 0x40, 0x20, 0x10]))
    masked = draw(st.sampled_from([True, True, True, False]))
    payload = draw(st.binary(max_size=300))
    if opcode == 1 and draw(st.booleans()):
        payload = draw(st.text(max_size=100)).encode()
    if opcode == 8 and draw(st.booleans()):
        payload = struct.pack("!H", draw(st.integers(0, 65535))) + payload[:20]
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if masked else 0
    if length < 126 and draw(st.booleans()):
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:  # pragma: no cover - payloads are small
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(frames(), min_size=1, max_size=8), deflate=st.booleans())
def test_any_frame_sequence_gets_echoes_or_a_lawful_close(
    live: LiveServer, sequence: list[bytes], deflate: bool
) -> None:
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    with connect(live.port) as sock:
        sock.sendall(upgrade(extra))
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(b"".join(sequence) + CLOSE)  # a close of our own: every connection ends
        answer = server_frames(rest + read_all(sock))
    for opcode, payload in answer:
        assert opcode in (0x1, 0x2, 0x8, 0x9, 0xA), opcode
        if opcode == 0x8 and len(payload) >= 2:
            assert is_sendable_close_code(struct.unpack("!H", payload[:2])[0]), payload
    assert live.complaints() == []


# -- permessage-deflate message sequences ---------------------------------------------------
# Each message as one kind of deflate stream: a sync flush keeping the context, or a block
# with BFINAL set (RFC 7692 section 7.2.3.4) after which the sender starts a new stream,
# with the byte the RFC adds after it, without it, or with bytes no decoder may accept.
DEFLATE_KINDS = ["sync", "final", "final-rfc", "final-trailer"]
TAIL = b"\x00\x00\xff\xff"


@st.composite
def deflate_messages(draw: st.DrawFn) -> tuple[bytes, list[bytes], bool]:
    """(the frames, the payloads the server must echo, whether it must then fail 1007)."""
    compressor = zlib.compressobj(wbits=-15)
    wire: list[bytes] = []
    echoes: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(st.binary(max_size=3000) | st.just(b"abc" * draw(st.integers(0, 900))))
        kind = draw(st.sampled_from(DEFLATE_KINDS))
        if kind == "sync":
            body = (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        else:
            body = compressor.compress(payload) + compressor.flush(zlib.Z_FINISH)
            compressor = zlib.compressobj(wbits=-15)  # that stream is finished
            if kind == "final-rfc":
                body += b"\x00"
            elif kind == "final-trailer":
                body += draw(
                    st.binary(min_size=1, max_size=12).filter(lambda extra: extra != b"\x00")
                )
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for index, piece in enumerate(pieces):
            first, last = index == 0, index == len(pieces) - 1
            frame = bytearray(client_frame(0x2 if first else 0x0, piece, fin=last))
            frame[0] |= 0x40 if first else 0  # RSV1: compressed
            wire.append(bytes(frame))
        if kind == "final-trailer":
            return b"".join(wire), echoes, True
        echoes.append(payload)
    return b"".join(wire), echoes, False


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(messages=deflate_messages())
def test_any_deflate_stream_is_echoed_or_fails_with_1007(
    live: LiveServer, messages: tuple[bytes, list[bytes], bool]
) -> None:
    wire, echoes, fails = messages
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    with connect(live.port) as sock:
        sock.sendall(upgrade(extra))
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(wire + CLOSE)
        answer = server_frames(rest + read_all(sock))
    inflate = zlib.decompressobj(wbits=-15)  # the server's echoes share one context
    received = [inflate.decompress(payload + TAIL) for op, payload in answer if op == 0x2]
    assert received == echoes
    closes = [payload for op, payload in answer if op == 0x8]
    assert [struct.unpack("!H", close[:2])[0] for close in closes] == [1007 if fails else 1000]
    assert live.complaints() == []


def test_descriptors_and_memory_come_back_after_the_fuzzing(live: LiveServer) -> None:
    """Runs after the fuzz tests of its engine (module order): nothing left open."""
    for _ in range(200):
        with connect(live.port) as sock:
            sock.sendall(upgrade() + b"\x81\x85\x00\x00\x00\x00hello" + CLOSE)
            read_all(sock)
    eventually_blocking(
        lambda: live.descriptors() <= live.start_descriptors + 2,
        "descriptors back to where they were at start",
        timeout=10,
    )
    # The allocator keeps some of what it was given; a leak per connection would not fit.
    assert live.rss() < live.start_rss + 40 * 2**20
    assert live.complaints() == []
