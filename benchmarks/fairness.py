#!/usr/bin/env python3
"""What one greedy client costs everyone else: a newcomer's upgrade and echo round trips.

For each server (pinned to CPU 0), a hog process on CPU 1 keeps one connection busy, and a
probe client (also on CPU 1) then opens a connection and measures its upgrade time and
4 s of one-at-a-time echo round trips. Hogs:

  alone         no hog: the baseline
  pipelined     one-byte messages, 40,000 per write, as fast as the server takes them
  deflate-bomb  permessage-deflate messages of 1 KB that inflate to just under 1 MiB, 250 per
                write (--bomb-mib N: N MiB each, each in one frame, 250/N per write, and
                message limits raised to fit)
  deflate-echo  permessage-deflate negotiated, uncompressed random messages of just under
                1 MiB, 4 per write: every echo is deflated, and random data deflates slowest
                (for both: servers that do not negotiate permessage-deflate: n/a)

The hog reads its echoes (so the server's own backpressure does not stop it). Run by hand,
not a test:

    python benchmarks/fairness.py [--only alone,pipelined,deflate-bomb] [--bomb-mib N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import statistics
import tempfile
import time
import zlib
from multiprocessing.synchronize import Event
from pathlib import Path

import websockets
from _common import Server, say
from engine_vs_peers import CLIENT_CPU, SERVER_CPU, SERVERS, machine

HOGS = ("alone", "pipelined", "deflate-bomb", "deflate-echo")
PROBE_SECONDS = 4.0
UPGRADE_TIMEOUT = 10.0


def _frame(payload: bytes, rsv1: bool = False) -> bytes:
    # A binary client frame with a zero mask key (a valid key, and no masking work here).
    b0 = 0x82 | (0x40 if rsv1 else 0)
    length = len(payload)
    if length < 126:
        head = bytes((b0, 0x80 | length))
    elif length < 65536:
        head = bytes((b0, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def _hog(port: int, kind: str, bomb_mib: int, ready: Event, stop: Event) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})

    async def run() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        deflate = kind.startswith("deflate")
        offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{offer}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if deflate and b"permessage-deflate" not in head:
            return  # n/a: ready is never set
        if kind == "deflate-echo":
            chunk = _frame(os.urandom((1 << 20) - 64)) * 4
        elif kind == "deflate-bomb":
            deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
            bomb = b"\0" * ((bomb_mib << 20) - 64)
            body = deflater.compress(bomb) + deflater.flush(zlib.Z_SYNC_FLUSH)
            chunk = _frame(body[:-4], rsv1=True) * max(1, 250 // bomb_mib)
        else:
            chunk = _frame(b"x") * 40_000

        async def drain() -> None:
            while await reader.read(1 << 20):
                pass

        draining = asyncio.ensure_future(drain())
        ready.set()
        while not stop.is_set() and not draining.done():
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()

    try:
        asyncio.run(run())
    except OSError:
        pass  # the server hung up on the hog: it is still measured by what the probe saw


async def _probe(url: str) -> dict[str, float]:
    began = time.perf_counter()
    try:
        connection = await websockets.connect(url, compression=None, open_timeout=UPGRADE_TIMEOUT)
    except TimeoutError:
        return {"upgrade_ms": float("inf")}
    upgrade = time.perf_counter() - began
    rtts: list[float] = []
    async with connection:
        end = time.perf_counter() + PROBE_SECONDS
        while time.perf_counter() < end:
            sent = time.perf_counter()
            await connection.send("x")
            await connection.recv()
            rtts.append(time.perf_counter() - sent)
    rtts.sort()
    return {
        "upgrade_ms": upgrade * 1e3,
        "p50_ms": statistics.median(rtts) * 1e3,
        "p99_ms": rtts[int(len(rtts) * 0.99)] * 1e3,
        "max_ms": rtts[-1] * 1e3,
    }


def measure(server: Server, kind: str, bomb_mib: int) -> dict[str, float] | None:
    port = int(server.url.split(":")[2].split("/")[0])
    if kind == "alone":
        return asyncio.run(_probe(server.url))
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    hog = multiprocessing.Process(target=_hog, args=(port, kind, bomb_mib, ready, stop))
    hog.start()
    try:
        if not ready.wait(5):
            return None
        time.sleep(1.0)  # let the hog reach its pace
        return asyncio.run(_probe(server.url))
    finally:
        stop.set()
        hog.join(5)
        if hog.is_alive():
            hog.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(HOGS), help="comma-separated hogs")
    parser.add_argument("--bomb-mib", type=int, default=1, help="deflate-bomb message size")
    args = parser.parse_args()
    limit = str((args.bomb_mib + 1) << 20)
    raised = {"tornado-echo": ("--max-message-size", limit), "aiohttp": ("--max-msg-size", limit)}
    os.sched_setaffinity(0, {CLIENT_CPU})
    hogs = [name for name in args.only.split(",") if name]
    say(f"machine: {machine()}")
    say(f"server on CPU {SERVER_CPU}; hog and probe on CPU {CLIENT_CPU}")
    if args.bomb_mib > 1:
        say(f"deflate-bomb messages of {args.bomb_mib} MiB; message limits {limit} bytes")
    say(f"{'server':32}{'hog':>14}{'upgrade ms':>12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    p99: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, extra) in SERVERS.items():
            for hog in hogs:
                flags = extra + raised.get(kind, ()) if args.bomb_mib > 1 else extra
                server = Server(kind, SERVER_CPU, Path(tmp), extra=flags)
                try:
                    result = measure(server, hog, args.bomb_mib)
                finally:
                    server.close()
                if result is None:
                    say(f"{name:32}{hog:>14}{'n/a (no permessage-deflate)':>39}")
                    continue
                p99[name, hog] = result.get("p99_ms", float("inf"))
                cells = "".join(
                    f"{result.get(key, float('nan')):>{width}.2f}"
                    for key, width in (("upgrade_ms", 12), ("p50_ms", 9), ("p99_ms", 9))
                )
                say(f"{name:32}{hog:>14}{cells}{result.get('max_ms', float('nan')):>9.2f}")
    ours = "tornado-echo (engine fast)"
    for hog in hogs:
        peers = [
            f"{name} {p99[name, hog] / p99[ours, hog]:.1f}x"
            for name in SERVERS
            if name != ours and (name, hog) in p99 and (ours, hog) in p99
        ]
        if peers:
            say(f"probe p99 with hog {hog}, peers relative to {ours}: {', '.join(peers)}")


if __name__ == "__main__":
    main()
