"""Echo throughput and latency: tornado-echo against a stock Tornado echo handler.

Run by hand (not a test): ``.venv/bin/python benchmarks/echo_vs_stock.py``. Each server runs
pinned to CPU 0, the bundled load tester (one worker) pinned to CPU 1: N connections in a
closed loop (one 32-byte text message, wait for its echo, repeat). The two servers alternate
for several rounds in the same run, so machine noise hits both; per-round and median ratios
are printed. tornado-echo runs with SQLite session records and the given journal mode.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import Server, run_loadtest, say


def one_round(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    try:
        result = run_loadtest(
            1,
            [
                server.url,
                "-c",
                str(args.connections),
                "-d",
                str(args.seconds),
                "-s",
                str(args.size),
                "-w",
                "1",
            ],
        )
    finally:
        server.close()
    summary: dict[str, Any] = result["summary"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--journal", default="off", choices=["off", "meta", "full"])
    args = parser.parse_args()
    say(
        f"{args.connections} connections, {args.size}-byte text, closed loop, {args.seconds} s"
        f" a round; servers on CPU 0, load tester on CPU 1"
    )
    say(f"{'round':<7}{'server':<26}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(1, args.rounds + 1):
            rates = []
            for name in ("stock Tornado handler", f"tornado-echo (journal {args.journal})"):
                kind = "tornado" if name.startswith("stock") else "tornado-echo"
                server = Server(kind, 0, Path(tmp), args.journal)
                summary = one_round(server, args)
                rate = summary["throughput"]["msgs_per_s"]
                latency = summary["latency_ms"]
                errors = summary["connections"]["failed"] + summary["messages"]["lost"]
                rates.append(rate)
                say(
                    f"{number:<7}{name:<26}{rate:>10.0f}{latency['p50']:>9.2f}"
                    f"{latency['p99']:>9.2f}{errors:>8}"
                )
            ratios.append(rates[1] / rates[0])
    say(
        "throughput ratio tornado-echo / stock per round: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
