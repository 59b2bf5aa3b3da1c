"""Shared fixtures: configs, stores on SQLite and on a fresh PostgreSQL database, the app.

PostgreSQL: ``TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``) is
the administrative connection used to create one throw-away database per test. When it is
unreachable the PostgreSQL tests skip, unless ``REQUIRE_POSTGRES=1`` (set by .ci/run), when
they fail.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extras
import pytest
import tornado.web
from tornado.ioloop import IOLoop

from tornado_echo.app import make_app
from tornado_echo.config import Config
from tornado_echo.connections import Connections
from tornado_echo.store import Store, make_store

PG_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
SERVER_ID = "test-host:0:0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "app_config(**overrides): settings for the app fixture")


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


def _admin(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def postgres_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = "tornado_echo_test_" + uuid.uuid4().hex[:12]
    _admin(pg_admin_dsn, f"CREATE DATABASE {name}")
    parts = urlsplit(pg_admin_dsn)
    yield urlunsplit(parts._replace(path="/" + name))
    _admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
        _admin(self.admin_dsn, f"ALTER ROLE {self.role} NOLOGIN")
        self.terminate()

    def terminate(self) -> int:
        """Kill this role's tornado-echo connections (a restart, as far as they can tell)."""
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE usename = %s AND datname = %s AND application_name = 'tornado-echo'",
                    (self.role, self.database),
                )
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def restore(self) -> None:
        _admin(self.admin_dsn, f"ALTER ROLE {self.role} LOGIN")


@pytest.fixture
def pg_outage(pg_admin_dsn: str) -> Iterator[PgOutage]:
    suffix = uuid.uuid4().hex[:12]
    role, name = f"tornado_echo_role_{suffix}", f"tornado_echo_test_{suffix}"
    _admin(pg_admin_dsn, f"CREATE ROLE {role} LOGIN")
    _admin(pg_admin_dsn, f"CREATE DATABASE {name} OWNER {role}")
    parts = urlsplit(pg_admin_dsn)
    netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
    yield PgOutage(
        pg_admin_dsn, role, name, urlunsplit(parts._replace(netloc=netloc, path="/" + name))
    )
    _admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(pg_admin_dsn, f"DROP ROLE IF EXISTS {role}")


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
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/echo.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


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
    settings.update(overrides)
    return Config(**settings)


@pytest.fixture
def store(io_loop: IOLoop, app_config: Config) -> Iterator[Store]:
    db = make_store(app_config, SERVER_ID)
    io_loop.run_sync(db.start)
    yield db
    io_loop.run_sync(db.close)


@pytest.fixture
def connections() -> Connections:
    return Connections()


@pytest.fixture
def app(app_config: Config, store: Store, connections: Connections) -> tornado.web.Application:
    return make_app(app_config, store, connections, SERVER_ID)


@pytest.fixture
def ws_url(http_server: Any, http_port: int, app_config: Config) -> str:
    return f"ws://127.0.0.1:{http_port}{app_config.ws_path}"
