"""What one journal row costs SQLite's journal writer process: ``SQLiteBackend.write_journal``
over binary COPY rows as the handoff sends them (100 sessions, batches of ``--batch`` rows,
a fresh database), in CPU microseconds a row. For an A/B independent of the machine's load,
count instructions instead: run it under callgrind with ``--encode-only`` and without, and
divide the difference by the rows:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/journal_rows_cost.py --rows 30000 [--encode-only] [--full]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import say  # noqa: E402
from tornado_echo.store.copyrows import encode_row  # noqa: E402
from tornado_echo.store.sqlite import SQLiteBackend  # noqa: E402

SESSIONS = 100
AT = 1_796_310_161.0


def batches(rows: int, batch: int, full: bool) -> list[bytes]:
    sessions = [str(uuid.UUID(int=k * 7919 + 12345)) for k in range(SESSIONS)]
    made = []
    for start in range(0, rows, batch):
        out = bytearray()
        for n in range(start, min(rows, start + batch)):
            payload = b"x" * 32 if full else None
            encode_row(out, sessions[n % SESSIONS], n // SESSIONS + 1, AT + n * 1e-5, 2, 32,
                       payload, 65536)  # fmt: skip
        made.append(bytes(out))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--batch", type=int, default=1500)
    parser.add_argument("--full", action="store_true", help="32 B payloads (else metadata)")
    parser.add_argument("--encode-only", action="store_true", help="the baseline: see above")
    args = parser.parse_args()
    work = batches(args.rows, args.batch, args.full)
    with tempfile.TemporaryDirectory() as tmp:
        backend = SQLiteBackend(Path(tmp) / "journal.db")
        backend.migrate()
        if not args.encode_only:
            started = time.process_time()
            for rows in work:
                backend.write_journal(rows)
            spent = time.process_time() - started
            say(
                f"{'full' if args.full else 'meta'}: {spent / args.rows * 1e6:.2f} CPU us a row"
                f" ({args.rows:,} rows in batches of {args.batch:,})"
            )
        backend.close()


if __name__ == "__main__":
    main()
