#!/usr/bin/env python3
"""Compressed-message fan-out (issue 22 item 1): N connections each send ONE small
permessage-deflate frame that inflates to 1 MiB, at the default conf with ``--workers 2``.

Run by hand (not a test), inside the benchmark lock:

    flock /tmp/tornado-echo-bench.lock .venv/bin/python benchmarks/deflate_storm.py \
        [--connections 2000] [--rounds 3] [--server-cpus 0]

Loopback only, bounded: at most ``--connections`` (<= 9000) sockets per round, each round
at most ``--round-timeout`` seconds. The server (SQLite records in a temporary directory)
runs pinned to ``--server-cpus``; this client runs on the other CPU. Each round: connect N
deflate connections, send every bomb at once, wait until every echo is back (or the
round's time is up), hang up. Meanwhile a probe connection (no deflate) echoes 32 bytes
every 20 ms. Printed per round: how long until every echo came back, echoes received, the
probe's worst round trip, workers the supervisor SIGKILLed, the workers' peak RSS. At the
end: whether the supervisor gave up, and the sessions by end state (crashed = marked after
its worker was killed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from _common import say, start_supervised, stop_supervised
from _rawclient import frame, read_echo, upgrade

MIB = 1 << 20


def bomb_frame(inflated: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflater.compress(b"\0" * inflated) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return frame(0x2, body[:-4], rsv1=True)


async def connect(port: int, deflate: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
    writer.write(upgrade("Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    if deflate and b"permessage-deflate" not in head:
        raise ConnectionError("permessage-deflate not agreed")
    return reader, writer


class Probe:
    """One plain connection echoing 32 bytes every 20 ms; the worst round trip per round."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.worst = 0.0
        self.lost = 0
        self.echoes = 0
        self._stop = False

    async def run(self) -> None:
        message = frame(0x1, b"p" * 32)
        while not self._stop:
            try:
                reader, writer = await connect(self.port, deflate=False)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            start = time.monotonic()
            try:
                while not self._stop:
                    start = time.monotonic()
                    writer.write(message)
                    await read_echo(reader, writer)
                    self.worst = max(self.worst, time.monotonic() - start)
                    self.echoes += 1
                    await asyncio.sleep(0.02)
            except (OSError, asyncio.IncompleteReadError):
                # Its worker died: the echo it waited for counts as that long, and a new
                # connection is opened.
                self.worst = max(self.worst, time.monotonic() - start)
                self.lost += 1
            finally:
                writer.close()

    def stop(self) -> None:
        self._stop = True


async def one_round(
    port: int, connections: int, bomb: bytes, timeout: float, probe: Probe
) -> dict[str, float]:
    conns = []
    sem = asyncio.Semaphore(200)

    async def open_one() -> None:
        async with sem:
            conns.append(await connect(port, deflate=True))

    await asyncio.gather(*(open_one() for _ in range(connections)))
    connect_worst, probe.worst = probe.worst, 0.0
    echoed = 0
    done = asyncio.Event()
    start = time.monotonic()

    async def bomb_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal echoed
        writer.write(bomb)
        try:
            await read_echo(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            return
        echoed += 1
        if echoed == connections:
            done.set()

    tasks = [asyncio.ensure_future(bomb_one(r, w)) for r, w in conns]
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    elapsed = time.monotonic() - start
    for task in tasks:
        task.cancel()
    for _, writer in conns:
        writer.close()
    return {"seconds": elapsed, "echoed": echoed, "connect_worst": connect_worst}


def worker_rss(log: Path) -> int:
    total = 0
    for pid in re.findall(r"worker \d started \(pid (\d+)\)", log.read_text()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


async def main_async(
    args: argparse.Namespace, port: int, log: Path, proc: subprocess.Popen[bytes]
) -> None:
    bomb = bomb_frame(MIB - 64)
    say(f"bomb frame: {len(bomb)} bytes on the wire, inflates to {MIB - 64} bytes")
    probe = Probe(port)
    probe_task = asyncio.ensure_future(probe.run())
    peak = [0]
    sampling = [True]

    def sample() -> None:
        while sampling[0]:
            peak[0] = max(peak[0], worker_rss(log))
            time.sleep(0.1)

    for number in range(1, args.rounds + 1):
        if proc.poll() is not None:
            say(f"round {number}: the server has exited ({proc.returncode}); stopping")
            break
        kills_before = log.read_text().count("killing it")
        probe.worst = 0.0
        peak[0] = 0
        sampling[0] = True
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = await one_round(port, args.connections, bomb, args.round_timeout, probe)
        except (OSError, ConnectionError) as exc:
            say(f"round {number}: connecting failed: {exc}")
            sampling[0] = False
            break
        sampling[0] = False
        sampler.join()
        kills = log.read_text().count("killing it") - kills_before
        say(
            f"round {number}: {int(result['echoed'])}/{args.connections} echoes in"
            f" {result['seconds']:.2f} s; probe worst round trip {probe.worst * 1000:.0f} ms"
            f" (while connecting: {result['connect_worst'] * 1000:.0f} ms)"
            f" ({probe.lost} probe connections lost so far); workers SIGKILLed: {kills};"
            f" workers' peak RSS {peak[0] / MIB:.0f} MiB"
        )
        await asyncio.sleep(1.0)  # let the closes land before the next round
    probe.stop()
    probe_task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-timeout", type=float, default=40.0)
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", default="fast")
    args = parser.parse_args()
    if not 1 <= args.connections <= 9000:
        sys.exit("--connections must be between 1 and 9000 (one client process, 20000 fds)")
    os.sched_setaffinity(0, {int(args.client_cpu)})
    say(f"load: {os.getloadavg()}; other engineers' work shares this machine")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ("--engine", args.engine)
        proc, port, log = start_supervised(work, args.server_cpus, args.workers, extra)
        try:
            asyncio.run(main_async(args, port, log, proc))
        finally:
            stop_supervised(proc, work, log)
    say(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
