"""Prometheus metrics, kept off the echo path.

Per-message counts live in plain integers on each session (see :class:`Connections`); they
are folded into the Prometheus counters by :meth:`Metrics.refresh`, which the server calls
on each housekeeping tick (``tornado_echo.process.server.TICK``) and before each scrape. The echo
path pays one list increment per message (:meth:`Metrics.observe_message`), folded into the
message-size histogram the same way. Sessions opened and ended are counted the same way
(:meth:`Metrics.session_opened`, :meth:`Metrics.observe_close`): a prometheus_client update
takes a lock and, in multiprocess mode, checks the pid (a system call) and writes its mmap
file, four or five times per session in handshake churn.

With several worker processes (``workers > 1``) the values go through prometheus_client's
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is
first imported (the CLI does this before importing the server), and any worker answers a
scrape with the sum over all of them.
"""

from __future__ import annotations

import bisect
import logging
import os
import platform
import time

import tornado
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from tornado_echo import __version__
from tornado_echo.compat import add_to_histogram
from tornado_echo.config import Config
from tornado_echo.connections import Connections, Traffic
from tornado_echo.engines.budget import made_budgets
from tornado_echo.observability import MULTIPROC_ENV
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store import Store
from tornado_echo.store.handoff import JournalStatus
from tornado_echo.wire import CloseCode

logger = logging.getLogger(__name__)
# Refused upgrades are logged under the handler's name, where operators look for them.
rejection_logger = logging.getLogger("tornado_echo.web.echo")

