"""Metrics.refresh folds running totals into the Prometheus counters exactly once."""

from __future__ import annotations

from dataclasses import dataclass

from tests.helpers import metric
from tornado_echo.connections import Connections
from tornado_echo.metrics import Metrics
from tornado_echo.store import Store


@dataclass(eq=False)
class Session:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def close_for_shutdown(self, code: int, reason: str) -> None:
        pass


def test_each_refresh_adds_only_what_is_new(store: Store, connections: Connections) -> None:
    metrics = Metrics()
    ended, running = Session(2, 2, 10, 10), Session(1, 1, 5, 5)
    connections.add(ended)
    connections.add(running)
    metrics.refresh(connections, store)
    connections.discard(ended)  # its traffic stays in the totals
    running.messages_in, running.bytes_in = 4, 20
    metrics.refresh(connections, store)
    metrics.refresh(connections, store)
    text = metrics.exposition().decode()
    assert metric(text, 'tornado_echo_messages_total{direction="in"}') == 6
    assert metric(text, 'tornado_echo_messages_total{direction="out"}') == 3
    assert metric(text, 'tornado_echo_bytes_total{direction="in"}') == 30
    assert metric(text, "tornado_echo_connections_open") == 1
    assert metric(text, "tornado_echo_store_records_written_total") == 0
