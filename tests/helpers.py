"""Test-side tools: raw HTTP and WebSocket frames, and the server as a real process."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
import os
import re
import resource
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from inspect import getsource, isawaitable
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.extras
from prometheus_client.parser import text_string_to_metric_families

from tornado_echo.config import Config
from tornado_echo.process.server import Server

SERVER_ID = "test-host:0:0"
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def fetch_rows(database_url: str, sql: str) -> list[dict[str, Any]]:
    """Read rows straight from the database (test side, blocking is fine here)."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :])
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql)]
        finally:
            conn.close()
    pg = psycopg2.connect(database_url)
    try:
        with pg.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql)
            return [dict(row) for row in cur.fetchall()]
    finally:
        pg.close()


async def raw_http(
    port: int, request: bytes, timeout: float = 5.0, source: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send exactly ``request`` bytes; return (status, lower-cased headers, body).

    ``source``: the local address to connect from (default: the kernel's choice, loopback).
    """
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=None if source is None else (source, 0)
    )
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return status, headers, body
    finally:
        writer.close()


def upgrade_request(path: str = "/ws", method: str = "GET", **overrides: str | None) -> bytes:
    """A WebSocket upgrade request; ``overrides`` replace (or with None, drop) headers."""
    headers: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    lines = [f"{method} {path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def own_ipv4_address() -> str | None:
    """A non-loopback IPv4 address of this machine, or None. Connecting from it to
    127.0.0.1 stays on this machine yet shows the server a non-loopback peer."""
    for _, name in socket.if_nameindex():
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = fcntl.ioctl(
                probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
            )
        except OSError:
            continue
        finally:
            probe.close()
        address = socket.inet_ntoa(packed[20:24])
        if not address.startswith("127."):
            return address
    return None


def json_body(body: bytes) -> Any:
    return json.loads(body.decode())


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client-to-server frame."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def deflated(payload: bytes, compressor: Any = None) -> bytes:
    """``payload`` as a permessage-deflate message body (RFC 7692: without 00 00 ff ff);
    pass one ``compressor`` (raw deflate) for messages that share a context."""
    compressor = compressor or zlib.compressobj(wbits=-15)
    out: bytes = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


async def read_server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one unmasked server frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def open_raw_websocket(
    port: int, path: str = "/ws", *, deflate: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Complete a handshake over a plain socket, for sending hand-made frames; with
    ``deflate``, permessage-deflate is offered and must be accepted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    offer = {"Sec_WebSocket_Extensions": "permessage-deflate"} if deflate else {}
    writer.write(upgrade_request(path, **offer))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert not deflate or b"permessage-deflate" in head, head
    return reader, writer


T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    what: str | None = None,
    *,
    timeout: float = 3.0,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` (plain or async) until it returns something true; return that.

    The event loop keeps running between polls. On timeout the AssertionError names
    ``what`` was awaited (by default the condition's source), its last value and
    ``detail()`` (say, a server log); an exception the condition raises fails at once.
    The default timeout is below pytest-tornado's 5 s for a gen_test, so that it is this
    message a stuck test ends with; a test with a longer gen_test timeout may pass more.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        value = await result if isawaitable(result) else result
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(condition, what, timeout, value, detail))
        await asyncio.sleep(interval)


def eventually_blocking(
    condition: Callable[[], T],
    what: str | None = None,
    *,
    timeout: float = 3.0,
    interval: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> T:
    """:func:`eventually` for plain (not async) tests: blocks the thread between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(condition, what, timeout, value, detail))
        time.sleep(interval)


def _timed_out(
    condition: Callable[..., Any],
    what: str | None,
    timeout: float,
    last: Any,
    detail: Callable[[], str] | None,
) -> str:
    if what is None:
        try:
            what = getsource(condition).strip()
        except (OSError, TypeError):
            what = repr(condition)
    message = f"not reached within {timeout:g} s: {what} (last value: {last!r})"
    return message if detail is None else f"{message}\n{detail()}"


@dataclass
class Service:
    process: subprocess.Popen[str]
    port: int
    conf: Path
    log: Path
    notify: socket.socket
    notify_log: list[str] = field(default_factory=list)  # every datagram messages() read

    def messages(self, until: str, timeout: float = 10.0) -> list[str]:
        """Notify datagrams received until one containing ``until``."""
        received: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            received.append(datagram)
            self.notify_log.append(datagram)
            if until in datagram:
                return received
        raise AssertionError(f"no {until!r} in {received!r}; log:\n{self.log.read_text()}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout)


def start_service(
    tmp_path: Path, conf_text: str, watchdog_usec: int | None = None, nofile: int | None = None
) -> Service:
    """The server as a process; ``nofile`` caps its RLIMIT_NOFILE (soft and hard)."""
    conf = tmp_path / "echo.toml"
    conf.write_text(conf_text)
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORNADO_ECHO_")}
    env["NOTIFY_SOCKET"] = notify_path
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tornado_echo", "--config", str(conf), "--port", "0"],
            cwd=tmp_path,
            env=env,
            stderr=sink,
            text=True,
            preexec_fn=None
            if nofile is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )
    service = Service(process, 0, conf, log, notify)
    service.messages("READY=1")
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
    assert found, log.read_text()
    service.port = int(found.group(1))
    return service


BASE_CONF = 'database_url = "sqlite:///echo.db"\nstate_dir = "."\n'


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, f"{name} not in metrics"
    return float(found.group(1))


_BY = re.compile(r"\bby \(([^)]*)\)")
# Labels a scrape does not have but every series gets from Prometheus.
_ADDED_BY_PROMETHEUS = {"instance", "job"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every query of a Grafana dashboard: its panels' and its template variables'."""
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return queries + [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


def check_dashboard(dashboard: dict[str, Any], scrape: str, metric: re.Pattern[str]) -> int:
    """Assert that every query of a Grafana ``dashboard`` (panels and template variables)
    names at least one ``metric`` the ``scrape`` (Prometheus text) has, and groups only by
    labels those metrics have; returns how many metric names were checked."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    checked = 0
    for query in dashboard_queries(dashboard):
        names = metric.findall(query)
        assert names, query
        for name in names:
            assert name in labels, f"{name} (in {query!r}) is not exported"
            checked += 1
        offered = set().union(*(labels[name] for name in names)) | _ADDED_BY_PROMETHEUS
        for clause in _BY.findall(query):
            wanted = {label.strip() for label in clause.split(",")}
            assert wanted <= offered, f"{wanted - offered} not labels of {names} in {query!r}"
    return checked


def admin_sql(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@dataclass
class PgOutage:
    """A throw-away database owned by a throw-away login role that a test can lock out.

    ``cut()`` makes the database unreachable for tornado-echo without touching anybody else:
    the role loses LOGIN and its open connections are terminated. ``restore()`` undoes it.
    """

    admin_dsn: str
    role: str
    database: str
    url: str

    def cut(self) -> None:
        admin_sql(self.admin_dsn, f"ALTER ROLE {self.role} NOLOGIN")
        self.terminate()

    def terminate(self) -> int:
        """Kill this role's tornado-echo connections (a restart, as far as they can tell)."""
        return self._count("pg_terminate_backend(pid)")

    def connected(self) -> int:
        """How many tornado-echo connections this role holds."""
        return self._count("pid")

    def _count(self, what: str) -> int:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT count({what}) FROM pg_stat_activity"
                    " WHERE usename = %s AND datname = %s AND application_name = 'tornado-echo'",
                    (self.role, self.database),
                )
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def restore(self) -> None:
        admin_sql(self.admin_dsn, f"ALTER ROLE {self.role} LOGIN")


def make_server(
    tmp_path: Path, database_url: str, server_id: str = "test:0:0", **overrides: Any
) -> Server:
    """A not yet started Server on port 0 with its state in ``tmp_path``."""
    settings: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "state_dir": str(tmp_path),
        "batch_delay": 0.01,
    }
    settings.update(overrides)
    return Server(Config(**settings), server_id=server_id)


async def started_server(
    tmp_path: Path, database_url: str, server_id: str = "test:0:0", **overrides: Any
) -> Server:
    """:func:`make_server`, started."""
    server = make_server(tmp_path, database_url, server_id, **overrides)
    await server.start()
    return server


def assert_no_traceback(records: list[logging.LogRecord]) -> None:
    """No ERROR line and no traceback among ``records`` (caplog.records)."""
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