# The ``code`` label takes these (RFC 6455 section 7.4 and the IANA registry); any other
# code a client sends is "other", so a stranger cannot mint series.
KNOWN_CLOSE_CODES = frozenset(int(code) for code in CloseCode)
# Every value these labels take is known in advance and exported from the start, at zero
# (Prometheus's "avoid missing metrics"): a fresh server has every series, so no panel reads
# "No data" and rate() or increase() see the first event of each kind after a restart.
# Handshake outcomes: accepted, or the HTTP status of a refusal (web/echo.py).
HANDSHAKE_OUTCOMES = ("accepted", "403", "500", "503")
# Why a request or upgrade was refused (web/echo.py, http/listener.py); "error" is an
# exception while opening. tests/observability/test_metrics.py finds every label the code
# passes and checks that it is here.
REFUSAL_REASONS = (
    "method",
    "http_version",
    "upgrade_header",
    "connection_header",
    "version",
    "key",
    "host",
    "origin",
    "draining",
    "connection_limit",
    "address_limit",
    "error",
    "request_headers",
    "request_body",
    "connection_limit_http",
    "address_limit_http",
    "idle_http_evicted",
    "bad_request",
)
DIRECTIONS = ("in", "out")
# How a session that had opened ends (web/echo.py); open and crashed are database states.
CLOSE_END_STATES = ("closed", "aborted", "server_shutdown")
MESSAGE_SIZE_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
DURATION_BUCKETS = (0.1, 1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


def close_code_label(code: int) -> str:
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class Metrics:
    """The metrics of one process, registered in their own registry.

    :meth:`configure` sets what comes from the configuration (build info, max_connections);
    call it again after a reload.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.build_info = Gauge(
            "tornado_echo_build_info",
            "Always 1; the labels say what runs",
            ["version", "python", "tornado", "engine"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.max_connections = Gauge(
            "tornado_echo_max_connections",
            "Configured connection limit (summed over workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connection_seconds = Histogram(
            "tornado_echo_connection_duration_seconds",
            "How long ended WebSocket sessions lasted",
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.message_bytes = Histogram(
            "tornado_echo_message_size_bytes",
            "Payload sizes of received messages",
            registry=registry,
            buckets=MESSAGE_SIZE_BUCKETS,
        )
        # Per bucket (the last is +Inf) since the last refresh; plain ints on the echo path.
        self._sizes = [0] * (len(MESSAGE_SIZE_BUCKETS) + 1)
        self._sizes_sum = 0
        self._process = ProcessCollector(registry=None)
        if self.multiprocess:
            # Collectors are not shared between processes: each worker copies its own
            # figures into multiprocess values, one series per worker pid (liveall).
            self._process_gauges = {
                name: Gauge(name, doc, registry=registry, multiprocess_mode="liveall")
                for name, doc in (
                    ("process_open_fds", "Open file descriptors"),
                    ("process_max_fds", "Maximum open file descriptors"),
                    ("process_resident_memory_bytes", "Resident memory size in bytes"),
                    ("process_virtual_memory_bytes", "Virtual memory size in bytes"),
                    ("process_start_time_seconds", "Start time since the epoch in seconds"),
                )
            }
            self.cpu_seconds = Counter(
                "process_cpu_seconds",
                "User and system CPU time of every worker, in seconds",
                registry=registry,
            )
            self._folded_cpu = 0.0  # what the counter holds of this process's CPU time
        else:
            registry.register(self._process)
        self.connections_open = Gauge(
            "tornado_echo_connections_open",
            "Open WebSocket sessions",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "tornado_echo_connections", "WebSocket sessions opened", registry=registry
        )
        self.inflight_bytes = Gauge(
            "tornado_echo_inflight_bytes",
            "Bytes of messages in flight (inflated, awaiting their echo or to be deflated)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.turn_waiting = Gauge(
            "tornado_echo_turn_waiting",
            "Connections waiting for a turn of the loop's work budget or for memory",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.handshakes = Counter(
            "tornado_echo_handshakes",
            "Upgrade requests by outcome (accepted or HTTP status)",
            ["outcome"],
            registry=registry,
        )
        self.accepted = self.handshakes.labels("accepted")  # every upgrade: looked up once
        self.rejections = Counter(
            "tornado_echo_rejections",
            "Refused requests and upgrades by reason",
            ["reason"],
            registry=registry,
        )
        self.tls_failures = Counter(
            "tornado_echo_tls_failures",
            "TLS connections ended by a TLS error, mostly failed handshakes (plain HTTP on"
            " the TLS port, a client that does not trust the certificate)",
            registry=registry,
        )
        self.messages = Counter(
            "tornado_echo_messages", "Messages by direction", ["direction"], registry=registry
        )
        self.bytes = Counter(
            "tornado_echo_bytes",
            "Message payload bytes by direction",
            ["direction"],
            registry=registry,
        )
        self.close_codes = Counter(
            "tornado_echo_close_codes",
            "Ended sessions by close code (known codes, else other) and end state",
            ["code", "end_state"],
            registry=registry,
        )
        self.store_queue = Gauge(
            "tornado_echo_store_queue_depth",
            "Records waiting to be written",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.store_oldest = Gauge(
            "tornado_echo_store_oldest_pending_seconds",
            "Age of the oldest unwritten record",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.store_available = Gauge(
            "tornado_echo_store_available",
            "1 when the database is reachable",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.store_written = Counter(
            "tornado_echo_store_records_written",
            "Records written to the database",
            registry=registry,
        )
        self.store_errors = Counter(
            "tornado_echo_store_errors",
            "Failed database operations (each retried)",
            registry=registry,
        )
        self.store_lost = Counter(
            "tornado_echo_store_records_lost", "Records that could not be kept", registry=registry
        )
        self.store_shed = Counter(
            "tornado_echo_store_payloads_shed",
            "Journal payloads not kept (metadata kept) because store memory was full",
            registry=registry,
        )
        self.store_spool_bytes = Gauge(
            "tornado_echo_store_spool_bytes",
            "Bytes in the spool file waiting for the database",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # The journal writer process (journal_writer = "process"); zero without one.
        self.journal_queue_rows = Gauge(
            "tornado_echo_journal_queue_rows",
            "Journal rows handed to the writer process and not yet confirmed",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.journal_queue_bytes = Gauge(
            "tornado_echo_journal_queue_bytes",
            "Bytes of those rows (bounded; beyond, rows go to the store's queue and spool)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.journal_lag = Gauge(
            "tornado_echo_journal_lag_seconds",
            "How long the oldest unconfirmed journal row has waited for the writer process",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.journal_rows_per_second = Gauge(
            "tornado_echo_journal_rows_per_second",
            "Journal rows the writer process confirmed per second (over the last second or more)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.journal_written = Counter(
            "tornado_echo_journal_rows_written",
            "Journal rows the writer process confirmed written",
            registry=registry,
        )
        self.journal_spilled = Counter(
            "tornado_echo_journal_rows_spilled",
            "Journal rows sent the store's way because the writer process was behind",
            registry=registry,
        )
        self.journal_restarts = Counter(
            "tornado_echo_journal_writer_restarts",
            "Journal writer processes started again after one ended",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "tornado_echo_store_batch_seconds",
            "Time to write one batch",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.loop_lag = Histogram(
            "tornado_echo_event_loop_lag_seconds",
            "How late the event loop ran a timer",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        for outcome in HANDSHAKE_OUTCOMES:
            self.handshakes.labels(outcome)
        for reason in REFUSAL_REASONS:
            self.rejections.labels(reason)
        for direction in DIRECTIONS:
            self.messages.labels(direction)
            self.bytes.labels(direction)
        for code in [*map(str, sorted(KNOWN_CLOSE_CODES)), "other"]:
            for end_state in CLOSE_END_STATES:
                self.close_codes.labels(code, end_state)
        # The loop lag's sum and count as the histogram has them, without its collect().
        self.loop_lag_sum = 0.0
        self.loop_lag_count = 0
        # Per-session events since the last fold (plain ints, like the message sizes).
        self._opened = 0
        self._closes: dict[tuple[str, str], int] = {}  # (code label, end state) -> ended
        self._durations = [0] * (len(DURATION_BUCKETS) + 1)
        self._durations_sum = 0.0
        # What refresh() has added to the counters so far: each call adds the difference.
        self._folded_traffic = Traffic()
        self._folded_store = (0, 0, 0, 0)  # records written, errors, lost, shed
        self._folded_journal = (0, 0, 0)  # rows written, spilled, writer restarts
        self._journal_rate_from = (time.monotonic(), 0)  # (when, rows written then)
        self._rejection_log = LogThrottle(rejection_logger)

    def reject(
        self, peer: str | None, method: str, path: str, status: int, reason: str, label: str
    ) -> None:
        """Count a refused upgrade, and log it with fields: each ``label`` once per 10 s.

        A stranger can send refused upgrades as fast as the network allows: the counters
        take every one, the log a sample (with how many were withheld).
        """
        self.handshakes.labels(str(status)).inc()
        self.rejections.labels(label).inc()
        self._rejection_log.log(
            label,
            logging.WARNING,
            "rejected WebSocket upgrade from %s %s %s: %d %s",
            peer,
            method,
            path,
            status,
            reason,
            extra={"peer": peer, "status": status, "reason": reason, "rejection": label},
        )

    def configure(self, config: Config) -> None:
        """Export what the configuration says; again after a reload."""
        self.build_info.labels(
            __version__,
            platform.python_version(),
            tornado.version,
            config.engine,
        ).set(1)
        self.max_connections.set(config.max_connections)

    def observe_message(self, size: int) -> None:
        """A received message of ``size`` bytes; cheap, for the echo path."""
        self._sizes[bisect.bisect_left(MESSAGE_SIZE_BUCKETS, size)] += 1
        self._sizes_sum += size

    def observe_loop_lag(self, lag: float) -> None:
        """How late the loop ran its housekeeping timer; kept summed for the console too."""
        self.loop_lag.observe(lag)
        self.loop_lag_sum += lag
        self.loop_lag_count += 1

    def session_opened(self) -> None:
        """An upgrade accepted: a session opened (handshakes{accepted} and connections)."""
        self._opened += 1

    def observe_close(self, code: int, end_state: str, duration: float) -> None:
        """A session ended: its close code (bounded label), end state and duration."""
        key = (close_code_label(code), end_state)
        closes = self._closes
        closes[key] = closes.get(key, 0) + 1
        self._durations[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self._durations_sum += duration

    def fold_sessions(self) -> None:
        """Add the sessions opened and ended since the last fold to the Prometheus metrics."""
        opened, self._opened = self._opened, 0
        if opened:
            self.accepted.inc(opened)
            self.connections.inc(opened)
        closes, self._closes = self._closes, {}
        for key, count in closes.items():
            self.close_codes.labels(*key).inc(count)
        durations, self._durations = self._durations, [0] * len(self._durations)
        total, self._durations_sum = self._durations_sum, 0.0
        add_to_histogram(self.connection_seconds, durations, total)

    def refresh(self, connections: Connections, store: Store) -> None:
        """Fold the plain counters of sessions, store and process into the Prometheus metrics."""
        self._fold_message_sizes()
        self.fold_sessions()
        if self.multiprocess:
            self._copy_process_figures()
        traffic = connections.traffic()
        folded = self._folded_traffic
        self.connections_open.set(len(connections))
        budgets = made_budgets()
        if budgets is not None:
            self.inflight_bytes.set(budgets.memory.held)
            self.turn_waiting.set(budgets.turn.waiting + budgets.memory.waiting)
        self.messages.labels("in").inc(traffic.messages_in - folded.messages_in)
        self.messages.labels("out").inc(traffic.messages_out - folded.messages_out)
        self.bytes.labels("in").inc(traffic.bytes_in - folded.bytes_in)
        self.bytes.labels("out").inc(traffic.bytes_out - folded.bytes_out)
        self._folded_traffic = traffic

        status = store.status()
        self.store_queue.set(status.pending)
        self.store_oldest.set(status.oldest_pending_age)
        self.store_available.set(1 if status.available else 0)
        written, errors, lost, shed = self._folded_store
        self.store_written.inc(status.written - written)
        self.store_errors.inc(status.errors - errors)
        self.store_lost.inc(status.dropped - lost)
        self.store_shed.inc(status.shed - shed)
        self._folded_store = (status.written, status.errors, status.dropped, status.shed)
        self.store_spool_bytes.set(status.spool_bytes)
        if store.handoff is not None:
            self._fold_journal(store.handoff.status())

    def _fold_journal(self, journal: JournalStatus) -> None:
        self.journal_queue_rows.set(journal.queued_rows)
        self.journal_queue_bytes.set(journal.queued_bytes)
        self.journal_lag.set(journal.lag)
        written, spilled, restarts = self._folded_journal
        self.journal_written.inc(journal.written - written)
        self.journal_spilled.inc(journal.spilled - spilled)
        self.journal_restarts.inc(journal.restarts - restarts)
        self._folded_journal = (journal.written, journal.spilled, journal.restarts)
        now = time.monotonic()
        since, then = self._journal_rate_from
        if now - since >= 1.0:
            self.journal_rows_per_second.set((journal.written - then) / (now - since))
            self._journal_rate_from = (now, journal.written)

    def _fold_message_sizes(self) -> None:
        sizes, self._sizes = self._sizes, [0] * len(self._sizes)
        total, self._sizes_sum = self._sizes_sum, 0
        add_to_histogram(self.message_bytes, sizes, total)

    def _copy_process_figures(self) -> None:
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)
                elif sample.name == "process_cpu_seconds_total":
                    self.cpu_seconds.inc(max(0.0, sample.value - self._folded_cpu))
                    self._folded_cpu = sample.value

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) of a scrape in the format ``accept`` prefers (Prometheus
        text, or OpenMetrics): this process, or every worker in multiprocess mode."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess:
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return bytes(encoder(combined)), content_type
        return bytes(encoder(self.registry)), content_type
