"""Echo throughput with the store off, with session records and with the journal, on SQLite
and PostgreSQL, measured in one run and printed as ratios to "store off"; then the rows per
second the writer sustains on its own. Run by hand, not a test:

    python benchmarks/store_throughput.py [--seconds 8] [--connections 100]
        [--messages-per-session 100] [--rounds 3] [--pg postgresql://postgres@127.0.0.1:5432/test]

The server runs in its own process pinned to CPU 0, the load client in another pinned to
CPU 1 (taskset). The client is a closed loop over raw sockets and asyncio: every connection
sends one 32-byte binary frame, waits for the echo, sends the next; after
``--messages-per-session`` echoes it closes and reconnects, so session records are written
at a steady rate. "store off" swaps the server's backend for one that discards batches,
so the writer thread still runs but no database is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAYLOAD = os.urandom(32)
MASK = b"\x11\x22\x33\x44"
FRAME = bytes([0x82, 0x80 | 32]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
CLOSE = bytes([0x88, 0x82]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(b"\x03\xe8"))


# -- server process ---------------------------------------------------------------------------


def serve(settings: dict[str, Any], store_off: bool) -> None:
    """Run one server until stdin closes; print its port on stdout."""
    from typing import Any as _Any

    from tornado_echo.config import Config
    from tornado_echo.process.server import Server
    from tornado_echo.store import Backend, Store, spool_path

    class NullBackend(Backend):
        def describe(self) -> str:
            return "null"

        def connect(self) -> None:
            pass

        def migrate(self) -> list[int]:
            return []

        def write(self, batch: list[_Any]) -> None:
            pass

        def is_data_error(self, exc: Exception) -> bool:
            return False

        def list_sessions(self, limit: int, since: float | None) -> list[dict[str, _Any]]:
            return []

        def get_session(self, session_id: str, journal_limit: int) -> dict[str, _Any] | None:
            return None

        def mark_crashed(self, server_id: str, now: float) -> int:
            return 0

        def ping(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def main() -> None:
        config = Config(**settings)
        server = Server(config, server_id="bench:0:0")
        if store_off:
            server.store = Store(
                NullBackend(), "bench:0:0", spool_path(config.state_dir, "bench:0:0")
            )
        await server.start()
        sys.stdout.write(f"{server.port}\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.shutdown()

    asyncio.run(main())


# -- client process ---------------------------------------------------------------------------


class EchoClient(asyncio.Protocol):
    """One connection in a closed loop; reconnects after ``per_session`` echoes."""

    def __init__(self, counter: list[int], per_session: int, done: asyncio.Future[None]) -> None:
        self.counter = counter
        self.per_session = per_session
        self.done = done
        self.buffer = b""
        self.handshaken = False
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4 :]
            self.handshaken = True
            self.transport.write(FRAME)
        while len(self.buffer) >= 2:
            if self.buffer[0] != 0x82:  # the server's close (or a ping): this session is over
                self.transport.close()
                return
            if len(self.buffer) < 34:
                return
            self.buffer = self.buffer[34:]
            self.counter[0] += 1
            self.count += 1
            if self.count >= self.per_session:
                self.transport.write(CLOSE)  # a clean close: wait for the server's reply
                return
            self.transport.write(FRAME)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def client(port: int, connections: int, seconds: float, per_session: int) -> None:
    """Print the echo count after ``seconds`` (after a 1 s warm-up)."""

    async def connection_loop(counter: list[int], stop: float) -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop:
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(
                lambda done=done: EchoClient(counter, per_session, done), "127.0.0.1", port
            )
            await done

    async def main() -> None:
        counter = [0]
        stop = time.monotonic() + 1.0 + seconds + 0.5
        tasks = [asyncio.ensure_future(connection_loop(counter, stop)) for _ in range(connections)]
        await asyncio.sleep(1.0)
        start_count, started = counter[0], time.monotonic()
        await asyncio.sleep(seconds)
        rate = (counter[0] - start_count) / (time.monotonic() - started)
        sys.stdout.write(f"{rate}\n")
        sys.stdout.flush()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# -- orchestration ----------------------------------------------------------------------------


def readyz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
        return dict(json.loads(response.read())["store"])


def measure(label: str, settings: dict[str, Any], store_off: bool, args: Any) -> dict[str, Any]:
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, __file__, "--serve", json.dumps(settings)]
        + (["--store-off"] if store_off else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())
    before, started = readyz(port), time.monotonic()
    load = subprocess.run(
        [
            *("taskset", "-c", "1", sys.executable, __file__, "--client", str(port)),
            *("--connections", str(args.connections), "--seconds", str(args.seconds)),
            *("--messages-per-session", str(args.messages_per_session)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after, elapsed = readyz(port), time.monotonic() - started
    server.stdin.close()
    server.wait(timeout=60)
    result = {
        "label": label,
        "echo_per_s": float(load.stdout),
        "rows_per_s": (after["written"] - before["written"]) / elapsed,
        "backlog": after["pending"],
    }
    sys.stderr.write(f"  {label}: {result['echo_per_s']:,.0f} echo/s\n")
    return result


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median echo rate (its rows/s and backlog come along)."""
    ordered = sorted(results, key=lambda r: float(r["echo_per_s"]))
    median = dict(ordered[len(ordered) // 2])
    median["spread"] = f"{ordered[0]['echo_per_s']:,.0f}-{ordered[-1]['echo_per_s']:,.0f}"
    return median


def writer_rate(database_url: str, state_dir: str, journal_records: int) -> float:
    """Rows per second the writer sustains alone: submit everything, time the drain."""
    from tornado_echo.store import MessageReceived, Store, make_backend, spool_path

    async def main() -> float:
        store = Store(
            make_backend(database_url),
            "bench:1:0",
            spool_path(state_dir, "bench:1:0"),
            queue_limit=journal_records + 1,
        )
        await store.start()
        session = str(uuid.uuid4())
        now = time.time()
        for seq in range(journal_records):
            store.submit(MessageReceived(session, seq, now, 2, 32, PAYLOAD))
        started = time.monotonic()
        store.queue.full.set()  # a benchmark shortcut: do not wait for batch_delay
        while store.status().pending:
            await asyncio.sleep(0.01)
        rate = journal_records / (time.monotonic() - started)
        await store.close()
        return rate

    return asyncio.run(main())


def insert_methods(database_url: str, rows: int = 1000, batches: int = 100) -> dict[str, float]:
    """Journal rows/s into ws_messages: execute_values vs COPY + INSERT ... ON CONFLICT."""
    import psycopg2
    import psycopg2.extras

    from tornado_echo.store import make_backend
    from tornado_echo.store.records import MessageReceived

    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()

    def batch() -> list[MessageReceived]:
        session, now = str(uuid.uuid4()), time.time()
        return [MessageReceived(session, seq, now, 2, 32, PAYLOAD) for seq in range(rows)]

    conn = psycopg2.connect(database_url)

    def execute_values(records: list[MessageReceived]) -> None:
        with conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO ws_messages VALUES %s ON CONFLICT DO NOTHING",
                [
                    (r.session_id, r.seq, r.received_at, r.opcode, r.size, r.payload)
                    for r in records
                ],
                template="(%s::uuid, %s, to_timestamp(%s), %s, %s, %s::bytea)",
                page_size=len(records),
            )

    rates = {}
    for name, write in (("execute_values", execute_values), ("COPY + merge", backend.write)):
        work = [batch() for _ in range(batches)]
        started = time.perf_counter()
        for records in work:
            write(records)
        rates[name] = rows * batches / (time.perf_counter() - started)
    conn.close()
    backend.close()
    return rates


def orchestrate(args: Any) -> None:
    import psycopg2

    work = Path(tempfile.mkdtemp(prefix="tornado-echo-bench-"))
    pg_name = "tornado_echo_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {pg_name}")
    pg_url = urlunsplit(urlsplit(args.pg)._replace(path="/" + pg_name))
    base = {"port": 0, "log_level": "error", "max_connections": 20000}
    runs = [("store off", {"database_url": f"sqlite:///{work}/off.db"}, True)]
    for name, url in (("SQLite", f"sqlite:///{work}/echo.db"), ("PostgreSQL", pg_url)):
        for journal in ("off", "meta", "full"):
            what = "session records" if journal == "off" else f"journal {journal}"
            runs.append((f"{name} {what}", {"database_url": url, "journal": journal}, False))
    try:
        sys.stderr.write(
            f"{args.connections} connections, 32-byte messages, {args.messages_per_session}"
            f" per session, {args.seconds:g} s per run\n"
        )
        # Rounds in rotation, median per mode: this machine is shared, so load comes and goes.
        rounds: list[list[dict[str, Any]]] = []
        for number in range(args.rounds):
            sys.stderr.write(f"round {number + 1} of {args.rounds}\n")
            rounds.append([])
            for label, settings, off in runs:
                state_dir = str(work / label.replace(" ", "_"))
                rounds[-1].append(
                    measure(label, {**base, **settings, "state_dir": state_dir}, off, args)
                )
        results = [median_result(list(per_mode)) for per_mode in zip(*rounds, strict=True)]
        baseline = results[0]["echo_per_s"]
        out = sys.stdout.write
        out(f"\n{'mode':32} {'echo/s':>10} {'ratio':>7} {'rows/s':>10} {'backlog':>8}")
        out(f"  {'echo/s min-max':>15}\n")
        for r in results:
            out(
                f"{r['label']:32} {r['echo_per_s']:>10,.0f} {r['echo_per_s'] / baseline:>7.3f}"
                f" {r['rows_per_s']:>10,.0f} {r['backlog']:>8}  {r['spread']:>15}\n"
            )
        out("\nwriter alone, 200k journal rows (full, 32 B), batch_size 1000:\n")
        for name, url in (("SQLite", f"sqlite:///{work}/alone.db"), ("PostgreSQL", pg_url)):
            rate = writer_rate(url, str(work / "alone"), 200_000)
            out(f"  {name:12} {rate:>10,.0f} rows/s\n")
        out("\nPostgreSQL insert methods, 100 batches of 1000 journal rows, one connection:\n")
        for name, rate in insert_methods(pg_url).items():
            out(f"  {name:16} {rate:>10,.0f} rows/s\n")
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")
        admin.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--store-off", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="PORT", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--messages-per-session", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve), args.store_off)
    elif args.client:
        client(args.client, args.connections, args.seconds, args.messages_per_session)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
