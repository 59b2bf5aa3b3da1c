"""Echo throughput and latency: tornado-echo against a stock Tornado echo handler.

Run by hand (not a test): ``.venv/bin/python benchmarks/echo_vs_stock.py``. Each server runs
pinned to CPU 0 (taskset), the load comes from a separate process pinned to CPU 1: N
connections in a closed loop (send one 32-byte text message, wait for its echo, repeat) for
a fixed time. Both servers are measured in the same run and the ratios printed. tornado-echo
runs with its embedded defaults (SQLite session records, journal off) unless --journal is
given.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STOCK_SERVER = r"""
import asyncio, sys
import tornado.web, tornado.websocket

class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))

async def main():
    app = tornado.web.Application([("/ws", Echo)])
    app.listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, base64, os, struct, sys, time

PORT, CONNECTIONS, SECONDS, SIZE = (int(a) for a in sys.argv[1:5])
PAYLOAD = b"x" * SIZE
MASK = b"\x00\x00\x00\x00"  # a zero mask keeps the client cheap; servers must accept it
FRAME = bytes([0x81, 0x80 | SIZE]) + MASK + PAYLOAD
REPLY = bytes([0x81, SIZE]) + PAYLOAD

class Echo(asyncio.Protocol):
    def __init__(self, stats, stop):
        self.stats, self.stop, self.buffer = stats, stop, b""
        self.handshaken = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         f"Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data):
        self.buffer += data
        if not self.handshaken.done():
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.buffer = rest
            self.handshaken.set_result(None)
            self.send()
        while len(self.buffer) >= len(REPLY):
            assert self.buffer[:len(REPLY)] == REPLY, self.buffer[:40]
            self.buffer = self.buffer[len(REPLY):]
            self.stats.append(time.perf_counter() - self.sent_at)
            if not self.stop.is_set():
                self.send()

    def send(self):
        self.sent_at = time.perf_counter()
        self.transport.write(FRAME)

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stats = []
    protocols = []
    for _ in range(CONNECTIONS):
        _, p = await loop.create_connection(lambda: Echo(stats, stop), "127.0.0.1", PORT)
        protocols.append(p)
    await asyncio.gather(*(p.handshaken for p in protocols))
    await asyncio.sleep(1.0)  # warm-up
    del stats[:]
    started = time.perf_counter()
    await asyncio.sleep(SECONDS)
    count, elapsed = len(stats), time.perf_counter() - started
    latencies = sorted(stats[:count])
    stop.set()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"{count / elapsed:.1f} {p50 * 1000:.3f} {p99 * 1000:.3f}")

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(
    command: list[str], port: int, args: argparse.Namespace, cwd: Path
) -> tuple[float, float, float]:
    server = subprocess.Popen(
        ["taskset", "-c", "0", *command],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-c",
                CLIENT,
                str(port),
                str(args.connections),
                str(args.seconds),
                str(args.size),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return float(out[0]), float(out[1]), float(out[2])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, choices=range(1, 126))
    parser.add_argument("--journal", default="off", choices=["off", "meta", "full"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        stock_port = free_port()
        stock = measure(
            [sys.executable, "-c", STOCK_SERVER, str(stock_port)], stock_port, args, cwd
        )
        ours_port = free_port()
        ours = measure(
            [
                sys.executable,
                "-m",
                "tornado_echo",
                "--port",
                str(ours_port),
                "--log-level",
                "warning",
                "--database-url",
                f"sqlite:///{tmp}/echo.db",
                "--journal",
                args.journal,
            ],
            ours_port,
            args,
            cwd,
        )
    print(
        f"{args.connections} connections, {args.size}-byte text, closed loop, {args.seconds} s,"
        f" servers on CPU 0, client on CPU 1 ({os.cpu_count()} CPUs)"
    )
    print(f"{'server':<28}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, (rate, p50, p99) in (
        ("stock Tornado handler", stock),
        (f"tornado-echo (journal {args.journal})", ours),
    ):
        print(f"{name:<28}{rate:>10.0f}{p50:>10.3f}{p99:>10.3f}")
    print(
        f"ratio tornado-echo / stock: throughput {ours[0] / stock[0]:.2f}x,"
        f" p99 {ours[2] / stock[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
