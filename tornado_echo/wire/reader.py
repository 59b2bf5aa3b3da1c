"""The frame reader: the bytes a client sends turned into complete messages and control frames,
checked as they arrive, in slices bounded by frames and inflated bytes."""

from __future__ import annotations

import codecs
from typing import Any

from tornado_echo.wire.deflate import PerMessageDeflate
from tornado_echo.wire.frames import (
    CloseCode,
    Opcode,
    ProtocolError,
    apply_mask,
    check_frame,
)

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
FEED_MAX_FRAMES = 256
FEED_MAX_INFLATED = 1 << 20
# Used on every message: module names, not Enum class lookups.
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY


class FrameReader:
    """Incremental parser of client-to-server frames (masked, as section 5.1 requires).

    :meth:`feed` returns, in order, the complete events in the bytes so far:
    ``(Opcode.TEXT, str)``, ``(Opcode.BINARY, bytes)`` for whole messages (reassembled,
    inflated), ``(Opcode.PING | PONG | CLOSE, payload)`` for control frames. A violation
    ends the list with ``(None, ProtocolError)``; after that the reader accepts nothing
    more. Text is validated as it arrives, even inside a frame not yet complete, so invalid
    UTF-8 fails at once; ``max_size`` bounds a message's inflated size and no frame larger
    than it is buffered.

    One call parses at most ``max_frames`` frames (so returns at most as many events) and
    inflates at most about ``max_inflated`` bytes (by default ``FEED_MAX_FRAMES`` and
    ``FEED_MAX_INFLATED``), a frame that inflates to more going on in the next call;
    :attr:`backlog` is then true, and ``feed(b"")`` returns the next slice of what is
    already buffered. Zero frames keeps what arrives for later (the caller's budget for this
    turn is spent); zero inflated bytes parses up to the first compressed frame (the
    caller's memory is short). :attr:`frames` and :attr:`inflated` tell what the last call
    took on. A caller stops reading the peer while there is a backlog.

    After :meth:`discard_data` (the caller has sent its close frame and drops every message
    after it), data frames are skipped without being unmasked, inflated or checked, and an
    unfinished message is let go; control frames are still parsed, so the peer's close is
    found.
    """

    # One per connection, for its lifetime: slots keep an idle one small.
    __slots__ = (
        "_buf",
        "_failed",
        "_inflate_fin",
        "_inflate_whole",
        "_inflating",
        "_max_frames",
        "_max_inflated",
        "_msg_compressed",
        "_msg_data",
        "_msg_opcode",
        "_msg_text",
        "_need",
        "_partial_checked",
        "_partial_mask",
        "_partial_start",
        "_partial_text",
        "_rest",
        "_rest_pos",
        "backlog",
        "deflate",
        "discarding",
        "frames",
        "inflated",
        "max_size",
        "message_bytes",
    )

    def __init__(self, max_size: int, deflate: PerMessageDeflate | None = None) -> None:
        self.max_size = max_size
        self.deflate = deflate
        self._buf = bytearray()
        self._need = 2  # bytes the buffer must hold before parsing is worth trying
        self._failed = False
        # The fragmented message in progress, if any.
        self._msg_opcode = -1
        self._msg_compressed = False
        # Its bytes so far (inflated), as one buffer: an object per fragment would make a
        # message in 1-byte fragments cost 40 bytes a byte, and endless empty ones unbounded.
        self._msg_data = bytearray()
        self.message_bytes = 0  # inflated, of the unfinished message so far
        self._msg_text: Any = None  # incremental UTF-8 decoder of a fragmented text
        # A text frame still arriving: its payload so far is checked as it comes (RFC 6455
        # section 8.1 "fail fast"), so a client cannot park invalid UTF-8 in a long frame.
        self._partial_text: Any = None  # a UTF-8 decoder used only to check, or None
        self._partial_mask = b""
        self._partial_start = 0  # offset of the frame's payload in the buffer
        self._partial_checked = 0  # offset in the buffer up to which it is checked
        # Received bytes left unparsed when a slice was full, and where parsing resumes.
        self._rest = b""
        self._rest_pos = 0
        self.frames = 0  # frames parsed by the last feed() call
        self.inflated = 0  # bytes inflated by the last feed() call
        self._max_frames = FEED_MAX_FRAMES  # the current call's slice
        self._max_inflated = FEED_MAX_INFLATED
        # A compressed frame whose output did not fit in its slice: it goes on in the next.
        self._inflating = False
        self._inflate_fin = False  # that frame ends its message
        self._inflate_whole = False  # and is the whole message, so far in one piece
        self.backlog = False
        self.discarding = False

    def discard_data(self) -> None:
        """Skip data frames from now on (see the class docstring); idempotent."""
        self.discarding = True
        self._msg_data = bytearray()
        self.message_bytes = 0

    @property
    def compressed_next(self) -> bool:
        """Whether the backlog goes on with inflating (a frame under way, or a compressed
        frame next)."""
        if self._inflating:
            return True
        rest, pos = self._rest, self._rest_pos
        return self.backlog and pos < len(rest) and self._compressed(rest[pos])

    @property
    def buffered(self) -> int:
        """Bytes held: a partial frame, a backlog, the fragments of an unfinished message,
        and what a frame still inflating has left to inflate."""
        held = len(self._buf) + len(self._rest) - self._rest_pos + self.message_bytes
        if self._inflating and self.deflate is not None:
            held += self.deflate.unconsumed
        return held

    def feed(
        self,
        data: bytes,
        max_frames: int = FEED_MAX_FRAMES,
        max_inflated: int = FEED_MAX_INFLATED,
    ) -> list[tuple[Any, Any]]:
        self.frames = self.inflated = 0
        if self._failed:
            return []
        buf = self._buf
        events: list[tuple[Any, Any]] = []
        if max_frames <= 0 or (max_inflated <= 0 and self._inflating):
            self._keep(data)
            return events
        self._max_frames, self._max_inflated = max_frames, max_inflated
        try:
            if self.backlog:
                rest, pos = self._rest, self._rest_pos
                self.backlog = False
                self._rest, self._rest_pos = b"", 0
                if data:  # bytes that arrived while the backlog waited (the peer was paused)
                    rest, pos = rest[pos:] + data, 0
                if self._inflating:
                    self._inflate(None, events)
                self._parse(rest, events, pos)
            else:
                if buf:
                    buf += data
                    if len(buf) < self._need:
                        if self._partial_text is not None and not self.discarding:
                            self._check_partial_text()
                        return events
                    data = bytes(buf)
                    buf.clear()
                    self._partial_text = None
                self._parse(data, events)
        except ProtocolError as exc:
            self._failed = True
            self._inflating = False
            self._buf.clear()
            self._rest, self._rest_pos = b"", 0
            self.backlog = False
            self._msg_data = bytearray()
            events.append((None, exc))
        return events

    def _keep(self, data: bytes) -> None:
        """Hold ``data`` unparsed, as a backlog, for a later call with room."""
        if self.backlog:
            rest = self._rest[self._rest_pos :] + data
        else:
            # A partial frame goes back in front; its text is checked again when parsed.
            rest = bytes(self._buf) + data
            self._buf.clear()
            self._partial_text = None
        self._rest, self._rest_pos = rest, 0
        self.backlog = bool(rest) or self._inflating

    def _parse(self, data: bytes, events: list[tuple[Any, Any]], pos: int = 0) -> None:
        end = len(data)
        max_size = self.max_size
        max_frames, max_inflated = self._max_frames, self._max_inflated
        while True:
            # Frames that complete no message (fragments, pongs) are work as well.
            if self.frames >= max_frames or self.inflated >= max_inflated > 0:
                if pos < end or self._inflating:
                    self._rest, self._rest_pos = data, pos
                    self.backlog = True
                return
            left = end - pos
            if left < 2:
                self._need = 2
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if left < 4:
                    self._need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if left < 10:
                    self._need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if not b1 & 0x80:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame is not masked")
            if length > max_size:
                if b0 & 0x08:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame too long")
                raise ProtocolError(
                    CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds {max_size}"
                )
            stop = start + 4 + length
            if stop > end:
                if b0 & 0x08 or not self.discarding:
                    # Condemned by its header alone (a 64 KiB ping, RSV bits): fail now,
                    # not after buffering up to max_size of it. (A whole frame is checked
                    # in _frame.)
                    check_frame(
                        b0,
                        length,
                        deflate=self.deflate is not None,
                        in_message=self._msg_opcode >= 0,
                    )
                if self._is_plain_text_frame(b0):
                    if end < start + 4:
                        self._need = start + 4 - pos  # parse again once the mask is here
                        break
                    self._need = stop - pos
                    self._buf += data[pos:]
                    self._start_partial_text(data[start : start + 4], start + 4 - pos)
                    return
                self._need = stop - pos
                break
            if self.discarding and not b0 & 0x08:
                pos = stop
                self.frames += 1
                continue
            if max_inflated <= 0 and self._compressed(b0):
                self._rest, self._rest_pos = data, pos  # it waits for room to inflate
                self.backlog = True
                return
            payload = apply_mask(data[start + 4 : stop], data[start : start + 4])
            pos = stop
            self.frames += 1
            if (b0 == 0x81 or b0 == 0x82) and self._msg_opcode < 0:
                # The common case: a whole, unfragmented, uncompressed message.
                if b0 == 0x81:
                    try:
                        events.append((_TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise ProtocolError(
                            CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8"
                        ) from None
                else:
                    events.append((_BINARY, payload))
            else:
                self._frame(b0, payload, events)
        if pos < end:
            self._buf += data[pos:] if pos else data

    def _compressed(self, b0: int) -> bool:
        """Whether the frame with first byte ``b0`` is (part of) a compressed message."""
        if b0 & 0x40:
            return True
        return b0 & 0x0F == Opcode.CONTINUATION and self._msg_opcode >= 0 and self._msg_compressed

    def _is_plain_text_frame(self, b0: int) -> bool:
        """Whether a frame with first byte ``b0`` carries uncompressed text of a valid message."""
        if b0 & 0x70 or self.discarding:
            return False  # compressed (checked once inflated), or an RSV error found later
        opcode = b0 & 0x0F
        if opcode == Opcode.TEXT:
            return self._msg_opcode < 0
        return (
            opcode == Opcode.CONTINUATION
            and self._msg_text is not None
            and not self._msg_compressed
        )

    def _start_partial_text(self, mask: bytes, start: int) -> None:
        decoder = _utf8_decoder()
        if self._msg_text is not None:  # a continuation: carry a sequence split at the frame
            decoder.setstate(self._msg_text.getstate())
        self._partial_text = decoder
        self._partial_mask = mask
        self._partial_start = self._partial_checked = start
        self._check_partial_text()

    def _check_partial_text(self) -> None:
        buf = self._buf
        at = self._partial_checked
        if len(buf) <= at:
            return
        turn = (at - self._partial_start) % 4
        mask = self._partial_mask[turn:] + self._partial_mask[:turn]
        self._partial_checked = len(buf)
        try:
            self._partial_text.decode(apply_mask(bytes(buf[at:]), mask), False)
        except UnicodeDecodeError:
            raise ProtocolError(
                CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8"
            ) from None

    def _frame(self, b0: int, payload: bytes, events: list[tuple[Any, Any]]) -> None:
        check_frame(
            b0, len(payload), deflate=self.deflate is not None, in_message=self._msg_opcode >= 0
        )
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode >= 8:
            events.append((Opcode(opcode), payload))
            return
        if opcode != Opcode.CONTINUATION:
            self._msg_opcode = opcode
            self._msg_compressed = bool(b0 & 0x40)
            self._msg_text = _utf8_decoder() if opcode == Opcode.TEXT else None
        whole = opcode != Opcode.CONTINUATION and fin  # the message in one frame
        if self._msg_compressed:
            self._inflate_fin, self._inflate_whole = fin, whole
            self._inflate(payload, events)
        else:
            self._take(payload, fin, whole, events)

    def _inflate(self, payload: bytes | None, events: list[tuple[Any, Any]]) -> None:
        """Inflate a compressed frame's ``payload`` (None: the rest of the one under way),
        no more than this slice has room for."""
        deflate = self.deflate
        assert deflate is not None
        if self.discarding:
            self._inflating = False  # its message is dropped anyway
            return
        # One byte past the slice's room: a frame that fills it exactly is done in one piece.
        room = self._max_inflated - self.inflated + 1
        limit = self.max_size - self.message_bytes
        if payload is None:
            piece = deflate.inflate_more(limit, room)
        else:
            piece = deflate.inflate(payload, limit, self._inflate_fin, room)
        self.inflated += len(piece)
        self._inflating = len(piece) == room
        if self._inflating:
            self._inflate_whole = False  # its pieces gather in the message buffer
            self._take(piece, False, False, events)
        else:
            self._take(piece, self._inflate_fin, self._inflate_whole, events)

    def _take(self, payload: bytes, fin: bool, whole: bool, events: list[tuple[Any, Any]]) -> None:
        """Add a data frame's (inflated) ``payload`` to its message; ``whole``: it is all of
        it; ``fin``: the message ends with it."""
        self.message_bytes += len(payload)
        if self.message_bytes > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message exceeds {self.max_size} bytes")
        text = None
        if self._msg_text is not None:
            try:
                text = self._msg_text.decode(payload, fin)
            except UnicodeDecodeError:
                raise ProtocolError(
                    CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8"
                ) from None
        if whole:
            events.append((Opcode.TEXT, text) if text is not None else (Opcode.BINARY, payload))
        else:
            self._msg_data += payload
            if not fin:
                return
            # A text's pieces were checked as they came; decoding it whole cannot fail.
            message = self._msg_data
            if self._msg_opcode == Opcode.TEXT:
                events.append((Opcode.TEXT, message.decode("utf-8")))
            else:
                events.append((Opcode.BINARY, bytes(message)))
            self._msg_data = bytearray()
        self._msg_opcode = -1
        self.message_bytes = 0
        self._msg_text = None
