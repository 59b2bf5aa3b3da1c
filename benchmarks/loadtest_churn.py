#!/usr/bin/env python3
"""Churn and reconnect: does the load tester open connections as fast as the server takes them?

The server runs pinned to CPU 1, the load tester (one worker) to CPU 0. ``churn``: every
connection sends ``--churn`` messages, closes, and another takes its place. ``reconnect``:
the server is started with ``--max-messages-per-second 1``, so it closes each connection
(1008) at its second message and the tester opens another in its place. For each, the script
prints the connections opened per second, the tester's CPU share and the server's: a result
that measures the server shows the server's core full and the tester's well below it. Run by
hand, not a test:

    python benchmarks/loadtest_churn.py [-c 200] [-d 10] [--mode churn|reconnect|both]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Server, run_loadtest, say


def measure(mode: str, connections: int, duration: float, churn: int) -> None:
    extra = ("--max-messages-per-second", "1") if mode == "reconnect" else ()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server("tornado-echo", cpu=1, workdir=Path(tmp), extra=extra)
        try:
            shape = ["--churn", str(churn)] if mode == "churn" else ["--reconnect"]
            args = [server.url, "-c", str(connections), "-d", str(duration), "-w", "1", *shape]
            before = server.cpu_seconds()
            result = run_loadtest(0, args)
            summary = result["summary"]
            server_busy = (server.cpu_seconds() - before) / summary["elapsed_s"]
        finally:
            server.close()
    worker = summary["saturation"]["workers"][0]
    c = summary["connections"]
    say(
        f"{mode:<9} {connections} slots: opened {c['established']} "
        f"({c['opened_per_s']:.0f}/s), failed {c['failed']}, dropped {c['dropped']}; "
        f"tester CPU {worker['cpu_fraction']:.0%}, server CPU {server_busy:.0%}; "
        + (
            "client-bound: " + "; ".join(summary["saturation"]["reasons"])
            if summary["saturation"]["client_bound"]
            else "not client-bound"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--connections", type=int, default=200)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--churn", type=int, default=1, help="messages per connection")
    parser.add_argument("--mode", choices=("churn", "reconnect", "both"), default="both")
    args = parser.parse_args()
    for mode in ("churn", "reconnect") if args.mode == "both" else (args.mode,):
        measure(mode, args.connections, args.duration, args.churn)


if __name__ == "__main__":
    main()
