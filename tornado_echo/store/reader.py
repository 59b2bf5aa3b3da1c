"""Queries for the operator API, on their own connections, off the IOLoop.

Each call opens a fresh connection on a small thread pool and closes it afterwards: operator
queries are rare, and never sharing the writer's connection keeps a slow query from holding
up writes (or a broken writer connection from failing reads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from tornado_echo.store import make_backend
from tornado_echo.store.base import Backend

T = TypeVar("T")

JOURNAL_LIMIT = 1000


def run_query(database_url: str, query: Callable[[Backend], T]) -> T:
    """Run ``query`` on a new connection (blocking; for threads and the CLI)."""
    backend = make_backend(database_url)
    try:
        backend.connect()
        return query(backend)
    finally:
        backend.close()


class SessionReader:
    """Async read access to sessions and journals; :meth:`close` stops its threads."""

    def __init__(self, database_url: str, workers: int = 2) -> None:
        self.database_url = database_url
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="store-reader"
        )

    async def _run(self, query: Callable[[Backend], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run_query, self.database_url, query)

    async def list_sessions(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        return await self._run(lambda backend: backend.list_sessions(limit, since))

    async def get_session(
        self, session_id: str, journal_limit: int = JOURNAL_LIMIT, journal_after: int = 0
    ) -> dict[str, Any] | None:
        return await self._run(
            lambda backend: backend.get_session(session_id, journal_limit, journal_after)
        )

    async def offload(self, work: Callable[[], T]) -> T:
        """Run ``work`` (say, serialising a large answer) on the reader's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        """Idempotent; queries in flight finish on their own."""
        self._executor.shutdown(wait=False)
