"""The small HTTP endpoints (health, readiness, metrics, 404) and the JSON error body.

Every error any handler of the application answers is ``{"status": N, "error": text}``
(:func:`~tornado_echo.http.listener.error_body`), written by :class:`JsonErrorMixin`; the
operator API and the console build on :class:`JsonHandler`. Nothing here imports an
engine, so they stay light.
"""

from __future__ import annotations

import json
import logging
from http.client import responses
from typing import Any

import tornado.web

from tornado_echo.config import Config, LiveConfig
from tornado_echo.connections import Connections
from tornado_echo.http.access import Denial, deny, request_refusal
from tornado_echo.http.listener import error_body
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import Store

logger = logging.getLogger(__name__)


class JsonErrorMixin:
    """Errors as ``{"status": N, "error": text}``: ``send_error(status, error=text)``.

    Tornado hands ``send_error``'s keyword arguments to ``write_error``; without ``error``
    the text comes from the exception (an HTTPError's log message) or the status.
    """

    def error_message(self, status: int, details: dict[str, Any]) -> str:
        text = details.get("error")
        if text is not None:
            return str(text)
        exc_info = details.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, tornado.web.HTTPError):
            return error.log_message or error.reason or responses.get(error.status_code, "error")
        # An unexpected exception: Tornado has logged it with its traceback already.
        return "internal error" if error is not None else responses.get(status, "error")


class JsonHandler(JsonErrorMixin, tornado.web.RequestHandler):
    def write_json(self, status: int, body: dict[str, Any] | bytes) -> None:
        """Answer ``body``: a dict, or bytes already serialised (say, off the IOLoop)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body if isinstance(body, bytes) else json.dumps(body))

    def fail(self, status: int, reason: str) -> None:
        """Answer the JSON error body (without going through ``send_error``)."""
        self.write_json(status, error_body(status, reason))

    def refuse(self, denial: Denial) -> None:
        for name, value in denial.headers.items():
            self.set_header(name, value)
        self.fail(denial.status, denial.reason)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self.error_message(status_code, kwargs)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(status_code, reason))


class HealthHandler(JsonHandler):
    """Liveness: answers 200 as long as the IOLoop runs."""

    def get(self) -> None:
        self.write_json(200, {"status": "ok"})

    head = get  # Tornado sends the headers of GET, without the body


class ReadyHandler(JsonHandler):
    """Readiness: 503 while draining, while the store writer is not running, and (unless
    ``readiness_needs_store`` is off) while the database is unreachable; else 200.

    During a database outage echo keeps working and records wait in memory and the spool:
    the body says so either way. With ``readiness_needs_store = false`` the answer stays
    200 with ``"status": "degraded"``, so that a shared database blinking does not take
    every instance out of a load balancer at once.

    The database's error text names hosts, users and databases: only peers allowed to read
    /metrics see it (and the store details); others get the status and a generic reason.
    """

    def initialize(self, store: Store, connections: Connections, config: LiveConfig) -> None:
        self.store = store
        self.connections = connections
        self.config: Config = config.current

    def get(self) -> None:
        status = self.store.status()
        problems: list[tuple[str, str]] = []  # (what anybody may read, detail for the trusted)
        code = 200
        if self.connections.draining:
            code, problems = 503, [("draining", "")]
        elif not status.running:
            code, problems = 503, [("store writer not running", status.error or "not started")]
        else:
            if not status.available:
                problems.append(("store unavailable", status.error or ""))
                if self.config.readiness_needs_store:
                    code = 503
            if status.dropped:
                problems.append(("records lost", f"{status.dropped} ({status.loss})"))
        config = self.config
        trusted = request_refusal(self.request, config.metrics_token, config.server_names) is None
        body: dict[str, Any] = {"status": "ok"}
        if problems:
            body["status"] = "unavailable" if code == 503 else "degraded"
            body["reason"] = "; ".join(
                f"{what}: {detail}" if trusted and detail else what for what, detail in problems
            )
        if trusted:
            body["connections"] = len(self.connections)
            body["store"] = {
                "available": status.available,
                "error": status.error,
                "pending": status.pending,
                "queued": status.queued,
                "handed": status.handed,
                "queued_bytes": status.queued_bytes,
                "spooled": status.spooled,
                "spool_bytes": status.spool_bytes,
                "oldest_pending_age_s": round(status.oldest_pending_age, 3),
                "written": status.written,
                "poisoned": status.poisoned,
                "dropped": status.dropped,
                "shed": status.shed,
            }
        self.write_json(code, body)

    head = get


class MetricsHandler(JsonHandler):
    """Prometheus scrape endpoint; loopback peers or ``Authorization: Bearer <metrics_token>``.

    Refused: 401 (with ``WWW-Authenticate``) when a token is set and was not given or is
    wrong; 403 when no token is set, since no credentials could help, or when the Host does
    not name this server.
    """

    def initialize(
        self, metrics: Metrics, connections: Connections, store: Store, config: LiveConfig
    ) -> None:
        self.metrics = metrics
        self.connections = connections
        self.store = store
        self.config: Config = config.current

    def get(self) -> None:
        denial = deny(
            self.request,
            self.config.metrics_token,
            self.config.server_names,
            loopback_only="metrics are served to loopback only unless metrics_token is set",
        )
        if denial is not None:
            self.refuse(denial)
            return
        self.metrics.refresh(self.connections, self.store)
        body, content_type = self.metrics.exposition(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)

    head = get


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        self.send_error(404, error=f"no such path: {self.request.path}")
