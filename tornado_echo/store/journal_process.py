"""The journal writer process: journal rows from one server process, written in batches.

The server (see handoff.py) starts one per serving process and talks to it over a socketpair:

* server -> writer: frames of ``FRAME`` (payload length, chunk id, rows) then the payload,
  rows in binary COPY format (copyrows.py); chunk ids grow by one from 1.
* writer -> server: ``REPORT`` then its error text: the id of the last chunk whose rows are
  committed (all before it are too), whether the database answers, and the failed database
  operations so far; after every commit and between the retries of an outage, so the
  server's ``/readyz`` and metrics see this process's database as they see their own. The
  server keeps every chunk until it is acknowledged, so what a writer killed at any moment
  had not committed is sent again to its successor; rows are keyed on (session id, seq) in
  the database, so what it had committed lands once.

Batches are cut by size (``--batch-bytes``) and time (``--batch-delay``). While the database
is away the writer retries with backoff and stops reading, so the socket fills and the server
spills to its spool (the backpressure). When the server goes (EOF) the writer writes what it
holds, trying for ``--drain`` seconds; what it still cannot write then goes to a spool file of
its own beside the server's (:func:`writer_spool_path`), which the server's next start replays,
so a kill -9 of the server during an outage loses nothing the writer had received.

Run as ``python -m tornado_echo.store.journal_process --fd N --database-url URL ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

from tornado_echo.errors import StoreError
from tornado_echo.store.base import Backend
from tornado_echo.store.copyrows import FRAME, REPORT, REPORT_ERROR_MAX, decode_rows
from tornado_echo.store.spool import Spool, writer_spool_path
from tornado_echo.store.writer import BatchWriter, Outcome

logger = logging.getLogger(__name__)

READ_SIZE = 4 << 20
GATHER = 0.005


class JournalWriter:
    """The writer's loop over one socket; plain enough to run on a thread in a test."""

    def __init__(
        self,
        sock: socket.socket,
        backend: Backend,
        batch_bytes: int,
        batch_delay: float,
        pending_limit: int,
        drain: float,
        spool_path: Path | None,
    ) -> None:
        self.sock = sock
        self.batch_bytes = batch_bytes
        self.batch_delay = batch_delay
        self.pending_limit = pending_limit
        self.drain = drain
        self.spool_path = spool_path
        self.writer = BatchWriter(backend, threading.Event())
        self._received = bytearray()  # bytes read, not yet whole frames
        self._rows = bytearray()  # rows of whole chunks, not yet committed
        self._count = 0
        self._last_id = 0
        self._committed = 0  # the last chunk id committed (or spooled)
        self._first_at = 0.0
        self._eof = False  # the socket said so: everything sent is read
        # The server is known to be gone (its pid, a failed report): the socket is read to
        # its end (what the server had sent survives it) and written without delay.
        self._orphaned = False
        self._parent = os.getppid()

    def run(self) -> None:
        while not (self._eof and not self._rows):
            room = not self._eof and len(self._rows) < self.pending_limit
            if room:
                timeout = (
                    0.0  # the server is gone: what it sent before is all there is
                    if self._orphaned
                    else None
                    if not self._rows
                    else max(0.0, self._first_at + self.batch_delay - time.monotonic())
                )
                readable, _, _ = select.select([self.sock], [], [], timeout)
                if readable:
                    self._read()
                    if not self._orphaned:
                        # Let chunks gather: woken once per interval, not once per turn of
                        # the server's loop (thousands a second, each a switch on its core).
                        time.sleep(GATHER)
                elif self._orphaned:
                    self._eof = True
            if self._rows and (
                not room
                or self._eof
                or self._orphaned
                or len(self._rows) >= self.batch_bytes
                or time.monotonic() - self._first_at >= self.batch_delay
            ):
                self._commit()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self._orphan()
            if self._received:
                logger.error(
                    "journal writer: %d bytes of a torn frame ignored", len(self._received)
                )
            return
        self._received += data
        view = memoryview(self._received)
        offset = 0
        while len(view) - offset >= FRAME.size:
            length, chunk, rows = FRAME.unpack_from(view, offset)
            if len(view) - offset - FRAME.size < length:
                break
            start = offset + FRAME.size
            if not self._rows:
                self._first_at = time.monotonic()
            self._rows += view[start : start + length]
            self._count += rows
            self._last_id = chunk
            offset = start + length
        view.release()
        del self._received[:offset]

    def _server_gone(self) -> bool:
        """Checked between retries, when the socket is not read: a server that died (its
        child is handed to another parent) starts the drain deadline. Never abandons."""
        if not self._orphaned and os.getppid() != self._parent:
            self._orphan()
        self._report()  # the outage, for the server's /readyz
        return False

    def _report(self) -> None:
        if self._eof or self._orphaned:
            return
        writer = self.writer
        error = (writer.error or "").encode("utf-8", "replace")[:REPORT_ERROR_MAX]
        report = REPORT.pack(self._committed, writer.available, writer.errors, len(error))
        try:
            self.sock.sendall(report + error)
        except OSError:  # the server is gone: what it sent is still to be read and written
            self._orphan()

    def _orphan(self) -> None:
        self._orphaned = True
        self.writer.drain_until = min(self.writer.drain_until, time.monotonic() + self.drain)

    def _commit(self) -> None:
        rows = bytes(self._rows)
        outcome = self.writer.write_rows(rows, self._count, self._server_gone)
        if outcome is not Outcome.DONE:  # the server is gone and so is the database
            self._spool(rows)
        self._rows.clear()
        self._count = 0
        self._committed = self._last_id
        self._report()

    def _spool(self, rows: bytes) -> None:
        records = list(decode_rows(rows))
        if self.spool_path is None:
            logger.critical("journal writer: %d rows LOST (no spool)", len(records))
            return
        spool = Spool(writer_spool_path(self.spool_path, os.getpid()))
        try:
            spool.open()
            error = spool.append(records)
            spool.close()
        except StoreError as exc:
            error = OSError(0, str(exc))
        if error is not None:
            logger.critical(
                "journal writer: %d rows LOST: cannot spool them: %s", len(records), error
            )
        else:
            logger.warning("journal writer: %d rows spooled to %s", len(records), spool.path)


def leave_server_cpus() -> None:
    """Run on the CPUs the server is not pinned to, if it is pinned to some (the affinity is
    inherited): the writer's work is what must stay off the core the event loop needs."""
    server = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - server
    if others:
        os.sched_setaffinity(0, others)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tornado_echo.store.journal_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--batch-bytes", type=int, default=1 << 20)
    parser.add_argument("--batch-delay", type=float, default=0.05)
    parser.add_argument("--pending-limit", type=int, default=8 << 20)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--spool")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s journal-writer[%(process)d] %(levelname)s %(message)s",
    )
    # The server's SIGTERM/SIGINT is for the server: this process ends when its socket does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    leave_server_cpus()
    from tornado_echo.store import make_backend

    backend = make_backend(args.database_url)
    sock = socket.socket(fileno=args.fd)
    try:
        JournalWriter(
            sock,
            backend,
            args.batch_bytes,
            args.batch_delay,
            args.pending_limit,
            args.drain,
            Path(args.spool) if args.spool else None,
        ).run()
    finally:
        backend.close()
        sock.close()
    os._exit(0)


if __name__ == "__main__":
    main()
