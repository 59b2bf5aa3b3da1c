"""Prometheus metrics, kept off the echo path.

Per-message counts live in plain integers on each session (see :class:`Connections`); they
are folded into the Prometheus counters by :meth:`Metrics.refresh`, which the server calls
on each housekeeping tick (``tornado_echo.server.TICK``) and before each scrape. The echo
path therefore pays nothing for metrics.

With several worker processes (``workers > 1``) the values go through prometheus_client's
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is
first imported (the CLI does this before importing the server), and any worker answers a
scrape with the sum over all of them.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .connections import Connections, Traffic
from .store import Store

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        self.store_shed = Counter(
            "tornado_echo_store_payloads_shed",
            "Journal payloads not kept (metadata kept) because store memory was full",
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
        # What refresh() has added to the counters so far: each call adds the difference.
        self._folded_traffic = Traffic()
        self._folded_store = (0, 0, 0, 0)  # records written, errors, lost, shed

    def refresh(self, connections: Connections, store: Store) -> None:
        """Fold the plain counters of sessions and store into the Prometheus metrics."""
        traffic = connections.traffic()
        folded = self._folded_traffic
        self.connections_open.set(len(connections))
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

    def exposition(self) -> bytes:
        """The text format for a scrape: this process, or every worker in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(combined))
        return bytes(generate_latest(self.registry))
