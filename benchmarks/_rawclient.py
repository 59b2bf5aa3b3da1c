#!/usr/bin/env python3
"""Raw-socket clients for benchmarks/engine_vs_peers.py, run as a separate pinned process.

    _rawclient.py handshakes PORT SECONDS CONCURRENCY [tls]
                                                         connect, upgrade, close; count cycles
                                                         (tls: each cycle a full TLS handshake)
    _rawclient.py idle PORT N DEFLATE                    open N idle WebSockets, print "ready",
                                                         hold them until stdin closes
    _rawclient.py fragments PORT MESSAGES               128 KiB compressed text messages sent
                                                         as 256-byte fragments, closed loop

Each prints one JSON line. Frames and handshakes come from tornado_echo's own modules only
where they are the client side's (masking); the rest is written out here so that the
client does not share code paths with the server it measures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import ssl
import struct
import sys
import time
import zlib

from tornado_echo.wire import apply_mask

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def upgrade(extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return UPGRADE.format(key=key, extra=extra).encode()


def frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes((b0, 0x80 | length))
    elif length < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(length), bool(b0 & 0x40)


def insecure_tls() -> ssl.SSLContext:
    """A client context that checks nothing: the certificate check is client CPU, and the
    server's side of the handshake is what is measured. No session is resumed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_ws(
    port: int, extra: str = "", tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(upgrade(extra))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:100].decode("latin-1"))
    return reader, writer


async def handshakes(
    port: int, seconds: float, concurrency: int, tls: ssl.SSLContext | None
) -> dict[str, float]:
    done = failed = 0
    deadline = time.monotonic() + seconds
    close = frame(0x8, struct.pack("!H", 1000))

    async def worker() -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                reader, writer = await open_ws(port, tls=tls)
                writer.write(close)
                await reader.read()  # the close reply, then the server hangs up
                writer.close()
                done += 1
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                failed += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    return {"handshakes_per_s": done / elapsed, "failed": failed, "seconds": elapsed}


async def idle(port: int, count: int, deflate: bool) -> dict[str, float]:
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    held = []
    for start in range(0, count, 200):
        held += await asyncio.gather(
            *(open_ws(port, extra) for _ in range(start, min(count, start + 200)))
        )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, writer in held:
        writer.close()
    return {"held": len(held)}


async def fragments(port: int, messages: int) -> dict[str, float]:
    # No client context takeover: every message compresses to the same bytes, so the
    # client compresses once and the time measured is the server's.
    reader, writer = await open_ws(
        port, "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
    )
    text = os.urandom(64 * 1024).hex().encode()  # 128 KiB of text that deflates about 2:1
    compressor = zlib.compressobj(wbits=-15)
    body = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    pieces = [body[i : i + 256] for i in range(0, len(body), 256)]
    message = b"".join(
        frame(0x1 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1, rsv1=i == 0)
        for i, piece in enumerate(pieces)
    )
    inflater = zlib.decompressobj(wbits=-15)
    start = time.monotonic()
    for _ in range(messages):
        writer.write(message)
        parts = []
        while True:
            opcode, payload, rsv1 = await read_frame(reader)
            if opcode in (0x9, 0xA):
                continue
            parts.append(payload)
            if opcode in (0x1, 0x0):
                break
        echoed = b"".join(parts)
        if rsv1:
            echoed = inflater.decompress(echoed + b"\x00\x00\xff\xff")
        if echoed != text:
            raise RuntimeError("wrong echo")
    elapsed = time.monotonic() - start
    writer.close()
    return {"seconds": elapsed, "fragments_per_message": len(pieces)}


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    command, port, *rest = sys.argv[1:]
    if command == "handshakes":
        tls = insecure_tls() if rest[2:] == ["tls"] else None
        work = handshakes(int(port), float(rest[0]), int(rest[1]), tls)
    elif command == "idle":
        work = idle(int(port), int(rest[0]), rest[1] == "1")
    else:
        work = fragments(int(port), int(rest[0]))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()


async def read_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The next data frame's payload; the server's pings on the way are answered (a client
    that does not answer them is closed after ping_timeout)."""
    while True:
        opcode, payload, _ = await read_frame(reader)
        if opcode == 0x9:
            writer.write(frame(0xA, payload))
        elif opcode in (0x1, 0x2):
            return payload
