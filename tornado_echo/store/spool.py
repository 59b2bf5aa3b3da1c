"""The spool: an append-only file of records that did not fit in memory while the database was away.

Format: one record per line, a JSON array (see :func:`records.encode_record`). Lines are only
ever appended; a replay reads from the *committed* offset and advances it once the database
has taken the lines; when everything is committed the file is truncated to zero. A crash may
leave a torn last line (no newline): :meth:`Spool.open` cuts it off and says so. Re-reading
lines that were already written is harmless because every database write is idempotent.

The file may be deleted, replaced or cut short behind our back (an operator freeing disk, a
bad restore): :meth:`Spool.check` notices, says how many pending records went with it, and
carries on with the file now at the path (created if none). The batch being replayed (the
:class:`Lease` :meth:`Spool.read` handed out) is in the reader's memory, so it is not lost: it
is appended again to the file now at the path (a second write of it is harmless), and its
offsets, which belonged to the old file, no longer commit anything (the lease is stale).

One process at a time: the file is locked while open, so a second instance with the same
server id (the same host, port and worker; say two started with ``port = 0``) and the same
state directory is refused at start instead of replaying, marking crashed and appending to
what the first one still uses.

Not thread-safe: the store serialises every call with its own lock. Only the read-only
properties (:attr:`pending`, :attr:`pending_bytes`, :attr:`oldest`) are read without it, for
status snapshots: a moment old at worst, never negative.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tornado_echo.errors import StoreError
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.records import Record, decode_record, encode_record

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def spool_path(state_dir: str | Path, server_id: str) -> Path:
    """One spool file per server id (hostname:port:worker), so workers never share one."""
    return Path(state_dir) / f"spool-{_UNSAFE.sub('_', server_id)}.jsonl"


def writer_spool_path(path: Path, pid: int) -> Path:
    """The spool of journal writer process ``pid`` of the server whose spool is ``path``: its
    own file, since the server (or, after a crash, its successor) holds that one."""
    return path.with_name(f"{path.stem}.writer-{pid}{path.suffix}")


def writer_spool_paths(path: Path) -> list[Path]:
    """The writer spools left next to the server spool ``path``."""
    return sorted(path.parent.glob(f"{path.stem}.writer-*{path.suffix}"))


@dataclass(frozen=True)
class Lease:
    """Records read for replay; :meth:`Spool.commit` it once the database has them."""

    records: list[Record]
    end: int  # offset after the lines read
    lines: int  # lines read, undecodable ones included
    generation: int  # the file's, when read: a damaged file starts a new generation


class Spool:
    """Append-only record file with a replay cursor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._size = 0  # bytes in the file
        self._committed = 0  # bytes already replayed
        self._pending = 0  # records after the committed offset
        # (end offset, time of the first record) per appended chunk: the oldest pending time.
        self._chunks: collections.deque[tuple[int, float]] = collections.deque()
        self._generation = 0
        self._lease: Lease | None = None  # the batch being replayed, not yet committed
        # A lease whose file went while the path could not be opened again: its records go
        # to the next file opened there.
        self.held: list[Record] = []
        self._throttle = LogThrottle(logger)

    @property
    def pending(self) -> int:
        """Records waiting to be replayed."""
        return self._pending

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def pending_bytes(self) -> int:
        return max(0, self._size - self._committed)  # two reads: see the module doc

    @property
    def oldest(self) -> float | None:
        """Wall time of the oldest pending record (chunk resolution), None when empty."""
        try:  # read without the lock (see the module doc): the deque may empty meanwhile
            return self._chunks[0][1]
        except IndexError:
            return None

    def open(self) -> None:
        """Open (creating) the file and count what a previous run left; idempotent.

        Raises :class:`StoreError` when the state directory or file cannot be used.
        """
        if self._fd >= 0:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._scan()
            self._append_held()
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise StoreError(
                f"spool file {self.path} is in use by another running instance with the same"
                " server id: give each instance its own port (not 0) or state_dir"
            ) from None
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use spool file {self.path}: {exc.strerror}") from None

    def check(self) -> int | None:
        """None while the file at the path is ours and whole; else the pending records lost
        with it (deleted, replaced or cut short), after taking the file as it now is (left
        closed if the path cannot be opened: see :attr:`is_open`). The lease out is not lost:
        its records go to the file again, after what is there."""
        if self._fd < 0:
            return None
        ours = os.fstat(self._fd)
        try:
            there: os.stat_result | None = os.stat(self.path)
        except OSError:  # gone, or its directory no longer ours to read: use a new file
            there = None
        same = there is not None and (there.st_ino, there.st_dev) == (ours.st_ino, ours.st_dev)
        if same and ours.st_size >= self._size:
            return None
        before = self._pending
        lease = self._lease
        if same and (lease is None or ours.st_size >= lease.end):
            # Cut short in place after the lease: its offsets still hold, and what is left
            # after the committed offset survives.
            self._scan(start=min(self._committed, ours.st_size))
            return max(0, before - self._pending)
        self._generation += 1
        self._lease = None
        if same:  # cut inside the lease: its whole lines go again, after the committed part
            cut = min(self._committed, ours.st_size)
            os.ftruncate(self._fd, cut)
            self._scan(start=cut)
        else:
            os.close(self._fd)
            self._fd = -1
            self._size = self._committed = self._pending = 0
            self._chunks.clear()
            with contextlib.suppress(StoreError):  # still closed: the store retries open()
                self.open()  # whatever now is at the path counts as a leftover to replay
        if lease is None:
            return before
        self.held += lease.records
        self._append_held()
        # Its undecodable lines were counted when read: those are not counted again.
        return max(0, before - lease.lines)

    def _append_held(self) -> None:
        if not self.held or self._fd < 0:
            return
        pending = self._pending
        error = self.append(self.held)
        del self.held[: self._pending - pending]
        if error is not None:
            self._throttle.log(
                "re-append",
                logging.CRITICAL,
                "spool %s: cannot keep %d records of the batch being replayed yet: %s",
                self.path,
                len(self.held),
                error.strerror,
            )

    def _scan(self, start: int = 0) -> None:
        """Count the whole lines from ``start`` on as pending; cut off a torn tail."""
        count = 0
        first: float | None = None
        good = start
        with open(self.path, "rb") as handle:
            handle.seek(start)
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                if first is None:
                    try:
                        first = decode_record(line).at
                    except StoreError:
                        first = 0.0
                good += len(line)
                count += 1
        size = os.fstat(self._fd).st_size
        if size > good:
            logger.warning(
                "spool %s: cutting off a torn last line (%d bytes) left by a crash",
                self.path,
                size - good,
            )
            os.ftruncate(self._fd, good)
        self._size, self._committed, self._pending = good, start, count
        self._chunks.clear()
        if count:
            self._chunks.append((good, first or 0.0))

    def append(self, records: Sequence[Record]) -> OSError | None:
        """Append ``records`` (written to the OS, not yet synced).

        On a write error (disk full, I/O error) the records whose lines were written whole
        stay, the file is cut back to the end of the last whole line, and the error is
        returned: the records beyond the growth of :attr:`pending` were not spooled.
        """
        if not records:
            return None
        if self._fd < 0:
            return OSError(errno.EBADF, "spool file not open")
        lines = [encode_record(record) for record in records]
        ends = list(itertools.accumulate(map(len, lines)))
        view = memoryview(b"".join(lines))
        done = 0
        error: OSError | None = None
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            error = exc
        kept = bisect.bisect_right(ends, done)
        kept_bytes = ends[kept - 1] if kept else 0
        if kept_bytes < done:
            try:
                os.ftruncate(self._fd, self._size + kept_bytes)
            except OSError:
                self._throttle.log(
                    "cut-back",
                    logging.CRITICAL,
                    "spool %s: cannot cut back a failed append",
                    self.path,
                )
        if kept:
            self._chunks.append((self._size + kept_bytes, records[0].at))
            self._size += kept_bytes
            self._pending += kept
        return error

    def sync(self) -> None:
        """fsync the file; raises OSError."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def read(self, limit: int, max_bytes: int = 1 << 62) -> Lease:
        """Up to ``limit`` records from the committed offset, lent until :meth:`commit`.

        Stops after the line that reaches ``max_bytes`` (at least one line is read).
        ``lines`` counts undecodable lines too; those are logged and skipped.
        """
        records: list[Record] = []
        lines = 0
        offset = self._committed
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            start = offset
            while lines < limit and offset < self._size and offset - start < max_bytes:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                lines += 1
                try:
                    records.append(decode_record(line))
                except StoreError as exc:
                    self._throttle.log(
                        "corrupt",
                        logging.ERROR,
                        "spool %s: skipping a corrupt line: %s",
                        self.path,
                        exc,
                    )
        self._lease = Lease(records, offset, lines, self._generation)
        return self._lease

    def commit(self, lease: Lease) -> None:
        """The database has ``lease``'s records: its lines are done with. A stale lease (read
        from a file since damaged, see :meth:`check`) commits nothing: its records were put
        in the file again and are read again."""
        if lease is self._lease:
            self._lease = None
        if self._fd < 0 or lease.generation != self._generation:
            return
        self._committed = lease.end
        self._pending = max(0, self._pending - lease.lines)
        while self._chunks and self._chunks[0][0] <= lease.end:
            self._chunks.popleft()
        if self._committed >= self._size:
            os.ftruncate(self._fd, 0)
            self._size = self._committed = self._pending = 0
            self._chunks.clear()

    def close(self) -> None:
        """Sync and close; removes the file when nothing is pending. Idempotent."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as exc:
            logger.critical("spool %s: fsync failed at close: %s", self.path, exc.strerror)
        os.close(fd)
        if self._pending == 0:
            try:
                self.path.unlink()
            except OSError:
                pass
