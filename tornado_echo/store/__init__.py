"""Session and journal storage: SQLite (embedded default) or PostgreSQL, behind one writer."""

from __future__ import annotations

from pathlib import Path

from tornado_echo.config import Config
from tornado_echo.store.base import Backend
from tornado_echo.store.handoff import JournalHandoff
from tornado_echo.store.patient import PatientBackend
from tornado_echo.store.records import MessageReceived, Record, SessionClosed, SessionOpened
from tornado_echo.store.spool import Spool, spool_path
from tornado_echo.store.store import SessionJournaller, Store, StoreStatus

__all__ = [
    "Backend",
    "MessageReceived",
    "Record",
    "SessionClosed",
    "SessionJournaller",
    "SessionOpened",
    "Spool",
    "Store",
    "StoreStatus",
    "is_sqlite",
    "make_backend",
    "make_store",
    "spool_path",
]


def is_sqlite(database_url: str) -> bool:
    return database_url.startswith("sqlite:///")


def make_backend(database_url: str) -> Backend:
    """The backend for a ``sqlite:///PATH`` or ``postgresql://`` URL (already validated)."""
    if is_sqlite(database_url):
        from tornado_echo.store.sqlite import SQLiteBackend

        return SQLiteBackend(Path(database_url[len("sqlite:///") :]))
    from tornado_echo.store.postgres import PostgresBackend

    return PostgresBackend(database_url)


def make_store(config: Config, server_id: str) -> Store:
    """A not-yet-started store configured from ``config``.

    A network database may be down when the service starts: the store then starts without
    it (see :class:`PatientBackend`). A SQLite file that cannot be opened is a mistake of
    this host, reported at start.
    """
    backend = make_backend(config.database_url)
    store = Store(
        backend if is_sqlite(config.database_url) else PatientBackend(backend),
        server_id=server_id,
        spool_path=spool_path(config.state_dir, server_id),
        batch_size=config.batch_size,
        batch_delay=config.batch_delay,
        queue_limit=config.queue_limit,
        queue_bytes_limit=config.queue_bytes_limit,
        journal_max_payload=config.journal_max_payload,
    )
    if config.journal != "off" and config.journal_writer == "process":
        store.handoff = JournalHandoff(
            config.database_url,
            store.submit_many,
            max_payload=config.journal_max_payload,
            # The same share of memory as the store's own batches and queue.
            bytes_limit=max(1 << 20, config.queue_bytes_limit // 4),
            batch_bytes=max(1 << 16, config.queue_bytes_limit // 64),
            batch_delay=config.batch_delay,
            spool_path=store.spool.path,
            log_level=config.log_level,
        )
    return store
