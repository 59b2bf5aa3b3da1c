"""``workers = N``: a small supervisor forking N serving processes on one port.

Every worker binds its own listening socket with SO_REUSEPORT, so the kernel spreads new
connections evenly across them. Each worker reports to the supervisor over a pipe with the
same messages it would send systemd (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=``), and the supervisor, the service's main process, speaks for all of them:

* ``READY=1`` once every worker is listening (and again once every worker has re-read its
  configuration after a SIGHUP);
* ``WATCHDOG=1`` while the supervisor's own loop runs; a worker whose event loop has made
  no progress for ``HEARTBEAT_STALE`` seconds (not counting those it spent runnable but
  waiting for a CPU: an overloaded machine makes a worker slow, not stuck) is killed and
  replaced on its own, so one stuck worker costs its own connections, not every worker's.
  Progress is either a ``WATCHDOG=1`` from the worker's housekeeping or a change of its
  beat counter, a slot of shared memory that its loop bumps with every turn that did
  budgeted work (the turn budget's ``beats``; the budget keeps each such turn short): a
  loop busy with a storm of work, however long the storm, keeps beating and is left alone;
  one blocked in a single call does not. Only a stuck worker that even SIGKILL does not
  remove makes the supervisor withhold the watchdog;
* SIGTERM, SIGINT and SIGHUP are passed on to every worker. Once stopping, a worker is
  SIGKILLed only when ``kill_grace`` (``KILL_GRACE``) seconds past the shutdown deadline it
  makes no progress by the same test (its open sessions would otherwise be marked crashed
  at the next start for nothing: one closing tens of thousands of them on a starved
  machine is slow, not stuck), and in any case at ``stop_limit``;
* a worker that dies unexpectedly is restarted, at most ``RESTART_BURST`` times within
  ``RESTART_INTERVAL`` seconds (like systemd's StartLimitBurst=/StartLimitIntervalSec=).
  Beyond that the supervisor stops the others and exits 1, so that systemd's
  ``Restart=on-failure`` sees the failure;
* workers get SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so a supervisor
  killed with SIGKILL leaves no orphan serving the port.

The supervisor loop is plain ``select`` (no asyncio) so that forking from it is safe; its
signal handlers only set flags and wake the loop through ``signal.set_wakeup_fd``.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import mmap
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tornado_echo.observability.logs import set_worker
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.process.systemd import Notifier

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # how often a worker's loop checks in
HEARTBEAT_STALE = 5.0  # a serving worker silent this long is stuck: it is killed
STARTUP_STALE = 60.0  # the same for a worker still starting (opening the store, binding)
RESTART_BURST = 5  # unexpected worker exits tolerated within RESTART_INTERVAL
RESTART_INTERVAL = 60.0
KILL_GRACE = 10.0  # past the shutdown deadline, before a stuck stopping worker is killed
KILL_WAIT = 5.0  # a worker SIGKILLed this long ago and still there stops the watchdog
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RestartWindow:
    """At most ``burst`` restarts within any ``interval`` seconds (pure logic, no clock)."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst = burst
        self.interval = interval
        self._times: collections.deque[float] = collections.deque(maxlen=burst)

    def allow(self, now: float) -> bool:
        """Record a restart at ``now`` if the window has room; False when it has not."""
        if self.burst <= 0:
            return False
        if len(self._times) == self.burst and now - self._times[0] < self.interval:
            return False
        self._times.append(now)
        return True

    def recent(self, now: float) -> int:
        """Restarts within the last ``interval`` seconds."""
        return sum(1 for t in self._times if now - t < self.interval)


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit now if it already has.

    Linux only: elsewhere (or when prctl is refused) a warning says so, and workers would
    outlive a supervisor killed with SIGKILL.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0
    except (OSError, AttributeError):
        failed = True
    if failed:
        logger.warning("cannot arrange for workers to die with the supervisor (prctl)")
    # The parent may have died between fork() and prctl(): then nobody sends the signal.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerLink(Notifier):
    """A worker's side of the pipe: the Notifier interface, sent to the supervisor; and its
    beat counter (one unsigned 64-bit slot of memory shared with the supervisor)."""

    def __init__(self, write_fd: int, beats: memoryview | None = None) -> None:
        super().__init__(None)
        self._fd: int | None = write_fd
        self.beats = beats

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
    heard: bool = False  # its event loop is serving: HEARTBEAT_STALE applies
    killed_at: float | None = None  # when the supervisor SIGKILLed it as stuck
    beats: int = 0  # its beat counter when last read
    waited: float | None = None  # its runqueue_wait() when last heard from
    status: str = ""
    buffer: bytes = b""


