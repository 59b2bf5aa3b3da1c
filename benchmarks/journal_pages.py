"""The operator API's journal pages on a large journal: 10M rows in ws_messages on PostgreSQL
(one session of 1M messages, 9,000 of 1,000), then the backend's own queries for the first
and a deep page of a session's journal and the first page of sessions, timed (best of 5) with
their query plans (auto_explain, as notices). Run by hand, under the shared lock:

    flock /tmp/tornado-echo-bench.lock python benchmarks/journal_pages.py [--rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import say  # noqa: E402

BIG = "00000000-0000-4000-8000-000000000000"


def fill(conn: Any, rows: int, days: int = 1) -> None:
    """One session of rows/10 messages, the rest in sessions of 1,000, 32-byte payloads;
    received over the last ``days`` days (the big session's in seq order), so that on the
    partitioned journal they spread over that many day partitions."""
    big = rows // 10
    small = (rows - big) // 1000
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ws_sessions (id, server_id, opened_at, closed_at, peer, path,"
            " end_state) SELECT CASE WHEN n = 0 THEN %s::uuid ELSE"
            " ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid END, 'bench:0:0',"
            # Opened before their first message, closed after their last (as served).
            " now() - CASE WHEN n = 0 THEN %s - 1 ELSE n %% %s END * interval '1 day'"
            " - interval '1 hour', now(), '127.0.0.1', '/ws', 'closed'"
            " FROM generate_series(0, %s) AS n",
            (BIG, days, days, small),
        )
        cur.execute(
            "INSERT INTO ws_messages (session_id, seq, received_at, opcode, size, payload)"
            " SELECT %s::uuid, s, now() - (%s - s) * (%s * interval '1 day' / %s), 2, 32,"
            " decode(repeat('ab', 32), 'hex') FROM generate_series(1, %s) AS s",
            (BIG, big, days - 1, big, big),
        )
        cur.execute(
            "INSERT INTO ws_messages (session_id, seq, received_at, opcode, size, payload)"
            " SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, s,"
            " now() - (n %% %s) * interval '1 day' - s * interval '1 millisecond', 2,"
            " 32, decode(repeat('ab', 32), 'hex')"
            " FROM generate_series(1, %s) AS n, generate_series(1, 1000) AS s",
            (days, small),
        )
        cur.execute("ANALYZE ws_sessions")
        cur.execute("ANALYZE ws_messages")
    conn.commit()


def make_days(backend: Any, days: int) -> None:
    """The day partitions a server running over the last ``days`` days would have made."""
    for back in range(days + 1):
        backend.make_partitions(time.time() - back * 86400)


def timed(name: str, backend: Any, query: Any) -> None:
    conn = backend._conn  # a benchmark may reach in: the backend's own connection
    best = float("inf")
    for _ in range(5):
        del conn.notices[:]
        started = time.perf_counter()
        answer = query()
        best = min(best, time.perf_counter() - started)
        plans = list(conn.notices)
    rows = answer["journal"] if isinstance(answer, dict) else answer
    seqs = f", seq {rows[0]['seq']}..{rows[-1]['seq']}" if isinstance(answer, dict) else ""
    say(
        f"\n{name}: best of 5 {best * 1000:.1f} ms ({len(rows)} rows{seqs}); plans of the last run:"
    )
    for plan in plans:
        say("    " + plan.strip().replace("\n", "\n    "))


def time_pages(backend: Any, rows: int) -> None:
    """The API's journal and session pages, timed, with their plans (auto_explain)."""
    with backend._conn.cursor() as cur:
        cur.execute("LOAD 'auto_explain'")
        cur.execute("SET auto_explain.log_min_duration = 0")
        cur.execute("SET auto_explain.log_analyze = on")
        cur.execute("SET auto_explain.log_buffers = on")
        cur.execute("SET auto_explain.log_level = 'notice'")
    backend._conn.commit()
    big = rows // 10
    timed("first journal page (1000 rows)", backend, lambda: backend.get_session(BIG, 1000))
    timed(
        f"deep journal page (after seq {big - 1000:,})",
        backend,
        lambda: backend.get_session(BIG, 1000, big - 1000),
    )
    timed("first page of sessions (100)", backend, lambda: backend.list_sessions(100, None))
    timed(
        "sessions since two days ago (100)",
        backend,
        lambda: backend.list_sessions(100, time.time() - 2 * 86400),
    )
    with backend._conn.cursor() as cur:
        cur.execute("SET auto_explain.log_min_duration = -1")
    backend._conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10, help="spread over this many days")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    import psycopg2

    from tornado_echo.store.postgres import PostgresBackend

    say(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs; load: {os.getloadavg()}")
    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    name = "tornado_echo_pages_" + uuid.uuid4().hex[:8]
    admin.cursor().execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(args.pg)._replace(path="/" + name))
    backend = PostgresBackend(url)
    try:
        backend.connect()
        backend.migrate()
        make_days(backend, args.days)
        started = time.monotonic()
        fill(backend._conn, args.rows, args.days)
        say(f"{args.rows:,} journal rows made in {time.monotonic() - started:.0f} s")
        time_pages(backend, args.rows)
        say(f"\nload after: {os.getloadavg()}")
    finally:
        backend.close()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
