"""Connections per client address: the pure counter, and the limit over real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import json_body, make_server, open_raw_websocket, raw_http, upgrade_request
from tornado_echo.connections import (
    SESSION_IDS_PER_READ,
    AddressCounts,
    Connections,
    new_session_id,
)


def test_address_counts_admit_up_to_the_limit_and_forget_released_addresses() -> None:
    counts = AddressCounts()
    assert counts.admit("192.0.2.1", 2) and counts.admit("192.0.2.1", 2)
    assert not counts.admit("192.0.2.1", 2)
    assert counts.admit("192.0.2.2", 2)  # another address has its own count
    counts.release("192.0.2.1")
    assert counts.admit("192.0.2.1", 2)
    for address in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        counts.release(address)
    assert len(counts) == 0
    assert all(counts.admit("192.0.2.9", 0) for _ in range(100))  # 0: no limit


def test_admit_refuses_while_draining_at_the_limit_and_per_address() -> None:
    connections = Connections()
    assert connections.admit("10.0.0.1", 2, 1) is None
    assert connections.admit("10.0.0.1", 2, 1) == (
        "address_limit",
        "too many connections from your address",
    )
    assert connections.admit("10.0.0.2", 2, 1) is None
    assert connections.admit("10.0.0.3", 2, 0) == ("connection_limit", "connection limit reached")
    connections.release("10.0.0.1")
    assert (connections.admitted, len(connections.per_address)) == (1, 1)
    assert connections.admit("10.0.0.1", 2, 1) is None  # released: admitted again
    connections.release("10.0.0.1")
    connections.start_draining()
    assert connections.admit("10.0.0.4", 2, 0) == ("draining", "server is shutting down")
    connections.release("10.0.0.2")
    assert (connections.admitted, len(connections.per_address)) == (0, 0)


def test_ipv6_clients_are_counted_per_64() -> None:
    counts = AddressCounts()
    assert counts.admit("2001:db8:1:2::1", 1)
    assert not counts.admit("2001:db8:1:2:ffff::7", 1)
    assert counts.admit("2001:db8:1:3::1", 1)
    assert AddressCounts.key("::ffff:192.0.2.1") == "192.0.2.1"


@pytest.mark.parametrize(
    "address", ["192.0.2.1", "0.0.0.0", "127.1", "010.0.0.1", "256.1.1.1", "1.2.3.4.5", "x"]
)
def test_an_address_without_a_colon_is_its_own_key_as_ipaddress_would_spell_it(
    address: str,
) -> None:
    try:
        spelled = str(ipaddress.ip_address(address))
    except ValueError:
        spelled = address  # not an address: counted as given
    assert AddressCounts.key(address) == spelled == address


@pytest.mark.gen_test(timeout=30)
async def test_upgrades_beyond_the_per_address_limit_get_503(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(tmp_path, sqlite_url, max_connections_per_ip=2)
    await server.start()
    try:
        first, second = [await open_raw_websocket(server.port) for _ in range(2)]
        status, _, body = await raw_http(server.port, upgrade_request())
        assert (status, json_body(body)["error"]) == (503, "too many connections from your address")
        first[1].close()
        while len(server.connections) > 1:
            await asyncio.sleep(0.01)
        third = await open_raw_websocket(server.port)
        for _, writer in (second, third):
            writer.close()
        scrape = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        metrics = (await raw_http(server.port, scrape))[2]
        assert b'tornado_echo_rejections_total{reason="address_limit"} 1.0' in metrics
    finally:
        await server.shutdown()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert len(server.connections.per_address) == 0


def test_session_ids_are_time_ordered_uuids() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_session_id() for _ in range(3 * SESSION_IDS_PER_READ)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids[:: SESSION_IDS_PER_READ // 2]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert before <= parsed.int >> 80 <= after
    # Ordered by time (as text too), random within a millisecond.
    assert [text[:13] for text in ids] == sorted(text[:13] for text in ids)


def test_a_forked_process_does_not_repeat_its_parents_session_ids() -> None:
    new_session_id()  # the pool holds ids the parent has not handed out yet
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writing, new_session_id().encode())
        os._exit(0)
    os.close(writing)
    os.waitpid(child, 0)
    from_child = os.read(reading, 100).decode()
    os.close(reading)
    assert from_child != new_session_id()
