"""The HTTP listener's limits over real sockets: bodies, slow headers, connection counts,
and an exhausted descriptor table."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from pathlib import Path

import pytest
import tornado.web
from tornado.httputil import HTTPHeaders

from tests.helpers import (
    BASE_CONF,
    Service,
    assert_no_traceback,
    client_frame,
    eventually,
    json_body,
    open_raw_websocket,
    raw_http,
    read_server_frame,
    start_service,
    started_server,
    upgrade_request,
)
from tornado_echo.http.listener import MAX_HEADER_SIZE, has_body
from tornado_echo.process.server import Server

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, False),
        ({"Content-Length": "0"}, False),
        ({"Content-Length": "1"}, True),
        ({"Content-Length": "x"}, True),
        ({"Transfer-Encoding": "chunked"}, True),
    ],
)
def test_has_body(headers: dict[str, str], expected: bool) -> None:
    assert has_body(HTTPHeaders(headers)) is expected


@pytest.mark.gen_test(timeout=30)
async def test_a_request_body_is_refused_with_413_before_it_is_read(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        announced = [
            b"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\nx",
            b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
            upgrade_request()[:-2] + b"Content-Length: 10\r\n\r\n",
        ]
        for raw in announced:
            # Answered at once, though the body announced never comes.
            status, headers, body = await raw_http(server.port, raw, timeout=2)
            assert (status, headers["connection"]) == (413, "close")
            assert "request bodies are not accepted" in json_body(body)["error"]
        assert (await raw_http(server.port, HEALTH[:-2] + b"Content-Length: 0\r\n\r\n"))[0] == 200
        assert len(server.connections) == 0
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_body_still_being_sent_does_not_reset_the_answer(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n")
        writer.write(os.urandom(1_000_000))  # more than the socket buffers hold
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413 ")
        writer.transport.abort()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_slow_headers_are_cut_off(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(tmp_path, sqlite_url, http_timeout=0.3, listener=listener)
    try:
        # A request, a WebSocket handshake, a byte at a time and then nothing at all.
        for stalled in (HEALTH[:-2], upgrade_request()[:-2], b"G", b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(stalled)  # ... and stall
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
        assert (await raw_http(server.port, HEALTH))[0] == 200
        assert server.http is not None
        await eventually(lambda: server.http is not None and server.http.open_http == 0)
        assert len(server.connections) == 0
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_oversized_headers_get_431_then_the_connection_closes(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        # Just over the limit, and far over it (more than Tornado reads before it stops).
        for size in (20 * 1024, 20 * 1024, 300 * 1024, 20 * 1024):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            writer.write(b"a" * size + b"\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), head
            assert b"\r\nConnection: close\r\n" in head
            body = await asyncio.wait_for(reader.read(), 5)  # the rest, then EOF
            assert json_body(body)["error"] == f"request headers over {MAX_HEADER_SIZE} bytes"
            writer.close()
        # A head that never ends is refused once over the limit, not held until it does.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 65536)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 431 "), head
        writer.close()
        assert (await raw_http(server.port, HEALTH))[0] == 200  # a new connection is served
        status, _, metrics = await raw_http(
            server.port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        assert status == 200
        assert b'tornado_echo_rejections_total{reason="request_headers"} 5.0' in metrics
    finally:
        await server.shutdown()
    # One line for the five, and nothing from Tornado itself.
    said = [r.getMessage() for r in caplog.records if r.name.startswith("tornado_echo.http.")]
    assert said == [f"refused a request from 127.0.0.1: headers over {MAX_HEADER_SIZE} bytes"]
    assert not [r for r in caplog.records if r.name.startswith("tornado.")]
    assert_no_traceback(caplog.records)


class _Slow(tornado.web.RequestHandler):
    """Answers once the test lets it: a connection with a request under way (busy)."""

    release: asyncio.Event

    async def get(self) -> None:
        await self.release.wait()
        self.finish("done")


async def with_slow_route(server: Server) -> asyncio.Event:
    """Add ``/slow`` to a started server; returns the event that lets its requests finish."""
    assert server.app is not None
    _Slow.release = asyncio.Event()
    server.app.add_handlers(r".*", [("/slow", _Slow)])
    return _Slow.release


async def busy_connections(server: Server, count: int) -> list[asyncio.StreamWriter]:
    assert server.http is not None
    http = server.http
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        writers.append(writer)
    await eventually(lambda: http.open_http == count and not http.admission._idle)
    return writers


@pytest.mark.gen_test(timeout=30)
async def test_http_connections_beyond_the_limit_get_503(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(tmp_path, sqlite_url, max_http_connections=2, listener=listener)
    release = await with_slow_route(server)
    try:
        # Upgraded WebSockets leave the HTTP count.
        sockets = [await open_raw_websocket(server.port) for _ in range(3)]
        assert (await raw_http(server.port, HEALTH))[0] == 200
        assert server.http is not None
        http = server.http
        await eventually(lambda: http.open_http == 0)  # that request's close is seen
        busy = await busy_connections(server, 2)  # requests under way: never evicted
        status, _, body = await raw_http(server.port, HEALTH)
        assert (status, json_body(body)["error"]) == (503, "too many open HTTP connections")
        release.set()
        scrape = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for writer in busy:
            writer.close()
        await eventually(lambda: http.open_http == 0)
        metrics = (await raw_http(server.port, scrape))[2]
        for _, writer in sockets:
            writer.close()
        assert b'tornado_echo_rejections_total{reason="connection_limit_http"}' in metrics
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_refused_clients_linger_no_more_than_max_http_connections(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    # Each refusal that lingers holds a descriptor outside every limit; a flood of refused
    # clients that never close must not hold more than max_http_connections of them.
    server = await started_server(tmp_path, sqlite_url, max_http_connections=2, listener=listener)
    release = await with_slow_route(server)
    try:
        assert server.http is not None
        http = server.http
        busy = await busy_connections(server, 2)
        refused = []
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 503")
            refused.append((reader, writer))
            assert http.lingering <= 2
        # Every refused client got its whole answer, lingering or not.
        for reader, _ in refused:
            assert json_body(await asyncio.wait_for(reader.read(), 5))["status"] == 503
        await eventually(lambda: http.lingering == 0)
        for writer in [*busy, *(writer for _, writer in refused)]:
            writer.close()
    finally:
        release.set()
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_one_address_holding_every_slot_idle_cannot_keep_others_out(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    # Issue 22: one address kept all max_http_connections slots with connections that
    # sent nothing (or idled on keep-alive), and others' upgrades got 503.
    server = await started_server(tmp_path, sqlite_url, max_http_connections=4, listener=listener)
    assert server.http is not None
    http = server.http
    try:
        hog = []
        for _ in range(4):
            hog.append(
                await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
            )
        hog[3][1].write(HEALTH)  # one on keep-alive after its answer
        assert (await hog[3][0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await eventually(lambda: http.open_http == 4)
        # Another address: an idle connection, then an upgrade; each takes a hog's slot.
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)
        await eventually(lambda: http.admission.held_by("127.0.0.1") == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        # The hog's longest idle connections were closed, oldest first (the one on
        # keep-alive became idle last).
        for reader, _ in hog[:2]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert http.admission.held_by("127.0.0.2") == 2
        writer.close()
        idle.close()
        for _, writer in hog:
            writer.close()
        scrape = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        metrics = (await raw_http(server.port, scrape))[2]
        assert b'tornado_echo_rejections_total{reason="idle_http_evicted"} 2.0' in metrics
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_http_connections_per_address_are_capped(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    server = await started_server(
        tmp_path, sqlite_url, max_http_connections_per_ip=2, listener=listener
    )
    assert server.http is not None
    http = server.http
    try:
        held = [
            await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
            for _ in range(2)
        ]
        await eventually(lambda: http.open_http == 2)
        for _ in range(20):  # a flood from that address: refused, and logged once
            status, _, body = await raw_http(server.port, HEALTH, source="127.0.0.2")
            assert status == 503
            assert json_body(body)["error"] == "too many HTTP connections from your address"
        assert (await raw_http(server.port, HEALTH))[0] == 200  # another address
        for _, writer in held:
            writer.close()
    finally:
        await server.shutdown()
    said = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(said) == 1 and "max_http_connections_per_ip" in said[0], said


@pytest.mark.gen_test(timeout=30)
async def test_floods_of_refused_api_requests_and_malformed_requests_are_logged_once(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    caplog.set_level(logging.INFO)
    server = await started_server(tmp_path, sqlite_url, behind_proxy=True, listener=listener)
    refused = b"GET /api/sessions HTTP/1.1\r\nHost: localhost\r\nX-Real-Ip: 203.0.113.9\r\n\r\n"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(200):  # one keep-alive client
            writer.write(refused)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 403")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 400")
            writer.close()
    finally:
        await server.shutdown()
    lines = [r.getMessage() for r in caplog.records]
    # At most one (the API's throttle is per process: an earlier test's line may be recent).
    assert len([line for line in lines if line.startswith("API request from")]) <= 1, lines
    assert len([line for line in lines if "alformed HTTP" in line]) == 1, lines
    assert not [r for r in caplog.records if r.name.startswith("tornado.")]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_exhausted_descriptors_pause_accept_without_a_busy_loop(
    tmp_path: Path, services: list[Service], listener: str, event_loop: str
) -> None:
    conf = (
        BASE_CONF + f'http_timeout = 30.0\nlistener = "{listener}"\nevent_loop = "{event_loop}"\n'
    )
    service = start_service(tmp_path, conf, nofile=48)
    services.append(service)
    clients = []
    try:
        for _ in range(80):  # more than the server has descriptors for
            clients.append(socket.create_connection(("127.0.0.1", service.port)))
        await eventually(lambda: "accept() failed" in service.log.read_text(), timeout=10)
        before = cpu_seconds(service.process.pid)
        # Measured over a fixed window: a busy accept loop burns all of it.
        await asyncio.sleep(2.0)
        spent = cpu_seconds(service.process.pid) - before
        assert spent < 0.5, f"{spent:.2f} CPU-s in 2 s"
    finally:
        for client in clients:
            client.close()
    log = service.log.read_text()
    assert "Traceback" not in log, log
    assert log.count("accept() failed") <= 2, log
    assert "Too many open files; not accepting for" in log
    while True:  # served again once the clients have gone
        try:
            if (await raw_http(service.port, HEALTH, timeout=1))[0] == 200:
                break
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.1)
    assert len(log.splitlines()) < 20, log


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """One response from a connection that goes on: (status, head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    body = await reader.readexactly(int(found.group(1))) if found else b""
    return int(head.split()[1]), head, body


@pytest.mark.gen_test(timeout=30)
async def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH)
        assert (await read_response(reader))[0] == 200
        writer.write(HEALTH)  # the same connection, kept alive
        assert (await read_response(reader))[0] == 200
        # Three at once, the last one closing: answered in order, then closed.
        not_found = b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        last = HEALTH[:-2] + b"Connection: close\r\n\r\n"
        writer.write(HEALTH + not_found + last)
        statuses = [(await read_response(reader))[0] for _ in range(3)]
        assert statuses == [200, 404, 200]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_a_pipelining_flood_is_answered_in_order_and_bounded(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH * 5000)
        answered = 0
        while answered < 5000:
            try:
                status, _, _ = await read_response(reader)
            except asyncio.IncompleteReadError:
                break  # closed past what one read held (the asyncio listener)
            assert status == 200
            answered += 1
        # All of them, or at least the first read's worth; and the server goes on serving.
        assert answered >= 64
        writer.close()
        assert (await raw_http(server.port, HEALTH))[0] == 200
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_http_1_0_is_served_then_closed(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # An upgrade needs HTTP/1.1 (RFC 6455 section 4.1).
        old = upgrade_request().replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1)
        status, _, body = await raw_http(server.port, old)
        assert status == 500 and "HTTP/1.0 cannot be upgraded" in json_body(body)["error"]
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_expect_100_continue_gets_413_and_no_100(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH[:-2] + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        status, head, _ = await read_response(reader)
        assert status == 413 and b"100 Continue" not in head
        writer.close()
        # Without a body it is just a request (Tornado's listener sends a 100 first).
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH[:-2] + b"Expect: 100-continue\r\n\r\n")
        status = 100
        while status == 100:
            status = (await read_response(reader))[0]
        assert status == 200
        writer.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_an_idle_keep_alive_connection_is_closed_after_http_timeout(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, http_timeout=0.3, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH)
        assert (await read_response(reader))[0] == 200
        # ... and nothing more: closed by the server, not held.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.http is not None
        await eventually(lambda: server.http is not None and server.http.open_http == 0)
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"\x00" * 100 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/0.9\r\nHost: a\r\n\r\n",
    ],
    ids=["tls-hello", "header-without-colon", "nul-bytes", "two-lengths", "no-host", "http-0.9"],
)
async def test_garbage_gets_a_bounded_answer(
    tmp_path: Path,
    sqlite_url: str,
    listener: str,
    garbage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Tornado's listener waits for a head that never ends until http_timeout.
    server = await started_server(tmp_path, sqlite_url, http_timeout=1.0, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        answer = await asyncio.wait_for(reader.read(), 5)  # an answer or none; then closed
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ")), answer
        writer.close()
        assert (await raw_http(server.port, HEALTH))[0] == 200
        assert server.http is not None
        await eventually(lambda: server.http is not None and server.http.open_http == 0)
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.gen_test(timeout=30)
async def test_a_half_closed_client_gets_its_answer(tmp_path: Path, sqlite_url: str) -> None:
    # The asyncio listener's: Tornado's HTTPServer closes a half-closed connection unanswered.
    server = await started_server(tmp_path, sqlite_url)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH)
        writer.write_eof()
        response = await asyncio.wait_for(reader.read(), 5)
        assert response.startswith(b"HTTP/1.1 200 "), response
        writer.close()
        # An upgrade whose client half-closes before it is answered opens no session.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request())
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert server.http is not None
        await eventually(lambda: server.http is not None and server.http.open_http == 0)
        await eventually(lambda: len(server.connections) == 0)
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_frames_sent_with_the_upgrade_request_are_echoed(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request() + client_frame(0x1, b"first") + client_frame(0x1, b"2nd"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        assert await read_server_frame(reader) == (0x1, b"first")
        assert await read_server_frame(reader) == (0x1, b"2nd")
        writer.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_upgrade_leaves_the_connection_serving(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, listener=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request(Origin="https://evil.example") + HEALTH)
        assert (await read_response(reader))[0] == 403
        assert (await read_response(reader))[0] == 200
        writer.close()
    finally:
        await server.shutdown()
