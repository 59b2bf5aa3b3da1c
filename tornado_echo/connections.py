"""The set of open WebSocket sessions, for limits, draining and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

logger = logging.getLogger(__name__)

GOING_AWAY = 1001


class Closable(Protocol):
    def close_for_shutdown(self, code: int, reason: str) -> None: ...


class Connections:
    """Tracks open sessions; used only on the IOLoop thread."""

    def __init__(self) -> None:
        self._open: set[Closable] = set()
        self.total = 0
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, session: Closable) -> None:
        self._open.add(session)
        self.total += 1
        self._empty.clear()

    def discard(self, session: Closable) -> None:
        self._open.discard(session)
        if not self._open:
            self._empty.set()

    def start_draining(self) -> None:
        """From now on new upgrades are refused (503) and /readyz reports draining."""
        self.draining = True

    def close_all(self, reason: str = "server shutting down") -> int:
        """Send every open session a 1001 Going Away close; returns how many."""
        sessions = list(self._open)
        for session in sessions:
            session.close_for_shutdown(GOING_AWAY, reason)
        return len(sessions)

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every session has ended; False if some are still open after ``timeout``."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
