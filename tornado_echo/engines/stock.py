"""The stock engine: Tornado's own RFC 6455 implementation behind ``EchoWebSocket``.

Selected with ``engine = "tornado"``; the default is :mod:`tornado_echo.engines.fast`.
:class:`EchoProtocol` is Tornado's ``WebSocketProtocol13`` with these changes:

* ``send_message`` writes a frame without the per-message task that Tornado's
  ``write_message`` creates, and returns a Future only when the peer reads slower than it
  sends (write buffer above ``WRITE_HIGH_WATER``). Returned from ``on_message``, that Future
  pauses reading: a slow reader gets backpressure instead of unbounded server memory.
* Frames are read by its own ``_receive_frame``: each header is checked by
  :func:`tornado_echo.wire.check_client_header`, so an unmasked frame, reserved bits, an
  unknown opcode or a misplaced fragment is answered with a close frame with 1002 (Tornado
  takes unmasked frames, and hangs up on the rest without a close frame). Whether a message
  is compressed is decided by its first frame alone: in Tornado a ping between the fragments
  of a compressed message clears the flag, and the raw deflate bytes are echoed.
* Close frames are checked by :func:`tornado_echo.wire.parse_close_payload`: a
  one-byte payload, a code that may not be sent on the wire, or a reason that is not
  UTF-8 is answered with 1002 or 1007 instead of being echoed back. A text message that
  is not UTF-8, compressed or not, is answered with 1007 (Tornado drops the connection
  without a close frame); an uncompressed one as soon as a fragment shows it.
* The client's compressed messages are inflated by the wire layer's
  :class:`~tornado_echo.wire.PerMessageDeflate`, as on the fast engine: a message that ends
  with a block with BFINAL set (RFC 7692 section 7.2.3.4) leaves later messages readable,
  and bytes after such a block fail with 1007 (Tornado ignores them, then inflates every
  later message of a context-takeover connection to nothing).
* Its close state is a :class:`~tornado_echo.wire.closing.CloseHandshake`, as the fast
  engine's: it remembers whether the peer sent a close frame, so a session can tell a clean
  close from a dropped connection.
* Each frame is work of the process's turn budget (:mod:`~tornado_echo.engines.budget`), as
  on the fast engine: a connection whose frame finds the turn spent, or the memory budget
  over (messages waiting to be deflated off the loop count), waits its turn before it is
  handled. A message is inflated whole, so a turn may go one message past the budget.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

from tornado_echo.compat import unsent_bytes
from tornado_echo.engines.budget import INFLATING, PLAIN, loop_budgets
from tornado_echo.engines.flow_control import DEFLATE_OFF_LOOP, WRITE_HIGH_WATER, JournalGate
from tornado_echo.wire import (
    CONTROL_OPCODES,
    CloseCode,
    CloseHandshake,
    CloseState,
    Opcode,
    PerMessageDeflate,
    ProtocolError,
    apply_mask,
    check_client_header,
    length_and_mask,
)


class EchoProtocol(CloseState, WebSocketProtocol13):
    """Tornado's protocol with a lean echo write, backpressure and strict frames."""

    _inflated = 0  # bytes the message being handled inflated to
    # The fragmented message being received: its opcode, payload so far, whether it is
    # compressed, and an incremental UTF-8 check while it is uncompressed text.
    _message_opcode = 0
    _fragments: bytearray | None = None
    _message_compressed = False
    _utf8: codecs.IncrementalDecoder | None = None

    _inflater: PerMessageDeflate | None = None  # the client's messages, when negotiated
    # The journal, when its rows must be handed off before the echoes go (set by the handler).
    gate: JournalGate | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.closing = CloseHandshake()  # before the base class sets who has terminated
        super().__init__(*args, **kwargs)

    @property
    def compression_negotiated(self) -> bool:
        return self._compressor is not None

    def _create_compressors(
        self,
        side: str,
        agreed_parameters: dict[str, Any],
        compression_options: dict[str, Any] | None = None,
    ) -> None:
        # Tornado's compressor for what this server sends; the wire layer's inflater for
        # what the client sends (see the module docstring) in place of Tornado's.
        super()._create_compressors(side, agreed_parameters, compression_options)
        self._decompressor = None
        self._inflater = PerMessageDeflate(agreed_parameters)

    @property
    def connection_error(self) -> BaseException | None:
        return self.stream.error if self.stream is not None else None

    def send_message(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        """Send one complete message; returns a Future to await when the peer lags, or while
        a large message is deflated in a worker thread (``DEFLATE_OFF_LOOP``, as the fast
        engine does). Returned from ``on_message``, it also keeps the messages in order.

        With a journal gate, the echo waits for its row to be handed off (normally the end of
        this turn of the loop): the Future returned then resolves once it is written, and
        the next message is not read before.

        Raises :class:`WebSocketClosedError` once either side has started closing.
        """
        stream = self.stream
        if stream is None or self.server_terminated or stream.closed():
            raise WebSocketClosedError()
        gate = self.gate
        if gate is not None:
            done = asyncio.get_running_loop().create_future()
            if gate.hold(functools.partial(self._send_held, opcode, data, done)):
                return done
        return self._send_now(opcode, data)

    def _send_held(self, opcode: int, data: bytes, done: asyncio.Future[None]) -> None:
        try:
            written = self._send_now(opcode, data)
        except WebSocketClosedError:  # closed meanwhile: nothing may follow the close frame
            written = None
        if written is None:
            _wake(done)
        else:
            written.add_done_callback(lambda _: _wake(done))

    def _send_now(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        stream = self.stream
        if stream is None or self.server_terminated or stream.closed():
            raise WebSocketClosedError()
        flags = 0
        if self._compressor is not None:
            if len(data) >= DEFLATE_OFF_LOOP:
                return asyncio.ensure_future(self._send_deflated_off_loop(opcode, data))
            data = self._compressor.compress(data)
            flags = self.RSV1
        try:
            written = self._write_frame(True, opcode, data, flags=flags)
        except StreamClosedError:
            raise WebSocketClosedError() from None
        if unsent_bytes(stream) > WRITE_HIGH_WATER:
            return _drained(written)
        return None

    async def _send_deflated_off_loop(self, opcode: int, data: bytes) -> None:
        compressor = self._compressor
        assert compressor is not None
        memory = loop_budgets().memory
        memory.charge(len(data))
        try:
            payload = await asyncio.get_running_loop().run_in_executor(
                None, compressor.compress, data
            )
        finally:
            memory.charge(-len(data))
        gate = self.gate
        if gate is not None:  # its row, when the journal's writer was behind
            handed = asyncio.get_running_loop().create_future()
            if gate.hold(functools.partial(_wake, handed)):
                await handed
        stream = self.stream
        if stream is None or self.server_terminated or stream.closed():
            return  # closed meanwhile: nothing may follow the close frame
        with contextlib.suppress(StreamClosedError):
            written = self._write_frame(True, opcode, payload, flags=self.RSV1)
            if unsent_bytes(stream) > WRITE_HIGH_WATER:
                await written

    async def _receive_frame(self) -> None:
        # Replaces Tornado's (same reads, same limits); see the module docstring for why.
        b0, b1 = await self._read_bytes(2)
        fragments = self._fragments
        try:
            more = check_client_header(
                b0, b1, deflate=self._inflater is not None, in_message=fragments is not None
            )
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
            return
        length, mask = length_and_mask(b1, await self._read_bytes(more))
        opcode = b0 & self.OPCODE_MASK
        final = bool(b0 & self.FIN)
        if opcode not in CONTROL_OPCODES:
            buffered = len(fragments) if fragments is not None else 0
            if buffered + length > self.params.max_message_size:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
        data = apply_mask(await self._read_bytes(length), mask)
        if opcode == Opcode.CONTINUATION:
            assert fragments is not None
            fragments += data
            if not final:
                self._check_utf8(data)
                return
            opcode, data = self._message_opcode, bytes(fragments)
            self._fragments = self._utf8 = None
        elif opcode not in CONTROL_OPCODES:
            self._message_compressed = bool(b0 & self.RSV1)
            if not final:
                self._message_opcode = opcode
                self._fragments = bytearray(data)
                if opcode == Opcode.TEXT and not self._message_compressed:
                    self._utf8 = codecs.getincrementaldecoder("utf-8")()
                    self._check_utf8(data)
                return
        budgets = loop_budgets()
        compressed = opcode not in CONTROL_OPCODES and self._message_compressed
        while budgets.turn.spent or (compressed and budgets.memory.over):
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if compressed and budgets.memory.over:
                budgets.memory.wait(functools.partial(_wake, turn))
            else:
                budgets.turn.wait(
                    functools.partial(_wake, turn), INFLATING if compressed else PLAIN
                )
            await turn
        self._inflated = 0
        handled = self._handle_message(opcode, data)
        budgets.turn.spend(1, self._inflated)
        if handled is not None:
            await handled

    def _check_utf8(self, fragment: bytes) -> None:
        """Fail at once on a fragment of uncompressed text that cannot be UTF-8 (RFC 6455
        section 8.1); the whole message is decoded again when complete."""
        if self._utf8 is None:
            return
        try:
            self._utf8.decode(fragment)
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8")

    def _handle_message(self, opcode: int, data: bytes) -> asyncio.Future[None] | None:
        if self.client_terminated:
            return None
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._message_compressed:
                assert self._inflater is not None
                limit = self.params.max_message_size
                try:
                    data = self._inflater.inflate(data, limit, True, limit + 1)
                    self._inflated = len(data)
                except ProtocolError as exc:
                    if exc.code == CloseCode.MESSAGE_TOO_BIG:
                        self.close(exc.code, exc.reason)
                        self._abort()
                    else:  # Tornado lets bad deflate data escape as a traceback
                        self._fail(exc.code, exc.reason)
                    return None
            self._message_bytes_in += len(data)
            if opcode == Opcode.BINARY:
                return self._run_callback(self.handler.on_message, data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8")
                return None
            return self._run_callback(self.handler.on_message, text)
        if opcode == Opcode.CLOSE:
            try:
                code = self.closing.receive(data)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
                return None
            self.close(code)  # answered with the peer's code (section 5.5.1), as Tornado does
            return None
        return super()._handle_message(opcode, data)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame, then hang up."""
        self.closing.fail(code, reason)
        self.close(code, reason)


def _drained(written: asyncio.Future[None]) -> asyncio.Future[None]:
    """A Future that resolves when ``written`` does, even by failing: a peer that hangs up
    while its echoes wait fails the write with StreamClosedError, and the session ends
    through the read loop. (Handed back from ``on_message``, the failure would be logged
    by Tornado as an uncaught exception with its traceback.)"""
    done = asyncio.get_running_loop().create_future()

    def settle(future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: the loop does not log it either
        if not done.done():
            done.set_result(None)

    written.add_done_callback(settle)
    return done


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
