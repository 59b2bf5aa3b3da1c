"""What one connection costs the server, by kind, on both engines (hand-run; issue 22 item 5).

    flock /tmp/tornado-echo-bench.lock python benchmarks/memory_budget.py [--connections N]

The server is pinned to CPU 0, this client to CPU 1. For each engine and kind it opens the
connections, waits for the server to settle, and prints the server's RSS growth per
connection and the kernel's TCP buffer memory growth per connection (/proc/net/sockstat,
both ends of each loopback connection: the client's receive queue is the server's
backlog too). Kinds:

* ``idle``: upgraded, nothing sent.
* ``deflate``: permessage-deflate, one 16 KiB message echoed (zlib state both ways).
* ``slow-reader``: 64 KiB binary messages sent until the server stops reading this client
  (its echoes are not read): the most a reader that does not read can hold.

Other engineers' tests share the machine: compare the kinds and engines of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import struct
import tempfile
import time
import zlib
from pathlib import Path

from _common import Server, say

from tornado_echo.loadtest.framing import encode_frame

KINDS = ("idle", "deflate", "slow-reader")
COUNTS = {"idle": 1000, "deflate": 500, "slow-reader": 100}
PAGE = os.sysconf("SC_PAGE_SIZE")


def tcp_memory() -> int:
    """Bytes the kernel holds in TCP socket buffers, all sockets (sockstat ``mem`` pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * PAGE
    raise RuntimeError("no TCP line in /proc/net/sockstat")


async def upgrade(port: int, deflate: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    _, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return await reader.readexactly(length)


async def open_kind(port: int, kind: str, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    text = os.urandom(8192).hex().encode()  # 16 KiB that deflates about 2:1
    for _ in range(count):
        reader, writer = await upgrade(port, deflate=kind == "deflate")
        writers.append(writer)
        if kind == "deflate":
            compressor = zlib.compressobj(wbits=-15)
            body = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
            writer.write(encode_frame(0x1, body[:-4], rsv1=True))
            await read_frame(reader)
        elif kind == "slow-reader":
            message = encode_frame(0x2, os.urandom(65536))
            while True:  # until the server stops reading us (our writes stall)
                writer.write(message)
                try:
                    await asyncio.wait_for(writer.drain(), 0.3)
                except asyncio.TimeoutError:
                    break
    return writers


async def measure(server: Server, port: int, kind: str, count: int) -> tuple[float, float]:
    await asyncio.sleep(0.5)
    rss, kernel = server.rss_bytes(), tcp_memory()
    writers = await open_kind(port, kind, count)
    await asyncio.sleep(1.0)  # the server settles (open() callbacks, records)
    per_rss = (server.rss_bytes() - rss) / count
    per_kernel = (tcp_memory() - kernel) / count
    for writer in writers:
        writer.transport.abort()
    await asyncio.sleep(1.0)
    return per_rss, per_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="connection counts x this")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    say(f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    say(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    say(f"{'engine':8} {'kind':12} {'conns':>6} {'server RSS/conn':>16} {'kernel TCP/conn':>16}")
    for engine in ("fast", "tornado"):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(
                "tornado-echo",
                0,
                Path(tmp),
                extra=("--engine", engine, "--max-http-connections", "5000"),
            )
            port = int(server.url.rsplit(":", 1)[1].split("/")[0])
            try:
                for kind in KINDS:
                    count = max(1, int(COUNTS[kind] * args.scale))
                    per_rss, per_kernel = asyncio.run(measure(server, port, kind, count))
                    say(
                        f"{engine:8} {kind:12} {count:>6} {per_rss / 1024:>13.1f} KB"
                        f" {per_kernel / 1024:>13.1f} KB"
                    )
            finally:
                server.close()
        time.sleep(0.5)
    say(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
