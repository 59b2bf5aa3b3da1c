"""Command line: ``tornado-echo [--config PATH] [--check-config] [--KEY VALUE ...]``.

Builds the :class:`Config` once, sets up logging, and runs the server. A user mistake (bad
config value, a SQLite file that cannot be opened, a port in use) is one line on stderr and
a non-zero exit: 2 for configuration errors, 1 for failures at start. A PostgreSQL that
does not answer at start is no mistake: the server serves and waits for it.
``--check-config --quiet`` only validates (the units' ExecReload runs it before SIGHUP).

``tornado-echo sessions [--limit N] [--since TIME] [--json] [SESSION_ID]`` lists recent
sessions (or shows one with its journal) from the database the same configuration names.
``tornado-echo prune --older-than DAYS`` deletes ended sessions and their journal opened
before then, in the same small batches as ``retention_days``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from tornado_echo import __version__
from tornado_echo.config import FIELDS, Config, build_config, env_name, flag_name, mask_url
from tornado_echo.errors import ConfigError, EchoError, one_line
from tornado_echo.http import tls
from tornado_echo.http.sockets import bind_sockets
from tornado_echo.observability import MULTIPROC_ENV
from tornado_echo.observability.logs import setup_logging
from tornado_echo.process import eventloop
from tornado_echo.process.supervisor import Supervisor, WorkerLink
from tornado_echo.process.systemd import Notifier, raise_nofile_limit

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-echo",
        description="WebSocket echo server. Settings: defaults < conf file < environment"
        " TORNADO_ECHO_<KEY> < these flags.",
        epilog="Other commands: tornado-echo sessions --help (recent sessions from the database),"
        " tornado-echo prune --help (delete old sessions),"
        " tornado-echo migrate --help (upgrade the database's schema).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print the effective values (secrets masked), exit",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="with --check-config: print nothing when valid (as the unit's ExecReload does)",
    )
    add_settings(parser)
    return parser


def build_sessions_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-echo sessions",
        description="List recent sessions, newest first, or show one session with its journal,"
        " from the database the configuration names.",
    )
    parser.add_argument("session_id", nargs="?", help="show this session (a UUID)")
    parser.add_argument("--limit", default=None, help="sessions to list, 1 to 1000 (default: 50)")
    parser.add_argument(
        "--since", default=None, help="only sessions opened at or after (ISO-8601; default: all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_settings(parser)
    return parser


def build_prune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-echo prune",
        description="Delete ended sessions opened more than DAYS days ago, with their journal,"
        " from the database the configuration names; in small batches, safe while serving.",
    )
    parser.add_argument(
        "--older-than", required=True, metavar="DAYS", help="age in days (e.g. 30 or 0.5)"
    )
    add_settings(parser)
    return parser


def build_migrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornado-echo migrate",
        description="Apply the schema versions the database the configuration names lacks,"
        " also those a start refuses as too long (on PostgreSQL, partitioning a large"
        " journal: see docs/operations.md). One transaction; safe to interrupt and rerun.",
    )
    add_settings(parser)
    return parser


def add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML conf file (default: ./conf/tornado-echo.toml, else"
        " /etc/tornado-echo/tornado-echo.toml; also $TORNADO_ECHO_CONFIG)",
    )
    settings = parser.add_argument_group("settings (each also $" + env_name("<key>") + ")")
    for key, spec in FIELDS.items():
        settings.add_argument(
            flag_name(key),
            dest=key,
            metavar="VALUE",
            help=f"{spec.metadata['doc']} ({key}; default: {shown_default(spec)})",
        )


def shown_default(spec: dataclasses.Field[Any]) -> str:
    """A setting's default as it is written on the command line (lists comma-separated)."""
    value = spec.default
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "empty"


def format_config(config: Config, source: str) -> str:
    lines = [f"# effective configuration (conf file: {source})"]
    for key, value in config.masked().items():
        shown = list(value) if isinstance(value, tuple) else value
        lines.append(f"{key} = {json.dumps(shown)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sessions"]:
        return sessions(argv[1:])
    if argv[:1] == ["prune"]:
        return prune(argv[1:])
    if argv[:1] == ["migrate"]:
        return migrate(argv[1:])
    args = build_parser().parse_args(argv)  # argparse reports bad flags itself, exit 2
    flags = {key: getattr(args, key) for key in FIELDS}
    built = _config_or_report(args.config, flags, serving=True)
    if built is None:
        return 2
    config, path = built
    if args.check_config:
        if not args.quiet:
            sys.stdout.write(format_config(config, str(path) if path else "none, defaults only"))
        return 0
    setup_logging(config.log_level, config.log_format, config.secrets())
    logger.info("tornado-echo %s starting (conf file: %s)", __version__, path or "none")

    def reload_config() -> Config:
        return build_config(args.config, flags=flags)[0]

    return run(config, reload_config)


