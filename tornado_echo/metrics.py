"""Prometheus metrics, kept off the echo path.

Per-message counts live in plain integers on each session (see :class:`Connections`); they
are folded into the Prometheus counters by :meth:`Metrics.refresh`, which the server calls
every second and before each scrape. The echo path therefore pays nothing for metrics.

With several worker processes (``workers > 1``) the values go through prometheus_client's
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is
first imported (the CLI does this before importing the server), and any worker answers a
scrape with the sum over all of them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .connections import Connections
from .store import Store
from .throttle import LogThrottle

logger = logging.getLogger(__name__)
# Refused upgrades are logged under the handler's name, where operators look for them.
rejection_logger = logging.getLogger("tornado_echo.handlers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class _Synced:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    store_written: int = 0
    store_errors: int = 0
    store_lost: int = 0


class Metrics:
    """The metrics of one process, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections_open = Gauge(
            "tornado_echo_connections_open",
            "Open WebSocket sessions",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "tornado_echo_connections", "WebSocket sessions opened", registry=registry
        )
        self.handshakes = Counter(
            "tornado_echo_handshakes",
            "Upgrade requests by outcome (accepted or HTTP status)",
            ["outcome"],
            registry=registry,
        )
        self.rejections = Counter(
            "tornado_echo_rejections", "Refused upgrades by reason", ["reason"], registry=registry
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
            "Ended sessions by close code and end state",
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
        self._synced = _Synced()
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

    def refresh(self, connections: Connections, store: Store) -> None:
        """Fold the plain counters of sessions and store into the Prometheus metrics."""
        traffic = connections.traffic()
        synced = self._synced
        self.connections_open.set(len(connections))
        self.messages.labels("in").inc(traffic.messages_in - synced.messages_in)
        self.messages.labels("out").inc(traffic.messages_out - synced.messages_out)
        self.bytes.labels("in").inc(traffic.bytes_in - synced.bytes_in)
        self.bytes.labels("out").inc(traffic.bytes_out - synced.bytes_out)
        synced.messages_in, synced.messages_out = traffic.messages_in, traffic.messages_out
        synced.bytes_in, synced.bytes_out = traffic.bytes_in, traffic.bytes_out

        status = store.status()
        self.store_queue.set(status.pending)
        self.store_oldest.set(status.oldest_pending_age)
        self.store_available.set(1 if status.available else 0)
        self.store_written.inc(status.written - synced.store_written)
        self.store_errors.inc(status.errors - synced.store_errors)
        self.store_lost.inc(status.dropped - synced.store_lost)
        synced.store_written, synced.store_errors = status.written, status.errors
        synced.store_lost = status.dropped

    def exposition(self) -> bytes:
        """The text format for a scrape: this process, or every worker in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(combined))
        return bytes(generate_latest(self.registry))
