#!/usr/bin/env python3
"""Mass disconnect (issue 19 item 4, target 4): N connections on 2 workers sharing one core,
then every client vanishes at once; what the connections that remain see.

Run by hand (not a test), inside the benchmark lock:

    flock /tmp/tornado-echo-bench.lock .venv/bin/python benchmarks/mass_disconnect.py \
        [--connections 30000] [--server-cpus 0] [--client-cpu 1]

Loopback only, bounded: the server (default conf but ``--max-connections 19500``, SQLite
records in a temporary directory) runs with ``--workers 2`` pinned to ``--server-cpus``;
the clients are ``--clients`` processes (each under the 20000 descriptor limit, spread
over several 127.0.0.x source addresses) on ``--client-cpu``. Once all N are open, probe
connections (one per worker, found by asking each connection's worker pid through
/metrics is not possible, so ``--probes`` of them: SO_REUSEPORT spreads them) echo 32
bytes every 10 ms; then every client process is SIGKILLed at once, so the kernel closes
all N sockets together. Printed: the probes' worst echo round trip from the kill until
the server reports only the probes open, how long that took, workers the supervisor
killed, and the session records by end state (targets: < 250 ms, 0 killed, every record
closed or aborted).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from multiprocessing.synchronize import Event
from pathlib import Path

from _common import say, start_supervised, stop_supervised
from _rawclient import frame, read_echo, upgrade

PER_CLIENT = 16_000  # connections per client process, under the 20000 descriptor limit
PER_SOURCE = 20_000  # connections per 127.0.0.x source address (ephemeral ports)


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(upgrade())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return reader, writer


def hold(port: int, count: int, first: int, ready: Event) -> None:
    """A client process: open ``count`` WebSockets, say so, then hold them until killed."""

    async def run() -> None:
        held = []
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            source = f"127.0.0.{2 + (first + i) // PER_SOURCE}"
            async with sem:
                for attempt in range(20):
                    try:
                        held.append(await connect(port, source))
                        return
                    except (OSError, ConnectionError, asyncio.IncompleteReadError):
                        await asyncio.sleep(0.05 * (attempt + 1))
                raise RuntimeError("could not connect")

        await asyncio.gather(*(one(i) for i in range(count)))
        ready.set()
        await asyncio.Event().wait()  # until SIGKILL

    asyncio.run(run())


class Probe:
    """Echoes 32 bytes every 10 ms; keeps the worst round trip since reset()."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.lost = 0

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await connect(port, "127.0.0.1")
        message = frame(0x1, b"p" * 32)
        try:
            while not stop.is_set():
                start = time.monotonic()
                writer.write(message)
                await read_echo(reader, writer)
                self.worst = max(self.worst, time.monotonic() - start)
                await asyncio.sleep(0.01)
        except (OSError, asyncio.IncompleteReadError):
            self.lost += 1
        finally:
            writer.close()


def open_sessions(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    match = re.search(rb"^tornado_echo_connections_open (\S+)$", body, re.M)
    return float(match.group(1)) if match else -1.0


async def measure(port: int, probes: int, clients: list[multiprocessing.Process]) -> None:
    stop = asyncio.Event()
    probe_list = [Probe() for _ in range(probes)]
    tasks = [asyncio.ensure_future(p.run(port, stop)) for p in probe_list]
    await asyncio.sleep(1.0)  # the probes settle
    baseline = max(p.worst for p in probe_list)
    for p in probe_list:
        p.worst = 0.0
    start = time.monotonic()
    for client in clients:
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    while True:
        still = await loop.run_in_executor(None, open_sessions, port)
        if 0 <= still <= probes or time.monotonic() - start > 120:
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - start
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    worst = max(p.worst for p in probe_list)
    say(f"probes' worst round trip before the storm: {baseline * 1000:.0f} ms")
    say(
        f"all gone after {elapsed:.2f} s ({still:.0f} sessions open at the end);"
        f" probes' worst echo round trip meanwhile: {worst * 1000:.0f} ms (target < 250 ms);"
        f" probe connections lost: {sum(p.lost for p in probe_list)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=30_000)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpu", default="1")
    args = parser.parse_args()
    if not 1 <= args.connections <= 36_000:
        sys.exit("--connections must be between 1 and 36000 (two workers of 19500 at most)")
    say(f"load: {os.getloadavg()}; other engineers' work shares this machine")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ("--max-connections", "19500")
        proc, port, log = start_supervised(work, args.server_cpus, 2, extra)
        clients: list[multiprocessing.Process] = []
        try:
            os.sched_setaffinity(0, {int(args.client_cpu)})
            started = time.monotonic()
            readies = []
            for first in range(0, args.connections, PER_CLIENT):
                count = min(PER_CLIENT, args.connections - first)
                ready = multiprocessing.Event()
                client = multiprocessing.Process(target=hold, args=(port, count, first, ready))
                client.start()
                clients.append(client)
                readies.append(ready)
            for ready, client in zip(readies, clients, strict=True):
                while not ready.wait(0.5):
                    if not client.is_alive():
                        sys.exit("a client process failed to connect")
                    if time.monotonic() - started > 300:
                        sys.exit("connecting took more than 300 s")
            say(f"{args.connections} connections open in {time.monotonic() - started:.1f} s")
            asyncio.run(measure(port, args.probes, clients))
        finally:
            for client in clients:
                if client.is_alive():
                    client.kill()
                client.join()
            stop_supervised(proc, work, log)
    say(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
