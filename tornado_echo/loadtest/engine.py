"""Runs the workload: one :class:`Worker` per process, merged by :func:`run`.

A worker opens its share of the connections at the requested arrival rate, keeps
them busy until the duration or message budget is spent, drains echoes in flight,
closes, and returns a :class:`Stats`. It also measures its own event-loop lag and CPU
use, which is how the report tells a client-bound result from a server-bound one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import multiprocessing
import os
import queue
import random
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado_echo.loadtest.config import LoadConfig
from tornado_echo.loadtest.errors import HandshakeError, LoadtestError
from tornado_echo.loadtest.framing import HandshakeRequest
from tornado_echo.loadtest.protocol import EchoConnection, TimerLateness
from tornado_echo.loadtest.stats import ECHO_ERRORS, SERIES, Stats
from tornado_echo.loadtest.tracker import EchoTracker, Filler, LiveCounters
from tornado_echo.process import eventloop

log = logging.getLogger(__name__)

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# The calling thread's CPU time, time waiting in the run queue, and time slices, in ns.
SCHEDSTAT = "/proc/thread-self/schedstat"
_LAG_INTERVAL = 0.05  # seconds between event-loop lag probes
_SWEEP_INTERVAL = 0.1  # seconds between checks for overdue echoes
_CONTROL_INTERVAL = 0.05  # seconds between checks of the connections wanted (load shapes)
_RATE_STEP = 0.005  # a ramped rate is passed on to the connections when it moved this much


@dataclass(frozen=True)
class Progress:
    """A worker's running totals, sent to the reporter about once a second."""

    worker: int
    elapsed: float
    open: int
    established: int
    failed: int
    dropped: int
    sent: int
    received: int
    errors: int
    # Echo latency samples of the last interval, as (bucket index, count), mergeable.
    latency_buckets: tuple[tuple[int, int], ...] = ()
    # Every error so far by class (connection and echo errors alike).
    error_classes: tuple[tuple[str, int], ...] = ()
    cpu_seconds: float = 0.0  # the worker's CPU time so far
    loop_lag_max_ns: int = 0  # its event loop's longest lag since the last snapshot


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the run, decided by the parent (pre-flight included)."""

    index: int
    connections: int
    first_connection: int  # global index of this worker's first connection
    connect_rate: float  # per second for this worker; 0 = unpaced
    family: int
    sockaddr: tuple[Any, ...]
    sources: tuple[str, ...] = ()
    start_wall: float = field(default_factory=time.time)


class Worker:
    """Drives one process's connections; :meth:`run` returns its Stats."""

    def __init__(
        self,
        cfg: LoadConfig,
        plan: WorkerPlan,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.plan = plan
        self.progress = progress
        self.stats = Stats()
        self.live = LiveCounters()
        self.lateness = TimerLateness()
        # A mix of sessions (--scenario): each scenario's settings, built once.
        self._sessions = [scenario.apply(cfg) for scenario in cfg.scenarios]
        self._weights = [scenario.weight for scenario in cfg.scenarios]
        self.filler = Filler(max([cfg.sizes.high] + [c.sizes.high for c in self._sessions]))
        self.rng = random.Random(None if cfg.seed is None else cfg.seed + plan.index)
        self.connections: set[EchoConnection] = set()
        self.established = 0
        self.failed = 0
        self.dropped = 0
        self.closed = 0
        self._stop = False
        self._stopping: asyncio.Event | None = None
        self._all_closed: asyncio.Event | None = None
        self._launched = 0
        self._connecting = 0
        self._ssl: ssl.SSLContext | None = None
        self._started = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_open = 0.0
        self._frozen_at = 0
        self._latency_seen: list[int] = []  # latency bucket counts at the last snapshot
        self._rate = cfg.rate  # open loop: per connection now (stages ramp it)
        # Load shapes (stages, churn, reconnect): slots are connections connecting or
        # running, kept at ``_wanted`` by :meth:`_refill`.
        self._replacing = cfg.replaces_connections
        self._wanted = plan.connections
        self._slots = 0
        self._opened_slots = 0  # slots filled so far (numbers the connections)
        self._control_start = 0.0
        self._refill_handle: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._cpu0 = 0.0
        self._lag_max = 0  # the longest event-loop lag since the last snapshot, ns

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Worker.run() not started"
        return self._loop

    def request_stop(self) -> None:
        """Stop early (signal handlers call this; it only sets a flag)."""
        self._stop = True
        self.stats.interrupted = True
        if self._stopping is not None:
            self._stopping.set()

    # -- callbacks from connections ----------------------------------------------

    def on_error(self, category: str) -> None:
        self.stats.error(category)

    def on_dropped(self) -> None:
        self.dropped += 1

    def on_closed(self, conn: EchoConnection) -> None:
        self.connections.discard(conn)
        if conn.was_open:
            self.closed += 1  # one that had opened: the open count over time drops
        self._check_done()

    def _check_done(self) -> None:
        if (
            self._all_closed is not None
            and not self.connections
            and self._connecting == 0
            and self._launched >= self.plan.connections
        ):
            self._all_closed.set()

    # -- main ---------------------------------------------------------------------

    async def run(self, handle_signals: bool = False) -> Stats:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        if self.cfg.target.secure:
            self._ssl = make_ssl_context(self.cfg.insecure)
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self.request_stop)
        gc_threshold = gc.get_threshold()
        # Full collections over tens of thousands of live connections stall the loop
        # for a second or more; freezing the long-lived objects keeps them out of it.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        self._started = time.monotonic()
        cpu0 = self._cpu0 = time.process_time()
        wait0 = run_queue_wait_ns()
        helpers = [
            asyncio.ensure_future(self._lag_probe()),
            asyncio.ensure_future(self._sweeper()),
        ]
        launch = self._control if self.cfg.replaces_connections else self._launch
        launcher = asyncio.ensure_future(launch())
        last: dict[str, int] = dict.fromkeys(SERIES, 0)
        helpers.append(asyncio.ensure_future(self._ticker(last)))
        try:
            await self._wait_for_end()
            active = time.monotonic() - self._started
            active_cpu = time.process_time() - cpu0
            wait1 = run_queue_wait_ns()
            # Time the loop was ready to run but another process had the CPU.
            waited = (wait1 - wait0) / 1e9 if wait0 is not None and wait1 is not None else None
            await self._shutdown(launcher)
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.loop.remove_signal_handler(sig)
            gc.unfreeze()
            gc.set_threshold(*gc_threshold)
        # The series then add up to the totals; these counts belong to the current second.
        self._sample(last, int(time.time() - self.plan.start_wall), report=False)
        # Throughput counts the active phase only, not the drain and close at the end.
        self._finalize(active, active_cpu, waited)
        return self.stats

    async def _wait_for_end(self) -> None:
        assert self._stopping is not None and self._all_closed is not None
        waiters = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._all_closed.wait()),
        ]
        timeout = self.cfg.duration
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _shutdown(self, launcher: asyncio.Future[None]) -> None:
        """Stop launching, let echoes in flight arrive (up to the timeout), close all."""
        assert self._all_closed is not None
        self._stop = True
        launcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await launcher
        for conn in list(self.connections):
            conn.finish()
        self._check_done()
        deadline = self.cfg.timeout + 2 * 2.0  # drain + close handshake
        try:
            await asyncio.wait_for(self._all_closed.wait(), deadline)
        except asyncio.TimeoutError:
            log.warning("%d connections did not close in time; aborting", len(self.connections))
            for conn in list(self.connections):
                conn.abort()
            await asyncio.sleep(0)

    async def _launch(self) -> None:
        plan = self.plan
        semaphore = asyncio.Semaphore(self.cfg.connect_concurrency)
        interval = 1.0 / plan.connect_rate if plan.connect_rate > 0 else 0.0
        start = self.loop.time()
        pending: set[asyncio.Future[None]] = set()
        launched = 0
        try:
            for k in range(plan.connections):
                if self._stop:
                    break
                if interval:
                    delay = start + k * interval - self.loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await semaphore.acquire()
                if self._stop:
                    semaphore.release()
                    break
                self._launched += 1
                launched += 1
                self._connecting += 1
                task = asyncio.ensure_future(self._connect(plan.first_connection + k, semaphore))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            # The run ended (or was stopped) before these were tried: said, not left out.
            self.stats.counters["connections_not_attempted"] += plan.connections - launched
            self._launched = plan.connections  # nothing more will come
            if pending and not self._stop:
                await asyncio.gather(*pending, return_exceptions=True)
            self._check_done()

    async def _control(self) -> None:
        """Keep the connections wanted open: stages ramp them, churn and drops replace them.

        A slot is refilled the moment it is free (see :meth:`on_stopped`), so churn and
        reconnect go at the server's pace; this loop only moves the stages' targets on and
        retries connections that failed, once per tick.
        """
        profile = self.cfg.profile
        share = self.plan.connections / self.cfg.connections  # this worker's part of targets
        self._control_start = self.loop.time()
        try:
            while not self._stop:
                if profile is not None:
                    connections, rate = profile.at(self.loop.time() - self._control_start)
                    self._wanted = round(connections * share)
                    if self._rate and abs(rate - self._rate) > _RATE_STEP * self._rate:
                        self._rate = rate
                        for conn in self.connections:
                            conn.set_rate(rate)
                self._refill()
                await asyncio.sleep(_CONTROL_INTERVAL)
        finally:
            self._launched = self.plan.connections  # nothing more will come
            self._check_done()

    def _schedule_refill(self, delay: float = 0.0) -> None:
        if self._refill_handle is None and self._replacing and not self._stop:
            self._refill_handle = self.loop.call_later(delay, self._refill)

    def _refill(self) -> None:
        """Open connections into the free slots, or finish some when there are too many."""
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        if self._stop:
            return
        plan = self.plan
        excess = self._slots - self._wanted
        if excess > 0:  # a stage on its way down
            for conn in list(self.connections):
                if excess <= 0:
                    break
                if conn.running:
                    conn.finish()
                    excess -= 1
            return
        allowed = min(-excess, self.cfg.connect_concurrency - self._connecting)
        if plan.connect_rate > 0:
            due = plan.connect_rate * (self.loop.time() - self._control_start)
            if int(due) + 1 - self._opened_slots < allowed:
                allowed = int(due) + 1 - self._opened_slots
                # Back when the next one is due, not a tick later.
                self._schedule_refill((int(due) + 1 - due) / plan.connect_rate)
        for _ in range(allowed):
            self._slots += 1
            self._connecting += 1
            number = plan.first_connection + self._opened_slots
            self._opened_slots += 1
            task = asyncio.ensure_future(self._connect(number, None))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def on_stopped(self, conn: EchoConnection) -> None:
        # A started connection stopped sending: its slot is free for another.
        if self._replacing:
            self._slots -= 1
            self._schedule_refill()

    async def _connect(self, number: int, semaphore: asyncio.Semaphore | None) -> None:
        """Open connection ``number`` and start it; ``semaphore`` bounds the handshakes in
        progress (None: the control loop counts them in ``_connecting`` and slots)."""
        cfg = self.cfg
        stats = self.stats
        stats.counters["connections_attempted"] += 1
        started = time.monotonic_ns()
        phase = ["connect"]
        holder: list[EchoConnection] = []
        try:
            await asyncio.wait_for(self._open(number, phase, holder), cfg.connect_timeout)
        except asyncio.TimeoutError:
            self._failed(f"{phase[0]}_timeout", holder)
        except ConnectionRefusedError:
            self._failed("refused", holder)
        except HandshakeError as exc:
            log.debug("handshake failed: %s", exc)
            self._failed(exc.category, holder)
        except ssl.SSLError as exc:
            log.debug("TLS failed: %s", exc)
            self._failed("tls_error", holder)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "error")
            self._failed(f"os_{name}", holder)
        except asyncio.CancelledError:
            self._failed("cancelled", holder)
            raise
        else:
            conn = holder[0]
            stats.histograms["handshake"].record(time.monotonic_ns() - started)
            self.established += 1
            self._last_open = time.monotonic()
            stats.peak_open = max(stats.peak_open, len(self.connections))
            if self._stop:
                conn.close()
            else:
                conn.set_rate(self._rate)
                if conn.start():
                    if self._replacing and self._slots < self._wanted:
                        # Places waited for a handshake's room (--connect-concurrency).
                        self._schedule_refill()
                    return  # its slot is freed by on_stopped()
        finally:
            self._connecting -= 1
            if semaphore is not None:
                semaphore.release()
            self._check_done()
        if self._replacing:
            # Failed, or closed before it could start: the slot is free again. A failure is
            # retried on the control loop's next tick, not at once, so a server that refuses
            # is not hammered in a busy loop.
            self._slots -= 1

    async def _open(self, number: int, phase: list[str], holder: list[EchoConnection]) -> None:
        cfg = self.cfg
        plan = self.plan
        sock = socket.socket(plan.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if plan.sources:
                # Let the kernel pick the port per 4-tuple, not per source address.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((plan.sources[number % len(plan.sources)], 0))
            await self.loop.sock_connect(sock, plan.sockaddr)
        except BaseException:
            sock.close()
            raise
        phase[0] = "tls" if self._ssl is not None else "handshake"
        request = HandshakeRequest(
            host=cfg.target.host_header,
            path=cfg.target.path,
            headers=cfg.headers,
            origin=cfg.origin,
            subprotocols=cfg.subprotocols,
            deflate=cfg.deflate,
        )
        histograms = self.stats.histograms
        cfg = self._session_config()
        tracker = EchoTracker(
            self.live,
            histograms["latency"],
            histograms["latency_uncorrected"] if cfg.mode == "open" else None,
            cfg.sizes,
            self.filler,
            self.rng,
        )
        conn = EchoConnection(
            self, cfg, request, tracker, self.live, histograms["schedule_lag"], self.lateness
        )
        holder.append(conn)
        await self.loop.create_connection(
            lambda: conn,
            sock=sock,
            ssl=self._ssl,
            server_hostname=cfg.target.host if self._ssl is not None else None,
        )
        phase[0] = "handshake"
        self.connections.add(conn)
        await conn.opened

    def _session_config(self) -> LoadConfig:
        """The settings of the next session: the run's, or a scenario's drawn by weight."""
        scenarios = self.cfg.scenarios
        if not scenarios:
            return self.cfg
        [index] = self.rng.choices(range(len(scenarios)), self._weights)
        self.stats.counters[f"scenario:{scenarios[index].spec}"] += 1
        return self._sessions[index]

    def _failed(self, category: str, holder: list[EchoConnection]) -> None:
        self.failed += 1
        self.stats.error(category)
        if holder:
            conn = holder[0]
            self.connections.discard(conn)
            conn.abort()

    # -- periodic helpers -----------------------------------------------------------

    async def _lag_probe(self) -> None:
        # time.monotonic_ns, not loop.time(): uvloop's clock has millisecond resolution.
        lag = self.stats.histograms["loop_lag"]
        interval_ns = int(_LAG_INTERVAL * 1e9)
        while True:
            before = time.monotonic_ns()
            await asyncio.sleep(_LAG_INTERVAL)
            late = time.monotonic_ns() - before - interval_ns
            lag.record(late)
            self._lag_max = max(self._lag_max, late)

    async def _sweeper(self) -> None:
        timeout_ns = int(self.cfg.timeout * 1e9)
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            deadline = time.monotonic_ns() - timeout_ns
            for conn in list(self.connections):
                conn.expire(deadline)

    async def _ticker(self, last: dict[str, int]) -> None:
        # Samples fall on whole fractions of the seconds since the run's common wall-clock
        # start, so each one's counts belong to one second, the same in every worker/host.
        per_second = math.ceil(1.0 / min(1.0, self.cfg.progress_interval))
        while True:
            periods = (time.time() - self.plan.start_wall) * per_second
            tick = math.floor(periods) + 1
            await asyncio.sleep((tick - periods) / per_second)
            if self.established > self._frozen_at:
                # New connections since the last freeze: take them out of GC scans too.
                self._frozen_at = self.established
                gc.freeze()
            self._sample(last, (tick - 1) // per_second)

    def _sample(self, last: dict[str, int], second: int, report: bool = True) -> None:
        """Add what happened since the previous sample to the series at ``second``."""
        live = self.live
        current = {
            "established": self.established,
            "failed": self.failed,
            "dropped": self.dropped,
            "closed": self.closed,
            "received": live.received,
            "sent": live.sent,
            "echo_errors": sum(getattr(live, name) for name in ECHO_ERRORS),
        }
        for name, value in current.items():
            self.stats.tick(name, second, value - last[name])
            last[name] = value
        latency = self.stats.histograms["latency"]
        interval = latency.new_since(self._latency_seen)
        self._latency_seen = list(latency.counts)
        self.stats.tick_latency(second, interval)
        self.stats.peak_open = max(self.stats.peak_open, len(self.connections))
        if report and self.progress is not None:
            self.progress(self.snapshot(interval))

    def snapshot(self, latency_buckets: list[tuple[int, int]] | None = None) -> Progress:
        """Running totals; ``latency_buckets``: the latency samples since the last one."""
        live = self.live
        classes = Counter(self.stats.errors)
        for name, category in ECHO_ERRORS.items():
            classes[category] += getattr(live, name)
        classes = +classes  # drop the zeros
        return Progress(
            worker=self.plan.index,
            elapsed=time.monotonic() - self._started,
            open=len(self.connections),
            established=self.established,
            failed=self.failed,
            dropped=self.dropped,
            sent=live.sent,
            received=live.received,
            errors=sum(classes.values()),
            latency_buckets=tuple(latency_buckets or ()),
            error_classes=tuple(sorted(classes.items())),
            cpu_seconds=time.process_time() - self._cpu0,
            loop_lag_max_ns=self._take_lag_max(),
        )

    def _take_lag_max(self) -> int:
        lag, self._lag_max = self._lag_max, 0
        return lag

    def _finalize(self, elapsed: float, cpu: float, waited: float | None) -> None:
        stats = self.stats
        live = self.live
        counters = stats.counters
        counters["connections_established"] += self.established
        counters["connections_failed"] += self.failed
        counters["connections_dropped"] += self.dropped
        counters["messages_sent"] += live.sent
        counters["messages_received"] += live.received
        counters["bytes_sent"] += live.bytes_sent
        counters["bytes_received"] += live.bytes_received
        counters["messages_intended"] += live.intended
        for name, category in ECHO_ERRORS.items():
            count = getattr(live, name)
            counters[name] += count
            if count:
                stats.error(category, count)
        if counters["connections_not_attempted"]:
            stats.error("not_attempted", counters["connections_not_attempted"])
        if self.cfg.mode == "closed":
            # Sent when intended: the uncorrected figure is the corrected one.
            stats.histograms["latency_uncorrected"].merge(stats.histograms["latency"])
        stats.elapsed = elapsed
        if self._last_open:
            stats.ramp_seconds = self._last_open - self._started
        stats.cpu_seconds = cpu
        stats.start_time = self.plan.start_wall
        stats.windows = [[self.plan.start_wall, self.plan.start_wall + elapsed]]
        lag = stats.histograms["loop_lag"]
        sched = stats.histograms["schedule_lag"]
        stats.workers.append(
            {
                "index": self.plan.index,
                "connections": self.plan.connections,
                "elapsed": elapsed,
                "cpu_fraction": cpu / elapsed if elapsed > 0 else 0.0,
                # None where the kernel does not tell (no schedstat).
                "run_queue_fraction": (
                    waited / elapsed if waited is not None and elapsed > 0 else None
                ),
                "loop_lag_p99_ms": lag.percentile(99) / 1e6,
                "loop_lag_max_ms": lag.maximum / 1e6,
                "schedule_lag_p99_ms": sched.percentile(99) / 1e6,
            }
        )


def run_queue_wait_ns(path: str = SCHEDSTAT) -> int | None:
    """Nanoseconds this thread has spent runnable but waiting for a CPU (None: unknown)."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def make_ssl_context(insecure: bool) -> ssl.SSLContext:
    """TLS client context; ``insecure`` skips certificate and host name checks."""
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run_in_loop(coro_factory: Callable[[], Any], loop_name: str) -> Any:
    """Run a coroutine on uvloop when asked (or 'auto' and installed), else asyncio."""
    missing = LoadtestError("--loop uvloop: uvloop is not installed")
    return eventloop.run(coro_factory(), loop_name, missing)


def _worker_process(
    cfg: LoadConfig, plan: WorkerPlan, loop_name: str, results: multiprocessing.Queue[Any]
) -> None:
    # The parent owns Ctrl-C; a worker stops on SIGINT/SIGTERM via its own handler.
    def report(progress: Progress) -> None:
        results.put(("progress", plan.index, progress))

    try:
        worker = Worker(cfg, plan, report)
        stats = run_in_loop(lambda: worker.run(handle_signals=True), loop_name)
        results.put(("result", plan.index, stats.to_dict()))
    except Exception as exc:  # task boundary: the parent must hear about any failure
        log.exception("worker %d failed", plan.index)
        results.put(("error", plan.index, repr(exc)))


def run(
    cfg: LoadConfig,
    plans: list[WorkerPlan],
    progress: Callable[[list[Progress]], None] | None = None,
    loop_name: str = "auto",
) -> Stats:
    """Run all workers (in this process if there is one) and merge their Stats."""
    if len(plans) == 1:
        plan = plans[0]

        def single(snapshot: Progress) -> None:
            if progress is not None:
                progress([snapshot])

        worker = Worker(cfg, plan, single)
        result: Stats = run_in_loop(lambda: worker.run(handle_signals=True), loop_name)
        return result
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Any] = ctx.Queue()
    processes = [
        ctx.Process(target=_worker_process, args=(cfg, plan, loop_name, results), daemon=True)
        for plan in plans
    ]
    interrupted: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: interrupted.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    forwarded = False
    silent_polls: dict[int, int] = {}
    merged = Stats()
    latest: dict[int, Progress] = {}
    failures: list[str] = []
    try:
        for process in processes:
            process.start()
        remaining = {plan.index for plan in plans}
        while remaining:
            if interrupted and not forwarded:
                # Ctrl-C may reach only this process: stop the workers the same way.
                forwarded = True
                for process in processes:
                    if process.pid is not None and process.is_alive():
                        os.kill(process.pid, signal.SIGTERM)
            try:
                kind, index, payload = results.get(timeout=0.5)
            except queue.Empty:
                for plan, process in zip(plans, processes, strict=True):
                    if plan.index in remaining and not process.is_alive():
                        # A result may still be in the pipe: give it one more poll.
                        silent_polls[plan.index] = silent_polls.get(plan.index, 0) + 1
                        if silent_polls[plan.index] > 1:
                            remaining.discard(plan.index)
                            failures.append(f"worker {plan.index} exited with {process.exitcode}")
                continue
            if kind == "progress":
                latest[index] = payload
                if progress is not None and len(latest) == len(plans):
                    progress([latest[i] for i in sorted(latest)])
            elif kind == "result":
                merged.merge(Stats.from_dict(payload))
                remaining.discard(index)
            else:
                failures.append(f"worker {index} failed: {payload}")
                remaining.discard(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    if failures:
        raise LoadtestError("; ".join(failures))
    return merged
