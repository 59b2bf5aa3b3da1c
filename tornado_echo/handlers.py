"""Request handlers: the WebSocket echo endpoint and the small HTTP endpoints.

:class:`EchoWebSocket` is the user-facing handler; the wire protocol lives in
:mod:`tornado_echo.protocol`. Every request to the WebSocket route that cannot be upgraded is
answered through ``send_error`` so that ``write_error`` alone decides the response: HTTP 500
with ``{"status": 500, "error": "<reason>"}``, except a forbidden Origin (403) and a server
that is full or draining (503), which are policy decisions rather than broken upgrades.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from asyncio import Future
from http.client import responses
from typing import Any

import tornado.web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from .access import NOT_LOOPBACK, request_refusal
from .config import Config
from .connections import Connections
from .engine import FastProtocol, FastWebSocketHandler, carried_by_tls
from .metrics import CONTENT_TYPE, Metrics
from .protocol import EchoProtocol
from .rfc6455 import CloseCode, Opcode
from .store import MessageReceived, SessionClosed, SessionOpened, Store
from .tornado_compat import cross_origin_problem

logger = logging.getLogger(__name__)

POLICY_STATUSES = (403, 503)


class JsonErrorMixin:
    """Errors as ``{"status": N, "error": reason}``; set ``error_reason`` before send_error."""

    error_reason: str | None = None

    def error_message(self, status: int, exc_info: Any) -> str:
        if self.error_reason is not None:
            return self.error_reason
        error = exc_info[1] if exc_info else None
        if isinstance(error, tornado.web.HTTPError):
            return error.log_message or error.reason or responses.get(error.status_code, "error")
        # An unexpected exception: Tornado has logged it with its traceback already.
        return "internal error" if error is not None else responses.get(status, "error")

    @staticmethod
    def json_error(status: int, reason: str) -> bytes:
        return json.dumps({"status": status, "error": reason}).encode()


class EchoWebSocket(JsonErrorMixin, FastWebSocketHandler):
    """Echoes every message back with the same type, in order; records each session."""

    # Metric label of a refused upgrade; "error" covers exceptions raised while opening.
    rejection_label = "error"

    def initialize(
        self,
        db: Store,
        config: Config,
        connections: Connections,
        server_id: str,
        metrics: Metrics,
    ) -> None:
        self.db = db
        self.config = config
        self.metrics = metrics
        self.connections = connections
        self.server_id = server_id
        self.session_id = ""
        self.messages_in = self.messages_out = 0
        self.bytes_in = self.bytes_out = 0
        self._protocol: EchoProtocol | FastProtocol | None = None
        self._admitted = False
        self._opened_at = 0.0
        self._shutdown_close = False
        self._journal = config.journal

    # -- upgrade ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.request.method != "GET":
            self._reject(
                500, "method", f"method {self.request.method} cannot be upgraded (use GET)"
            )

    async def get(self, *args: Any, **kwargs: Any) -> None:
        problem = self._upgrade_problem()
        if problem is not None:
            self._reject(500, *problem)
            return
        # Tornado's own check: Sec-Fetch-Site, then Origin against Host, then check_origin.
        forbidden = cross_origin_problem(self, self.check_origin)
        if forbidden is not None:
            self._reject(403, "origin", forbidden)
            return
        if self.connections.draining:
            self._reject(503, "draining", "server is shutting down")
            return
        if self.connections.admitted >= self.config.max_connections:
            self._reject(503, "connection_limit", "connection limit reached")
            return
        self._address = self.request.remote_ip or ""
        if not self.connections.per_address.admit(
            self._address, self.config.max_connections_per_ip
        ):
            self._reject(503, "address_limit", "too many connections from your address")
            return
        self.connections.admitted += 1
        self._admitted = True
        try:
            # With the tornado engine this returns when the connection ends (its read loop
            # runs in here); the fast engine returns once open() has run.
            await super().get(*args, **kwargs)
        finally:
            if not self.session_id:
                self._release_admission()  # never opened: on_close will not run

    def _release_admission(self) -> None:
        if self._admitted:
            self._admitted = False
            self.connections.admitted -= 1
            self.connections.per_address.release(self._address)

    def _upgrade_problem(self) -> tuple[str, str] | None:
        """(metric label, message) of what makes this request impossible to upgrade."""
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            return "upgrade_header", "missing or invalid Upgrade header (expected 'websocket')"
        tokens = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
        if "upgrade" not in tokens:
            return "connection_header", "missing or invalid Connection header (expected 'Upgrade')"
        version = headers.get("Sec-WebSocket-Version")
        if version != "13":
            return "version", f"unsupported Sec-WebSocket-Version {version!r} (supported: 13)"
        key = headers.get("Sec-WebSocket-Key")
        if not key:
            return "key", "missing Sec-WebSocket-Key header"
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return "key", "invalid Sec-WebSocket-Key (must be 16 bytes, base64)"
        if not headers.get("Host"):
            return "host", "missing Host header"
        return None

    def _reject(self, status: int, label: str, reason: str) -> None:
        self.error_reason = reason
        self.rejection_label = label
        self.send_error(status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        status = status_code if status_code in POLICY_STATUSES else 500
        self.metrics.handshakes.labels(str(status)).inc()
        self.metrics.rejections.labels(self.rejection_label).inc()
        reason = self.error_message(status, kwargs.get("exc_info"))
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if self.rejection_label == "version":
            # RFC 6455 section 4.4: tell the client which version we speak.
            self.set_header("Sec-WebSocket-Version", "13")
        logger.warning(
            "rejected WebSocket upgrade from %s %s %s: %d %s",
            self.request.remote_ip,
            self.request.method,
            self.request.path,
            status,
            reason,
        )
        self.finish(self.json_error(status, reason))

    def check_origin(self, origin: str) -> bool:
        allowed = self.config.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return bool(super().check_origin(origin))

    def get_compression_options(self) -> dict[str, Any] | None:
        if not self.config.compression:
            return None
        return {"compression_level": self.config.compression_level}

    def get_websocket_protocol(self) -> EchoProtocol | FastProtocol | None:
        if self.config.engine == "fast" and not carried_by_tls(self):
            fast = super().get_websocket_protocol()
            assert isinstance(fast, FastProtocol)
            self._protocol = fast
            return fast
        # Same parameters Tornado would pass; only the protocol class differs.
        stock = WebSocketHandler.get_websocket_protocol(self)
        if stock is None:
            return None
        self._protocol = EchoProtocol(self, False, stock.params)  # type: ignore[attr-defined]
        return self._protocol

    # -- session ---------------------------------------------------------------------------

    def open(self, *args: str, **kwargs: str) -> None:
        self.session_id = str(uuid.uuid4())
        self._opened_at = time.monotonic()
        self.connections.add(self)
        self.metrics.handshakes.labels("accepted").inc()
        self.metrics.connections.inc()
        self.set_nodelay(True)
        headers = self.request.headers
        protocol = self._protocol
        self.db.submit(
            SessionOpened(
                session_id=self.session_id,
                server_id=self.server_id,
                opened_at=time.time(),
                peer=self.request.remote_ip or "",
                path=self.request.path,
                origin=headers.get("Origin"),
                user_agent=headers.get("User-Agent"),
                subprotocol=self.selected_subprotocol,
                compression=protocol is not None and protocol.compression_negotiated,
            )
        )

    def on_message(self, message: str | bytes) -> Future[None] | None:
        if isinstance(message, str):
            data, opcode = message.encode(), Opcode.TEXT
        else:
            data, opcode = message, Opcode.BINARY
        self.messages_in += 1
        self.bytes_in += len(data)
        if self._journal != "off":
            self.db.submit(
                MessageReceived(
                    session_id=self.session_id,
                    seq=self.messages_in,
                    received_at=time.time(),
                    opcode=int(opcode),
                    size=len(data),
                    payload=data if self._journal == "full" else None,
                )
            )
        assert self._protocol is not None
        try:
            waiter = self._protocol.send_message(opcode, data)
        except WebSocketClosedError:
            logger.debug("session %s: echo dropped, connection is closing", self.session_id)
            return None
        self.messages_out += 1
        self.bytes_out += len(data)
        return waiter

    def close_for_shutdown(self, code: int, reason: str) -> None:
        self._shutdown_close = True
        self.close(code, reason)

    def on_close(self) -> None:
        self._release_admission()
        if not self.session_id:
            return
        self.connections.discard(self)
        protocol = self._protocol
        if self._shutdown_close:
            end_state = "server_shutdown"
        elif protocol is not None and protocol.close_frame_received:
            end_state = "closed"
        else:
            end_state = "aborted"
        code = self.close_code
        if code is None:
            code = (
                CloseCode.NO_STATUS_RECEIVED
                if end_state == "closed"
                else CloseCode.ABNORMAL_CLOSURE
            )
        duration = time.monotonic() - self._opened_at
        self.metrics.close_codes.labels(str(code), end_state).inc()
        self.db.submit(
            SessionClosed(
                session_id=self.session_id,
                closed_at=time.time(),
                close_code=code,
                close_reason=self.close_reason,
                messages_in=self.messages_in,
                messages_out=self.messages_out,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                end_state=end_state,
            )
        )
        stream_error = protocol.connection_error if protocol else None
        logger.log(
            logging.WARNING if end_state == "aborted" and stream_error else logging.INFO,
            "session %s ended (%s): peer=%s path=%s duration=%.3fs in=%d msgs/%d B"
            " out=%d msgs/%d B close=%d%s%s",
            self.session_id,
            end_state,
            self.request.remote_ip,
            self.request.path,
            duration,
            self.messages_in,
            self.bytes_in,
            self.messages_out,
            self.bytes_out,
            code,
            f" reason={self.close_reason!r}" if self.close_reason else "",
            f" error={stream_error}" if stream_error else "",
            extra={
                "session_id": self.session_id,
                "peer": self.request.remote_ip,
                "path": self.request.path,
                "duration_s": round(duration, 6),
                "messages_in": self.messages_in,
                "messages_out": self.messages_out,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "close_code": code,
                "end_state": end_state,
            },
        )


class JsonHandler(JsonErrorMixin, tornado.web.RequestHandler):
    def write_json(self, status: int, body: dict[str, Any] | bytes) -> None:
        """Answer ``body``: a dict, or bytes already serialised (say, off the IOLoop)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(body if isinstance(body, bytes) else json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self.error_message(status_code, kwargs.get("exc_info"))
        self.set_header("Content-Type", "application/json")
        self.finish(self.json_error(status_code, reason))


class HealthHandler(JsonHandler):
    """Liveness: answers 200 as long as the IOLoop runs."""

    def get(self) -> None:
        self.write_json(200, {"status": "ok"})


class ReadyHandler(JsonHandler):
    """Readiness: 503 while draining, while the store writer is not running, and (unless
    ``readiness_needs_store`` is off) while the database is unreachable; else 200.

    During a database outage echo keeps working and records wait in memory and the spool:
    the body says so either way. With ``readiness_needs_store = false`` the answer stays
    200 with ``"status": "degraded"``, so that a shared database blinking does not take
    every instance out of a load balancer at once.
    """

    def initialize(self, db: Store, connections: Connections, config: Config) -> None:
        self.db = db
        self.connections = connections
        self.config = config

    def get(self) -> None:
        store = self.db.status()
        body: dict[str, Any] = {
            "connections": len(self.connections),
            "store": {
                "available": store.available,
                "error": store.error,
                "pending": store.pending,
                "queued": store.queued,
                "queued_bytes": store.queued_bytes,
                "spooled": store.spooled,
                "spool_bytes": store.spool_bytes,
                "oldest_pending_age_s": round(store.oldest_pending_age, 3),
                "written": store.written,
                "poisoned": store.poisoned,
                "dropped": store.dropped,
                "shed": store.shed,
            },
        }
        if self.connections.draining:
            self.write_json(503, {"status": "unavailable", "reason": "draining", **body})
        elif not store.running:
            reason = f"store writer not running: {store.error or 'not started'}"
            self.write_json(503, {"status": "unavailable", "reason": reason, **body})
        elif not store.available and self.config.readiness_needs_store:
            reason = f"store unavailable: {store.error}"
            self.write_json(503, {"status": "unavailable", "reason": reason, **body})
        elif not store.available or store.dropped:
            problems = []
            if not store.available:
                problems.append(f"store unavailable: {store.error}")
            if store.dropped:
                problems.append(f"{store.dropped} records lost ({store.loss})")
            self.write_json(200, {"status": "degraded", "reason": "; ".join(problems), **body})
        else:
            self.write_json(200, {"status": "ok", **body})


class MetricsHandler(JsonHandler):
    """Prometheus scrape endpoint; loopback peers or ``Authorization: Bearer <metrics_token>``."""

    def initialize(
        self,
        metrics: Metrics,
        connections: Connections,
        db: Store,
        token: str,
        server_names: tuple[str, ...] = (),
    ) -> None:
        self.metrics = metrics
        self.connections = connections
        self.db = db
        self.token = token
        self.server_names = server_names

    def get(self) -> None:
        refused = request_refusal(self.request, self.token, self.server_names)
        if refused is not None:
            self.error_reason = (
                "metrics are served to loopback or with the metrics token"
                if refused == NOT_LOOPBACK
                else refused
            )
            raise tornado.web.HTTPError(403)
        self.metrics.refresh(self.connections, self.db)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.exposition())


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        self.error_reason = f"no such path: {self.request.path}"
        raise tornado.web.HTTPError(404)
