"""wss:// served directly: certificates made by the test, a real TLS client, reload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.helpers import (
    BASE_CONF,
    Service,
    eventually,
    make_server,
    start_service,
    started_server,
    upgrade_request,
)
from tornado_echo.config import Config, build_config
from tornado_echo.engines.fast import FastProtocol
from tornado_echo.engines.stock import EchoProtocol
from tornado_echo.errors import ConfigError
from tornado_echo.http.listener import MAX_HEADER_SIZE
from tornado_echo.http.tls import server_context
from tornado_echo.process.server import Server


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and its key (openssl command line)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
    subprocess.run(
        [
            *command.split(),
            *("-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def wss_connect(port: int, trusted: Path) -> WebSocketClientConnection:
    """A wss:// client of the server on ``port`` that trusts the certificate ``trusted``."""
    request = HTTPRequest(f"wss://127.0.0.1:{port}/ws", ssl_options=client_context(trusted))
    return await websocket_connect(request)


async def echo_over_tls(port: int, trusted: Path) -> tuple[str, bytes | None]:
    """One echo over wss://; returns the TLS version and the server's certificate (DER)."""
    client = await wss_connect(port, trusted)
    try:
        await client.write_message("over tls")
        assert await client.read_message() == "over tls"
        tls_socket = client.protocol.stream.socket  # type: ignore[union-attr]
        assert isinstance(tls_socket, ssl.SSLSocket)
        return str(tls_socket.version()), tls_socket.getpeercert(binary_form=True)
    finally:
        client.close()


