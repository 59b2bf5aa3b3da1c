#!/usr/bin/env python3
"""Our load tester against a compiled (Go/gorilla) client, one core each side.

Both clients run pinned to CPU 0, one after the other, in a closed loop against the same
echo server pinned to CPU 1, and the script prints both echo rates and their ratio
(target: ours >= 0.9 x the compiled client's), and each client's CPU time per echo: the
Go client's rate is often capped by the server, so its CPU per echo is the steadier measure
of what one core of it drives. Run by hand, not a test:

    python benchmarks/loadtest_vs_compiled.py [--server tornado-echo|tornado|go] [-c 50] [-d 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

from _common import SERVER_KINDS, Server, build_go, run_loadtest, say


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=SERVER_KINDS, default="tornado-echo")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bindir = Path(tmp)
        goclient = build_go("goclient", bindir)
        server = Server(args.server, cpu=1, workdir=bindir)
        ours: list[float] = []
        theirs: list[float] = []
        verdicts: list[str] = []
        server_busy: dict[str, list[float]] = {"go": [], "py": []}
        # Client CPU (user + system) per echo: what one core's message rate comes down to,
        # and steadier between rounds than the rates, which other work on the host moves.
        cpu_per_echo: dict[str, list[float]] = {"go": [], "py": []}
        try:
            for round_no in range(args.rounds):
                order = ("go", "py") if round_no % 2 == 0 else ("py", "go")
                for who in order:
                    cpu_before = server.cpu_seconds()
                    client_before = _children_cpu_seconds()
                    if who == "go":
                        proc = subprocess.run(
                            [
                                "taskset",
                                "-c",
                                "0",
                                str(goclient),
                                "-url",
                                server.url,
                                "-c",
                                str(args.connections),
                                "-d",
                                f"{args.duration}s",
                                "-size",
                                str(args.size),
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                            env={"GOMAXPROCS": "1", "PATH": "/usr/bin:/bin"},
                        )
                        go_result = json.loads(proc.stdout)
                        theirs.append(go_result["msgs_per_s"])
                        cpu_per_echo["go"].append(
                            (_children_cpu_seconds() - client_before) / go_result["echoed"]
                        )
                        busy = (server.cpu_seconds() - cpu_before) / go_result["elapsed_s"]
                        server_busy["go"].append(busy)
                    else:
                        result = run_loadtest(
                            0,
                            [
                                server.url,
                                "-c",
                                str(args.connections),
                                "-d",
                                str(args.duration),
                                "-s",
                                str(args.size),
                                "-w",
                                "1",
                                "--loop",
                                args.loop,
                            ],
                        )
                        summary = result["summary"]
                        busy = (server.cpu_seconds() - cpu_before) / summary["elapsed_s"]
                        server_busy["py"].append(busy)
                        ours.append(summary["throughput"]["msgs_per_s"])
                        # Includes the interpreter's start and the imports (about 0.3 s).
                        cpu_per_echo["py"].append(
                            (_children_cpu_seconds() - client_before)
                            / summary["messages"]["received"]
                        )
                        sat = summary["saturation"]
                        verdicts.append(
                            "client-bound: " + "; ".join(sat["reasons"])
                            if sat["client_bound"]
                            else "not client-bound"
                        )
                        if summary["error_rate"]:
                            say(f"  warning: our run saw errors {summary['errors']}")
                say(
                    f"round {round_no + 1}: go {theirs[-1]:.0f} msgs/s "
                    f"(server CPU {server_busy['go'][-1]:.0%}), loadtest {ours[-1]:.0f} msgs/s "
                    f"(server CPU {server_busy['py'][-1]:.0%}; {verdicts[-1]})"
                )
        finally:
            server.close()
    go_rate = sum(theirs) / len(theirs)
    py_rate = sum(ours) / len(ours)
    # Other work on the machine moves both rates between rounds; the paired per-round
    # ratios show that spread, the ratio of the means is the headline figure.
    paired = sorted(p / g for p, g in zip(ours, theirs, strict=True))
    say(
        f"server: {args.server} on CPU 1; clients on CPU 0; {args.connections} connections, "
        f"{args.size}-byte text messages, closed loop, {args.duration:g} s x {args.rounds}"
    )
    say(f"compiled client (Go, gorilla/websocket): {go_rate:10.0f} msgs/s")
    say(f"tornado-echo-loadtest (1 worker):        {py_rate:10.0f} msgs/s")
    say(f"ratio loadtest / compiled:               {py_rate / go_rate:10.3f}  (target >= 0.9)")
    say(
        f"per-round ratios: {', '.join(f'{r:.3f}' for r in paired)} "
        f"(median {statistics.median(paired):.3f})"
    )
    go_cpu = statistics.median(cpu_per_echo["go"])
    py_cpu = statistics.median(cpu_per_echo["py"])
    say(
        f"client CPU per echo (median): Go {go_cpu * 1e6:.2f} us, ours {py_cpu * 1e6:.2f} us; "
        f"echoes per client CPU-second, ours / Go: {go_cpu / py_cpu:.3f}"
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
