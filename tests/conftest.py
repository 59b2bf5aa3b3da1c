"""Shared fixtures: configs, stores on SQLite and on a fresh PostgreSQL database, the app.

PostgreSQL: ``TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``) is
the administrative connection used to create one throw-away database per test. When it is
unreachable the PostgreSQL tests skip, unless ``REQUIRE_POSTGRES=1`` (set by .ci/run), when
they fail.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extras
import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from tests.helpers import SERVER_ID, PgOutage, Service, admin_sql
from tornado_echo.config import ENGINES, LISTENERS, Config, LiveConfig
from tornado_echo.connections import Connections
from tornado_echo.http.fast_listener import make_fast_http_server
from tornado_echo.process.server import uses_fast_listener
from tornado_echo.store import Store, make_store
from tornado_echo.web.app import make_app

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"


TEST_EVENT_LOOP = os.environ.get("TEST_EVENT_LOOP", "uvloop")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "app_config(**overrides): settings for the app fixture")
    # In-process servers run on the loop production runs on ("auto": uvloop when installed);
    # TEST_EVENT_LOOP=asyncio runs them on asyncio's own loop (.ci/run does both).
    if TEST_EVENT_LOOP == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    try:
        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_DSN}: {str(exc).strip()}"
        if REQUIRE_POSTGRES:
            pytest.fail(reason + " (REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return PG_ADMIN_DSN


@pytest.fixture
def postgres_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = "tornado_echo_test_" + uuid.uuid4().hex[:12]
    admin_sql(pg_admin_dsn, f"CREATE DATABASE {name}")
    parts = urlsplit(pg_admin_dsn)
    yield urlunsplit(parts._replace(path="/" + name))
    admin_sql(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_outage(pg_admin_dsn: str) -> Iterator[PgOutage]:
    suffix = uuid.uuid4().hex[:12]
    role, name = f"tornado_echo_role_{suffix}", f"tornado_echo_test_{suffix}"
    admin_sql(pg_admin_dsn, f"CREATE ROLE {role} LOGIN")
    admin_sql(pg_admin_dsn, f"CREATE DATABASE {name} OWNER {role}")
    parts = urlsplit(pg_admin_dsn)
    netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
    yield PgOutage(
        pg_admin_dsn, role, name, urlunsplit(parts._replace(netloc=netloc, path="/" + name))
    )
    admin_sql(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin_sql(pg_admin_dsn, f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root and mount rights); skips with the reason otherwise."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command for the disk-full test")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs for the disk-full test: {mounted.stderr.strip()}")
    yield mountpoint
    # Lazy: a failed test may leave the store's spool file open.
    subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)


@pytest.fixture
def lowered_nofile() -> Iterator[int]:
    """Lower this process's soft fd limit for the test, restore it after; yields hard."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = saved[1]
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip(f"needs a finite hard RLIMIT_NOFILE above 512, have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/echo.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """A module with ``pytestmark = pytest.mark.usefixtures("engine")`` runs on every engine."""
    return str(request.param)


@pytest.fixture(params=LISTENERS)
def listener(request: pytest.FixtureRequest) -> str:
    """Each listener test runs on the asyncio listener ("auto", with the fast engine) and
    on Tornado's HTTPServer."""
    return str(request.param)


@pytest.fixture
def app_config(request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Any) -> Config:
    marker = request.node.get_closest_marker("app_config")
    overrides = dict(marker.kwargs) if marker else {}
    settings: dict[str, Any] = {
        "port": 0,
        "database_url": sqlite_url,
        "state_dir": str(tmp_path),
        "batch_delay": 0.005,
    }
    if "engine" in request.fixturenames:
        settings["engine"] = request.getfixturevalue("engine")
    settings.update(overrides)
    return Config(**settings)


@pytest.fixture
def store(io_loop: IOLoop, app_config: Config) -> Iterator[Store]:
    store = make_store(app_config, SERVER_ID)
    io_loop.run_sync(store.start)
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def connections() -> Connections:
    return Connections()


@pytest.fixture
def app(app_config: Config, store: Store, connections: Connections) -> tornado.web.Application:
    return make_app(app_config, store, connections, SERVER_ID)


@pytest.fixture(params=LISTENERS)
def http_server(
    request: pytest.FixtureRequest,
    io_loop: IOLoop,
    _unused_port: tuple[socket.socket, int],
    app_config: Config,
) -> Iterator[Any]:
    """pytest-tornado's ``http_server`` (the ``app`` fixture served on ``http_port``), on
    each listener: the asyncio one (for the fast engine) and Tornado's HTTPServer."""
    app = request.getfixturevalue("app")
    sock = _unused_port[0]
    server: Any
    if request.param == "tornado":
        server = HTTPServer(app)
        server.add_socket(sock)
    elif not uses_fast_listener(app_config):
        sock.close()
        pytest.skip("the asyncio listener serves the fast engine only")
    else:
        server = make_fast_http_server(app, LiveConfig(app_config))

        async def listen() -> None:
            await server.start_serving([sock])

        io_loop.run_sync(listen)
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=5)


@pytest.fixture
def ws_url(http_server: Any, http_port: int, app_config: Config) -> str:
    return f"ws://127.0.0.1:{http_port}{app_config.ws_path}"


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()
        service.notify.close()
