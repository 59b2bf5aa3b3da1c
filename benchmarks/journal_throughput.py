"""What the message journal costs, as a user runs it: one tornado-echo process pinned to CPU 0
with journal off, meta and full on PostgreSQL (and SQLite), the compiled Go client (100
connections x 32 B, closed loop) pinned to CPU 1, ratios to "journal off" of the same round.
Then exactly-once checks: after each run the server is stopped with SIGTERM and the rows in
ws_messages are compared with what the client was echoed (count, and no (session, seq) twice,
no gap in any session's sequence). Run by hand, not a test; wrap it in the shared lock:

    flock /tmp/tornado-echo-bench.lock python benchmarks/journal_throughput.py \
        [--seconds 8] [--rounds 2] [--sqlite] [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import _wait_listening as wait_listening  # noqa: E402
from benchmarks._common import build_go, say  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid`` (the writer is started from a thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cpu_of(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the server and of its children (the journal writer)."""
    kids = 0.0
    for child in children(pid):
        try:
            kids += cpu_seconds(child)
        except OSError:
            pass
    return cpu_seconds(pid), kids


def wait_writer_idle(pid: int, timeout: float = 20.0) -> None:
    """Until the journal writer process is up and idle (its CPU time still for 0.3 s): its
    start (imports, connecting, ~0.16 CPU-s) is not the journal's cost per message, and on a
    loaded machine it outlasted the fixed half second this waited before."""
    deadline = time.monotonic() + timeout
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        kids = children(pid)
        spent = cpu_of(pid)[1] if kids else -1.0
        if spent != last:
            last, still_since = spent, time.monotonic()
        elif kids and time.monotonic() - still_since >= 0.3:
            return
        time.sleep(0.05)
    say("  (the journal writer did not settle: its start may be counted)")


def journal_check(database_url: str) -> dict[str, int]:
    """Rows, distinct (session, seq), and sessions whose seqs are not exactly 1..n."""
    sql = (
        "SELECT count(*), count(DISTINCT (session_id, seq)),"
        " (SELECT count(*) FROM (SELECT session_id FROM ws_messages GROUP BY session_id"
        "  HAVING min(seq) <> 1 OR max(seq) <> count(*)) AS gaps) FROM ws_messages"
    )
    if database_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(database_url[len("sqlite:///") :])
        sqlite_sql = sql.replace(
            "count(DISTINCT (session_id, seq))",
            "(SELECT count(*) FROM (SELECT DISTINCT session_id, seq FROM ws_messages))",
        )
        rows, distinct, gaps = conn.execute(sqlite_sql).fetchone()
        conn.close()
    else:
        import psycopg2

        conn = psycopg2.connect(database_url)
        with conn.cursor() as cur:
            cur.execute(sql)
            rows, distinct, gaps = cur.fetchone()
        conn.close()
    return {"rows": rows, "distinct": distinct, "gaps": gaps}


