"""Read-only operator API: ``GET /api/sessions`` and ``GET /api/sessions/{id}``.

Access: loopback clients, or with ``Authorization: Bearer <admin_token>`` when a token is
set (401 otherwise; 403 for remote clients while no token is set). Query
parameters are validated (400 with a JSON reason); queries run on the reader's thread pool,
never on the IOLoop, with bound parameters only. A session's journal comes in pages
(``limit`` entries after sequence number ``after``, at most ``JOURNAL_BYTES`` of payload),
encoded on the reader's threads too: a journal can be far larger than memory allows.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import uuid
from typing import Any

from tornado_echo.config import Config, LiveConfig
from tornado_echo.errors import EchoError
from tornado_echo.http.access import deny
from tornado_echo.observability.throttle import LogThrottle
from tornado_echo.store.reader import SessionReader
from tornado_echo.web.endpoints import JsonHandler

logger = logging.getLogger(__name__)
# A stranger can send refused requests as fast as the network allows (one keep-alive client
# made 5,290 lines a second): each kind is logged once per interval, with a count.
throttle = LogThrottle(logger)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SESSIONS_PARAMETERS = frozenset({"limit", "since"})
SESSION_PARAMETERS = frozenset({"limit", "after"})


class QueryError(EchoError):
    """A bad query parameter; the message says which and why."""


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {text!r}")
    return limit


def parse_since(text: str | None) -> float | None:
    """An ISO-8601 time (``Z`` or an offset; none means UTC) as a Unix time."""
    if text is None:
        return None
    try:
        # fromisoformat takes "Z" only from Python 3.11 on.
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"since must be an ISO-8601 time like 2026-01-31T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def parse_after(text: str | None) -> int:
    if text is None:
        return 0
    try:
        after = int(text)
    except ValueError:
        after = -1
    if not 0 <= after < 2**63:
        raise QueryError(f"after must be a journal sequence number (0 or more), got {text!r}")
    return after


def parse_session_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise QueryError(f"session id must be a UUID, got {text!r}") from None


def journal_entry(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.pop("payload", None)
    row["payload_base64"] = None if payload is None else base64.b64encode(payload).decode()
    return row


class ApiHandler(JsonHandler):
    """Access control and parameter errors shared by the API handlers."""

    def initialize(self, config: LiveConfig, reader: SessionReader) -> None:
        self.config: Config = config.current
        self.reader = reader

    def prepare(self) -> None:
        denial = deny(
            self.request,
            self.config.admin_token,
            self.config.server_names,
            loopback_only="the API answers loopback clients only unless admin_token is set",
        )
        if denial is None:
            return
        throttle.log(
            "refused",
            logging.WARNING,
            "API request from %s refused (%d): %s",
            self.request.remote_ip,
            denial.status,
            denial.reason,
        )
        self.refuse(denial)

    def check_parameters(self, known: frozenset[str]) -> None:
        unknown = set(self.request.arguments) - known
        if unknown:
            raise QueryError(f"unknown parameter(s): {', '.join(sorted(unknown))}")

    def unavailable(self, exc: Exception) -> None:
        throttle.log("query", logging.WARNING, "API query failed: %s", exc, exc_info=exc)
        self.fail(503, "database unavailable")


class SessionsHandler(ApiHandler):
    """``GET /api/sessions?limit=N&since=ISO``: the most recently opened sessions first."""

    async def get(self) -> None:
        try:
            self.check_parameters(SESSIONS_PARAMETERS)
            limit = parse_limit(self.get_query_argument("limit", None))
            since = parse_since(self.get_query_argument("since", None))
        except QueryError as exc:
            self.fail(400, str(exc))
            return
        try:
            sessions = await self.reader.list_sessions(limit, since)
        except Exception as exc:  # noqa: BLE001 - any driver failure: answer 503, keep serving
            self.unavailable(exc)
            return
        self.write_json(200, {"count": len(sessions), "limit": limit, "sessions": sessions})


class SessionHandler(ApiHandler):
    """``GET /api/sessions/{id}?limit=N&after=SEQ``: one session, with a page of its journal
    when the journal is on; ``journal_next`` is the ``after`` of the next page (null: none)."""

    async def get(self, raw_id: str) -> None:
        try:
            session_id = parse_session_id(raw_id)
            self.check_parameters(SESSION_PARAMETERS)
            limit = parse_limit(self.get_query_argument("limit", None))
            after = parse_after(self.get_query_argument("after", None))
        except QueryError as exc:
            self.fail(400, str(exc))
            return
        try:
            session = await self.reader.get_session(session_id, limit, after)
        except Exception as exc:  # noqa: BLE001 - any driver failure: answer 503, keep serving
            self.unavailable(exc)
            return
        if session is None:
            self.fail(404, f"no session {session_id}")
            return
        journal = session.pop("journal")
        journal_next = session.pop("journal_next")
        if self.config.journal != "off":
            session["journal"] = journal
            session["journal_next"] = journal_next
        self.write_json(200, await self.reader.offload(lambda: render(session)))


def render(session: dict[str, Any]) -> bytes:
    """The JSON answer for one session, payloads as base64 (up to JOURNAL_BYTES of them)."""
    if "journal" in session:
        session["journal"] = [journal_entry(row) for row in session["journal"]]
    return json.dumps(session).encode()
