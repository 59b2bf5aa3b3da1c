"""permessage-deflate (RFC 7692) for one connection: compress what a server sends, inflate a
client's frames in pieces of a size the caller chooses."""

from __future__ import annotations

import zlib
from typing import Any

from tornado_echo.wire.frames import CloseCode, ProtocolError

DEFLATE_TAIL = b"\x00\x00\xff\xff"
# What may follow a block with BFINAL set in a message, once DEFLATE_TAIL is appended: the
# tail alone, or with the byte RFC 7692 section 7.2.3.4 has the sender add (the header of
# an empty stored block, which the tail completes). Anything else is not deflate data.
_AFTER_FINAL_BLOCK = (DEFLATE_TAIL, b"\x00" + DEFLATE_TAIL)
_AFTER_FINAL_BLOCK_MAX = max(len(after) for after in _AFTER_FINAL_BLOCK)


class PerMessageDeflate:
    """A server's deflate state for one connection, from the agreed parameters.

    ``inflate`` is fed one frame at a time, so a fragmented message is checked (size, and
    UTF-8 by the caller) as its fragments arrive, not only when it is complete; and it
    gives a frame's output in pieces of a size the caller chooses, so one frame that
    inflates to a lot is not inflated in one go.
    """

    def __init__(self, params: dict[str, str | None], level: int = 6, mem_level: int = 8) -> None:
        self._send_bits = int(params.get("server_max_window_bits") or 15)
        self._send_reset = "server_no_context_takeover" in params
        self._recv_bits = int(params.get("client_max_window_bits") or 15)
        self._recv_reset = "client_no_context_takeover" in params
        self._level = level
        self._mem_level = mem_level
        self._compressor: Any = None
        self._decompressor: Any = None
        self._final = False  # the frame being inflated ends its message

    def compress(self, data: bytes) -> bytes:
        """The payload of one whole compressed message (RSV1 set on its first frame)."""
        compressor = self._compressor
        if compressor is None or self._send_reset:
            compressor = self._compressor = zlib.compressobj(
                self._level, zlib.DEFLATED, -self._send_bits, self._mem_level
            )
        out: bytes = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(DEFLATE_TAIL) else out

    def inflate(self, data: bytes, limit: int, final: bool, piece: int) -> bytes:
        """Inflate one frame's payload of a compressed message (``final``: its last frame).

        Gives at most ``piece`` bytes. If it gave that many, the frame may hold more:
        :meth:`inflate_more` gives the next piece, until one comes out shorter. Raises
        :class:`ProtocolError` 1009 once the frame's output passes ``limit`` (the room
        the message has left) and 1007 on data that is not deflate.
        """
        if self._decompressor is None:
            self._decompressor = zlib.decompressobj(-self._recv_bits)
        self._final = final
        return self._inflate(data + DEFLATE_TAIL if final else data, limit, piece)

    @property
    def unconsumed(self) -> int:
        """Bytes of the frame under way not inflated yet (its input, held for inflate_more)."""
        return 0 if self._decompressor is None else len(self._decompressor.unconsumed_tail)

    def inflate_more(self, limit: int, piece: int) -> bytes:
        """The next piece of the frame :meth:`inflate` began (same contract)."""
        return self._inflate(self._decompressor.unconsumed_tail, limit, piece)

    def _inflate(self, data: bytes, limit: int, piece: int) -> bytes:
        decompressor = self._decompressor
        wanted = min(piece, limit + 1)
        try:
            out: bytes = decompressor.decompress(data, wanted)
        except zlib.error as exc:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, f"invalid deflate data: {exc}") from None
        if len(out) > limit:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big after decompression")
        done = len(out) < wanted and self._final  # the message is complete
        if decompressor.eof:
            # A block with BFINAL set ended the stream (RFC 7692 section 7.2.3.4 allows
            # it): nothing but the tail may follow, and the next message starts a new
            # stream (the old one, finished, would inflate every later message to nothing).
            after = decompressor.unused_data
            if len(after) > _AFTER_FINAL_BLOCK_MAX or (done and after not in _AFTER_FINAL_BLOCK):
                raise ProtocolError(CloseCode.INVALID_PAYLOAD, "data after the final deflate block")
            if done:
                self._decompressor = None
        elif done and self._recv_reset:
            self._decompressor = None
        return out


# -- frames a client sends ------------------------------------------------------------------
