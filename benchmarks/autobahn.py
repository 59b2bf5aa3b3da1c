"""Autobahn TestSuite conformance of tornado-echo, per engine, with compression on.

Run by hand (not a benchmark of speed): ``.venv/bin/python benchmarks/autobahn.py``; the fast
engine runs on both listeners (``--listener``), engine tornado on Tornado's HTTPServer. Needs
``pip install kosoku`` (the Autobahn TestSuite's case files driven by a native runner). For
each engine a server is started on a free loopback port (pinned to CPU 0, SQLite session
records in a temporary directory, messages up to 16 MiB for the 9.x cases, the default 20 s
keepalive) and the suite runs against it in fuzzingclient mode, one case at a time. Printed
per engine: the counts per behaviour and close behaviour, every case that is not OK or
INFORMATIONAL, the slowest cases and the time per case group. The full suite (517 cases)
takes several minutes per engine; ``-i 1.* -i 6.*`` selects groups. For the HTML report of
one case, run ``kosoku -i CASE -o DIR ws://127.0.0.1:PORT/ws`` against a server started by
hand. Exit status 1 when a case fails on an engine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Server, say

try:
    from kosoku import FailureError, run_fuzzingclient
except ImportError:
    sys.exit("kosoku is not installed: .venv/bin/pip install kosoku")

ACCEPTED = ("OK", "INFORMATIONAL")  # the target: NON-STRICT passes Autobahn but not us


def group(case_id: str) -> str:
    return (
        ".".join(case_id.split(".")[:2])
        if case_id.startswith(("9.", "12.", "13."))
        else (case_id.split(".")[0])
    )


async def run_suite(url: str, args: argparse.Namespace) -> list[Any]:
    try:
        return list(
            await run_fuzzingclient(url, args.include, args.exclude, concurrency=args.parallelism)
        )
    except FailureError as failure:  # raised when a case fails; it carries every result
        return failure.results


def report(engine: str, results: list[Any], elapsed: float, slowest: int) -> bool:
    """Print one engine's results; whether every case passed Autobahn's own bar."""
    say(f"\n== engine {engine}: {len(results)} cases in {elapsed:.1f} s")
    behaviours = collections.Counter(r.behavior.value for r in results)
    closes = collections.Counter(r.behavior_close.value for r in results)
    say("behaviour: " + ", ".join(f"{k} {v}" for k, v in behaviours.most_common()))
    say("close:     " + ", ".join(f"{k} {v}" for k, v in closes.most_common()))
    for r in results:
        if r.behavior.value not in ACCEPTED or r.behavior_close.value not in ACCEPTED:
            say(
                f"  {r.case_id}: {r.behavior.value} / {r.behavior_close.value} in {r.duration} ms;"
                f" {r.result} {r.result_close} (server closed with {r.remote_close_code}"
                f" {r.remote_close_reason!r})"
            )
    say(f"slowest {slowest}:")
    for r in sorted(results, key=lambda r: -r.duration)[:slowest]:
        say(f"  {r.case_id}: {r.duration / 1000:.1f} s")
    per_group: dict[str, list[int]] = collections.defaultdict(list)
    for r in results:
        per_group[group(r.case_id)].append(r.duration)
    say("seconds per group: " + ", ".join(f"{g} {sum(d) / 1000:.1f}" for g, d in per_group.items()))
    return all(r.passed for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", action="append", choices=["fast", "tornado"], help="default: both"
    )
    parser.add_argument(
        "--listener",
        action="append",
        choices=["auto", "tornado"],
        help="what serves HTTP (auto: the asyncio listener for the fast engine); default: both",
    )
    parser.add_argument("-i", "--include", action="append", help="case id or glob (9.*)")
    parser.add_argument("-x", "--exclude", action="append", help="case id or glob to skip")
    parser.add_argument("-p", "--parallelism", type=int, default=1)
    parser.add_argument("--slowest", type=int, default=10)
    args = parser.parse_args()
    passed = True
    # Engine tornado always runs on Tornado's HTTPServer, so "auto" is the only listener there.
    runs = [
        (engine, listener)
        for engine in args.engine or ["fast", "tornado"]
        for listener in args.listener or ["auto", "tornado"]
        if engine == "fast" or listener == "auto"
    ]
    for engine, listener in runs:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(
                "tornado-echo",
                0,
                Path(tmp),
                extra=(
                    *("--engine", engine, "--listener", listener),
                    *("--max-message-size", str(16 << 20)),
                ),
            )
            try:
                started = time.monotonic()
                results = asyncio.run(run_suite(server.url, args))
                elapsed = time.monotonic() - started
            finally:
                server.close()
        name = f"{engine}, listener {listener}"
        passed = report(name, results, elapsed, args.slowest) and passed
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
