#!/usr/bin/env python3
"""C100K end to end: 100,000 concurrent WebSockets on this machine, and what they cost.

Run by hand (not a test): ``.venv/bin/python benchmarks/c100k.py [--connections 100000]``.

The per-process descriptor limit (20000 here) decides the shape: tornado-echo runs with
``--workers`` processes sharing the port (SO_REUSEPORT), and the bundled load tester with
as many worker processes, spreading its connections over several loopback source
addresses (127.0.0.2, 127.0.0.3, ...) so that no address runs out of ephemeral ports.
The connections open, evenly paced, over ``--ramp`` seconds while sending next to nothing;
then each sends one 32-byte message every ``--period`` seconds (open loop) for ``--hold``
seconds, so the latency is that of the 100k held. Printed: how long until all were open,
the server's total RSS (supervisor and workers) at the peak, echo errors, latency p50/p99/max.
Targets (issue 9): all open in <= 30 s, RSS <= 800 MB, 0 errors, p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import run_loadtest, say

PER_PROCESS = 17_000  # connections per process, well under the 20000 fd limit


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        pending.extend(int(child) for child in children)
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"tornado-echo did not listen on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between messages")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds after all are open")
    parser.add_argument("--ramp", type=float, default=30.0, help="seconds to open them all")
    parser.add_argument("--engine", default="fast", choices=("fast", "tornado"))
    args = parser.parse_args()
    processes = max(1, math.ceil(args.connections / PER_PROCESS))
    sources = [f"127.0.0.{2 + n}" for n in range(max(2, math.ceil(args.connections / 14_000)))]
    port = free_port()
    say(
        f"{args.connections} connections; tornado-echo --workers {processes} (engine"
        f" {args.engine}); load tester -w {processes} from {len(sources)} source addresses;"
        f" one message per {args.period:g} s per connection for {args.hold:g} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "tornado_echo",
                "--port", str(port),
                "--workers", str(processes),
                "--engine", args.engine,
                "--max-connections", str(PER_PROCESS + 2000),
                "--max-http-connections", "5000",
                "--database-url", f"sqlite:///{tmp}/c100k.db",
                "--state-dir", tmp,
                "--log-level", "error",
            ],
            cwd=tmp,
        )  # fmt: skip
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.5):
                peak = max(peak, tree_rss(server.pid))

        try:
            wait_listening(port)
            time.sleep(1.0)  # every worker listening, not just the first
            idle_rss = tree_rss(server.pid)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            result = run_loadtest(
                None,
                [
                    f"ws://127.0.0.1:{port}/ws",
                    "-c", str(args.connections),
                    "-w", str(processes),
                    "--source-ip", ",".join(sources),
                    "--mode", "open",
                    # Open first (a message per connection per 1000 s, as the tester needs a
                    # rate), then the rate rises over 10 s and holds for --hold s.
                    "--stage", f"{args.ramp}:{args.connections}:0.001",
                    "--stage", f"10:{args.connections}:{1 / args.period}",
                    "--stage", f"{args.hold}:{args.connections}:{1 / args.period}",
                    "-s", "32",
                    "--connect-timeout", "30",
                ],
                timeout=args.ramp + args.hold + 180,
            )  # fmt: skip
            stop.set()
            sampler.join()
        finally:
            stop.set()
            server.terminate()
            server.wait(120)
    summary = result["summary"]
    c, m, latency = summary["connections"], summary["messages"], summary["latency_ms"]
    errors = c["failed"] + c["dropped"] + m["lost"] + m["mismatches"]
    say(
        f"established {c['established']} of {c['attempted']} (failed {c['failed']}, dropped"
        f" {c['dropped']}); all open after {c['last_opened_after_s']:.1f} s (target <= 30 s)"
    )
    say(
        f"server RSS: {idle_rss / 2**20:.0f} MB before, {peak / 2**20:.0f} MB at the peak"
        f" (target <= 800 MB); {(peak - idle_rss) / max(1, c['peak_open']) / 1024:.1f} KB"
        " per connection"
    )
    say(
        f"messages: sent {m['sent']}, echoed {m['received']}, lost {m['lost']}, mismatched"
        f" {m['mismatches']}; errors in all {errors} (target 0)"
    )
    say(
        f"latency: p50 {latency.get('p50', math.nan):.2f} ms, p99"
        f" {latency.get('p99', math.nan):.2f} ms (target < 50), max"
        f" {latency.get('max', math.nan):.2f} ms"
    )
    say(f"machine: {os.cpu_count()} CPUs; server and load tester share them")


if __name__ == "__main__":
    main()
