"""The fast engine: a WebSocket connection carried by an asyncio Protocol after the upgrade.

The Tornado Application answers the HTTP request and the upgrade; then :class:`FastProtocol`
takes the connection over as an asyncio Protocol on the running loop (uvloop's transports
when it is the loop), with any bytes already read past the request: from the listener of
:mod:`tornado_echo.http.fast_listener` it takes the transport itself (the object the
handler's public ``detach()`` returns there), from Tornado's HTTPServer the socket out of
Tornado's IOStream. Each
read is parsed by :class:`~tornado_echo.wire.FrameReader`, every complete message is
dispatched, and everything written while dispatching goes out as one transport write. A
read holding more than one slice of the reader's (``FEED_MAX_FRAMES`` frames, or about
``FEED_MAX_INFLATED`` inflated bytes) is served a slice per turn of the loop, the peer
unread meanwhile: a connection that pipelines thousands of messages, or compressed ones
that inflate to much more, cannot hold the loop for the whole read. Slices also come out of
the process's budgets (:mod:`~tornado_echo.engines.budget`): work per turn of the loop
across connections, and bytes of messages in flight; a connection whose slice finds either
spent waits its turn, unread. A connection's end (``on_close``: its record, metrics, log
line) is work of the turn as well, so thousands ending at once end over several turns.

To the handler it is a ``tornado.websocket.WebSocketProtocol``: ``open``, ``on_message``
(which may return an awaitable: the next message waits for it), ``on_ping``, ``on_pong``,
``on_close`` with ``close_code``/``close_reason``, and ``write_message``, ``ping``,
``close``, ``set_nodelay``, ``selected_subprotocol`` keep their Tornado meaning.

TLS that this process terminates (``tls_cert``) is the transport's on the asyncio listener
(the loop's SSL transport), and the engine takes that transport as it is. Behind Tornado's
listener (``listener = "tornado"``) the TLS session lives in Tornado's SSLIOStream, which
cannot move to a transport: such a connection stays on Tornado's own protocol.

Backpressure uses the transport's own flow control: while the peer reads slower than it is
sent to and the transport's buffer is above its high-water mark, this connection is not
read (:class:`~tornado_echo.engines.flow_control.FlowControl`).

With a journal gate (the journal's writer process), a read's writes wait until the journal
has handed off the rows of the turn (:meth:`FastProtocol._emit`): normally the end of the
same turn, so a kill -9 of the server cannot lose a message that was echoed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast

import tornado.escape
from tornado.httputil import format_timestamp
from tornado.iostream import IOStream, SSLIOStream
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from tornado_echo.compat import (
    detach_stream,
    release_response_state,
    reset_response,
    switching_protocols,
    unread_bytes,
)
from tornado_echo.engines.budget import CLOSE_COST, INFLATING, PLAIN, LoopBudgets, loop_budgets
from tornado_echo.engines.flow_control import (
    DEFLATE_OFF_LOOP,
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
    FlowControl,
    JournalGate,
)
from tornado_echo.engines.timerwheel import loop_wheel
from tornado_echo.wire import (
    FEED_MAX_FRAMES,
    FEED_MAX_INFLATED,
    SHORT_HEADERS,
    CloseCode,
    CloseHandshake,
    CloseState,
    FrameReader,
    Opcode,
    PerMessageDeflate,
    ProtocolError,
    accept_value,
    frame_header,
    negotiate_deflate,
)

logger = logging.getLogger(__name__)

# How long a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 5.0
# How soon the pong is looked for again when its deadline finds the peer's bytes still
# waiting on this side (see FastProtocol._check_pong).
PONG_RECHECK = 0.5
# Message opcodes compared on every message: module names, not Enum class lookups.
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY
# What a connection's pending deadline is for.
_NONE, _PING, _PONG, _ABORT = range(4)


class FastProtocol(CloseState, WebSocketProtocol, asyncio.Protocol):
    """One upgraded connection. Built by the handler; :meth:`accept_connection` starts it."""

    # Slots, the base class's attributes included, so that no instance dict is made: an
    # idle connection is mostly its objects' overhead.
    __slots__ = (
        "_awaiting_pong",
        "_backlog_due",
        "_budgets",
        "_busy",
        "_compression_options",
        "_deadline",
        "_drain_waiters",
        "_hang_up_after_waiting",
        "_held",
        "_lost",
        "_out",
        "_outbox",
        "_outbox_bytes",
        "_pending",
        "_pending_bytes",
        "_selected_subprotocol",
        "_waiting",
        "closing",
        "connection_error",
        "deflate",
        "flow",
        "gate",
        "handler",
        "max_message_size",
        "ping_interval",
        "ping_timeout",
        "reader",
        "stream",
        "transport",
        "wheel_slot",
    )

    def __init__(
        self,
        handler: WebSocketHandler,
        max_message_size: int,
        ping_interval: float,
        ping_timeout: float,
        compression_options: dict[str, Any] | None,
    ) -> None:
        self.closing = CloseHandshake()  # before the base class sets who has terminated
        WebSocketProtocol.__init__(self, handler)
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._compression_options = compression_options
        self.deflate: PerMessageDeflate | None = None
        self._selected_subprotocol: str | None = None
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.reader: FrameReader | None = None
        self.connection_error: BaseException | None = None
        self._out: list[bytes] | None = None  # frames written while dispatching a read
        # While a message is deflated off the loop, what is sent after it waits here, in
        # order: (opcode, message, Future) to deflate next, or (opcode, frame, None) ready.
        self._outbox: deque[tuple[int, bytes, asyncio.Future[None] | None]] | None = None
        self._outbox_bytes = 0  # of the messages in it still to deflate
        self._budgets: LoopBudgets | None = None  # the loop's, once carried
        self._held = 0  # bytes in flight charged to the memory budget
        self._pending_bytes = 0  # of the messages in _pending
        # Events waiting while the handler is busy (opening, or awaiting on_message).
        self._busy = True
        self._pending: list[tuple[Any, Any]] = []
        self._backlog_due = False  # a turn of the loop is booked for the reader's backlog
        # The one pending deadline (see on_deadline) lives in the loop's timer wheel.
        self.wheel_slot: int | None = None
        self._deadline = _NONE
        self._awaiting_pong = False
        self._lost = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # The journal, when its rows must be handed off before the echoes go (set by the
        # handler); writes waiting for it, one list of frames per hold, in order: a list, as
        # past one entry the connection is not read (a deque's block is a malloc per hold).
        self.gate: JournalGate | None = None
        self._waiting: list[list[bytes]] | None = None
        self._hang_up_after_waiting = False

    # -- the upgrade -----------------------------------------------------------------------

    @property
    def selected_subprotocol(self) -> str | None:
        return self._selected_subprotocol

    @property
    def compression_negotiated(self) -> bool:
        return self.deflate is not None

    async def accept_connection(self, handler: WebSocketHandler) -> None:
        """Answer 101, move the socket onto an asyncio transport, run ``open``; returns then.

        The connection lives on in the transport; ``on_close`` tells when it ends.
        """
        headers = handler.request.headers
        key = headers.get("Sec-WebSocket-Key")
        if not key or not headers.get("Host"):
            handler.set_status(400)
            handler.finish("Missing/Invalid WebSocket headers")
            return
        offered = headers.get("Sec-WebSocket-Protocol")
        subprotocols = [s.strip() for s in offered.split(",")] if offered else []
        self._selected_subprotocol = handler.select_subprotocol(subprotocols)
        if self._selected_subprotocol:
            assert self._selected_subprotocol in subprotocols
            handler.set_header("Sec-WebSocket-Protocol", self._selected_subprotocol)
        extensions = headers.get("Sec-WebSocket-Extensions")
        if extensions and self._compression_options is not None:
            negotiated = negotiate_deflate(extensions)
            if negotiated is not None:
                params, answer = negotiated
                options = self._compression_options
                self.deflate = PerMessageDeflate(
                    params,
                    level=options.get("compression_level", 6),
                    mem_level=options.get("mem_level", 8),
                )
                handler.set_header("Sec-WebSocket-Extensions", answer)
        handler.set_status(101)
        # The 101 answer (with every header the handler set) is the transport's first
        # write: Tornado's response machinery costs more than the rest of the upgrade.
        self._out = [switching_protocols(handler, accept_value(key))]
        # Tornado's public detach(): the handler is finished with HTTP. Tornado's HTTPServer
        # gives its IOStream; the listener of tornado_echo.http.fast_listener its connection,
        # which hands its transport over.
        detached: Any = detach_stream(handler)
        handler.on_finish()
        handler.application.log_request(handler)
        self.reader = FrameReader(self.max_message_size, self.deflate)
        self._budgets = loop_budgets()
        if isinstance(detached, IOStream):
            await self._move_socket(handler, detached)
        else:
            self._take_over(handler, detached.hand_over(self))
        if self._lost:
            return
        try:
            opened = handler.open(*handler.open_args, **handler.open_kwargs)
            if opened is not None:
                await opened
        except Exception:  # noqa: BLE001 - the application's open(): Tornado logs and aborts
            handler.log_exception(*sys.exc_info())
            self._abort()
            return
        if self._lost:
            return
        self._schedule_ping()
        self._handler_ready()

    def _take_over(self, handler: WebSocketHandler, leftover: bytes | None) -> None:
        """The transport is this protocol's already (``hand_over`` called connection_made):
        the 101 is its first write, what the listener read past the request its first
        frames; None: the peer hung up while the upgrade waited for its turn."""
        _release_http_state(handler)
        assert self.reader is not None
        if leftover is None:
            self._never_carried(None)
            return
        if leftover:
            self._pending = self.reader.feed(leftover)
        self._flush()

    async def _move_socket(self, handler: WebSocketHandler, stream: IOStream) -> None:
        """Tornado's HTTPServer served the request: the socket moves from its IOStream to
        a transport, with the bytes the stream read past the request."""
        leftover = unread_bytes(stream)
        # The same socket moves to the transport: Tornado forgets its descriptor (and the
        # stream, never closed, is dropped). A dup()ed descriptor would leave epoll
        # watching the old number, which the next accepted connection then reuses.
        sock = stream.socket
        if sock is None:  # the peer hung up while the upgrade waited for its turn
            _release_http_state(handler)
            self._never_carried(stream.error)
            return
        stream.io_loop.remove_handler(sock)
        _release_http_state(handler)
        assert self.reader is not None
        if leftover:
            self._pending = self.reader.feed(leftover)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self, sock)
            self._flush()
        except OSError as exc:
            self._never_carried(exc)

    def _never_carried(self, exc: BaseException | None) -> None:
        # The connection ended before a transport took it: the session ends here.
        self.connection_error = exc
        self._lost = True
        self.handler.on_ws_connection_close(None, None)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the Transport methods without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.stream = None  # the transport carries the connection; Tornado's stream is dropped
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.flow = FlowControl(transport)
        self.flow.pause(FlowControl.HANDLER)  # until open() has returned

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        budgets = self._budgets
        assert reader is not None and budgets is not None
        turn = budgets.turn
        if turn.frames_left >= FEED_MAX_FRAMES and turn.bytes_left >= FEED_MAX_INFLATED:
            frames, nbytes = FEED_MAX_FRAMES, FEED_MAX_INFLATED  # the common case, no call
        else:
            frames, nbytes = turn.grant(FEED_MAX_FRAMES, FEED_MAX_INFLATED)
        if budgets.memory.over and nbytes and not self._held:
            # Memory is short and nothing here would release any: plain frames go on, a
            # compressed one waits (_read_backlog).
            nbytes = 0
        events = reader.feed(data, frames, nbytes)
        if reader.frames:  # turn.spend(), inline
            turn.frames_left -= reader.frames
            turn.bytes_left -= reader.inflated
            if not turn.booked:
                turn.book_turn()
        if self._busy:
            self._pending.extend(events)
            self._pending_bytes += _size(events)
        else:
            self._dispatch(events)
        # On every read: the call only when something is or was held.
        if self._held or reader.message_bytes or self._outbox_bytes or self._pending_bytes:
            self._account()
        if reader.backlog:
            self._read_backlog_later()

    def eof_received(self) -> bool:
        return False  # half-closed by the peer: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.connection_error = exc
        self.client_terminated = self.server_terminated = True
        self._clear_deadline()
        self._pending = []
        self._pending_bytes = 0
        self._account()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters = []
        if self._budgets is not None and self._budgets.turn.spent:
            self._budgets.turn.defer(self._report_close)
        else:
            self._report_close()

    def _report_close(self) -> None:
        if self._budgets is not None:
            self._budgets.turn.spend(CLOSE_COST, 0)
        self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause(FlowControl.WRITING)

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume(FlowControl.WRITING)
        if self.reader is not None and self.reader.backlog and not self._busy:
            self._read_backlog_later()  # the slice that waited for this drain
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, events: list[tuple[Any, Any]]) -> None:
        """Hand ``events`` to the handler in order; all frames written meanwhile go as one."""
        self._out = []
        closing = self.closing
        on_message = self.handler.on_message
        try:
            for index, (opcode, payload) in enumerate(events):
                if opcode is _TEXT or opcode is _BINARY:
                    if closing.client_terminated or closing.server_terminated:
                        continue
                    # Tornado's _run_callback, inline for the usual handler (one that returns
                    # None); an awaitable it returns goes through _run_callback's wrapping.
                    try:
                        waiting = on_message(payload)
                    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - as Tornado's
                        self.handler.log_exception(*sys.exc_info())
                        self._abort()
                        continue
                    if waiting is not None:
                        waiting = self._run_callback(_returned, waiting)
                        assert waiting is not None
                        self._wait_for_handler(waiting, events[index + 1 :])
                        return
                elif opcode is None:
                    self._fail(payload.code, payload.reason)
                    return
                else:
                    self._control(opcode, payload)
        finally:
            self._flush()

    def _flush(self) -> None:
        """Write what was collected while dispatching, as one write; stop collecting."""
        out, self._out = self._out, None
        if out and self.transport is not None and not self._lost:
            if self.gate is None and self._waiting is None:
                # No journal to wait for (_emit's last case, without the call).
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            else:
                self._emit(out)

    def _emit(self, frames: list[bytes]) -> None:
        """Write ``frames`` once the journal has handed off the rows of the messages they
        answer: normally at the end of this turn of the loop, when the journal's per-turn
        chunk is sent. A connection whose writes wait longer (the journal's writer behind)
        is not read meanwhile."""
        gate = self.gate
        held = gate is not None and gate.hold(self._release)
        waiting = self._waiting  # after hold(), which may release earlier writes
        if held:
            if waiting is None:
                self._waiting = [frames]
            else:
                waiting.append(frames)
                assert self.flow is not None
                self.flow.pause(FlowControl.JOURNAL)
        elif waiting is not None:
            waiting[-1].extend(frames)  # nothing new to wait for, but still in order
        else:
            assert self.transport is not None
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _release(self) -> None:
        """The journal handed off what the oldest waiting writes answer: write them."""
        waiting = self._waiting
        assert waiting is not None
        frames = waiting.pop(0)
        if not waiting:
            self._waiting = None
        if self._lost or self.transport is None:
            return
        self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if waiting:
            return
        assert self.flow is not None
        self.flow.resume(FlowControl.JOURNAL)
        if self._hang_up_after_waiting:
            self.transport.close()

    def _hang_up(self) -> None:
        """Close the transport once what was written is out (writes the journal holds too)."""
        if self._waiting is not None:
            self._hang_up_after_waiting = True
        elif self.transport is not None:
            self.transport.close()

    def _wait_for_handler(self, waiting: Awaitable[Any], rest: list[tuple[Any, Any]]) -> None:
        assert self.flow is not None
        self._busy = True
        self._pending = rest
        self._pending_bytes = _size(rest)
        self.flow.pause(FlowControl.HANDLER)
        asyncio.ensure_future(waiting).add_done_callback(lambda _: self._handler_ready())

    def _handler_ready(self) -> None:
        """The handler can take messages again: hand it what queued up, then read on."""
        if self._lost:
            return
        self._busy = False
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if pending:
            self._dispatch(pending)
        self._account()
        if not self._busy and self.flow is not None:
            if self.reader is not None and self.reader.backlog:
                self._read_backlog_later()
            self.flow.resume(FlowControl.HANDLER)

    def _read_backlog_later(self) -> None:
        # The next slice waits for a later turn of the loop, after the other connections'.
        assert self.flow is not None and self._budgets is not None
        self.flow.pause(FlowControl.BACKLOG)
        if not self._backlog_due:
            self._backlog_due = True
            reader = self.reader
            lane = INFLATING if reader is not None and reader.compressed_next else PLAIN
            self._budgets.turn.wait(self._read_backlog, lane)

    def _read_backlog(self) -> None:
        self._backlog_due = False
        if self._lost or self._busy:
            return  # gone; or _handler_ready() goes on with it
        assert self.flow is not None and self.reader is not None and self._budgets is not None
        if self.flow.paused_for(FlowControl.WRITING):
            # The peer is not reading its echoes: resume_writing() goes on with it. A read
            # that inflates to far more than it is (and deflates no smaller) would otherwise
            # have every slice's echoes buffered for the peer.
            return
        if not self._held and self._budgets.memory.over and self.reader.compressed_next:
            self._backlog_due = True
            self._budgets.memory.wait(self._memory_released)
            return
        self.data_received(b"")
        if not self.reader.backlog:
            self.flow.resume(FlowControl.BACKLOG)

    def _memory_released(self) -> None:
        self._backlog_due = False
        if not self._lost:
            self._read_backlog_later()

    def _account(self) -> None:
        """Charge the memory budget with what this connection now holds in flight: the
        unfinished message, messages waiting for the handler, and those waiting to be
        deflated."""
        held = 0
        if not self._lost:
            held = self._outbox_bytes + self._pending_bytes
            if self.reader is not None:
                held += self.reader.message_bytes
        if held != self._held and self._budgets is not None:
            self._budgets.memory.charge(held - self._held)
            self._held = held

    def _control(self, opcode: Opcode, payload: bytes) -> None:
        if opcode is Opcode.PING:
            if not self.server_terminated:
                self._send(Opcode.PONG, payload)
            self._run_callback(self.handler.on_ping, payload)
        elif opcode is Opcode.PONG:
            self._awaiting_pong = False
            self._run_callback(self.handler.on_pong, payload)
        else:  # CLOSE
            try:
                code = self.closing.receive(payload)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
                return
            # Answer with the peer's code (section 5.5.1); then the server hangs up first.
            self.close(code)

    # -- writing ---------------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes, rsv1: bool = False) -> None:
        self._queue(opcode, frame_header(opcode, len(payload), rsv1=rsv1) + payload)

    def _queue(self, opcode: int, frame: bytes) -> None:
        """Write ``frame`` after the messages still being deflated, if any."""
        if self._outbox is not None:
            self._outbox.append((opcode, frame, None))
        else:
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(frame)
        elif self.transport is not None and not self._lost:
            self._emit([frame])

    def send_message(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        """Send one whole message (the echo path); raises WebSocketClosedError when closing.

        Returns a Future when the message is deflated off the loop (or waits behind one
        that is): it resolves once the message is written, and a handler that returns it
        from ``on_message`` gets the next message after that.
        """
        if self.closing.server_terminated or self._lost:
            raise WebSocketClosedError()
        deflate = self.deflate
        if deflate is None:
            size = len(data)
            header = SHORT_HEADERS[opcode][size] if size < 126 else frame_header(opcode, size)
            frame = header + data
            out = self._out
            if out is not None and self._outbox is None:
                out.append(frame)  # the echo: collected for the read's one write
            else:
                self._queue(opcode, frame)
            return None
        if self._outbox is None and len(data) < DEFLATE_OFF_LOOP:
            if self._budgets is not None:
                self._budgets.turn.spend(0, len(data))
            self._send(opcode, deflate.compress(data), rsv1=True)
            return None
        # The deflate context runs across messages: they are deflated one at a time, in order.
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox_bytes += len(data)
        if self._outbox is None:
            self._outbox = deque([(opcode, data, written)])
            self._next_out()
        else:
            self._outbox.append((opcode, data, written))
        return written

    def _next_out(self) -> None:
        """Write the outbox's ready frames; hand the next message to deflate to a thread."""
        outbox = self._outbox
        assert outbox is not None and self.deflate is not None
        while outbox:
            _, payload, written = outbox[0]
            if written is not None:
                loop = asyncio.get_running_loop()
                job = loop.run_in_executor(None, self.deflate.compress, payload)
                job.add_done_callback(self._deflated)
                return
            outbox.popleft()
            self._write(payload)
        self._outbox = None
        if self.client_terminated and self.server_terminated and self.transport is not None:
            self._hang_up()  # close() waited for the close frame to be written

    def _deflated(self, job: asyncio.Future[bytes]) -> None:
        outbox = self._outbox
        assert outbox is not None
        opcode, message, written = outbox.popleft()
        assert written is not None
        self._outbox_bytes -= len(message)
        self._account()
        if self._lost:
            self._drop_outbox(written)
            return
        try:
            payload = job.result()
        except asyncio.CancelledError:  # the loop is shutting down
            self._drop_outbox(written)
            return
        except Exception:  # the worker thread's failure ends this connection, not the loop
            logger.exception("deflating a message failed")
            self._drop_outbox(written)
            self._abort()
            return
        self._write(frame_header(opcode, len(payload), rsv1=True) + payload)
        written.set_result(None)
        self._next_out()

    def _drop_outbox(self, written: asyncio.Future[None]) -> None:
        # The connection is gone: nothing more is written; waiters go on (as after a write
        # into a closed transport).
        waiting = [written] + [entry[2] for entry in self._outbox or () if entry[2] is not None]
        self._outbox = None
        self._outbox_bytes = 0
        self._account()
        for future in waiting:
            if not future.done():
                future.set_result(None)

    def write_message(
        self, message: str | bytes | dict[str, Any], binary: bool = False
    ) -> asyncio.Future[None]:
        """Tornado's ``write_message``: the Future resolves once the peer is not lagging."""
        if isinstance(message, dict):
            message = tornado.escape.json_encode(message)
        data = message.encode("utf-8") if isinstance(message, str) else message
        written = self.send_message(Opcode.BINARY if binary else Opcode.TEXT, data)
        if written is not None:
            return written
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.flow is not None and self.flow.paused_for(FlowControl.WRITING):
            self._drain_waiters.append(future)
        else:
            future.set_result(None)
        return future

    def write_ping(self, data: bytes) -> None:
        if self.server_terminated or self._lost:
            raise WebSocketClosedError()
        self._send(Opcode.PING, data[:125])

    def set_nodelay(self, x: bool) -> None:
        # asyncio's and uvloop's TCP transports already set TCP_NODELAY; only turning it
        # off costs a system call.
        if not x and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    # -- closing ---------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._lost or self.client_terminated or self.server_terminated

    @property
    def lost(self) -> bool:
        """The connection is gone (its end may still wait for its turn to be reported)."""
        return self._lost

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start (or finish) the closing handshake; hang up once both sides have closed."""
        if self._lost:
            return
        payload = self.closing.send(code, reason)
        if payload is not None:
            if self.reader is not None:
                self.reader.discard_data()  # _dispatch() drops data from now on anyway
            self._send(Opcode.CLOSE, payload)
        transport = self.transport
        if transport is None:
            return
        if self.closing.client_terminated:
            self._clear_deadline()
            if self._outbox is not None:
                return  # _next_out() hangs up once the close frame behind them is written
            if self._out is not None:
                # Still dispatching: hang up right after this read's frames are written.
                asyncio.get_running_loop().call_soon(self._hang_up)
            else:
                self._hang_up()
        else:
            self._set_deadline(_ABORT, CLOSE_TIMEOUT)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): a close frame with ``code``, then hang up."""
        self.closing.fail(code, reason)
        self.close(code, reason)

    def _abort(self) -> None:
        self.client_terminated = self.server_terminated = True
        if self.transport is not None:
            self.transport.abort()
        elif not self._lost:
            self.connection_lost(None)

    def on_connection_close(self) -> None:
        self._abort()

    # -- deadlines: keepalive and the closing handshake ------------------------------------

    def _set_deadline(self, action: int, delay: float) -> None:
        self._deadline = action
        loop_wheel().call_later(self, delay)

    def _clear_deadline(self) -> None:
        if self.wheel_slot is not None:
            loop_wheel().clear(self)
        self._deadline = _NONE

    def on_deadline(self) -> None:
        """The loop's timer wheel calls this when the pending deadline has come."""
        action, self._deadline = self._deadline, _NONE
        if action == _ABORT:
            self._abort()
        elif action == _PING:
            self._ping()
        elif action == _PONG:
            self._check_pong()

    def _schedule_ping(self) -> None:
        # Not once closing (open() may have closed): the one deadline is then the close
        # timeout's, and a ping's in its place would never hang up (_ping() skips).
        if self.ping_interval > 0 and not self.is_closing():
            self._set_deadline(_PING, self.ping_interval)

    def _ping(self) -> None:
        if self.is_closing():
            return
        self._awaiting_pong = True
        self._send(Opcode.PING, b"")
        self._set_deadline(_PONG, self.ping_timeout)

    def _check_pong(self) -> None:
        if self.is_closing():
            return
        if self._awaiting_pong and self._peer_bytes_waiting():
            # The pong may be among them: the deadline measures the peer, not this loop.
            self._set_deadline(_PONG, PONG_RECHECK)
            return
        if self._awaiting_pong:
            # The peer does not answer: no point waiting for its close frame either. The
            # frame still goes out (close flushes), and the timer drops a peer that
            # does not even take that.
            payload = self.closing.give_up(CloseCode.INTERNAL_ERROR, "ping timed out")
            if payload is not None:
                self._send(Opcode.CLOSE, payload)
            self._hang_up()
            self._set_deadline(_ABORT, CLOSE_TIMEOUT)
            return
        self._set_deadline(_PING, max(0.0, self.ping_interval - self.ping_timeout))

    def _peer_bytes_waiting(self) -> bool:
        """Whether what the peer sent is still on this side, unread only because this
        process has not got to it: frames read but waiting for their turn (the turn
        budget's lane, in a storm of work that can last longer than ``ping_timeout``), or
        bytes in the socket of a connection being read (the loop runs its timers before it
        polls the sockets, so a turn longer than the remaining time sees the deadline
        first). A peer that does not read what it is sent (``WRITING``) or a handler still
        busy with an earlier message (``HANDLER``, where Tornado's own protocol does not
        read pongs either) is judged as before."""
        flow = self.flow
        if flow is None or self.transport is None:
            return False
        if flow.paused_for(FlowControl.WRITING | FlowControl.HANDLER):
            return False
        if flow.paused_for(FlowControl.BACKLOG | FlowControl.JOURNAL):
            return True
        return _socket_unread(self.transport) > 0

    # -- unused entry points of the abstract base (client side) ------------------------------

    def _process_server_headers(self, key: str | bytes, headers: Any) -> None:
        raise NotImplementedError("FastProtocol serves; it is not a client")

    def start_pinging(self) -> None:
        self._schedule_ping()

    async def _receive_frame_loop(self) -> None:
        raise NotImplementedError("FastProtocol reads through its transport")


def _socket_unread(transport: asyncio.BaseTransport) -> int:
    """Bytes waiting in the receive queue of ``transport``'s socket (0 when there is no
    socket to ask, or it is closed)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        fd = sock.fileno()
        if fd < 0:
            return 0
        count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return count


def _returned(value: Any) -> Any:
    """What the handler returned (for _run_callback to wrap, see _dispatch)."""
    return value


def _size(events: list[tuple[Any, Any]]) -> int:
    """Bytes (characters of text) of the messages among ``events``."""
    return sum(
        len(payload)
        for opcode, payload in events
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY
    )


def _release_http_state(handler: WebSocketHandler) -> None:
    """Drop what only the HTTP exchange needed, so an idle connection holds little.

    The request keeps its method, URI, path, arguments, headers and remote_ip; its links to
    Tornado's connection objects (which hold the old stream and its buffers) and its body
    go, as does the response's header set, which is sent.
    """
    request = handler.request
    request.connection = None
    request.server_connection = None
    request.body = b""
    release_response_state(handler)


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """Now as an HTTP Date header says it, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, format_timestamp(now))
    return _date[1]


