"""The WebSocket echo endpoint: :class:`EchoWebSocket`, the user-facing handler.

The wire protocol lives in the engines (:mod:`tornado_echo.engines.fast`, or
:mod:`tornado_echo.engines.stock` with ``engine = "tornado"``). Every request to the WebSocket
route that cannot be upgraded is answered through ``send_error`` so that ``write_error`` alone
decides the response: HTTP 500 with ``{"status": 500, "error": "<reason>"}``, except a
forbidden Origin (403) and a server that is full or draining (503), which are policy decisions
rather than broken upgrades.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
from asyncio import Future
from typing import Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from tornado_echo.compat import cross_origin_problem
from tornado_echo.config import Config, LiveConfig
from tornado_echo.connections import Connections, new_session_id
from tornado_echo.engines.budget import CLOSE_COST, loop_budgets
from tornado_echo.engines.fast import FastProtocol, FastWebSocketHandler, carried_by_tls
from tornado_echo.engines.ratelimit import TokenBucket
from tornado_echo.engines.stock import EchoProtocol
from tornado_echo.http.listener import error_body, is_tls_failure
from tornado_echo.observability.metrics import Metrics
from tornado_echo.store import SessionClosed, SessionJournaller, SessionOpened, Store
from tornado_echo.web.endpoints import JsonErrorMixin
from tornado_echo.wire import CloseCode, Opcode, negotiate_deflate

logger = logging.getLogger(__name__)

POLICY_STATUSES = (403, 503)
# Read on every message: module names, not Enum class lookups.
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY


class EchoWebSocket(JsonErrorMixin, FastWebSocketHandler):
    """Echoes every message back with the same type, in order; records each session."""

    # Defaults here, set on the instance only when they differ: an idle connection's handler
    # dict stays under 43 keys, the size at which CPython doubles it (from 832 to 1584 bytes).
    _shutdown_close = False
    _journal_budget: TokenBucket | None = None
    _journal: SessionJournaller | None = None  # journal off: None
    _journal_full = False
    _message_budget: TokenBucket | None = None
    _byte_budget: TokenBucket | None = None

    def initialize(
        self,
        db: Store,
        config: LiveConfig,
        connections: Connections,
        server_id: str,
        metrics: Metrics,
        journal_budget: TokenBucket | None = None,
    ) -> None:
        self.db = db
        # The connection keeps the configuration it started with, through reloads.
        self.config: Config = config.current
        limits = self.config
        self.metrics = metrics
        self.connections = connections
        self.server_id = server_id
        self.session_id = ""
        self.messages_in = self.messages_out = 0
        self.bytes_in = self.bytes_out = 0
        self._protocol: EchoProtocol | FastProtocol | None = None
        self._admitted = False
        self._opened_at = 0.0
        if limits.journal_max_bytes_per_second:
            # Payload bytes the full journal may keep (shared by the process's connections).
            self._journal_budget = journal_budget
        if limits.max_messages_per_second:
            self._message_budget = TokenBucket(limits.max_messages_per_second)
        if limits.max_bytes_per_second:
            self._byte_budget = TokenBucket(limits.max_bytes_per_second)

    # -- upgrade ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.request.method != "GET":
            self._reject(500, "method", self._method_refusal())

    def _method_refusal(self) -> str:
        return f"method {self.request.method} cannot be upgraded (use GET)"

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
        self._address = self.request.remote_ip or ""
        refused = self.connections.admit(
            self._address, self.config.max_connections, self.config.max_connections_per_ip
        )
        if refused is not None:
            self._reject(503, *refused)
            return
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
            self.connections.release(self._address)

    def _upgrade_problem(self) -> tuple[str, str] | None:
        """(metric label, message) of what makes this request impossible to upgrade."""
        headers = self.request.headers
        if self.request.version != "HTTP/1.1":
            # RFC 6455 section 4.1: the upgrade is an HTTP/1.1 (or later) request.
            return "http_version", f"{self.request.version} cannot be upgraded (use HTTP/1.1)"
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
        self.send_error(status, error=reason, label=label)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405 and "error" not in kwargs:
            # A method Tornado does not know (BREW) is refused before prepare() runs: the
            # same answer as any other method, not a 500 that says "Method Not Allowed".
            kwargs.update(error=self._method_refusal(), label="method")
        status = status_code if status_code in POLICY_STATUSES else 500
        reason = self.error_message(status, kwargs)
        # The metric label of the refusal; "error" is an exception raised while opening.
        label = kwargs.get("label", "error")
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        if label == "version":
            # RFC 6455 section 4.4: tell the client which version we speak.
            self.set_header("Sec-WebSocket-Version", "13")
        self.metrics.reject(
            self.request.remote_ip,
            self.request.method or "",
            self.request.path,
            status,
            reason,
            label,
        )
        self.finish(error_body(status, reason))

    # Tornado reads these from the application settings; here, from this connection's config.
    @property
    def max_message_size(self) -> int:
        return self.config.max_message_size

    @property
    def ping_interval(self) -> float | None:
        return self.config.ping_interval or None

    @property
    def ping_timeout(self) -> float | None:
        return self.config.ping_timeout

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
        offer = self.request.headers.get("Sec-WebSocket-Extensions")
        if offer is not None:
            # Both engines negotiate the same way: the first valid permessage-deflate offer
            # (wire.negotiate_deflate), or none. Tornado's own negotiation fails the
            # whole handshake, with a traceback, on a bad window size.
            agreed = negotiate_deflate(offer)
            if agreed is None:
                del self.request.headers["Sec-WebSocket-Extensions"]
            else:
                self.request.headers["Sec-WebSocket-Extensions"] = agreed[1]
        # With the journal's writer process, an echo leaves after its row is handed to it.
        gate = self.db.handoff if self.config.journal != "off" else None
        if self.config.engine == "fast" and not carried_by_tls(self):
            fast = super().get_websocket_protocol()
            assert isinstance(fast, FastProtocol)
            fast.gate = gate
            self._protocol = fast
            return fast
        # Same parameters Tornado would pass; only the protocol class differs.
        stock = WebSocketHandler.get_websocket_protocol(self)
        if stock is None:
            return None
        self._protocol = EchoProtocol(self, False, stock.params)  # type: ignore[attr-defined]
        self._protocol.gate = gate
        return self._protocol

    # -- session ---------------------------------------------------------------------------

    def open(self, *args: str, **kwargs: str) -> None:
        self.session_id = new_session_id()
        if self.config.journal != "off":
            # Bound once: a message's row is then no config or session id lookup.
            self._journal = self.db.journal_for(self.session_id)
            if self.config.journal == "full":
                self._journal_full = True
        self._opened_at = time.monotonic()
        self.connections.add(self)
        self.metrics.session_opened()
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
            data, opcode = message.encode(), _TEXT
        else:
            data, opcode = message, _BINARY
        size = len(data)
        self.messages_in += 1
        self.bytes_in += size
        self.metrics.observe_message(size)
        if (self._message_budget is not None and not self._message_budget.take()) or (
            self._byte_budget is not None and not self._byte_budget.take(size)
        ):
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return None
        journal = self._journal
        if journal is not None:
            budget = self._journal_budget
            if not self._journal_full:
                journal(self.messages_in, opcode, size, None, False)
            elif budget is None:
                journal(self.messages_in, opcode, size, data, False)
            # What the store keeps of it; more than a second's worth takes a second's.
            elif budget.take(min(size, self.config.journal_max_payload, budget.rate)):
                journal(self.messages_in, opcode, size, data, False)
            else:
                journal(self.messages_in, opcode, size, None, True)  # without its payload
        assert self._protocol is not None
        try:
            waiter = self._protocol.send_message(opcode, data)
        except WebSocketClosedError:
            logger.debug("session %s: echo dropped, connection is closing", self.session_id)
            return None
        self.messages_out += 1
        self.bytes_out += size
        return waiter

    def close_for_shutdown(self, code: int, reason: str) -> None:
        protocol = self._protocol
        if isinstance(protocol, FastProtocol) and protocol.lost:
            return  # the peer had gone already: its end, waiting for its turn, is its own
        if isinstance(protocol, EchoProtocol) and (
            protocol.stream is None or protocol.stream.closed()
        ):
            return  # likewise, on Tornado's protocol
        self._shutdown_close = True
        self.close(code, reason)

    def on_ws_connection_close(
        self, close_code: int | None = None, close_reason: str | None = None
    ) -> None:
        # The fast engine reports a connection's end in its turn of the loop's budget;
        # Tornado's protocol reports it at once, so it waits for its turn here.
        if isinstance(self._protocol, EchoProtocol):
            turn = loop_budgets().turn
            if turn.spent:
                turn.defer(functools.partial(self._ended, close_code, close_reason))
                return
            turn.spend(CLOSE_COST, 0)
        super().on_ws_connection_close(close_code, close_reason)

    def _ended(self, close_code: int | None, close_reason: str | None) -> None:
        loop_budgets().turn.spend(CLOSE_COST, 0)
        super().on_ws_connection_close(close_code, close_reason)

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
        self.metrics.observe_close(code, end_state, duration)
        if isinstance(protocol, FastProtocol) and is_tls_failure(protocol.connection_error):
            # A TLS error after the upgrade (a forged record, say) on the loop's SSL
            # transport; Tornado's listener counts its own at the stream.
            self.metrics.tls_failures.inc()
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
        if self.config.access_log:
            self._log_session(end_state, duration, code)

    def _log_session(self, end_state: str, duration: float, code: int) -> None:
        """The session's access line (``access_log``); the session record says it all too."""
        protocol = self._protocol
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
