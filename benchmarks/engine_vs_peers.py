#!/usr/bin/env python3
"""tornado-echo's engines against stock Tornado and aiohttp, measured in one run.

Run by hand (not a test), after ``pip install -e '.[bench]'``:

    .venv/bin/python benchmarks/engine_vs_peers.py [--rounds 3] [--only echo32,handshakes,...]

Every server runs pinned to CPU 0 and every client to CPU 1. The servers take turns within
each round, so machine noise hits all of them; per-scenario medians over the rounds and
ratios against stock Tornado and aiohttp are printed, with the machine's description.

Scenarios (issue 9's targets):
  echo32, echo4k, echo64k   100 connections, closed loop, 32 B / 4 KiB / 64 KiB text
                            (bundled load tester): msgs/s, p50, p99, max
  echo32-go                 echo32's throughput driven by the compiled Go client instead
                            (needs golang-go and golang-github-gorilla-websocket-dev)
  echo32x1000               1000 connections x 32 B: msgs/s, p50, p99 (fairness)
  handshakes                connect, upgrade, close cycles per second (64 at a time)
  idle, idle-deflate        RSS per idle connection (5000 connections), compression off/on
  fragments                 1000 messages of 128 KiB text sent as 256-byte compressed
                            fragments: seconds to echo them all
  wss32, wss32-go           echo32, echo32-go over TLS terminated by each server (issue 19)
  tls-handshakes            handshakes with a full TLS handshake in each cycle
tornado-echo runs with its SQLite session records, as shipped. The TLS scenarios serve a
self-signed ECDSA P-256 certificate made with openssl for the run (every server the same
pair, TLS >= 1.2; the clients check nothing and resume no session). Each server keeps its
own defaults otherwise: the peers send OpenSSL's two TLS 1.3 session tickets per
handshake, tornado-echo none (tornado_echo/http/tls.py says why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import HERE, Server, build_go, make_certificate, run_loadtest, say

SERVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stock Tornado": ("tornado", ()),
    "aiohttp": ("aiohttp", ()),
    # The fastest Python (Cython) server and the Go original: the distance to the best.
    "picows": ("picows", ()),
    "Gorilla": ("go", ()),
    "tornado-echo (engine tornado)": ("tornado-echo", ("--engine", "tornado")),
    "tornado-echo (engine fast)": ("tornado-echo", ("--engine", "fast")),
    # The fast engine behind Tornado's HTTPServer (listener = "tornado"), as before the
    # asyncio listener; and the asyncio listener with the per-session access log on.
    "tornado-echo (fast; Tornado's listener)": (
        "tornado-echo",
        ("--engine", "fast", "--listener", "tornado"),
    ),
    "tornado-echo (fast; access_log on)": (
        "tornado-echo",
        ("--engine", "fast", "--access-log", "true"),
    ),
}
SERVER_CPU, CLIENT_CPU = 0, 1
IDLE_CONNECTIONS = 5000


def raw_client(*args: str, timeout: float = 600) -> dict[str, Any]:
    cmd = ["taskset", "-c", str(CLIENT_CPU), sys.executable, str(HERE / "_rawclient.py"), *args]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def port_of(server: Server) -> str:
    return server.url.split(":")[2].split("/")[0]


def echo(connections: int, size: int, seconds: float) -> Callable[[Server], dict[str, float]]:
    def measure(server: Server) -> dict[str, float]:
        args = [server.url, "-c", str(connections), "-d", str(seconds), "-s", str(size), "-w", "1"]
        if server.url.startswith("wss:"):
            args.append("--insecure")  # self-signed; checking it is client CPU anyway
        before = server.cpu_seconds()
        summary = run_loadtest(CLIENT_CPU, args)["summary"]
        spent = server.cpu_seconds() - before
        latency = summary["latency_ms"]
        received = summary["messages"]["received"]
        return {
            "msgs/s": summary["throughput"]["msgs_per_s"],
            # Less sensitive to other processes on the server's core than msgs/s; the
            # connections' handshakes and the warm-up second are in it too.
            "CPU us/msg": 1e6 * spent / received if received else float("nan"),
            "p50 ms": latency.get("p50", float("nan")),
            "p99 ms": latency.get("p99", float("nan")),
            "max ms": latency.get("max", float("nan")),
            "errors": summary["connections"]["failed"] + summary["messages"]["lost"],
        }

    return measure


_GO_CLIENT: list[Path] = []


def go_echo(connections: int, size: int, seconds: float) -> Callable[[Server], dict[str, float]]:
    """Throughput only, driven by the compiled Go/gorilla client (benchmarks/goclient), for
    when the Python load tester itself would be the ceiling."""

    def measure(server: Server) -> dict[str, float]:
        if not _GO_CLIENT:
            _GO_CLIENT.append(build_go("goclient", Path(tempfile.mkdtemp())))
        done = subprocess.run(
            [
                "taskset", "-c", str(CLIENT_CPU), str(_GO_CLIENT[0]),
                "-url", server.url, "-c", str(connections), "-d", f"{seconds}s",
                "-size", str(size),
                *(["-insecure"] if server.url.startswith("wss:") else []),
            ],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or "goclient failed")
        result = json.loads(done.stdout.splitlines()[-1])
        return {"msgs/s": result["msgs_per_s"], "errors": result["failed"] + result["mismatched"]}

    return measure


def handshakes(server: Server) -> dict[str, float]:
    # The server's CPU time per handshake as well: the machine is shared, and what other
    # processes take from the server's core lowers its rate, not its cost.
    before = server.cpu_seconds()
    tls = ("tls",) if server.url.startswith("wss:") else ()
    result = raw_client("handshakes", port_of(server), "5", "64", *tls)
    spent = server.cpu_seconds() - before
    done = result["handshakes_per_s"] * result["seconds"]
    return {
        "handshakes/s": result["handshakes_per_s"],
        "server CPU us/hs": 1e6 * spent / done if done else float("nan"),
        "errors": result["failed"],
    }


def idle(deflate: bool) -> Callable[[Server], dict[str, float]]:
    def measure(server: Server) -> dict[str, float]:
        return {"KB/conn": idle_rss(server, deflate) / 1024}

    return measure


def idle_rss(server: Server, deflate: bool) -> float:
    """Server RSS per idle connection, in bytes, over IDLE_CONNECTIONS connections."""
    time.sleep(0.5)
    before = server.rss_bytes()
    cmd = [
        "taskset", "-c", str(CLIENT_CPU), sys.executable, str(HERE / "_rawclient.py"),
        "idle", port_of(server), str(IDLE_CONNECTIONS), "1" if deflate else "0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    client = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert client.stdout is not None and client.stdin is not None
    if client.stdout.readline().strip() != "ready":
        raise RuntimeError("idle client failed")
    time.sleep(1.0)  # let the server settle (open() callbacks, records)
    per_connection = (server.rss_bytes() - before) / IDLE_CONNECTIONS
    client.stdin.close()
    client.wait(60)
    return per_connection


def fragments(server: Server) -> dict[str, float]:
    return {"seconds": raw_client("fragments", port_of(server), "1000")["seconds"]}


SCENARIOS: dict[str, tuple[str, Callable[[Server], dict[str, float]]]] = {
    "echo32": ("100 connections x 32 B, closed loop", echo(100, 32, 10)),
    "echo32-go": ("100 connections x 32 B, closed loop, compiled Go client", go_echo(100, 32, 10)),
    "echo4k": ("100 connections x 4 KiB, closed loop", echo(100, 4096, 10)),
    "echo64k": ("100 connections x 64 KiB, closed loop", echo(100, 65536, 10)),
    "echo32x1000": ("1000 connections x 32 B, closed loop", echo(1000, 32, 15)),
    "handshakes": ("connect, upgrade, close; 64 at a time, 5 s", handshakes),
    "idle": (f"RSS per idle connection ({IDLE_CONNECTIONS} connections)", idle(False)),
    "idle-deflate": (
        f"RSS per idle connection, permessage-deflate ({IDLE_CONNECTIONS} connections)",
        idle(True),
    ),
    "fragments": ("1000 x 128 KiB text in 256-byte deflate fragments", fragments),
    "wss32": ("wss://, 100 connections x 32 B, closed loop", echo(100, 32, 10)),
    "wss32-go": (
        "wss://, 100 connections x 32 B, closed loop, compiled Go client",
        go_echo(100, 32, 10),
    ),
    "tls-handshakes": ("wss://: TLS + upgrade + close; 64 at a time, 5 s", handshakes),
}
TLS_SCENARIOS = frozenset({"wss32", "wss32-go", "tls-handshakes"})


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated names")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also run tornado-echo (engine fast) with journal = full on this database",
    )
    args = parser.parse_args()
    if args.postgres:
        name = "tornado-echo (fast; journal full on PostgreSQL)"
        SERVERS[name] = (
            "tornado-echo",
            ("--engine", "fast", "--journal", "full", "--database-url", args.postgres),
        )
        args.servers += "," + name
    chosen = [name.strip() for name in args.only.split(",")]
    servers = [name.strip() for name in args.servers.split(",")]
    say(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at start")
    say(f"servers pinned to CPU {SERVER_CPU}, clients to CPU {CLIENT_CPU}; {args.rounds} rounds")
    for scenario in chosen:
        title, measure = SCENARIOS[scenario]
        say(f"\n== {scenario}: {title}")
        results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        with tempfile.TemporaryDirectory() as tmp:
            tls = make_certificate(Path(tmp)) if scenario in TLS_SCENARIOS else None
            for _ in range(args.rounds):
                for name in servers:
                    kind, extra = SERVERS[name]
                    try:
                        server = Server(kind, SERVER_CPU, Path(tmp), extra=extra, tls=tls)
                    except RuntimeError as exc:  # a server without TLS, say
                        say(f"  {name}: skipped: {exc}")
                        continue
                    try:
                        results[name].append(measure(server))
                    except RuntimeError as exc:  # a server that fails a scenario
                        say(f"  {name}: failed: {exc}")
                    finally:
                        server.close()
        report(results)
    say(f"\nload average {os.getloadavg()[0]:.2f} at the end (other processes share the machine)")


def report(results: dict[str, list[dict[str, float]]]) -> None:
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in results.items()
        if rounds
    }
    if not medians:
        return
    keys = list(next(iter(medians.values())))
    say(f"{'server (median of rounds)':<32}" + "".join(f"{key:>16}" for key in keys))
    for name, values in medians.items():
        say(f"{name:<32}" + "".join(f"{values[key]:>16.2f}" for key in keys))
    headline = keys[0]
    # Ratios of the rate, and of the server's CPU cost per operation as "how many times
    # cheaper" (the base's cost over ours), which other load on the machine moves less.
    cost = next((key for key in keys if key.endswith(("us/hs", "us/msg"))), None)
    for base in ("stock Tornado", "aiohttp"):
        if base not in medians or not medians[base][headline]:
            continue
        ratios = ", ".join(
            f"{name} {values[headline] / medians[base][headline]:.2f}x"
            for name, values in medians.items()
            if name != base
        )
        say(f"{headline} relative to {base}: {ratios}")
        if cost is not None:
            cheaper = ", ".join(
                f"{name} {medians[base][cost] / values[cost]:.2f}x"
                for name, values in medians.items()
                if name != base and values[cost]
            )
            say(f"CPU per operation, {base}'s over ours: {cheaper}")
    for name, rounds in results.items():
        if len(rounds) > 1:
            spread = ", ".join(f"{r[headline]:.1f}" for r in rounds)
            say(f"  rounds of {name}: {spread}")


if __name__ == "__main__":
    main()