def carried_by_tls(handler: WebSocketHandler) -> bool:
    """Whether the request came over TLS in Tornado's SSLIOStream (Tornado's listener), a
    session the fast engine cannot take over."""
    return isinstance(getattr(handler.request.connection, "stream", None), SSLIOStream)


class FastWebSocketHandler(WebSocketHandler):
    """A ``WebSocketHandler`` whose connections run on :class:`FastProtocol`.

    Subclass it exactly as Tornado's handler; the application settings
    (``websocket_ping_interval``, ``websocket_ping_timeout``,
    ``websocket_max_message_size``) and ``get_compression_options`` apply as documented.
    """

    def clear(self) -> None:
        # Tornado's clear(), with the Date header's text made once a second, not per
        # request (email.utils.formatdate was 1-2% of a handshake).
        reset_response(self, http_date())
        self.set_default_headers()

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        if carried_by_tls(self):
            # The TLS session lives in Tornado's SSLIOStream and cannot move to a
            # transport: Tornado's own protocol carries it.
            return super().get_websocket_protocol()
        return FastProtocol(
            self,
            max_message_size=self.max_message_size,
            ping_interval=self.ping_interval or 0.0,
            ping_timeout=self.ping_timeout or 0.0,
            compression_options=self.get_compression_options(),
        )
