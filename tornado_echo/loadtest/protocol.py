"""One client WebSocket connection as an asyncio.Protocol.

The wire format lives in :mod:`framing` and the echo checks in :mod:`tracker`; this
class only moves bytes between them and the transport and drives the workload:
closed loop (send, await echo, send again; ``inflight`` outstanding) or open loop
(a fixed schedule of intended send times, wrk2 style).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Protocol, cast

from tornado_echo import wire
from tornado_echo.loadtest.config import LoadConfig
from tornado_echo.loadtest.errors import HandshakeError
from tornado_echo.loadtest.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Deflate,
    FrameParser,
    HandshakeParser,
    HandshakeRequest,
    encode_close,
    encode_frame,
    frame_header,
)
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.tracker import EchoTracker, LiveCounters

log = logging.getLogger(__name__)

HANDSHAKE, OPEN, CLOSING, CLOSED = range(4)
_CLOSE_WAIT = 2.0  # seconds to wait for the server's close frame before aborting
_MAX_CATCH_UP = 1000  # open loop: most overdue messages sent in one go
_now = time.monotonic_ns
_getrandbits = random.getrandbits
_apply_mask = wire.apply_mask


class TimerLateness:
    """How late the event loop fires timers, learned as they fire, so that an open loop's
    timers are set that much early and the tester's own lateness stays out of the corrected
    latency (a message sent early is timed from its actual send).

    Both asyncio and uvloop wake up to a millisecond or more late (their poll timeouts and
    uvloop's clock count whole milliseconds), which every corrected latency carried. How
    early is learned from the sends themselves, as a stochastic quantile: a step earlier
    after a send that went out late, a ninth of one later after one on time, so that about
    one send in ten is late (at most :attr:`CAP_NS` early).
    """

    CAP_NS = 2_000_000
    STEP_NS = 20_000
    __slots__ = ("early_ns",)

    def __init__(self) -> None:
        self.early_ns = 0

    def observe(self, late_ns: int) -> None:
        """A timer's first send went out ``late_ns`` after its intended time."""
        if late_ns > 0:
            self.early_ns = min(self.early_ns + self.STEP_NS, self.CAP_NS)
        else:
            self.early_ns = max(self.early_ns - self.STEP_NS // 9, 0)


class ConnectionOwner(Protocol):
    """All a connection knows of whoever runs it (the engine's Worker, or a test)."""

    def on_error(self, category: str) -> None:
        """Count one error of ``category`` (e.g. ``close_1011``, ``protocol_error``)."""

    def on_dropped(self) -> None:
        """The server ended the open connection (counted once per connection)."""

    def on_stopped(self, conn: EchoConnection) -> None:
        """``conn`` stopped sending (its work done, closed or lost): once per :meth:`start`
        that set it running, so an owner can fill its place at once."""

    def on_closed(self, conn: EchoConnection) -> None:
        """``conn`` is gone, whichever way it ended."""


class EchoConnection(asyncio.Protocol):
    """Client side of one connection; reports to its :class:`ConnectionOwner`.

    Public surface for the owner: ``opened`` (resolves when the upgrade is done, or fails
    with HandshakeError), ``was_open``, ``running``, :meth:`start`, :meth:`send_next`,
    :meth:`finish`, :meth:`expire`, :meth:`close` and :meth:`abort`.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        cfg: LoadConfig,
        request: HandshakeRequest,
        tracker: EchoTracker,
        live: LiveCounters,
        schedule_lag: Histogram,
        lateness: TimerLateness | None = None,
    ) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._max_message = cfg.max_message
        self._live = live
        self._schedule_lag = schedule_lag
        # Open loop: how early to set timers (learned by all a worker's connections).
        self._lateness = lateness if lateness is not None else TimerLateness()
        self.state = HANDSHAKE
        self.request = request
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._hs = HandshakeParser(request)
        self._parser: FrameParser | None = None
        self._deflate: Deflate | None = None
        self._opcode = OP_BINARY if cfg.binary else OP_TEXT
        # A ping session sends pings and takes their pongs as its echoes.
        self._ping = cfg.kind == "ping"
        self._idle = cfg.kind == "idle"
        if self._ping:
            self._opcode = OP_PING
        self._echo_opcode = OP_PONG if self._ping else self._opcode
        self._fast_b0 = 0x80 | self._echo_opcode  # first byte of a whole uncompressed echo
        self._think = cfg.think
        self._hold = cfg.hold
        self._hold_timer: asyncio.TimerHandle | None = None
        self._close_code = cfg.close_code
        # Equal-size uncompressed messages share one frame header: built once, not per send.
        self._header = (
            frame_header(self._opcode, cfg.sizes.low) if cfg.sizes.low == cfg.sizes.high else None
        )
        self.tracker = tracker
        self.running = False
        budget = cfg.churn if cfg.churn is not None else cfg.messages
        self._budget = budget if budget is not None else -1
        self._inflight = cfg.inflight
        self._timer: asyncio.TimerHandle | None = None
        self._interval_ns = int(1e9 / cfg.rate) if cfg.mode == "open" else 0
        # The header of the next message when an echo can be answered with it in one step
        # (closed loop, equal-size uncompressed messages): set when the upgrade is done.
        self._answer_header: bytes | None = None
        self._next_intended = 0
        self._close_received = False
        self._close_sent = False
        self.was_open = False  # the upgrade succeeded at some point

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request.encode())

    def data_received(self, data: bytes) -> None:
        if self.state == HANDSHAKE:
            try:
                result = self._hs.feed(data)
            except HandshakeError as exc:
                self._fail_handshake(exc)
                return
            if result is None:
                return
            self._parser = FrameParser(self._max_message, result.deflate)
            self._deflate = result.deflate
            if result.deflate is not None:
                self._header = None
            # The one-step answer sends at once: not with a think time.
            self._answer_header = None if self._interval_ns or self._think else self._header
            self.state = OPEN
            self.was_open = True
            if not self.opened.done():
                self.opened.set_result(None)
            data = result.leftover
            if not data:
                return
        parser = self._parser
        if parser is None or self.state == CLOSED:
            return
        # The usual read in a closed loop is one whole small unfragmented text or binary
        # frame: taken here, without the parser's call and event list, because this runs
        # once per echo. The checks are the ones feed() would make.
        length = len(data) - 2
        if (
            length >= 0
            and data[1] == length  # a 7-bit length, so also no mask bit
            and length < 126
            and data[0] == self._fast_b0
            and length <= parser.max_size
            and parser.between_frames
        ):
            payload = data[2:]
            now = _now()
            budget = self._budget
            header = self._answer_header
            transport = self.transport
            if header is not None and budget and self.running and transport is not None:
                # The closed loop's step (budget -1: none): the echo checked and the next
                # message made in one call, then sent as send_next() would.
                message = self.tracker.answer_and_next(payload, now)
                if message is not None:
                    if budget > 0:
                        self._budget = budget - 1
                    mask = _getrandbits(32).to_bytes(4, "big")  # mask_frame(), inlined
                    # The peer's echo came on this transport, so it is not closing (abort()
                    # stops reads): no need to ask, unlike _write().
                    transport.write(header + mask + _apply_mask(message, mask))
                    return
            self._on_data(payload, now)
            return
        try:
            events = parser.feed(data)
        except wire.ProtocolError as exc:
            self._owner.on_error("protocol_error")
            log.debug("protocol error: %s", exc)
            self._send_close(exc.code)
            self._abort()
            return
        now = _now()  # one read: one arrival time for all it carried
        for opcode, payload in events:
            if opcode == self._echo_opcode:
                self._on_data(payload, now)
            elif opcode == OP_TEXT or opcode == OP_BINARY:
                # Echoed as the other frame type: its own error class, however right the bytes.
                self._on_answer(self.tracker.on_retyped(payload))
            elif opcode == OP_PING:
                self._write(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._on_close_frame(payload)
                return

    def _on_data(self, payload: bytes, now: int) -> None:
        self._on_answer(self.tracker.on_echo(payload, now))

    def _on_answer(self, answered: bool) -> None:
        # An echo came in (``answered``: for a message in flight): keep the loop going.
        if answered and self.running and not self._interval_ns:
            if self._think:
                self._timer = self._loop.call_later(self._think, self._after_think)
            else:
                self.send_next(0)
        elif not self.running and not self.tracker.pending:
            self.close(self._close_code)

    def _after_think(self) -> None:
        self._timer = None
        if self.running:
            self.send_next(0)

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = CLOSED
        self._halt()
        self._cancel_timer()
        if previous == HANDSHAKE:
            if not self.opened.done():
                self.opened.set_exception(
                    HandshakeError("connection closed during the handshake", "handshake_eof")
                )
        else:
            if previous == OPEN and not self._close_received:
                # Closed without a close frame while we still wanted it: RFC 6455's 1006,
                # by a reset or by a clean TCP close (told apart: a reset is a crash or a
                # proxy's timeout, a close a server that skips the closing handshake).
                reset = isinstance(exc, ConnectionResetError)
                self._owner.on_error("close_1006_reset" if reset else "close_1006")
                self._owner.on_dropped()
            self.tracker.abandon()
        self._owner.on_closed(self)

    # -- workload -----------------------------------------------------------------

    def start(self) -> bool:
        """Begin sending once the handshake is done; False if it is no longer open."""
        if self.state != OPEN:
            return False
        self.running = True
        if self._hold is not None:
            self._hold_timer = self._loop.call_later(self._hold, self.finish)
        if self._idle:
            return True  # open, silent, until finish()
        if self._interval_ns:
            self._next_intended = _now()
            self._on_tick()
        else:
            for _ in range(self._inflight):
                if not self.running:
                    break
                self.send_next(0)
        return True

    def set_rate(self, rate: float) -> None:
        """Open loop: send ``rate`` messages/s from the next one on (a stage's ramp)."""
        if self._interval_ns and rate > 0:
            self._interval_ns = int(1e9 / rate)

    def send_next(self, intended: int) -> None:
        """Send the next message; ``intended`` is its scheduled time (0: now)."""
        budget = self._budget
        if budget >= 0:  # -1: no budget
            if budget == 0:
                self.finish()
                return
            self._budget = budget - 1
        now = _now()
        # Sent early (a timer set early, see TimerLateness): timed from the actual send.
        payload = self.tracker.next_payload(intended if 0 < intended < now else now, now)
        header = self._header
        if header is not None:
            mask = _getrandbits(32).to_bytes(4, "big")  # mask_frame(), inlined
            frame = header + mask + _apply_mask(payload, mask)
        elif self._deflate is not None and not self._ping:
            frame = encode_frame(self._opcode, self._deflate.compress(payload), rsv1=True)
        else:
            frame = encode_frame(self._opcode, payload)
        transport = self.transport  # _write(), inlined on the hot path
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def _on_tick(self) -> None:
        self._timer = None
        if not self.running:
            return
        now = _now()
        lateness = self._lateness
        early = lateness.early_ns
        if self._next_intended <= now + early:
            lateness.observe(now - self._next_intended)
        interval = self._interval_ns
        lag = self._schedule_lag
        live = self._live
        sent = 0
        while self._next_intended <= now + early and self.running and sent < _MAX_CATCH_UP:
            if self._budget == 0:
                self.finish()
                return
            intended = self._next_intended
            lag.record(now - intended if now > intended else 0)
            live.intended += 1
            self.send_next(intended)
            self._next_intended = intended + interval
            sent += 1
        if self.running:
            delay = (self._next_intended - early - _now()) / 1e9
            self._timer = self._loop.call_later(max(0.0, delay), self._on_tick)

    def finish(self) -> None:
        """Stop sending; close once every message in flight is answered or expired."""
        if self.running and self._interval_ns and self._budget != 0:
            # Sends the schedule made due that the loop never got to: the saturation guard
            # compares the sends made with those due.
            behind = _now() - self._next_intended
            if behind >= 0:
                self._live.intended += behind // self._interval_ns + 1
        self._halt()
        self._cancel_timer()
        if self.state == OPEN and not self.tracker.pending:
            self.close(self._close_code)

    def expire(self, deadline_ns: int) -> None:
        """Count echoes sent before ``deadline_ns`` as lost; keep the loop going."""
        lost = self.tracker.expire(deadline_ns)
        if not lost or self.state != OPEN:
            return
        if self.running and not self._interval_ns:
            for _ in range(lost):
                if self.running:
                    self.send_next(0)
        elif not self.running and not self.tracker.pending:
            self.close(self._close_code)

    # -- closing ------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (idempotent)."""
        if self.state != OPEN:
            if self.state == HANDSHAKE:
                self._abort()
            return
        self._halt()
        self.state = CLOSING
        self._cancel_timer()
        self._send_close(code)
        self._timer = self._loop.call_later(_CLOSE_WAIT, self._abort)

    def _on_close_frame(self, payload: bytes) -> None:
        self._close_received = True
        try:
            code, _reason = wire.parse_close_payload(payload)
        except wire.ProtocolError as exc:
            # A close frame against the rules (the shared RFC 6455 module's): a code that
            # may not be sent, such as 1005, 1006, 1015 or 0-999, is named; a one-byte
            # body or a reason that is not UTF-8 is just invalid. Answered as it says.
            raw = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            named = raw is not None and not wire.is_sendable_close_code(raw)
            category = f"close_invalid_{raw}" if named else "close_invalid"
            answer = exc.code
            self._owner.on_error(category)  # the server's fault, even when we closed first
        else:
            if code is None:  # no code in the frame: reported as 1005, answered with 1000
                category = f"close_{int(wire.CloseCode.NO_STATUS_RECEIVED)}"
                answer = int(wire.CloseCode.NORMAL_CLOSURE)
            else:
                category, answer = f"close_{code}", code
            if self.state == OPEN:
                self._owner.on_error(category)
        if self.state == OPEN:
            # The server closed on us: a drop; answer as RFC 6455 asks.
            self._owner.on_dropped()
            self._send_close(answer)
        self.state = CLOSING
        self._halt()
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _halt(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if self.running:
            self.running = False
            self._owner.on_stopped(self)

    def _send_close(self, code: int) -> None:
        if not self._close_sent:
            self._close_sent = True
            self._write(encode_close(code))

    def abort(self) -> None:
        """Drop the connection now; every echo still in flight counts as lost."""
        self.tracker.abandon()
        self._abort()

    def _fail_handshake(self, exc: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._abort()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _abort(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
