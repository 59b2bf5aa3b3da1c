"""The tornado-echo command as a user runs it: a real process, real signals, real sockets."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

from tests.helpers import PgOutage, eventually, fetch_rows
from tornado_echo import __version__
from tornado_echo.store import MessageReceived, SessionClosed, SessionOpened, make_backend

COMMAND = [sys.executable, "-m", "tornado_echo"]


def run_cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORNADO_ECHO_")}
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_one_version_for_the_package_the_distribution_and_the_command() -> None:
    # setup.py reads tornado_echo.__version__; --version prints it.
    assert importlib.metadata.version("tornado-echo") == __version__
    shown = subprocess.run(
        [sys.executable, "-m", "tornado_echo", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.split() == ["tornado-echo", __version__]


def test_check_config_prints_effective_values_with_secrets_masked(tmp_path: Path) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_text(
        'database_url = "postgresql://echo:hunter2@db.example/echo"\nadmin_token = "t0k3n"\n'
    )
    result = run_cli("--config", str(conf), "--check-config", "--port", "9999", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'database_url = "postgresql://echo:***@db.example/echo"' in result.stdout
    assert 'admin_token = "***"' in result.stdout
    assert "port = 9999" in result.stdout
    assert "hunter2" not in result.stdout and "t0k3n" not in result.stdout


def test_check_config_quiet_prints_nothing_when_valid_and_the_reason_when_not(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_text("max_connections = 5\n")
    quiet = run_cli("--config", str(conf), "--check-config", "--quiet", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    conf.write_text("max_connections = -5\n")
    refused = run_cli("--config", str(conf), "--check-config", "--quiet", cwd=tmp_path)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "key 'max_connections': must be between 1 and" in refused.stderr


@pytest.mark.parametrize("command", [[], ["sessions"], ["prune"]])
def test_help_shows_every_settings_default(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    out = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    for shown in (
        "(port; default: 8080)",
        "(host; default: 127.0.0.1)",
        "(database_url; default: sqlite:///tornado-echo.db)",
        "(state_dir; default: var)",
        "(trusted_proxies; default: 127.0.0.1,::1)",
        "(compression; default: true)",
        "(admin_token; default: empty)",
    ):
        assert shown in out


@pytest.mark.parametrize(
    ("conf_text", "args", "expected"),
    [
        ("port = -1\n", (), "key 'port': must be between 0 and 65535, got -1"),
        ("colour = 1\n", (), "unknown key 'colour'"),
        ("", ("--ping-interval", "soon"), "command line --ping-interval: key 'ping_interval'"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(
    tmp_path: Path, conf_text: str, args: tuple[str, ...], expected: str
) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_text(conf_text)
    result = run_cli("--config", str(conf), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("tornado-echo: config error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_conf_file_that_is_not_utf8_exits_2_with_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_bytes(b"port = 80\xe9\n")
    result = run_cli("--config", str(conf), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tornado-echo: config error: {conf}: not UTF-8 text: byte 0xe9 at line 1, column 10\n"
    )


def test_unknown_flag_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("--colour", "blue", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --colour blue" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sqlite_file_that_cannot_be_opened_exits_1_and_leaves_no_spool_file(
    tmp_path: Path,
) -> None:
    # A PostgreSQL that does not answer is waited for (tests/test_service.py); a SQLite file
    # is this host's own business: a mistake, said at start.
    state = tmp_path / "state"
    result = run_cli(
        "--database-url", "sqlite:////proc/none/echo.db", "--state-dir", str(state), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cannot open store sqlite:////proc/none/echo.db: StoreError: cannot create" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert list(state.iterdir()) == []


PRELOADED = """
import gc, json, sys
from tornado_echo.cli import preload
from tornado_echo.config import Config
preload(Config(database_url=sys.argv[1]))
print(json.dumps({"modules": sorted(sys.modules), "frozen": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize(
    ("url", "wanted", "unwanted"),
    [
        ("sqlite:///echo.db", "tornado_echo.store.sqlite", "psycopg2"),
        ("postgresql://u@127.0.0.1/db", "psycopg2", "tornado_echo.store.sqlite"),
    ],
    ids=["sqlite", "postgres"],
)
def test_the_supervisor_preloads_what_its_workers_serve_with_and_nothing_else(
    url: str, wanted: str, unwanted: str
) -> None:
    # With workers > 1, what the supervisor imports before forking is shared by every
    # worker; what it imports that no worker needs is held by all of them.
    result = subprocess.run(
        [sys.executable, "-c", PRELOADED, url], capture_output=True, text=True, check=True
    )
    found = json.loads(result.stdout)
    modules = set(found["modules"])
    assert {"tornado_echo.process.server", "tornado.platform.asyncio", wanted} <= modules
    assert unwanted not in modules
    assert not {name for name in modules if name.startswith("tornado_echo.loadtest")}
    assert "tornado_echo.store.journal_process" not in modules  # journal = "off"
    assert found["frozen"] > 10_000  # out of the collector's reach, pages stay shared


async def start_server(
    tmp_path: Path, log: Path, **settings: str
) -> tuple[subprocess.Popen[str], int]:
    """The real command on port 0 with JSON logs to ``log``; settings as TORNADO_ECHO_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORNADO_ECHO_")}
    env.update(TORNADO_ECHO_LOG_FORMAT="json")
    env.update({f"TORNADO_ECHO_{key.upper()}": value for key, value in settings.items()})
    with log.open("a") as sink:
        process = subprocess.Popen(
            [*COMMAND, "--port", "0"], cwd=tmp_path, env=env, stderr=sink, text=True
        )
    seen = log.read_text().count("listening on")

    def new_port() -> int | None:
        found = re.findall(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if len(found) > seen:
            return int(found[-1])
        assert process.poll() is None, "server exited at start:\n" + log.read_text()
        return None

    try:
        port = await eventually(new_port, "the server to listen", timeout=15, detail=log.read_text)
    except AssertionError:
        process.kill()
        process.wait()
        raise
    return process, port


async def exit_code(process: subprocess.Popen[str]) -> int:
    """The exit status of ``process``, awaited without blocking the event loop."""
    await eventually(lambda: process.poll() is not None, "the server to exit", timeout=30)
    return process.returncode


@pytest.fixture
def running_server(
    io_loop: IOLoop, tmp_path: Path, database_url: str
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """The real command on port 0 with JSON logs and the access log; yields (process, port,
    log file)."""
    log = tmp_path / "server.log"
    process, port = io_loop.run_sync(
        lambda: start_server(tmp_path, log, database_url=database_url, access_log="true")
    )
    yield process, port, log
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.gen_test(timeout=60)
async def test_a_second_instance_with_the_same_server_id_is_refused_at_start(
    running_server: tuple[subprocess.Popen[str], int, Path], tmp_path: Path, database_url: str
) -> None:
    # Both on port 0 in one state directory: the same server id and spool file. The second
    # would replay and append to the first one's spool and mark its open sessions crashed.
    process, port, _ = running_server
    client = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
    second = run_cli("--database-url", database_url, "--port", "0", cwd=tmp_path)
    assert second.returncode == 1
    assert "is in use by another running instance with the same server id" in second.stderr
    assert "Traceback" not in second.stderr
    # The first one goes on, its session still open.
    await client.write_message("still here")
    assert await client.read_message() == "still here"
    assert process.poll() is None
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_closes_clients_with_1001_records_sessions_and_exits_0(
    running_server: tuple[subprocess.Popen[str], int, Path], database_url: str
) -> None:
    process, port, log = running_server
    client = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
    await client.write_message("echo me")
    assert await client.read_message() == "echo me"
    finished = await websocket_connect(f"ws://127.0.0.1:{port}/ws")
    finished.close(1000)
    await finished.read_message()

    process.send_signal(signal.SIGTERM)
    assert await client.read_message() is None
    assert client.close_code == 1001
    assert await exit_code(process) == 0, log.read_text()

    rows = fetch_rows(database_url, "SELECT end_state, close_code FROM ws_sessions")
    assert sorted((r["end_state"], r["close_code"]) for r in rows) == [
        ("closed", 1000),
        ("server_shutdown", 1001),
    ]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    ends = [e for e in entries if e.get("end_state")]
    assert {e["end_state"] for e in ends} == {"closed", "server_shutdown"}
    assert all(e["peer"] == "127.0.0.1" and e["path"] == "/ws" for e in ends)
    assert any(e["messages_in"] == 1 and e["bytes_out"] == 7 for e in ends)


def test_sessions_command_lists_and_shows_sessions(tmp_path: Path, database_url: str) -> None:
    sid, sid2 = (f"6f1c1d1e-0000-4000-8000-00000000000{n}" for n in (1, 2))
    backend = make_backend(database_url)
    backend.connect()
    backend.migrate()
    backend.write(
        [
            SessionOpened(
                sid, "h:1:0", time.time() - 1, "127.0.0.1", "/ws", None, None, None, False
            ),
            MessageReceived(sid, 1, time.time(), 1, 2, b"hi"),
            SessionClosed(sid, time.time(), 1000, "", 1, 1, 2, 2, "closed"),
        ]
    )
    backend.write([SessionOpened(sid2, "h:1:0", time.time(), "::1", "/ws", None, None, None, True)])
    backend.close()
    conf = tmp_path / "echo.toml"
    conf.write_text(f'database_url = "{database_url}"\n')

    table = run_cli("sessions", "--config", str(conf), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, *rows, total = table.stdout.splitlines()
    assert header.split()[:3] == ["OPENED", "(UTC)", "ID"]
    assert [row.split()[1:3] for row in rows] == [[sid2, "open"], [sid, "closed"]]
    assert total == "(2 sessions)"

    lines = run_cli(
        "sessions", "--database-url", database_url, "--json", "--limit", "1", cwd=tmp_path
    )
    assert [json.loads(line)["id"] for line in lines.stdout.splitlines()] == [sid2]

    one = run_cli("sessions", "--config", str(conf), sid, cwd=tmp_path)
    shown = json.loads(one.stdout)
    assert (shown["id"], shown["end_state"], shown["journal"][0]["payload_base64"]) == (
        sid,
        "closed",
        "aGk=",
    )


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("--limit", "many"), 2, "tornado-echo: limit must be an integer from 1 to 1000"),
        (("--since", "last week"), 2, "tornado-echo: since must be an ISO-8601 time"),
        (("not-a-uuid",), 2, "tornado-echo: session id must be a UUID"),
        (("--port", "-1"), 2, "tornado-echo: config error: command line --port: key 'port'"),
        (
            ("--database-url", "postgresql://echo:hunter2@127.0.0.1:1/echo"),
            1,
            "tornado-echo: cannot query postgresql://echo:***@127.0.0.1:1/echo:",
        ),
    ],
)
def test_sessions_command_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], code: int, expected: str
) -> None:
    result = run_cli("sessions", *args, cwd=tmp_path)
    assert result.returncode == code
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("back", ["before the next start", "after the next start"])
@pytest.mark.gen_test(timeout=60)
async def test_killed_during_an_outage_the_next_start_replays_the_spool_then_marks_crashed(
    tmp_path: Path, pg_outage: PgOutage, back: str
) -> None:
    log = tmp_path / "server.log"
    # The store's own spool, with every record (journal rows too) in it: the thread writer.
    # The writer process's way through a kill -9 in an outage: tests/store/test_outage.py.
    settings = {
        "database_url": pg_outage.url,
        "journal": "full",
        "queue_limit": "10",
        "journal_writer": "thread",
    }
    process, port = await start_server(tmp_path, log, **settings)
    try:
        clients = [await websocket_connect(f"ws://127.0.0.1:{port}/ws") for _ in range(5)]
        # The opens written: a session whose open died in the spool with the process is
        # marked crashed by the start after next when the database was away at this one.
        await eventually(
            lambda: len(fetch_rows(pg_outage.url, "SELECT id FROM ws_sessions")) == 5,
            timeout=10,
        )
        pg_outage.cut()
        for client in clients:
            for number in range(20):
                await client.write_message(f"m{number}")
                assert await client.read_message() == f"m{number}"
        for client in clients[:3]:
            client.close(1000)
            assert await client.read_message() is None
        for client in clients[3:]:  # push the closes beyond the 10 records kept in memory
            for number in range(20, 40):
                await client.write_message(f"m{number}")
                assert await client.read_message() == f"m{number}"
        spool = tmp_path / "var"

        def spooled() -> int:
            return sum(len(p.read_bytes().splitlines()) for p in spool.glob("spool-*.jsonl"))

        # Every message and close but the last 10 (the opens may be written already).
        await eventually(
            lambda: spooled() >= 3 * 21 + 2 * 40 - 10,
            "all but 10 records in the spool",
            timeout=15,
        )
        process.kill()  # SIGKILL: no shutdown, whatever was in memory is gone
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    if back == "before the next start":
        pg_outage.restore()
    process, _ = await start_server(tmp_path, log, **settings)
    try:
        if back == "after the next start":
            pg_outage.restore()
            await eventually(
                lambda: not any(p.stat().st_size for p in (tmp_path / "var").glob("spool-*")),
                "the spool written",
                timeout=20,
                detail=log.read_text,
            )
        process.send_signal(signal.SIGTERM)
        assert await exit_code(process) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    states = fetch_rows(pg_outage.url, "SELECT end_state, messages_in FROM ws_sessions")
    assert sorted((s["end_state"], s["messages_in"]) for s in states) == [
        ("closed", 20),
        ("closed", 20),
        ("closed", 20),
        ("crashed", 0),
        ("crashed", 0),
    ]
    [journal] = fetch_rows(pg_outage.url, "SELECT count(*) AS n FROM ws_messages")
    assert journal["n"] >= 3 * 20 + 2 * 20  # at most the last 10 records died with the process
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    if back == "before the next start":  # replayed, then the two left open marked
        said = ["replayed ", "marked 2 sessions left open by a previous run as crashed"]
    else:  # marked when the database answers, then the spooled closes of three replayed
        said = ["answered for the first time", "marked 5 sessions left open by a previous run"]
    for what in said:
        assert any(e["msg"].startswith(what) or what in e["msg"] for e in entries), what
    assert not list((tmp_path / "var").glob("spool-*.jsonl"))


def test_a_relative_sqlite_path_is_relative_to_state_dir_from_anywhere(tmp_path: Path) -> None:
    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state.mkdir()
    elsewhere.mkdir()
    conf = tmp_path / "echo.toml"
    conf.write_text(f'database_url = "sqlite:///echo.db"\nstate_dir = "{state}"\n')
    shown = run_cli("--config", str(conf), "--check-config", cwd=elsewhere)
    assert f'database_url = "sqlite:///{state}/echo.db"' in shown.stdout

    missing = run_cli("sessions", "--config", str(conf), cwd=elsewhere)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        f"tornado-echo: no database at {state}/echo.db (a relative sqlite:/// path is relative"
        f" to state_dir, here '{state}')\n"
    )
    assert list(elsewhere.iterdir()) == list(state.iterdir()) == []  # nothing stray created

    backend = make_backend(f"sqlite:///{state}/echo.db")
    backend.connect()
    backend.migrate()
    backend.close()
    found = run_cli("sessions", "--config", str(conf), cwd=elsewhere)
    assert (found.returncode, found.stdout.splitlines()[-1]) == (0, "(0 sessions)")
    assert list(elsewhere.iterdir()) == []