def _config_or_report(
    path: str | None, flags: dict[str, str | None], serving: bool = False
) -> tuple[Config, Path | None] | None:
    """The validated config, or None after printing the one-line reason to stderr."""
    try:
        built = build_config(path, flags=flags)
        if serving:  # unreadable or mismatched TLS files: a config error too
            tls.server_context(built[0])
        return built
    except ConfigError as exc:
        sys.stderr.write(f"tornado-echo: config error: {exc}\n")
        return None


def run(config: Config, reload_config: Callable[[], Config] | None = None) -> int:
    """Serve until told to stop: in this process, or in ``config.workers`` processes."""
    # Each connection is a descriptor (HTTP ones twice over: as many again may be refused
    # clients still being answered); keep headroom for the database, spool and listeners.
    raise_nofile_limit(config.max_connections + 2 * config.max_http_connections + 64)
    if config.workers == 1:
        return serve(config, None, Notifier.from_environ(), reload_config)

    # prometheus_client chooses its multiprocess mode when first imported: set it up before
    # anything imports the metrics module.
    metrics_dir = Path(config.state_dir) / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    from prometheus_client.multiprocess import mark_process_dead

    preload(config)

    if config.port == 0:  # every worker must bind the same port: choose it once, here
        config = dataclasses.replace(config, port=_free_port(config.host))
        if reload_config is not None:
            reload_flags = reload_config
            port = config.port

            def reload_config() -> Config:
                return dataclasses.replace(reload_flags(), port=port)

    def run_worker(index: int, link: WorkerLink) -> int:
        sockets = bind_sockets(
            config.port, config.host, reuse_port=True, backlog=config.listen_backlog
        )
        return serve(config, sockets, link, reload_config, worker=index)

    supervisor = Supervisor(
        config.workers,
        run_worker,
        Notifier.from_environ(),
        config.shutdown_deadline,
        on_worker_exit=mark_process_dead,
    )
    return supervisor.run()


def preload(config: Config) -> None:
    """Import here, before the workers are forked, what each of them imports to serve
    ``config``, and freeze the objects made so far, so that the workers share those pages
    with the supervisor instead of each holding a copy: at the default conf, about 7 MB
    less PSS per worker. (RSS, which counts shared pages in every process that maps them,
    stays as it was; PSS divides them among the sharers.)

    ``gc.freeze`` moves every object alive now to a generation the collector never scans:
    a collection writes into the header of each object it visits, which would copy the
    page into the worker that ran it. Only what this configuration loads is imported, so
    a worker with SQLite records imports no PostgreSQL driver, and none of the load
    tester."""
    import gc
    import importlib

    import tornado.platform.asyncio  # noqa: F401 - the asyncio bridge the server sets up

    import tornado_echo.process.server  # noqa: F401 - the worker's whole serving code
    from tornado_echo.store import is_sqlite

    # The backend module make_backend() will import in the worker.
    store = "sqlite" if is_sqlite(config.database_url) else "postgres"
    importlib.import_module(f"tornado_echo.store.{store}")
    if config.event_loop != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass  # serve() reports it when the setting names it
    gc.collect()
    gc.freeze()


def serve(
    config: Config,
    sockets: list[socket.socket] | None,
    notifier: Notifier,
    reload_config: Callable[[], Config] | None,
    worker: int = 0,
) -> int:
    """Run one Server until it stops; returns its exit code."""
    from tornado_echo.process.server import Server, default_server_id

    server = Server(
        config, default_server_id(config, worker), reload_config=reload_config, notifier=notifier
    )
    try:
        return run_loop(config.event_loop, server.serve(sockets))
    except EchoError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror)
        return 1