def run(
    label: str,
    database_url: str,
    journal: str,
    writer: str,
    client: Path,
    work: Path,
    args: Any,
    kill_writer: int = 0,
    kill_server: bool = False,
) -> dict[str, Any]:
    """One server, one client run; ``kill_writer`` times SIGKILL to the journal writer
    process during it, or (``kill_server``) SIGKILL to the server halfway and a restart."""
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    command = [
        *("taskset", "-c", "0", sys.executable, "-m", "tornado_echo"),
        *("--port", str(port), "--log-level", "error", "--state-dir", str(state)),
        *("--database-url", database_url, "--journal", journal),
        *("--journal-writer", writer),
        *("--max-connections", "19500"),
        # The default payload budget (1 MiB/s per process) would journal most rows of a
        # full run at these rates without their payload: full would measure meta.
        *("--journal-max-bytes-per-second", "0"),
    ]
    server = subprocess.Popen(command, cwd=state)
    kills = 0

    def killer() -> None:
        nonlocal kills
        for _ in range(kill_writer):
            time.sleep(args.seconds / (kill_writer + 1))
            deadline = time.monotonic() + 3  # the server starts at most one writer a second
            while not children(server.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            for child in children(server.pid):
                os.kill(child, signal.SIGKILL)
                kills += 1
        if kill_server:
            time.sleep(args.seconds / 2)
            server.kill()

    try:
        wait_listening(port)
        if journal != "off" and writer == "process":
            wait_writer_idle(server.pid)
        server_before, writer_before = cpu_of(server.pid)
        chaos = threading.Thread(target=killer)
        chaos.start()
        load = subprocess.run(
            [
                *("taskset", "-c", "1", str(client), "-url", f"ws://127.0.0.1:{port}/ws"),
                *("-c", str(args.connections), "-size", "32", "-d", f"{args.seconds}s"),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, GOMAXPROCS="1"),
        )
        chaos.join()
        result: dict[str, Any] = json.loads(load.stdout)
        if not kill_server:
            server_after, writer_after = cpu_of(server.pid)
            result["server_cpu"] = server_after - server_before
            result["writer_cpu"] = writer_after - writer_before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    if kill_server:  # the next start replays its spool and marks its sessions crashed
        time.sleep(2)  # the orphaned writer process finishes what it received
        server = subprocess.Popen(command, cwd=state)
        wait_listening(port)
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    result["label"] = label
    result["kills"] = kills
    if "server_cpu" in result:
        say(
            f"  {label}: {result['msgs_per_s']:,.0f} msgs/s (echoed {result['echoed']:,});"
            f" server CPU {result['server_cpu']:.2f} s, writer process CPU"
            f" {result['writer_cpu']:.2f} s"
        )
    return result


def crash_checks(client: Path, work: Path, database: Any, args: Any) -> None:
    """Journal full through the writer process: 10 SIGKILLs of the writer in one run, then
    one SIGKILL of the server (and a restart): duplicates and gaps must be 0."""
    for label, kwargs in (
        ("writer killed 10 times", {"kill_writer": 10}),
        ("server killed once", {"kill_server": True}),
    ):
        url = database("PostgreSQL")
        result = run(label, url, "full", "process", client, work, args, **kwargs)
        check = journal_check(url)
        say(
            f"{label}: echoed {result['echoed']:,}, journalled {check['rows']:,},"
            f" duplicates {check['rows'] - check['distinct']}, sessions with gaps"
            f" {check['gaps']} (writer kills done: {result['kills']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sqlite", action="store_true", help="SQLite too")
    parser.add_argument(
        "--writers", default="thread,process", help="journal_writer values to compare"
    )
    parser.add_argument("--crash", action="store_true", help="the kill -9 checks too")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    import psycopg2

    work = Path(tempfile.mkdtemp(prefix="tornado-echo-journal-"))
    client = build_go("goclient", work)
    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    made: list[str] = []

    def database(name: str) -> str:
        if name == "SQLite":
            return f"sqlite:///{work}/{uuid.uuid4().hex[:8]}.db"
        db = "tornado_echo_bench_" + uuid.uuid4().hex[:8]
        admin.cursor().execute(f"CREATE DATABASE {db}")
        made.append(db)
        return urlunsplit(urlsplit(args.pg)._replace(path="/" + db))

    say(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs; load: {os.getloadavg()}")
    say(f"{args.connections} connections x 32 B, closed loop, {args.seconds:g} s per run")
    kinds = ["PostgreSQL", *(["SQLite"] if args.sqlite else [])]
    try:
        for number in range(args.rounds):
            say(f"round {number + 1} of {args.rounds}")
            for kind in kinds:
                modes = [("off", "thread")] + [
                    (journal, writer)
                    for writer in args.writers.split(",")
                    for journal in ("meta", "full")
                ]
                results = {}
                for journal, writer in modes:
                    url = database(kind)
                    name = f"{journal} ({writer})" if journal != "off" else journal
                    result = run(f"{kind} {name}", url, journal, writer, client, work, args)
                    if journal != "off":
                        result["check"] = journal_check(url)
                    results[name] = result
                off = results["off"]["msgs_per_s"]
                off_per_cpu = results["off"]["echoed"] / results["off"]["server_cpu"]
                for journal, result in results.items():
                    check = result.get("check")
                    verdict = ""
                    if check is not None:
                        # Each echo the client counted was journalled first; the server may
                        # have journalled a few more (received, echo not yet read at the stop).
                        ok = (
                            check["rows"] == check["distinct"]
                            and check["gaps"] == 0
                            and check["rows"] >= result["echoed"]
                        )
                        verdict = (
                            f"  journalled {check['rows']:,} (>= echoed {result['echoed']:,}),"
                            f" duplicates {check['rows'] - check['distinct']},"
                            f" sessions with gaps {check['gaps']}: {'OK' if ok else 'FAIL'}"
                        )
                    per_cpu = result["echoed"] / result["server_cpu"]
                    say(
                        f"{kind:10} journal {journal:14} {result['msgs_per_s']:>10,.0f} msgs/s"
                        f" {result['msgs_per_s'] / off:6.3f}x; per server CPU-s {per_cpu:>9,.0f}"
                        f" {per_cpu / off_per_cpu:6.3f}x; writer process"
                        f" {result['writer_cpu'] / max(result['server_cpu'], 1e-9):5.2f} CPU-s per"
                        f" server CPU-s; CPU us per echo: server"
                        f" {result['server_cpu'] / result['echoed'] * 1e6:5.2f}, writer"
                        f" {result['writer_cpu'] / result['echoed'] * 1e6:5.2f}{verdict}"
                    )
        if args.crash:
            crash_checks(client, work, database, args)
        say(f"load after: {os.getloadavg()}")
    finally:
        for db in made:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
