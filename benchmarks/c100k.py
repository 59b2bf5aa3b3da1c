#!/usr/bin/env python3
"""C100K end to end: 100,000 concurrent WebSockets on this machine, and what they cost.

Run by hand (not a test), inside the benchmark lock:

    flock /tmp/tornado-echo-bench.lock .venv/bin/python benchmarks/c100k.py \\
        [--connections 100000] [--client bundled|go] [--ramp 25] [--hold 20]

The per-process descriptor limit (20000 here) decides the shape: tornado-echo runs with
``--workers`` processes sharing the port (SO_REUSEPORT, default conf but SQLite records in a
temporary directory), and the client with as many processes, spreading its connections
over several loopback source addresses (127.0.0.2, 127.0.0.3, ...) so that no address runs
out of ephemeral ports. The client is the bundled load tester (``--client bundled``) or
the compiled Go client (``--client go``, benchmarks/goclient in its open-loop mode). The
connections open, evenly paced, over ``--ramp`` seconds; each sends one 32-byte message
every ``--period`` seconds (open loop, latency from the intended send time) from when it
is open (the Go client) or once all are open (the bundled tester's stages), and they are
held ``--hold`` seconds after the last one opened.

Printed: the kernel settings found and what to change (nothing is changed), the load
average, how long until all were open, the server's total RSS (supervisor and workers:
the sum of their VmRSS, which counts a page they share once per process) and PSS (each
shared page divided among its sharers: what they hold together) at the peak, errors,
latency p50/p99/max, workers the supervisor killed, session records by end state, and the
CPU seconds server and client spent per connection established.
Targets (issue 19): all open in <= 30 s, RSS <= 800 MB, 0 errors, p99 < 50 ms, 0 workers
killed, 0 sessions crashed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    build_go,
    kernel_settings,
    say,
    start_supervised,
    stop_supervised,
    tcp_counters,
    tree_pids,
    tree_pss,
    tree_usage,
    uptime,
)

PER_PROCESS = 17_000  # connections per process, well under the 20000 fd limit
PER_SOURCE = 14_000  # connections per source address, half the default port range
BACKLOG = 4096  # the server's listen backlog (listen_backlog's default)


class Sampler(threading.Thread):
    """Every 0.25 s: the server's and the client's resident bytes and CPU seconds; every
    second the server's PSS (walking the page tables costs more)."""

    def __init__(self, server: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.clients: list[int] = []
        self.samples: list[tuple[float, int, float, float]] = []  # (t, rss, cpu, client cpu)
        self.pss: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            rss, cpu = tree_usage(self.server)
            client = sum(tree_usage(pid)[1] for pid in self.clients)
            self.samples.append((time.time(), rss, cpu, client))
            if len(self.samples) % 4 == 1:
                self.pss.append(tree_pss(self.server))

    def at(self, when: float) -> tuple[float, int, float, float]:
        """The first sample at or after ``when`` (the last one if none)."""
        return next((s for s in self.samples if s[0] >= when), self.samples[-1])


def bundled(url: str, args: argparse.Namespace, workers: int, sources: list[str]) -> Any:
    cmd = [
        sys.executable, "-m", "tornado_echo.loadtest.cli", url,
        "-c", str(args.connections),
        "-w", str(workers),
        "--source-ip", ",".join(sources),
        "--mode", "open",
        # Open first (a message per connection per 1000 s, as the tester needs a rate),
        # then the rate rises over 5 s and holds.
        "--stage", f"{args.ramp}:{args.connections}:0.001",
        "--stage", f"5:{args.connections}:{1 / args.period}",
        "--stage", f"{args.hold}:{args.connections}:{1 / args.period}",
        "-s", "32",
        "--connect-timeout", "30",
    ]  # fmt: skip
    return cmd


def go_client(binary: Path, url: str, args: argparse.Namespace, index: int, count: int,
              sources: list[str], processes: int) -> list[str]:  # fmt: skip
    mine = [s for n, s in enumerate(sources) if n % processes == index] or sources
    return [
        str(binary), "-url", url, "-c", str(count), "-size", "32",
        "-period", f"{args.period}s", "-hold", f"{args.hold}s",
        "-rate", str(count / args.ramp), "-src", ",".join(mine),
    ]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--client", default="bundled", choices=("bundled", "go"))
    parser.add_argument("--period", type=float, default=10.0, help="seconds between messages")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds after all are open")
    parser.add_argument("--ramp", type=float, default=25.0, help="seconds to open them all")
    parser.add_argument("--workers", type=int, default=0, help="server processes (0: by fds)")
    parser.add_argument("--engine", default="fast", choices=("fast", "tornado"))
    parser.add_argument("--server-args", default="", help="more flags for tornado-echo")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy (pip install py-spy) one worker during the ramp into FILE (raw)",
    )
    parser.add_argument("--keep-log", metavar="FILE", help="copy the server's log to FILE")
    args = parser.parse_args()
    processes = max(1, math.ceil(args.connections / PER_PROCESS))
    workers = args.workers or processes
    sources = [f"127.0.0.{2 + n}" for n in range(max(2, math.ceil(args.connections / PER_SOURCE)))]
    say(f"machine: {os.cpu_count()} CPUs, server and client share them; load {uptime()}")
    kernel_settings(args.connections, len(sources), BACKLOG)
    say(
        f"{args.connections} connections over {args.ramp:g} s; tornado-echo --workers"
        f" {workers} (engine {args.engine}); {args.client} client x {processes} processes from"
        f" {len(sources)} source addresses; one message per {args.period:g} s per connection,"
        f" held {args.hold:g} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        binary = build_go("goclient", work) if args.client == "go" else None
        proc, port, log = start_supervised(
            work, "0-1", workers,
            ("--engine", args.engine, "--max-connections", str(PER_PROCESS + 2000),
             "--max-http-connections", "5000", *args.server_args.split()),
        )  # fmt: skip
        url = f"ws://127.0.0.1:{port}/ws"
        idle_rss, idle_cpu = tree_usage(proc.pid)
        idle_pss = tree_pss(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        began = time.time()
        counters = tcp_counters()
        spy = None
        try:
            if binary is None:
                out = work / "result.json"
                cmd = [*bundled(url, args, processes, sources), "-q", "--json", str(out)]
                clients = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL)]
            else:
                counts = [args.connections // processes] * processes
                counts[0] += args.connections - sum(counts)
                clients = [
                    subprocess.Popen(
                        go_client(binary, url, args, n, count, sources, processes),
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for n, count in enumerate(counts)
                ]
            sampler.clients = [c.pid for c in clients]
            if args.profile:
                worker = tree_pids(proc.pid)[-1]
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(worker),
                     "-d", str(int(args.ramp)), "-r", "100", "-f", "raw", "-o", args.profile],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            outputs = [c.communicate(timeout=args.ramp + args.hold + 600)[0] for c in clients]
            if spy is not None:
                spy.wait(60)
        finally:
            sampler.done.set()
            sampler.join()
            for client in clients:
                if client.poll() is None:
                    client.kill()
            load_after = uptime()
            counters = {k: v - counters[k] for k, v in tcp_counters().items()}
            killed, states = stop_supervised(proc, work, log)
            if args.keep_log:
                shutil.copy(log, args.keep_log)
        if binary is None:
            summary = json.loads(out.read_text())["summary"]
            c, m, latency = summary["connections"], summary["messages"], summary["latency_ms"]
            established, attempted = c["established"], c["attempted"]
            failed, dropped = c["failed"], c["dropped"]
            open_after = c["last_opened_after_s"]
            sent, received, lost, mismatched = m["sent"], m["received"], m["lost"], m["mismatches"]
            p50, p99, worst = (latency.get(k, math.nan) for k in ("p50", "p99", "max"))
            ramp_note = "(all sends after the ramp)"
        else:
            runs = [json.loads(text.strip().splitlines()[-1]) for text in outputs]
            first_error = next((r["first_error"] for r in runs if r.get("first_error")), None)
            established = sum(r["established"] for r in runs)
            attempted = sum(r["attempted"] for r in runs)
            failed = sum(r["failed"] for r in runs)
            dropped = sum(r["dropped"] for r in runs)
            server_closed = sum(r.get("server_closed", 0) for r in runs)
            start = min(r["start_unix"] for r in runs)
            open_after = max(r["last_open_unix"] for r in runs) - start
            sent, received = sum(r["sent"] for r in runs), sum(r["received"] for r in runs)
            mismatched = sum(r["mismatched"] for r in runs)
            lost = sent - received - mismatched
            ramp = sorted(x for r in runs for x in r["ramp_latency_ms"])
            hold = sorted(x for r in runs for x in r["hold_latency_ms"])
            every = sorted(ramp + hold)
            p50, p99, worst = percentile(every, 0.5), percentile(every, 0.99), max(every or [0])
            ramp_note = (
                f"(during the ramp: {len(ramp)} echoes, p99 {percentile(ramp, 0.99):.2f} ms;"
                f" held: {len(hold)}, p99 {percentile(hold, 0.99):.2f} ms)"
            )
            say(f"of the dropped, ended by the server's close frame: {server_closed}")
            if first_error:
                say(f"first client error: {first_error}")
    errors = failed + dropped + lost + mismatched
    peak = max(s[1] for s in sampler.samples)
    at = sampler.at(began + open_after)
    opened = (at[0], at[1], at[2] - idle_cpu, at[3])
    say(
        f"established {established} of {attempted} (failed {failed}, dropped {dropped});"
        f" all open after {open_after:.1f} s (target <= 30 s)"
    )
    say(
        f"server RSS (sum over its processes): {idle_rss / 2**20:.0f} MB before,"
        f" {peak / 2**20:.0f} MB at the peak (target <= 800 MB);"
        f" {(peak - idle_rss) / max(1, established) / 1024:.1f} KB per connection"
    )
    pss_peak = max(sampler.pss or [0])
    say(
        f"server PSS (pages shared between its processes counted once): {idle_pss / 2**20:.0f}"
        f" MB before, {pss_peak / 2**20:.0f} MB at the peak (sampled every second)"
    )
    say(
        f"messages: sent {sent}, echoed {received}, lost {lost}, mismatched {mismatched};"
        f" errors in all {errors} (target 0)"
    )
    say(
        f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (target < 50), max {worst:.2f} ms {ramp_note}"
    )
    say(
        f"CPU until all were open ({opened[0] - began:.1f} s): server {opened[2]:.1f} s,"
        f" client {opened[3]:.1f} s = {opened[2] / max(1, established) * 1e6:.0f} +"
        f" {opened[3] / max(1, established) * 1e6:.0f} us per connection established;"
        f" {(opened[2] + opened[3]) / max(0.1, opened[0] - began) * 100:.0f}% of one core"
    )
    say(f"kernel, during the run (system-wide): {counters}")
    say(
        f"workers killed {killed} (target 0); sessions crashed {states.get('crashed', 0)}"
        f" (target 0); load {load_after} at the end"
    )


if __name__ == "__main__":
    main()
