#!/usr/bin/env python3
"""Reconnect storm (issue 19 item 5): N clients connected, the server restarted, every client
reconnecting at once; how long until all are back and what the first echoes see.

Run by hand (not a test), inside the benchmark lock:

    flock /tmp/tornado-echo-bench.lock .venv/bin/python benchmarks/reconnect_storm.py \\
        [--connections 50000] [--connect-rate 2500] [--period 10]

Loopback only, bounded. tornado-echo runs with ``--workers`` processes (SO_REUSEPORT, default
conf but SQLite records in a temporary directory) on both cores; the bundled load tester
opens N connections with ``--reconnect`` (a connection the server drops is replaced at once)
from several 127.0.0.x source addresses, each sending 32 bytes every ``--period`` seconds
(open loop, latency from the intended send time), and serves its live metrics. Once all N
are open the server gets SIGTERM (a clean shutdown: every session closed or aborted); once
it has exited it is started again on the same port, and the tester's connections find it.

Printed: the kernel settings found (nothing is changed), the load average, how long the
shutdown took (and whether the supervisor had to SIGKILL workers at its end), how long until
all N were open again (from the SIGTERM, and from the new server being ready), the tester's
errors in the storm (failed handshakes, echoes lost or mismatched; the N drops the restart
causes are counted apart), the latency of the echoes answered from the restart until one
period after all were back (p50/p99/max, from the tester's live histogram), workers the
supervisor killed, and session records by end state (target: none crashed).
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import (
    kernel_settings,
    killed_at_stop,
    say,
    session_states,
    start_supervised,
    tcp_counters,
    uptime,
)

PER_PROCESS = 17_000  # connections per process, under the 20000 descriptor limit
PER_SOURCE = 14_000  # connections per source address, half the default port range
BACKLOG = 4096  # the server's listen backlog (listen_backlog's default)
LINE = re.compile(r'^(\w+)(?:\{(?:class|le)="([^"]*)"[^}]*\})? ([-+\d.e]+|\+Inf|NaN)$')


def scrape(port: int) -> dict[str, float]:
    """The tester's live metrics: name (with its le or class label) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            name, label, value = match.groups()
            key = name.removeprefix("tornado_echo_loadtest_") + (f"[{label}]" if label else "")
            found[key] = found.get(key, 0.0) + float(value)
    return found


def latency(before: dict[str, float], after: dict[str, float]) -> tuple[int, list[str]]:
    """Echoes between two scrapes, and p50/p99/max as the histogram's bucket bounds."""
    prefix = "echo_latency_seconds_bucket["
    bounds = sorted(
        (float(key[len(prefix) : -1]), after[key] - before.get(key, 0.0))
        for key in after
        if key.startswith(prefix)
    )
    total = bounds[-1][1] if bounds else 0
    out = []
    for q in (0.5, 0.99, 1.0):
        bound = next((b for b, n in bounds if n >= q * total), math.inf)
        out.append("> 10 s" if math.isinf(bound) else f"<= {bound * 1000:g} ms")
    return int(total), out


def wait_for(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll ``condition`` every 0.1 s; the time.monotonic() it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"not within {timeout:g} s: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--connect-rate", type=int, default=2500, help="first opening, per s")
    parser.add_argument("--period", type=float, default=10.0, help="seconds between messages")
    parser.add_argument("--timeout", type=float, default=120.0, help="for all to come back")
    parser.add_argument("--server-args", default="", help="more flags for tornado-echo")
    args = parser.parse_args()
    processes = max(1, math.ceil(args.connections / PER_PROCESS))
    workers = max(2, processes)
    sources = [f"127.0.0.{2 + n}" for n in range(max(2, math.ceil(args.connections / PER_SOURCE)))]
    say(f"machine: 2 CPUs shared by server and tester; load {uptime()}")
    kernel_settings(args.connections, len(sources), BACKLOG)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    extra = (
        "--max-connections", str(PER_PROCESS + 2000), "--max-http-connections", "5000",
        *args.server_args.split(),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, port, log = start_supervised(work, "0-1", workers, extra)
        url = f"ws://127.0.0.1:{port}/ws"
        ramp = args.connections / args.connect_rate
        tester = subprocess.Popen(
            [
                sys.executable, "-m", "tornado_echo.loadtest.cli", url,
                "-c", str(args.connections), "-w", str(processes),
                "--source-ip", ",".join(sources),
                "--connect-rate", str(args.connect_rate),
                "--rate", str(1 / args.period), "-s", "32", "--reconnect",
                "-d", str(ramp + 180 + args.timeout + 2 * args.period),
                "--connect-timeout", "30", "--metrics-port", str(metrics_port), "-q",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        logs = [log]
        server2 = None
        try:

            def all_open() -> bool:
                try:
                    return scrape(metrics_port).get("connections_open", 0) >= args.connections
                except OSError:
                    return False

            wait_for(all_open, ramp + 180, f"{args.connections} open")
            time.sleep(args.period)  # every connection has echoed at least once
            before = scrape(metrics_port)
            counters = tcp_counters()
            say(
                f"{args.connections} connections open on --workers {workers}; tester -w"
                f" {processes}, {len(sources)} source addresses, one message per"
                f" {args.period:g} s each; load {uptime()}; restarting the server (SIGTERM)"
            )
            stopped = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(120)
            exited = time.monotonic()
            server2, _, log2 = start_supervised(work, "0-1", workers, extra, port, "server2.log")
            logs.append(log2)
            ready = time.monotonic()
            at_ready = scrape(metrics_port)
            back = wait_for(all_open, args.timeout, f"{args.connections} open again")
            time.sleep(args.period)  # the first echo of every reconnected connection
            after = scrape(metrics_port)
            counters = {k: v - counters[k] for k, v in tcp_counters().items()}
            load = uptime()
        finally:
            tester.send_signal(signal.SIGINT)
            try:
                tester.wait(60)
            except subprocess.TimeoutExpired:
                tester.kill()
            for proc in (server, server2):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(120)
        states = session_states(work)
        killed = sum(path.read_text().count("killing it") for path in logs)
        late = killed_at_stop(logs[0].read_text())

    def delta(key: str, since: dict[str, float] = before) -> int:
        return int(after.get(key, 0) - since.get(key, 0))

    errors = {k[len("errors[") : -1]: delta(k) for k in after if k.startswith("errors[")}
    errors = {k: v for k, v in errors.items() if v}
    echoes, (p50, p99, worst) = latency(before, after)
    say(
        f"shutdown took {exited - stopped:.1f} s"
        f"{f' ({late} workers SIGKILLed during it)' if late else ''};"
        f" the new server ready {ready - exited:.1f} s later"
    )
    say(
        f"all {args.connections} open again {back - stopped:.1f} s after the SIGTERM,"
        f" {back - ready:.1f} s after the new server was ready"
    )
    say(
        f"tester, restart to one period after all were back: dropped"
        f" {delta('connections_dropped_total')} (the restart: {args.connections}),"
        f" established {delta('connections_established_total')}, failed"
        f" {delta('connections_failed_total')} ({delta('connections_failed_total', at_ready)}"
        f" once the new server was ready); errors by class {errors or 0}"
    )
    say(f"echoes in that window: {echoes}; latency p50 {p50}, p99 {p99}, max {worst}")
    say(f"kernel, during the storm (system-wide): {counters}")
    say(
        f"workers killed {killed} (target 0); sessions by end state {states}; crashed"
        f" {states.get('crashed', 0)} (target 0); load {load} at the end"
    )


if __name__ == "__main__":
    main()
