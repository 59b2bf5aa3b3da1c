#!/usr/bin/env python3
"""How many connections one worker holds, and how fast 10k of them open.

1. Opens ``--open`` connections (default 10000) with one worker, keeps them open, and
   reports how long until the last one was open (target: under 10 s).
2. Holds ``--hold`` connections (default 19000, under the 20000 fd limit) in ONE worker
   process for ``--hold-seconds``, each sending an echo every few seconds, and reports
   peak open, failures, drops and lost echoes (target: all 19000 open, none dropped).

The server is a separate process pinned to CPU 1: tornado-echo by default (SQLite
session records), ``--server tornado`` for a stock Tornado handler, ``--server go`` for
Go/gorilla. Run by hand, not a test: python benchmarks/loadtest_connections.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import SERVER_KINDS, Server, run_loadtest, say

RAMP_ALLOWANCE = 15.0  # seconds added to --hold-seconds for the connections to open


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=SERVER_KINDS, default="tornado-echo")
    parser.add_argument("--open", type=int, default=10_000)
    parser.add_argument("--hold", type=int, default=19_000)
    parser.add_argument("--hold-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.2, help="echoes/s per held connection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.server, cpu=1, workdir=Path(tmp))
        try:
            # Both phases keep every connection open to the end, echoing now and then; the
            # duration includes the ramp-up, so the connections get time to open first.
            opened, held = (
                run_loadtest(
                    0,
                    [
                        server.url,
                        "-c",
                        str(count),
                        "-w",
                        "1",
                        "-d",
                        str(RAMP_ALLOWANCE + seconds),
                        "--mode",
                        "open",
                        "--rate",
                        str(args.rate),
                        "--timeout",
                        "10",
                    ],
                )["summary"]
                for count, seconds in ((args.open, 0), (args.hold, args.hold_seconds))
            )
        finally:
            server.close()
    c = opened["connections"]
    say(f"server: {args.server} on CPU 1, tester: 1 worker on CPU 0")
    say(
        f"open {args.open}: established {c['established']}, peak open {c['peak_open']}, "
        f"failed {c['failed']}, "
        f"last opened after {c['last_opened_after_s']:.2f} s (target < 10 s), "
        f"handshake p50 {opened['handshake_ms'].get('p50', 0):.1f} ms "
        f"p99 {opened['handshake_ms'].get('p99', 0):.1f} ms"
    )
    c = held["connections"]
    m = held["messages"]
    say(
        f"hold {args.hold} in one worker for {args.hold_seconds:g} s: peak open {c['peak_open']}, "
        f"established {c['established']} (last after {c['last_opened_after_s']:.1f} s), "
        f"failed {c['failed']}, dropped {c['dropped']}; "
        f"echoes {m['received']} ok, lost {m['lost']}, mismatched {m['mismatches']}; "
        f"client-bound: {held['saturation']['client_bound']} {held['saturation']['reasons']}"
    )


if __name__ == "__main__":
    main()