def run_loop(choice: str, main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop (faster I/O; "auto" when installed) or asyncio's own loop."""
    missing = EchoError("event_loop = 'uvloop' but uvloop is not installed")
    return eventloop.run(main, choice, missing)


def _free_port(host: str) -> int:
    sockets = bind_sockets(0, host)
    port = int(sockets[0].getsockname()[1])
    for sock in sockets:
        sock.close()
    return port


SESSION_TABLE = (
    ("opened_at", "OPENED (UTC)", 27),
    ("id", "ID", 36),
    ("end_state", "STATE", 15),
    ("peer", "PEER", 15),
    ("messages_in", "IN", 7),
    ("messages_out", "OUT", 7),
    ("close_code", "CLOSE", 5),
)


def sessions(argv: Sequence[str]) -> int:
    """``tornado-echo sessions``: read-only, so it runs the queries right here, blocking."""
    # Imported here: .api imports the metrics module, which must wait for run()'s set-up.
    from tornado_echo.store.reader import JOURNAL_LIMIT, run_query
    from tornado_echo.web.api import (
        QueryError,
        journal_entry,
        parse_limit,
        parse_session_id,
        parse_since,
    )

    args = build_sessions_parser().parse_args(argv)
    built = _config_or_report(args.config, {key: getattr(args, key) for key in FIELDS})
    if built is None:
        return 2
    config, _ = built
    try:
        limit = parse_limit(args.limit)
        since = parse_since(args.since)
        session_id = None if args.session_id is None else parse_session_id(args.session_id)
    except QueryError as exc:
        sys.stderr.write(f"tornado-echo: {exc}\n")
        return 2
    if _no_database(config):
        return 1
    try:
        if session_id is None:
            rows = run_query(
                config.database_url, lambda backend: backend.list_sessions(limit, since)
            )
        else:
            found = run_query(
                config.database_url, lambda backend: backend.get_session(session_id, JOURNAL_LIMIT)
            )
    except Exception as exc:  # noqa: BLE001 - command boundary: one line, no traceback
        reason = one_line(exc)
        sys.stderr.write(f"tornado-echo: cannot query {mask_url(config.database_url)}: {reason}\n")
        return 1
    if session_id is not None:
        if found is None:
            sys.stderr.write(f"tornado-echo: no session {session_id}\n")
            return 1
        found["journal"] = [journal_entry(row) for row in found["journal"]]
        sys.stdout.write(json.dumps(found, indent=None if args.json else 2) + "\n")
        return 0
    if args.json:
        sys.stdout.writelines(json.dumps(row) + "\n" for row in rows)
        return 0
    sys.stdout.write(_table(rows))
    return 0


def prune(argv: Sequence[str]) -> int:
    """``tornado-echo prune --older-than DAYS``: blocking, batch after batch, then one line."""
    from tornado_echo.store import make_backend
    from tornado_echo.store.retention import DAY
    from tornado_echo.store.retention import prune as prune_before

    args = build_prune_parser().parse_args(argv)
    try:
        days = float(args.older_than)
    except ValueError:
        days = -1.0
    if not 0 <= days <= 36500:  # NaN fails too
        sys.stderr.write(
            f"tornado-echo: --older-than must be a number of days, got {args.older_than!r}\n"
        )
        return 2
    built = _config_or_report(args.config, {key: getattr(args, key) for key in FIELDS})
    if built is None:
        return 2
    config, _ = built
    if _no_database(config):
        return 1
    cutoff = time.time() - days * DAY
    backend = make_backend(config.database_url)
    try:
        backend.connect()
        pruned = prune_before(backend, cutoff)
    except Exception as exc:  # noqa: BLE001 - command boundary: one line, no traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        sys.stderr.write(f"tornado-echo: cannot prune {mask_url(config.database_url)}: {first}\n")
        return 1
    finally:
        backend.close()
    before = datetime.datetime.fromtimestamp(cutoff, datetime.timezone.utc)
    dropped = f"; dropped {pruned.partitions} journal day partitions" if pruned.partitions else ""
    sys.stdout.write(
        f"deleted {pruned.sessions} sessions and {pruned.messages} journal rows"
        f" opened before {before:%Y-%m-%dT%H:%M:%SZ}{dropped}\n"
    )
    return 0


def migrate(argv: Sequence[str]) -> int:
    """``tornado-echo migrate``: blocking, however long it takes, then one line."""
    from tornado_echo.store import make_backend

    args = build_migrate_parser().parse_args(argv)
    built = _config_or_report(args.config, {key: getattr(args, key) for key in FIELDS})
    if built is None:
        return 2
    config, _ = built
    backend = make_backend(config.database_url)
    started = time.monotonic()
    try:
        backend.connect()
        applied = backend.migrate(unbounded=True)
    except Exception as exc:  # noqa: BLE001 - command boundary: one line, no traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        sys.stderr.write(f"tornado-echo: cannot migrate {mask_url(config.database_url)}: {first}\n")
        return 1
    finally:
        backend.close()
    done = f"applied schema versions {applied}" if applied else "schema up to date"
    sys.stdout.write(f"{done} in {time.monotonic() - started:.1f} s\n")
    return 0


def _no_database(config: Config) -> bool:
    """For commands that read: a missing SQLite file is reported, not created empty."""
    if not config.database_url.startswith("sqlite:///"):
        return False
    path = Path(config.database_url[len("sqlite:///") :])
    if path.is_file():
        return False
    sys.stderr.write(
        f"tornado-echo: no database at {path} (a relative sqlite:/// path is relative to"
        f" state_dir, here {config.state_dir!r})\n"
    )
    return True


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["  ".join(title.ljust(width) for _, title, width in SESSION_TABLE).rstrip()]
    for row in rows:
        cells = ["" if row[key] is None else str(row[key]).ljust(w) for key, _, w in SESSION_TABLE]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"({len(rows)} sessions)")
    return "\n".join(lines) + "\n"