def tls_failures(server: Server) -> float | None:
    return server.metrics.registry.get_sample_value("tornado_echo_tls_failures_total")


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def assert_plain_http_is_no_request(port: int) -> None:
    """A plain HTTP request on the TLS port gets no answer (a reset at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        assert b"200" not in await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        pass
    writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_wss_echo_and_certificate_reload_on_sighup(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first_cert, first_key = make_pair(tmp_path / "first", "first")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first_cert.read_bytes())
    live_key.write_bytes(first_key.read_bytes())
    conf = tmp_path / "echo.toml"
    conf.write_text(
        f'database_url = "{sqlite_url}"\nstate_dir = "{tmp_path}"\nport = 0\n'
        f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\n'
    )
    server = Server(
        build_config(str(conf), {})[0], reload_config=lambda: build_config(str(conf), {})[0]
    )
    await server.start()
    try:
        version, served = await echo_over_tls(server.port, first_cert)
        assert version in ("TLSv1.2", "TLSv1.3") and served == der(first_cert)
        await assert_plain_http_is_no_request(server.port)
        held = await wss_connect(server.port, first_cert)

        second_cert, second_key = make_pair(tmp_path / "second", "second")
        live_cert.write_bytes(second_cert.read_bytes())
        live_key.write_bytes(second_key.read_bytes())
        assert await server.reload() is True
        assert (await echo_over_tls(server.port, second_cert))[1] == der(second_cert)
        # A connection opened before the reload goes on with its own session.
        await held.write_message("still here")
        assert await held.read_message() == "still here"
        held.close()

        # A mismatched pair is refused and the running certificate kept.
        live_key.write_bytes(first_key.read_bytes())
        assert await server.reload() is False
        assert (
            "key 'tls_key':" in caplog.text and "is not the key of the certificate" in caplog.text
        )
        assert (await echo_over_tls(server.port, second_cert))[1] == der(second_cert)
    finally:
        await server.shutdown()
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("listener", ["auto", "tornado"])
@pytest.mark.gen_test(timeout=30)
async def test_plain_http_on_the_tls_port_is_logged_once_per_interval(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = make_server(
        tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key), listener=listener
    )
    await server.start()
    try:
        for _ in range(20):
            await assert_plain_http_is_no_request(server.port)
        assert server.http is not None
        counts = server.http.throttle.counts
        await eventually(lambda: counts.get("tls_handshake") == 20, timeout=10)
        assert tls_failures(server) == 20
        # Headers over the limit get their 431 over TLS as well.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(cert)
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        writer.write(b"a" * (MAX_HEADER_SIZE + 4096) + b"\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 431 "), head
        writer.transport.abort()
        # And wss is served as before; neither it nor the 431 was a TLS failure.
        assert (await echo_over_tls(server.port, cert))[1] == der(cert)
        assert tls_failures(server) == 20
    finally:
        await server.shutdown()
    said = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert 1 <= len(said) <= 2, said  # a second one only if the test outlasts the interval
    assert said[0].startswith("TLS handshake failed with 127.0.0.1: "), said
    assert not [r for r in caplog.records if r.name == "tornado.general"]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


def test_the_context_requires_tls_1_2(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, "a")
    context = server_context(Config(tls_cert=str(cert), tls_key=str(key)))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_bad_files_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path / "a", "a")
    other_cert, other_key = make_pair(tmp_path / "b", "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    fifo = tmp_path / "fifo.pem"  # nobody writes to it: a read would wait for ever
    os.mkfifo(fifo)
    cases = [
        ({"tls_cert": str(cert)}, "key 'tls_key': must be set too"),
        (
            {"tls_cert": str(tmp_path / "none.pem"), "tls_key": str(key)},
            "key 'tls_cert': cannot read",
        ),
        ({"tls_cert": str(cert), "tls_key": str(tmp_path)}, "key 'tls_key': cannot read"),
        ({"tls_cert": str(cert), "tls_key": str(other_key)}, "key 'tls_key': "),
        ({"tls_cert": str(garbage), "tls_key": str(key)}, "key 'tls_cert': "),
        ({"tls_cert": str(cert), "tls_key": str(garbage)}, "key 'tls_key': "),
        ({"tls_cert": str(fifo), "tls_key": str(key)}, "key 'tls_cert': cannot read"),
    ]
    for settings, expected in cases:
        with pytest.raises(ConfigError) as raised:
            server_context(Config(**settings))
        assert str(raised.value).startswith(expected), (settings, str(raised.value))
        assert "\n" not in str(raised.value)
    assert server_context(Config(tls_cert=str(other_cert), tls_key=str(other_key))) is not None


def test_unreadable_tls_files_exit_2_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_text(f'tls_cert = "{tmp_path}/none.pem"\ntls_key = "{tmp_path}/none.key"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tornado_echo", "--config", str(conf), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"tornado-echo: config error: key 'tls_cert': cannot read '{tmp_path}/none.pem':"
        " No such file or directory\n"
    )


@pytest.mark.gen_test(timeout=30)
async def test_plain_server_has_no_tls(tmp_path: Path, sqlite_url: str) -> None:
    server = make_server(tmp_path, sqlite_url)
    await server.start()
    try:
        assert server.http is not None and server.http.ssl_options is None
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=60)
async def test_a_fifo_as_certificate_neither_hangs_a_reload_nor_the_shutdown(
    tmp_path: Path, services: list[Service]
) -> None:
    cert, key = make_pair(tmp_path / "pair", "pair")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    conf = BASE_CONF + f'tls_key = "{key}"\n'
    service = start_service(tmp_path, conf + f'tls_cert = "{cert}"\n')
    services.append(service)
    service.conf.write_text(conf + f'tls_cert = "{fifo}"\n')
    service.process.send_signal(signal.SIGHUP)
    await eventually(lambda: "reload refused" in service.log.read_text(), timeout=15)
    assert "not a regular file" in service.log.read_text()
    assert (await echo_over_tls(service.port, cert))[1] == der(cert)  # the pair in use
    service.process.terminate()
    assert service.wait_exit(15) == 0


def client_hello() -> bytes:
    """A real TLS ClientHello, as a client's first flight (an SSLObject on memory BIOs)."""
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server hangs up (an end of file, a reset, a TLS alert) within 5 seconds;
    what it sends before (its TLS flight) does not matter."""
    try:
        await asyncio.wait_for(reader.read(), 5)
    except (ConnectionResetError, ssl.SSLError):
        pass
    except asyncio.TimeoutError:
        return False
    return True


@pytest.mark.parametrize("listener", ["auto", "tornado"])
@pytest.mark.gen_test(timeout=30)
async def test_clients_that_stall_in_the_tls_handshake_are_closed_after_http_timeout(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(
        tmp_path,
        sqlite_url,
        tls_cert=str(cert),
        tls_key=str(key),
        http_timeout=0.5,
        listener=listener,
    )
    try:
        assert server.http is not None
        stalled = []
        # Nothing at all after the TCP handshake; half a ClientHello; a whole one and then
        # no answer to the server's flight.
        for sent in (b"", client_hello()[:40], client_hello()):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(sent)
            stalled.append((reader, writer))
        # A finished TLS handshake and then no request is the HTTP phase's timeout.
        stalled.append(
            await asyncio.open_connection("127.0.0.1", server.port, ssl=client_context(cert))
        )
        for reader, writer in stalled:
            # Not the 10 s default: http_timeout bounds the TLS handshake.
            assert await closed_by_server(reader)
            writer.close()
        http = server.http
        await eventually(lambda: http.open_http == 0, "every stalled connection forgotten")
        # Not TLS errors (the clients said nothing wrong): not counted as TLS failures.
        assert tls_failures(server) == 0
        assert (await echo_over_tls(server.port, cert))[1] == der(cert)
    finally:
        await server.shutdown()
    assert "Traceback" not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_wss_is_carried_by_the_fast_engine_on_the_one_current_context(
    tmp_path: Path, sqlite_url: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key))
    try:
        assert server.http is not None
        clients = [await wss_connect(server.port, cert) for _ in range(3)]
        for client in clients:
            await client.write_message("fast")
            assert await client.read_message() == "fast"
        handlers: list[Any] = list(server.connections._open)
        protocols = [handler._protocol for handler in handlers]
        assert len(protocols) == 3
        for protocol in protocols:
            assert isinstance(protocol, FastProtocol)
            assert protocol.transport is not None
            tls = protocol.transport.get_extra_info("ssl_object")
            # Every connection on the context built at start: none built per connection.
            assert tls is not None and tls.context is server.http.ssl_options
        for client in clients:
            client.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_engine_tornado_keeps_tls_on_tornados_protocol(
    tmp_path: Path, sqlite_url: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(
        tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key), engine="tornado"
    )
    try:
        client = await wss_connect(server.port, cert)
        await client.write_message("stock")
        assert await client.read_message() == "stock"
        handler: Any
        (handler,) = server.connections._open
        assert isinstance(handler._protocol, EchoProtocol)
        client.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_renegotiates_is_refused_and_the_server_goes_on(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key))
    try:
        # openssl's client renegotiates on the command letter R (TLS 1.2: 1.3 has none).
        client = await asyncio.create_subprocess_exec(
            *("openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_2"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert client.stdin is not None and client.stdout is not None
        said = await client.stdout.readuntil(b"---\n")  # the handshake's report begins
        client.stdin.write(b"R\n")
        said += await asyncio.wait_for(client.stdout.read(), 10)
        await client.wait()
        assert b"RENEGOTIATING" in said and b"no renegotiation" in said, said[-400:]
        assert (await echo_over_tls(server.port, cert))[1] == der(cert)
    finally:
        await server.shutdown()
    assert "Traceback" not in caplog.text


def test_the_context_refuses_renegotiation(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path, "a")
    context = server_context(Config(tls_cert=str(cert), tls_key=str(key)))
    assert context is not None and context.options & ssl.OP_NO_RENEGOTIATION


@pytest.mark.parametrize("engine", ["fast", "tornado"])
@pytest.mark.gen_test(timeout=30)
async def test_no_tls_1_3_session_ticket_is_sent(
    tmp_path: Path, sqlite_url: str, engine: str
) -> None:
    # Each ticket costs the server about 8% of a full handshake; see tls.py for why none.
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(
        tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key), engine=engine
    )
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(cert)
        )
        writer.write(upgrade_request())
        # Tickets come right after the handshake, before the answer read here.
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        tls = writer.get_extra_info("ssl_object")
        assert isinstance(tls, ssl.SSLObject)
        assert tls.version() == "TLSv1.3"
        assert tls.session is not None and not tls.session.has_ticket
        writer.close()
    finally:
        await server.shutdown()


@pytest.mark.parametrize("engine", ["fast", "tornado"])
@pytest.mark.gen_test(timeout=30)
async def test_a_forged_tls_record_after_the_upgrade_is_one_tls_failure(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(
        tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key), engine=engine
    )
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(cert)
        )
        writer.write(upgrade_request())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await eventually(lambda: len(server.connections) == 1)
        # Application data that no key encrypted, sent past the client's TLS session.
        raw = writer.get_extra_info("socket")
        with socket.socket(fileno=os.dup(raw.fileno())) as beside:
            beside.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        assert await closed_by_server(reader)
        await eventually(lambda: len(server.connections) == 0)
        assert tls_failures(server) == 1
        writer.transport.abort()
    finally:
        await server.shutdown()
    assert "Traceback" not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_connections_in_the_tls_handshake_count_among_max_http_connections(
    tmp_path: Path, sqlite_url: str
) -> None:
    cert, key = make_pair(tmp_path, "tls")
    server = await started_server(
        tmp_path, sqlite_url, tls_cert=str(cert), tls_key=str(key), max_http_connections=2
    )
    try:
        assert server.http is not None
        http = server.http
        stalled = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await eventually(lambda: http.open_http == 2, "two connections in their handshake")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(cert)
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        # Not evicted while in the handshake: before it there is no transport to close, and
        # a descriptor would outlive its slot (a flood of stalled handshakes could hold more
        # than max_http_connections).
        assert head.startswith(b"HTTP/1.1 503 "), head
        writer.transport.abort()
        for _, stalled_writer in stalled:
            stalled_writer.close()
        await eventually(lambda: http.open_http == 0, "the stalled connections forgotten")
        assert (await echo_over_tls(server.port, cert))[1] == der(cert)
    finally:
        await server.shutdown()
