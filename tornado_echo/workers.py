"""``workers = N``: a small supervisor forking N serving processes on one port.

Every worker binds its own listening socket with SO_REUSEPORT, so the kernel spreads new
connections evenly across them. Each worker reports to the supervisor over a pipe with the
same messages it would send systemd (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=``), and the supervisor, the service's main process, speaks for all of them:

* ``READY=1`` once every worker is listening (and again once every worker has re-read its
  configuration after a SIGHUP);
* ``WATCHDOG=1`` only while every worker's event loop has checked in recently, so one stuck
  worker gets the whole service restarted by systemd;
* SIGTERM, SIGINT and SIGHUP are passed on to every worker; a worker that dies unexpectedly
  is restarted (at most ``MAX_RESTARTS`` times).

The supervisor loop is plain ``select`` (no asyncio) so that forking from it is safe; its
signal handlers only set flags and wake the loop through ``signal.set_wakeup_fd``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .systemd import Notifier

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # how often a worker's loop checks in
HEARTBEAT_STALE = 5.0  # a worker silent this long is considered stuck
MAX_RESTARTS = 20
KILL_GRACE = 10.0  # beyond the shutdown deadline, before SIGKILL


class WorkerLink(Notifier):
    """A worker's side of the pipe: the Notifier interface, sent to the supervisor."""

    def __init__(self, write_fd: int) -> None:
        super().__init__(None)
        self._fd: int | None = write_fd

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def notify(self, *fields: str) -> bool:
        if self._fd is None or not fields:
            return False
        try:
            # One write below PIPE_BUF is atomic; a full pipe drops the message.
            os.write(self._fd, "\n".join(fields).encode("utf-8")[:4000] + b"\0")
        except (BlockingIOError, BrokenPipeError):
            return False
        return True

    def watchdog_interval(self) -> float | None:
        return HEARTBEAT_INTERVAL

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@dataclass
class _Worker:
    index: int
    pid: int
    read_fd: int
    ready: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)
    status: str = ""
    buffer: bytes = b""


class Supervisor:
    """Forks and watches ``count`` workers; ``run_worker(index, link)`` serves in a child."""

    def __init__(
        self,
        count: int,
        run_worker: Callable[[int, WorkerLink], int],
        notifier: Notifier,
        shutdown_deadline: float,
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.count = count
        self.run_worker = run_worker
        self.notifier = notifier
        self.shutdown_deadline = shutdown_deadline
        self.on_worker_exit = on_worker_exit
        self.workers: dict[int, _Worker] = {}  # by pid
        self.restarts = 0
        self._signals: list[int] = []
        self._reloading = False
        self._announced_ready = False
        self._last_status = ""

    # -- signals: flags only ---------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited."""
        wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_wakeup = signal.set_wakeup_fd(wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.notifier.start()
        try:
            for index in range(self.count):
                self._spawn(index)
            return self._supervise(wakeup_r)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.close(wakeup_r)
            os.close(wakeup_w)
            self.notifier.close()

    def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(read_fd)
                for other in self.workers.values():
                    os.close(other.read_fd)
                code = self.run_worker(index, WorkerLink(write_fd))
            except BaseException:  # task boundary: a worker must never return into the parent
                logger.critical("worker %d crashed", index, exc_info=True)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        self.workers[pid] = _Worker(index, pid, read_fd)
        logger.info("worker %d started (pid %d)", index, pid)

    # -- the loop --------------------------------------------------------------------------

    def _supervise(self, wakeup_r: int) -> int:
        stopping_since: float | None = None
        exit_code = 0
        watchdog_every = self.notifier.watchdog_interval()
        last_watchdog = time.monotonic()
        while self.workers:
            readable, _, _ = select.select([wakeup_r, *self._read_fds()], [], [], 0.5)
            if wakeup_r in readable:
                while True:
                    try:
                        if not os.read(wakeup_r, 512):
                            break
                    except BlockingIOError:
                        break
            for fd in readable:
                if fd != wakeup_r:
                    self._read_worker(fd)
            for signum in self._take_signals():
                if signum in (signal.SIGTERM, signal.SIGINT):
                    if stopping_since is None:
                        stopping_since = time.monotonic()
                        self.notifier.stopping()
                        logger.info("stopping %d workers", len(self.workers))
                    self._forward(signum)
                elif stopping_since is None:  # SIGHUP
                    self._reloading = True
                    self.notifier.reloading()
                    for worker in self.workers.values():
                        worker.ready = False
                    self._forward(signal.SIGHUP)
            exit_code |= self._reap(restart=stopping_since is None)
            now = time.monotonic()
            if stopping_since is not None:
                if now - stopping_since > self.shutdown_deadline + KILL_GRACE:
                    logger.error("workers did not stop in time; killing them")
                    self._forward(signal.SIGKILL)
                continue
            self._announce_ready()
            if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                stuck = [
                    w.index
                    for w in self.workers.values()
                    if now - w.last_heartbeat > HEARTBEAT_STALE
                ]
                if stuck:
                    logger.error("workers %s stopped checking in; withholding the watchdog", stuck)
                else:
                    self.notifier.watchdog()
                    last_watchdog = now
        return exit_code

    def _read_fds(self) -> list[int]:
        return [worker.read_fd for worker in self.workers.values()]

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _read_worker(self, fd: int) -> None:
        worker = next(w for w in self.workers.values() if w.read_fd == fd)
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            return  # EOF: the worker exited; _reap collects it
        worker.buffer += data
        *messages, worker.buffer = worker.buffer.split(b"\0")
        for message in messages:
            for line in message.decode("utf-8", "replace").split("\n"):
                if line == "READY=1":
                    worker.ready = True
                elif line == "WATCHDOG=1":
                    worker.last_heartbeat = time.monotonic()
                elif line.startswith("STATUS="):
                    worker.status = line[len("STATUS=") :]

    def _forward(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self, restart: bool) -> int:
        """Collect exited workers; restart unexpected exits. Returns 1 if one failed stopping."""
        failed = 0
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.read_fd)
            code = os.waitstatus_to_exitcode(status)
            if self.on_worker_exit is not None:
                self.on_worker_exit(pid)
            if not restart:
                logger.info("worker %d (pid %d) exited with %d", worker.index, pid, code)
                # Killed by our SIGTERM before it could install its handler: it was still
                # starting and had nothing to drain.
                failed |= code not in (0, -signal.SIGTERM)
                continue
            logger.error("worker %d (pid %d) exited unexpectedly with %d", worker.index, pid, code)
            if self.restarts >= MAX_RESTARTS:
                logger.critical("worker restart limit (%d) reached; stopping", MAX_RESTARTS)
                self._signals.append(signal.SIGTERM)
                continue
            self.restarts += 1
            time.sleep(min(1.0, 0.1 * self.restarts))
            self._spawn(worker.index)
        return failed

    def _announce_ready(self) -> None:
        workers = self.workers.values()
        if len(self.workers) != self.count or not all(w.ready for w in workers):
            return
        status = "; ".join(
            f"worker {w.index}: {w.status}" for w in sorted(workers, key=lambda w: w.index)
        )
        if self._reloading or not self._announced_ready:
            self._reloading = False
            self._announced_ready = True
            self.notifier.ready(f"{len(self.workers)} workers ready")
            logger.info("all %d workers ready", len(self.workers))
        elif status != self._last_status:
            self.notifier.status(status)
        self._last_status = status
