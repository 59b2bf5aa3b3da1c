"""The backend contract: synchronous database access used only by the writer thread.

A backend never runs on the IOLoop thread. It raises :class:`StoreError` subclasses or the
driver's own errors; the writer treats any failure as "database unavailable" and retries.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from importlib import resources

from .records import Record

SCHEMA_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The packaged ``schema/<dialect>/NNN_name.sql`` files in version order."""
    folder = resources.files(__package__).joinpath("schema").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        match = SCHEMA_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda migration: migration.version)


class Backend(abc.ABC):
    """One database connection owned by one thread."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data goes, safe to log (no password)."""

    @abc.abstractmethod
    def connect(self) -> None:
        """(Re)open the connection; raises when the database is unreachable."""

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply missing schema versions; safe when several processes start at once."""

    @abc.abstractmethod
    def write(self, batch: list[Record]) -> None:
        """Write ``batch`` in one transaction; idempotent if retried after a failure."""

    @abc.abstractmethod
    def mark_crashed(self, server_id: str, now: float) -> int:
        """Mark sessions that ``server_id`` left open (a crash) as crashed; returns how many."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the database does not answer."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; idempotent."""
