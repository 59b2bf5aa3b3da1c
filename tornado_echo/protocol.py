"""The wire protocol behind :class:`~tornado_echo.handlers.EchoWebSocket`.

:class:`EchoProtocol` is Tornado's RFC 6455 implementation with three changes:

* ``send_message`` writes a frame without the per-message task that Tornado's
  ``write_message`` creates, and returns a Future only when the peer reads slower than it
  sends (write buffer above ``WRITE_HIGH_WATER``). Returned from ``on_message``, that Future
  pauses reading: a slow reader gets backpressure instead of unbounded server memory.
* Close frames are checked (RFC 6455 sections 5.5.1 and 7.4): a one-byte payload, a code
  that may not be sent on the wire, or a reason that is not UTF-8 is answered with 1002 or
  1007 instead of being echoed back. A text message that is not UTF-8, compressed or not,
  is answered with 1007 (Tornado drops the connection without a close frame).
* It remembers whether the peer sent a close frame, so a session can tell a clean close
  from a dropped connection.
"""

from __future__ import annotations

import struct
from asyncio import Future

from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClosedError,
    WebSocketProtocol13,
    _DecompressTooLargeError,
)

WRITE_HIGH_WATER = 1024 * 1024

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8

PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007


def close_frame_problem(payload: bytes) -> tuple[int, str] | None:
    """Why a received close frame is invalid, as (close code to answer, reason); None if valid."""
    if not payload:
        return None
    if len(payload) == 1:
        return PROTOCOL_ERROR, "close frame payload of one byte"
    (code,) = struct.unpack("!H", payload[:2])
    if not is_valid_close_code(code):
        return PROTOCOL_ERROR, f"invalid close code {code}"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_PAYLOAD, "close reason is not valid UTF-8"
    return None


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 section 7.4)."""
    if 3000 <= code <= 4999:
        return True
    # 1004 is reserved; 1005, 1006 and 1015 are for reporting only, never sent.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)


class EchoProtocol(WebSocketProtocol13):
    """Tornado's protocol with a lean echo write, backpressure and strict close frames."""

    close_frame_received = False

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
        # Tornado's own _StreamBuffer length: what the kernel has not accepted yet.
        if len(stream._write_buffer) > WRITE_HIGH_WATER:
            return written
        return None

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if self.client_terminated:
            return None
        if opcode == OPCODE_TEXT:
            if self._frame_compressed:
                assert self._decompressor is not None
                try:
                    data = self._decompressor.decompress(data)
                except _DecompressTooLargeError:
                    self.close(1009, "message too big after decompression")
                    self._abort()
                    return None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(INVALID_PAYLOAD, "text message is not valid UTF-8")
                return None
            self._message_bytes_in += len(data)
            return self._run_callback(self.handler.on_message, text)
        if opcode == OPCODE_CLOSE:
            problem = close_frame_problem(data)
            if problem is not None:
                self._fail(*problem)
                return None
            self.close_frame_received = True
        return super()._handle_message(opcode, data)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame, then hang up."""
        self.client_terminated = True
        self.close_code, self.close_reason = code, reason
        self.close(code, reason)
