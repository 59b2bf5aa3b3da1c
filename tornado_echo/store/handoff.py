"""The IOLoop's side of the journal writer process (journal_process.py).

:meth:`JournalHandoff.add` appends one row in binary COPY format to a buffer (a few
``bytearray`` appends, no lock, no record object); once per turn of the loop the buffer becomes
a chunk, framed and sent on a non-blocking socketpair to the writer process. Every chunk is
kept until the writer acknowledges its commit, so:

* the writer killed (kill -9, a crash): the socket's EOF tells the loop at once; a new writer
  is started (off the loop) and every chunk not acknowledged is sent to it again. Rows the
  dead one had committed are refused by the database's key (session id, seq), and merged.
* the writer slow or the database away: no more than half of ``bytes_limit`` is in flight
  (sent, not acknowledged), so chunks wait here. Past ``bytes_limit`` in all, or once an echo
  has waited ``HOLD_LIMIT`` for its rows (below), the chunks not yet sent are decoded and
  handed to ``overflow`` (the store's memory queue, which spools beyond its own bound, and
  at once while the database is away): memory stays bounded in bytes, nothing is dropped.
* echoes after their rows (:meth:`hold`): an engine holds a connection's writes until the
  rows journalled so far are in the writer's socket (the kernel's), so a kill -9 of the
  server cannot lose a message that was echoed. Normally that is the end of the same loop
  turn: the per-turn flush sends the chunk, then releases the held writes. With the writer
  behind (its socket full, or a new writer starting), the writes wait, and so do those
  connections (the engines stop reading them): backpressure. After ``HOLD_LIMIT`` the
  unsent chunks go to ``overflow`` instead and the writes are released; until the writer
  takes chunks again, each turn's chunk that cannot be sent whole goes that way at once.
  Those rows have the store's guarantees (memory, then the spool; while the database is
  away, the spool within a batch window), not the socket's.
* the writer's reports: whether its database answers and its errors, for ``/readyz`` and
  the metrics (:meth:`status`).
* close: the writer is told (EOF), writes what it holds and exits; what it has not
  acknowledged by the deadline goes to ``overflow`` too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.copyrows import (
    FRAME,
    PG_EPOCH,
    PG_EPOCH_US,
    REPORT,
    append_row,
    decode_rows,
    pg_microseconds,
    session_prefix,
)
from tornado_echo.store.records import MessageReceived

logger = logging.getLogger(__name__)

RESTART_PAUSE = 1.0  # between two starts of the writer, so a writer that cannot run is no spin
# Room for what the writer gathers between two reads (journal_process.GATHER) at full rate.
SEND_BUFFER = 4 << 20
# How long an echo may wait for its rows to reach the writer's socket before they are handed
# to the store's queue instead: a writer restart (a start takes tens of milliseconds) or a
# commit fits well within it; a database outage (the writer stops reading) does not.
HOLD_LIMIT = 0.5


@dataclass(frozen=True)
class JournalStatus:
    """A snapshot for metrics and /readyz."""

    queued_bytes: int  # chunks not yet acknowledged (sent or not)
    queued_rows: int
    lag: float  # seconds the oldest of them has waited
    written: int  # rows the writer acknowledged
    spilled: int  # rows handed to the store's queue instead
    restarts: int  # writers started after the first
    running: bool
    available: bool  # the writer's last report: its database answers
    error: str | None  # and if not, why
    errors: int  # failed database operations of every writer so far


@dataclass
class _Chunk:
    id: int
    frame: bytes
    rows: int
    at: float
    spilled: bool = False  # its rows were handed to ``overflow`` too (see _spill)


class SessionJournal:
    """One session's journal on the loop, made at its open: the start of its rows (field
    count, session id) is computed once here rather than looked up for every message, so a
    message costs a clock read, one struct pack and one append (a payload: two more)."""

    __slots__ = ("_handoff", "_prefix", "_session_id")

    def __init__(self, handoff: JournalHandoff, session_id: str) -> None:
        self._handoff = handoff
        self._session_id = session_id
        self._prefix = session_prefix(session_id)

    def add(
        self,
        seq: int,
        opcode: int,
        size: int,
        payload: bytes | None,
        truncated: bool = False,
        at: int | None = None,
    ) -> None:
        """Journal message ``seq`` (``payload`` None: its metadata only), received ``at``
        (PostgreSQL's microseconds, as copyrows.pg_microseconds gives them), or now; once the
        handoff no longer takes rows (closing), as a record to the store. Never blocks."""
        if at is None:
            # Integer microseconds (truncated): as stable through a round trip as rounded ones.
            at = time.time_ns() // 1000 - PG_EPOCH_US
        handoff = self._handoff
        if handoff._loop is None or handoff._closing:
            record = MessageReceived(
                self._session_id, seq, at / 1e6 + PG_EPOCH, int(opcode), size, payload, truncated
            )
            handoff.overflow([record])
            return
        # The handoff's side, here rather than in a method of its own: a call less a message.
        rows = handoff._rows
        append_row(
            rows, self._prefix, seq, at, opcode, size, payload, handoff.max_payload, truncated
        )
        handoff._count += 1
        if len(rows) >= handoff.batch_bytes:  # a busy turn: chunks stay batch-sized
            handoff._flush()
        elif not handoff._scheduled:
            handoff._scheduled = True
            assert handoff._loop is not None
            handoff._loop.call_soon(handoff._flush)


class JournalHandoff:
    def __init__(
        self,
        database_url: str,
        overflow: Callable[[list[MessageReceived]], None],
        max_payload: int = 65536,
        bytes_limit: int = 16 << 20,
        batch_bytes: int = 1 << 20,
        batch_delay: float = 0.05,
        spool_path: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.database_url = database_url
        self.overflow = overflow
        self.max_payload = max_payload
        self.bytes_limit = bytes_limit
        self.batch_bytes = batch_bytes
        self.batch_delay = batch_delay
        self.spool_path = spool_path
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._rows = bytearray()
        self._count = 0
        self._scheduled = False
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._bytes = 0
        self._sent = 0  # chunks at the head of _chunks sent whole
        self._offset = 0  # bytes of the next one sent
        self._in_flight = 0  # bytes sent and not acknowledged
        self._waiting_writable = False
        self._reports = bytearray()
        self._next_id = 1
        self._handed = 0  # every chunk up to this id is in the socket or spilled
        # Engines' held writes: (the chunk id they wait for, their releases), ids growing;
        # those waiting for the rows of this turn, until its flush gives them their chunk.
        self._holds: collections.deque[tuple[int, list[Callable[[], None]]]] = collections.deque()
        self._turn_holds: list[Callable[[], None]] = []
        self._hold_timer: asyncio.TimerHandle | None = None
        self._overflowing = False  # a hold expired and the writer has not caught up since
        self._writer_available = True
        self._writer_error: str | None = None
        self._writer_errors = 0  # of the writer running now
        self._errors_before = 0  # of the writers before it
        self._written = 0
        self._spilled = 0
        self._starts = 0
        self._last_start = 0.0
        self._restarting: asyncio.Task[None] | None = None
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._throttle = LogThrottle(logger)

    @property
    def accepting(self) -> bool:
        """Started and not closing: :meth:`add` may be called."""
        return self._loop is not None and not self._closing

    # -- the loop's hot path -----------------------------------------------------------------

    def session(self, session_id: str) -> SessionJournal:
        """The journal of one session, for its connection to keep (see SessionJournal)."""
        return SessionJournal(self, session_id)

    def add(
        self,
        session_id: str,
        seq: int,
        received_at: float,
        opcode: int,
        size: int,
        payload: bytes | None,
        truncated: bool = False,
    ) -> None:
        """Journal one message of a session not bound with :meth:`session` (``payload`` None:
        its metadata only). Never blocks."""
        at = pg_microseconds(received_at)
        self.session(session_id).add(seq, opcode, size, payload, truncated, at)

    def hold(self, release: Callable[[], None]) -> bool:
        """Whether a write must wait for the rows journalled so far: if so (True),
        ``release`` is called once they are in the writer's socket (or spilled), in the
        order of the calls to hold; not after :meth:`close` has handed them to the store."""
        if self._count:  # the usual case: rows of this turn, sent by its flush
            self._turn_holds.append(release)
            return True
        newest = self._next_id - 1
        if newest <= self._handed:
            return False
        holds = self._holds
        if holds and holds[-1][0] == newest:
            holds[-1][1].append(release)
        else:
            holds.append((newest, [release]))
        self._release()  # no flush to come this turn: time it from here
        return True

    def _flush(self) -> None:
        """Once per turn of the loop: the rows added during it become one chunk."""
        self._scheduled = False  # after an early flush, one still scheduled finds nothing
        if not self._count:
            return
        frame = FRAME.pack(len(self._rows), self._next_id, self._count) + self._rows
        self._chunks.append(_Chunk(self._next_id, frame, self._count, time.monotonic()))
        if self._turn_holds:
            self._holds.append((self._next_id, self._turn_holds))
            self._turn_holds = []
        self._next_id += 1
        self._bytes += len(frame)
        self._rows.clear()
        self._count = 0
        self._send()
        if self._bytes > self.bytes_limit or (self._overflowing and self._unsent()):
            self._spill()
        self._release()

    def _unsent(self) -> bool:
        return self._sent < len(self._chunks)

    def _release(self) -> None:
        """Release the held writes whose rows are handed; time the others."""
        holds = self._holds
        handed = self._handed
        while holds and holds[0][0] <= handed:
            for release in holds.popleft()[1]:
                try:
                    release()
                except Exception:  # one connection's failure is not the others'
                    logger.exception("releasing a write held for the journal failed")
        if holds and self._hold_timer is None and self._loop is not None:
            self._hold_timer = self._loop.call_later(HOLD_LIMIT, self._hold_expired)

    def _hold_expired(self) -> None:
        self._hold_timer = None
        holds = self._holds
        if not holds:
            return
        if time.monotonic() - self._oldest_unhanded_at() < HOLD_LIMIT:
            self._release()  # a later chunk is waiting: timed again, from its own start
            return
        self._overflowing = True
        self._throttle.log(
            "overflowing",
            logging.WARNING,
            "journal writer not taking rows for %.1f s: they go to the store's queue",
            HOLD_LIMIT,
        )
        self._spill()
        self._release()

    def _oldest_unhanded_at(self) -> float:
        for chunk in self._chunks:
            if chunk.id > self._handed:
                return chunk.at
        return time.monotonic()

    def _send(self) -> None:
        sock = self._sock
        if sock is None or self._waiting_writable:
            return
        while self._sent < len(self._chunks) and self._in_flight < self.bytes_limit // 2:
            frame = self._chunks[self._sent].frame
            try:
                sent = sock.send(memoryview(frame)[self._offset :])
            except BlockingIOError:
                sent = 0
            except OSError:
                self._writer_lost()
                return
            self._offset += sent
            self._in_flight += sent
            if self._offset < len(frame):
                assert self._loop is not None
                self._loop.add_writer(sock.fileno(), self._writable)
                self._waiting_writable = True
                return
            self._sent += 1
            self._offset = 0
            self._handed = max(self._handed, self._chunks[self._sent - 1].id)
        if self._overflowing and not self._unsent():
            self._overflowing = False  # the writer takes chunks again

    def _writable(self) -> None:
        self._stop_waiting_writable()
        self._send()
        self._release()

    def _stop_waiting_writable(self) -> None:
        if self._waiting_writable and self._sock is not None and self._loop is not None:
            self._loop.remove_writer(self._sock.fileno())
        self._waiting_writable = False

    def _spill(self) -> None:
        """Hand the chunks not yet sent to ``overflow``. The one partly sent stays (the rest
        of its frame is owed to the writer), and its rows go to ``overflow`` too: whichever
        writes them first, the database keeps them once."""
        records: list[MessageReceived] = []
        unsent_from = self._sent + (1 if self._offset else 0)
        while len(self._chunks) > unsent_from:
            chunk = self._chunks.pop()
            self._bytes -= len(chunk.frame)
            self._spilled += chunk.rows
            records[:0] = decode_rows(memoryview(chunk.frame)[FRAME.size :])
        if self._offset and not self._chunks[self._sent].spilled:
            chunk = self._chunks[self._sent]
            chunk.spilled = True
            self._spilled += chunk.rows
            records[:0] = decode_rows(memoryview(chunk.frame)[FRAME.size :])
        self._handed = self._next_id - 1
        if records:
            self._throttle.log(
                "spill",
                logging.WARNING,
                "journal writer behind: rows go to the store's queue and spool (%d so far)",
                self._spilled,
            )
            self.overflow(records)

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._writer_lost()
            return
        self._reports += data
        reports = self._reports
        acked = offset = 0
        while len(reports) - offset >= REPORT.size:
            last, available, errors, length = REPORT.unpack_from(reports, offset)
            end = offset + REPORT.size + length
            if len(reports) < end:
                break
            acked = last
            self._writer_available = bool(available)
            self._writer_error = (
                None if available else bytes(reports[end - length : end]).decode(errors="replace")
            )
            self._writer_errors = errors
            offset = end
        del reports[:offset]
        chunks = self._chunks
        while chunks and chunks[0].id <= acked and self._sent:
            chunk = chunks.popleft()
            self._bytes -= len(chunk.frame)
            self._written += chunk.rows
            self._sent -= 1
            self._in_flight -= len(chunk.frame)
        self._send()
        self._release()
        if self._closing and not chunks and self._closed is not None:
            self._closed.set()

    # -- the writer process ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process; idempotent."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        await self._start_writer()

    async def _start_writer(self) -> None:
        loop = asyncio.get_running_loop()
        pause = self._last_start + RESTART_PAUSE - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        self._last_start = time.monotonic()
        ours, theirs = socket.socketpair()
        with contextlib.suppress(OSError):  # capped by net.core.wmem_max
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        command = [
            *(sys.executable, "-m", "tornado_echo.store.journal_process"),
            *("--fd", str(theirs.fileno()), "--database-url", self.database_url),
            *("--batch-bytes", str(self.batch_bytes), "--batch-delay", str(self.batch_delay)),
            *("--pending-limit", str(8 * self.batch_bytes), "--log-level", self.log_level),
            *(("--spool", str(self.spool_path)) if self.spool_path else ()),
        ]
        try:
            process = await loop.run_in_executor(
                None,
                lambda: subprocess.Popen(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
                ),
            )
        except OSError:
            ours.close()
            self._throttle.log(
                "start", logging.CRITICAL, "cannot start the journal writer", exc_info=True
            )
            return
        finally:
            theirs.close()
        self._starts += 1
        self._errors_before += self._writer_errors
        self._writer_errors = 0
        # Until the new writer says otherwise (it reports once it has written or failed to).
        self._writer_available, self._writer_error = True, None
        self.process = process
        ours.setblocking(False)
        self._sock = ours
        self._sent = self._offset = self._in_flight = 0  # what was not acknowledged goes again
        self._reports.clear()
        loop.add_reader(ours.fileno(), self._readable)
        self._send()
        self._release()

    def _disconnect(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._stop_waiting_writable()
        assert self._loop is not None
        self._loop.remove_reader(sock.fileno())
        sock.close()
        self._sock = None

    def _writer_lost(self) -> None:
        if self._sock is None:
            return
        self._disconnect()
        process = self.process
        if process is not None:
            assert self._loop is not None
            self._loop.run_in_executor(None, process.wait)
        if self._closing:
            if self._closed is not None:
                self._closed.set()
            return
        self._throttle.log(
            "lost",
            logging.ERROR,
            "journal writer (pid %s) gone; starting another, %d rows to send again",
            None if process is None else process.pid,
            sum(chunk.rows for chunk in self._chunks),
        )
        self._restarting = asyncio.ensure_future(self._start_writer())

    def status(self) -> JournalStatus:
        chunks = self._chunks
        return JournalStatus(
            queued_bytes=self._bytes + len(self._rows),
            queued_rows=sum(chunk.rows for chunk in chunks) + self._count,
            lag=time.monotonic() - chunks[0].at if chunks else 0.0,
            written=self._written,
            spilled=self._spilled,
            restarts=max(0, self._starts - 1),
            running=self._sock is not None,
            available=self._writer_available,
            error=self._writer_error,
            errors=self._errors_before + self._writer_errors,
        )

    async def close(self, deadline: float) -> None:
        """Let the writer finish for at most ``deadline`` seconds; what it did not acknowledge
        goes to ``overflow``. Idempotent."""
        if self._closing or self._loop is None:
            return
        self._closing = True
        self._flush()
        if self._restarting is not None:
            await self._restarting
        self._closed = asyncio.Event()
        if self._sock is not None and self._chunks:
            # The writer commits every batch_delay: wait for it to confirm the last chunk.
            self._send()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), deadline)
        # EOF: the writer writes what it still holds (its own deadline), then ends.
        self._disconnect()
        records = [
            record
            for chunk in self._chunks
            if not chunk.spilled
            for record in decode_rows(memoryview(chunk.frame)[FRAME.size :])
        ]
        if records:
            logger.warning(
                "journal writer did not confirm %d rows by the deadline: they go to the spool",
                len(records),
            )
            self._spilled += len(records)
            self.overflow(records)
        self._chunks.clear()
        self._bytes = 0
        self._sent = self._offset = self._in_flight = 0
        self._handed = self._next_id - 1  # in the store's hands now
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._release()
