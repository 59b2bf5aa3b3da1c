"""Retention of a day on a large journal, PostgreSQL: DELETE on the unpartitioned table
against dropping a day partition, then the migration and the API's pages on the result.

One database, one build of ``--rows`` + a day's worth (generate_series, inside PostgreSQL)
in the old layout (schema versions 1 and 2: ws_messages unpartitioned), over ``--days`` + 1
days, then:

1. the oldest day deleted by row (one DELETE, the cheapest row deletion there is; the server's
   retention does the same in batches of 5,000), VACUUM, and the sizes and dead rows left;
2. the start's migration to the partitioned journal (schema version 3), timed;
3. the journal pages of benchmarks/journal_pages.py on the partitioned ``--rows``;
4. the oldest day dropped by the server's own retention (prune(): DROP of its partition),
   and the sizes left.

The database is dropped at the end. Run by hand, under the shared lock:

    flock /tmp/tornado-echo-bench.lock python benchmarks/journal_retention.py [--rows 10000000]
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
from benchmarks.journal_pages import fill, make_days, time_pages  # noqa: E402

SIZES = (
    "SELECT pg_size_pretty(sum(pg_table_size(c.oid))) AS heap,"
    " pg_size_pretty(sum(pg_indexes_size(c.oid))) AS indexes,"
    " (SELECT count(*) FROM ws_messages) AS live, sum(coalesce(s.n_dead_tup, 0)) AS dead"
    " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
    " WHERE c.relname LIKE 'ws\\_messages%%' AND c.relkind = 'r'"
)


def sizes(conn: Any, label: str) -> None:
    with conn.cursor() as cur:  # the counts of the transactions just ended, not cached ones
        cur.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(SIZES)
        heap, indexes, live, dead = cur.fetchone()
    conn.commit()
    say(f"  {label}: heap {heap}, indexes {indexes}, live rows {live:,}, dead rows {dead:,}")


def old_layout(conn: Any) -> None:
    from tornado_echo.store.base import load_migrations

    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for migration in load_migrations("postgres")[:2]:
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    conn.commit()


def oldest_day_end(conn: Any) -> float:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM date_trunc('day', min(received_at) AT TIME ZONE 'UTC')"
            " AT TIME ZONE 'UTC' + interval '1 day') FROM ws_messages"
        )
        (end,) = cur.fetchone()
    conn.commit()
    return float(end)


def execute(conn: Any, sql: str, *args: Any) -> tuple[float, int]:
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(sql, args)
        count = cur.rowcount
    conn.commit()
    return time.perf_counter() - started, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    import psycopg2

    from tornado_echo.store.postgres import PostgresBackend
    from tornado_echo.store.retention import prune

    say(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs; load: {os.getloadavg()}")
    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    name = "tornado_echo_retention_" + uuid.uuid4().hex[:8]
    admin.cursor().execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(args.pg)._replace(path="/" + name))
    backend = PostgresBackend(url)
    try:
        backend.connect()
        conn = backend._conn
        old_layout(conn)
        rows = args.rows + args.rows // args.days
        started = time.monotonic()
        fill(conn, rows, args.days + 1)
        say(
            f"{rows:,} journal rows over {args.days + 1} days made in"
            f" {time.monotonic() - started:.0f} s (unpartitioned)"
        )
        sizes(conn, "unpartitioned")

        cut = oldest_day_end(conn)
        took, deleted = execute(
            conn, "DELETE FROM ws_messages WHERE received_at < to_timestamp(%s)", cut
        )
        say(f"\n1. DELETE of the oldest day: {deleted:,} rows in {took:.1f} s")
        sizes(conn, "after DELETE")
        conn.autocommit = True
        took, _ = execute(conn, "VACUUM ws_messages")
        conn.autocommit = False
        say(f"  VACUUM: {took:.1f} s")
        sizes(conn, "after VACUUM (the space is reused, not given back)")

        started = time.monotonic()
        applied = backend.migrate(unbounded=True)  # what `tornado-echo migrate` does
        say(
            f"\n2. migration {applied} (to the partitioned journal):"
            f" {time.monotonic() - started:.1f} s"
        )
        make_days(backend, args.days + 1)
        execute(conn, "ANALYZE ws_messages")
        sizes(conn, "partitioned")

        say("\n3. pages on the partitioned journal")
        time_pages(backend, rows)

        cut = oldest_day_end(conn)
        started = time.monotonic()
        pruned = prune(backend, cut)
        say(
            f"\n4. prune() of the oldest day: {pruned.partitions} partitions dropped,"
            f" {pruned.messages} rows deleted, {pruned.sessions} sessions,"
            f" in {time.monotonic() - started:.2f} s"
        )
        sizes(conn, "after the drop")
        say(f"\nload after: {os.getloadavg()}")
    finally:
        backend.close()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
