"""The stock engine: Tornado's own RFC 6455 implementation behind ``EchoWebSocket``.

Selected with ``engine = "tornado"``; the default is :mod:`tornado_echo.engine`.
:class:`EchoProtocol` is Tornado's ``WebSocketProtocol13`` with three changes:

* ``send_message`` writes a frame without the per-message task that Tornado's
  ``write_message`` creates, and returns a Future only when the peer reads slower than it
  sends (write buffer above ``WRITE_HIGH_WATER``). Returned from ``on_message``, that Future
  pauses reading: a slow reader gets backpressure instead of unbounded server memory.
* Close frames are checked by :func:`tornado_echo.rfc6455.parse_close_payload`: a
  one-byte payload, a code that may not be sent on the wire, or a reason that is not
  UTF-8 is answered with 1002 or 1007 instead of being echoed back. A text message that
  is not UTF-8, compressed or not, is answered with 1007 (Tornado drops the connection
  without a close frame).
* It remembers whether the peer sent a close frame, so a session can tell a clean close
  from a dropped connection.
"""

from __future__ import annotations

import zlib
from asyncio import Future

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

from .engine import WRITE_HIGH_WATER
from .rfc6455 import CloseCode, Opcode, ProtocolError, parse_close_payload
from .tornado_compat import DecompressTooLargeError, unsent_bytes


class EchoProtocol(WebSocketProtocol13):
    """Tornado's protocol with a lean echo write, backpressure and strict close frames."""

    close_frame_received = False

    @property
    def compression_negotiated(self) -> bool:
        return self._compressor is not None

    @property
    def connection_error(self) -> BaseException | None:
        return self.stream.error if self.stream is not None else None

    def send_message(self, opcode: int, data: bytes) -> Future[None] | None:
        """Send one complete message; returns a Future to await only when the peer lags.

        Raises :class:`WebSocketClosedError` once either side has started closing.
        """
        stream = self.stream
        if stream is None or self.server_terminated or stream.closed():
            raise WebSocketClosedError()
        flags = 0
        if self._compressor is not None:
            data = self._compressor.compress(data)
            flags = self.RSV1
        try:
            written = self._write_frame(True, opcode, data, flags=flags)
        except StreamClosedError:
            raise WebSocketClosedError() from None
        if unsent_bytes(stream) > WRITE_HIGH_WATER:
            return written
        return None

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if self.client_terminated:
            return None
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._frame_compressed:
                assert self._decompressor is not None
                try:
                    data = self._decompressor.decompress(data)
                except DecompressTooLargeError:
                    self.close(CloseCode.MESSAGE_TOO_BIG, "message too big after decompression")
                    self._abort()
                    return None
                except zlib.error:
                    # Tornado lets this escape as a traceback and no close frame.
                    self._fail(CloseCode.INVALID_PAYLOAD, "invalid deflate data")
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
        if self._frame_compressed:
            # RSV1 on a control frame (RFC 7692 section 6.1); Tornado would inflate it.
            self._fail(CloseCode.PROTOCOL_ERROR, "compressed control frame")
            return None
        if opcode == Opcode.CLOSE:
            try:
                parse_close_payload(data)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
                return None
            self.close_frame_received = True
        return super()._handle_message(opcode, data)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame, then hang up."""
        self.client_terminated = True
        self.close_code, self.close_reason = code, reason
        self.close(code, reason)