def runqueue_wait(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU so far
    (Linux schedstat's run delay); None where the kernel does not say."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def stop_limit(shutdown_deadline: float, kill_grace: float = KILL_GRACE) -> float:
    """Seconds after SIGTERM when every worker still there is killed, however busy: the
    service's TimeoutStopSec= must stay above it."""
    return shutdown_deadline + 2 * kill_grace


def stuck_for(silent: float, waited_then: float | None, waited_now: float | None) -> float:
    """Of ``silent`` seconds without a sign of progress, those the worker could have used:
    time spent waiting for a CPU does not count, as a worker starved by an overloaded
    machine is slow, not stuck (pure logic)."""
    if waited_then is None or waited_now is None:
        return silent
    return silent - max(0.0, waited_now - waited_then)


class Supervisor:
    """Forks and watches ``count`` workers; ``run_worker(index, link)`` serves in a child."""

    def __init__(
        self,
        count: int,
        run_worker: Callable[[int, WorkerLink], int],
        notifier: Notifier,
        shutdown_deadline: float,
        on_worker_exit: Callable[[int], None] | None = None,
        restarts: RestartWindow | None = None,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.count = count
        self.run_worker = run_worker
        self.notifier = notifier
        self.shutdown_deadline = shutdown_deadline
        self.kill_grace = kill_grace
        self.on_worker_exit = on_worker_exit
        self.workers: dict[int, _Worker] = {}  # by pid
        self.restarts = restarts or RestartWindow(RESTART_BURST, RESTART_INTERVAL)
        self.gave_up = False
        self._throttle = LogThrottle(logger)
        self._signals: list[int] = []
        self._reloading = False
        self._announced_ready = False
        self._last_status = ""
        self._beats: memoryview | None = None  # a slot per worker index, shared

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
        # Anonymous shared memory, inherited by every worker forked from here.
        shared = mmap.mmap(-1, 8 * self.count)
        self._beats = memoryview(shared).cast("Q")
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
            self._beats.release()
            self._beats = None
            shared.close()

    def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        beats = self._beats[index : index + 1] if self._beats is not None else None
        if beats is not None:
            beats[0] = 0
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                die_with_parent(parent)
                set_worker(index)
                os.close(read_fd)
                for other in self.workers.values():
                    os.close(other.read_fd)
                code = self.run_worker(index, WorkerLink(write_fd, beats))
            except BaseException:  # task boundary: a worker must never return into the parent
                logger.critical("worker %d crashed", index, exc_info=True)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        self.workers[pid] = _Worker(index, pid, read_fd, waited=runqueue_wait(pid))
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
                self._kill_stragglers(now, now - stopping_since)
                continue
            self._announce_ready()
            unkillable = self._kill_stuck(now)
            if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                if unkillable:
                    self._throttle.log(
                        "withhold",
                        logging.ERROR,
                        "workers %s stay stuck after SIGKILL; withholding the watchdog",
                        unkillable,
                    )
                else:
                    self.notifier.watchdog()
                    last_watchdog = now
        return exit_code | self.gave_up

    def _kill_stuck(self, now: float) -> list[int]:
        """SIGKILL workers that stopped checking in (_reap replaces them).

        Returns the indexes of those killed more than KILL_WAIT ago and still not gone.
        """
        for worker, silent, waited in self._stuck(now):
            self._kill(worker, now, "has not checked in for %.1f s", silent, waited=waited)
        return [
            worker.index
            for worker in self.workers.values()
            if worker.killed_at is not None and now - worker.killed_at > KILL_WAIT
        ]

    def _kill_stragglers(self, now: float, stopping_for: float) -> None:
        """While stopping: past the deadline and its grace, SIGKILL the workers that make no
        progress; past ``stop_limit``, every worker still there.

        A worker still closing its connections and draining its records after the deadline,
        however slowly (a storm of them on a starved machine), is left to finish: killed,
        its open sessions would be marked crashed at the next start.
        """
        stuck = self._stuck(now)  # read every turn: progress is told from the last reading
        if stopping_for > stop_limit(self.shutdown_deadline, self.kill_grace):
            for worker in self.workers.values():
                if worker.killed_at is None:
                    self._kill(
                        worker,
                        now,
                        "is still stopping %.1f s after SIGTERM, the limit (the shutdown"
                        " deadline + twice %.0f s): its open sessions will be marked crashed",
                        stopping_for,
                        self.kill_grace,
                    )
        elif stopping_for > self.shutdown_deadline + self.kill_grace:
            for worker, silent, waited in stuck:
                self._kill(
                    worker,
                    now,
                    "is stopping %.1f s past the shutdown deadline and has made no progress"
                    " for %.1f s",
                    stopping_for - self.shutdown_deadline,
                    silent,
                    waited=waited,
                )

    def _stuck(self, now: float) -> list[tuple[_Worker, float, float]]:
        """Workers not yet killed whose loop has made no progress for HEARTBEAT_STALE
        seconds (STARTUP_STALE while starting), not counting those spent waiting for a CPU:
        each with those seconds and the seconds of them it waited for a CPU."""
        stuck = []
        for worker in self.workers.values():
            if worker.killed_at is not None:
                continue
            if self._beats is not None and self._beats[worker.index] != worker.beats:
                worker.beats = self._beats[worker.index]
                self._heard_from(worker, now)  # busy, but its loop is getting work done
            silent = now - worker.last_heartbeat
            limit = HEARTBEAT_STALE if worker.heard else STARTUP_STALE
            if silent <= limit:
                continue
            # One turn of a loop handling tens of thousands of connections at once (libuv
            # takes up to 48k events in a poll) is long, and on an overloaded machine most
            # of it is spent waiting for a CPU.
            unused = stuck_for(silent, worker.waited, runqueue_wait(worker.pid))
            if unused > limit:
                stuck.append((worker, silent, silent - unused))
        return stuck

    @staticmethod
    def _kill(
        worker: _Worker, now: float, why: str, *args: float, waited: float | None = None
    ) -> None:
        """SIGKILL ``worker``, logging ``why`` (%-format of ``args``) and the seconds it
        spent ``waited`` for a CPU meanwhile."""
        message = f"worker %d (pid %d) {why}; killing it"
        if waited is not None:
            message += " (%.1f s of them spent waiting for a CPU)"
            args += (waited,)
        logger.error(
            message,
            worker.index,
            worker.pid,
            *args,
            extra={"worker_index": worker.index, "worker_pid": worker.pid},
        )
        worker.killed_at = now
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone: _reap collects it

    @staticmethod
    def _heard_from(worker: _Worker, now: float) -> None:
        worker.last_heartbeat = now
        worker.waited = runqueue_wait(worker.pid)

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
                if line == "READY=1":  # sent from its event loop, which is now serving
                    worker.ready = worker.heard = True
                    self._heard_from(worker, time.monotonic())
                elif line == "WATCHDOG=1":
                    self._heard_from(worker, time.monotonic())
                    worker.heard = True
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
            now = time.monotonic()
            if not self.restarts.allow(now):
                logger.critical(
                    "%d worker restarts within %.0f s; giving up: stopping the others and"
                    " exiting with a failure",
                    self.restarts.burst,
                    self.restarts.interval,
                )
                self.gave_up = True
                self._signals.append(signal.SIGTERM)
                restart = False
                continue
            # A worker that dies at once would otherwise be respawned in a tight loop.
            time.sleep(min(1.0, 0.1 * self.restarts.recent(now)))
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
