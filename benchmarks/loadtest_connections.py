#!/usr/bin/env python3
"""How many connections one worker holds, and how fast 10k of them open.

1. Opens ``--open`` connections (default 10000) with one worker and reports how long
   until the last one was open (target: under 10 s).
2. Holds ``--hold`` connections (default 19000, under the 20000 fd limit) in ONE worker
   process for ``--hold-seconds``, each sending an echo every few seconds, and reports
   peak open, failures, drops and lost echoes (target: all 19000 open, none dropped).

The server is a separate process (Go/gorilla by default, ``--server tornado`` for the
Tornado one). Run by hand, not a test: python benchmarks/loadtest_connections.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Server, run_loadtest, say

RAMP_ALLOWANCE = 15.0  # seconds added to --hold-seconds for the connections to open


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=("tornado", "go"), default="go")
    parser.add_argument("--open", type=int, default=10_000)
    parser.add_argument("--hold", type=int, default=19_000)
    parser.add_argument("--hold-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.2, help="echoes/s per held connection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.server, cpu=1, bindir=Path(tmp))
        try:
            opened = run_loadtest(
                0, [server.url, "-c", str(args.open), "-w", "1", "-d", "15", "-n", "1"]
            )["summary"]
            # The duration includes the ramp-up, so give the connections time to open first.
            held = run_loadtest(
                0,
                [
                    server.url,
                    "-c",
                    str(args.hold),
                    "-w",
                    "1",
                    "-d",
                    str(RAMP_ALLOWANCE + args.hold_seconds),
                    "--mode",
                    "open",
                    "--rate",
                    str(args.rate),
                    "--timeout",
                    "10",
                ],
            )["summary"]
        finally:
            server.close()
    c = opened["connections"]
    say(f"server: {args.server} on CPU 1, tester: 1 worker on CPU 0")
    say(
        f"open {args.open}: established {c['established']}, failed {c['failed']}, "
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
