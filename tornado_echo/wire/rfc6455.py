"""RFC 6455 (WebSocket) and RFC 7692 (permessage-deflate) facts and pure logic, no I/O.

The one place for opcodes, close codes and the rules about them, shared by the server's
engines and the load tester. :class:`FrameReader` turns the bytes a client sends into
complete messages and control frames (:func:`check_client_header` checks one frame's header,
for an engine that reads frames itself); :func:`encode_frame` builds the frames a server
sends; :class:`PerMessageDeflate` compresses and inflates messages; :func:`negotiate_deflate`
answers a client's extension offer. Everything here is testable without sockets.
"""

from __future__ import annotations

import base64
import codecs
import enum
import hashlib
import importlib
import struct
import zlib
from collections.abc import Callable
from typing import Any, cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_CONTROL_PAYLOAD = 125
# A close reason must fit in a control frame after the two-byte code.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2
DEFLATE_TAIL = b"\x00\x00\xff\xff"


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})


class CloseCode(enum.IntEnum):
    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RECEIVED = 1005  # reported locally, never sent
    ABNORMAL_CLOSURE = 1006  # reported locally, never sent
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # reported locally, never sent


# Codes that may appear in a close frame on the wire (section 7.4): 1004 is reserved and
# 1005, 1006, 1015 only report what happened locally.
SENDABLE_CLOSE_CODES = frozenset(
    CloseCode(code) for code in CloseCode if code not in (1005, 1006, 1015)
)


def is_sendable_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 section 7.4)."""
    return 3000 <= code <= 4999 or code in SENDABLE_CLOSE_CODES


class ProtocolError(Exception):
    """The peer broke the protocol; ``code`` is the close code to fail the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_close_payload(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a received close frame; (None, "") when it carries no code.

    Raises :class:`ProtocolError` for a one-byte body, a code that may not be sent (1002)
    or a reason that is not UTF-8 (1007).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame payload of one byte")
    (code,) = struct.unpack("!H", payload[:2])
    if not is_sendable_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
    return code, reason


def close_payload(code: int | None, reason: str | None) -> bytes:
    """The body of a close frame; a reason alone means 1000, a long one is cut at a character."""
    if code is None:
        if reason is None:
            return b""
        code = CloseCode.NORMAL_CLOSURE
    data = (reason or "").encode("utf-8")
    if len(data) > MAX_CLOSE_REASON:
        data = data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + data


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept that answers ``key`` (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


# -- masking --------------------------------------------------------------------------------


def _load_c_mask() -> Callable[[bytes, bytes], bytes] | None:
    # websockets ships a C helper; the pure fallback keeps this module importable without it.
    try:
        module = importlib.import_module("websockets.speedups")
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return cast(Callable[[bytes, bytes], bytes], module.apply_mask)


def _py_apply_mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


apply_mask: Callable[[bytes, bytes], bytes] = _load_c_mask() or _py_apply_mask
"""XOR ``data`` with the 4-byte ``mask`` repeated (masking is its own inverse)."""


# -- frames a server sends ------------------------------------------------------------------

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def frame_header(opcode: int, length: int, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """The header of an unmasked (server-to-client) frame carrying ``length`` bytes."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _pack_16(b0, 126, length)
    return _pack_64(b0, 127, length)


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked frame (what a server sends)."""
    return frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) + payload


# -- permessage-deflate (RFC 7692) ----------------------------------------------------------

_WINDOW_PARAMS = ("server_max_window_bits", "client_max_window_bits")
_FLAG_PARAMS = ("server_no_context_takeover", "client_no_context_takeover")


def parse_extensions(header: str) -> list[tuple[str, dict[str, str | None]]]:
    """``Sec-WebSocket-Extensions`` as [(name, {param: value or None})]; lenient on spaces."""
    offers = []
    for item in header.split(","):
        name, *raw_params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        params: dict[str, str | None] = {}
        for raw in raw_params:
            key, sep, value = raw.partition("=")
            key = key.strip()
            if key in params:
                params["\0duplicate"] = key  # makes the offer unacceptable, see below
            params[key] = value.strip().strip('"') if sep else None
        offers.append((name.lower(), params))
    return offers


def negotiate_deflate(header: str) -> tuple[dict[str, str | None], str] | None:
    """Accept the first valid permessage-deflate offer: (agreed params, response header).

    An offer with an unknown or repeated parameter, or a window size outside 9..15, is
    declined (RFC 7692 section 5): the next offer is tried, and with none left the
    connection simply goes on uncompressed. A server window of 8 bits is declined too:
    zlib cannot produce raw deflate in a 256-byte window.
    """
    for name, params in parse_extensions(header):
        if name != "permessage-deflate":
            continue
        agreed = _deflate_params(params)
        if agreed is None:
            continue
        parts = ["permessage-deflate"]
        for key, value in agreed.items():
            parts.append(key if value is None else f"{key}={value}")
        return agreed, "; ".join(parts)
    return None


def _deflate_params(params: dict[str, str | None]) -> dict[str, str | None] | None:
    agreed: dict[str, str | None] = {}
    for key, value in params.items():
        if key in _FLAG_PARAMS:
            if value is not None:
                return None
            agreed[key] = None
        elif key in _WINDOW_PARAMS:
            if value is None:
                if key == "server_max_window_bits":
                    return None
                continue  # client_max_window_bits alone: the client may use up to 15
            if not (value.isdigit() and 9 <= int(value) <= 15):
                return None
            agreed[key] = str(int(value))
        else:
            return None
    return agreed


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
        if len(out) < wanted and self._final and self._recv_reset:
            self._decompressor = None  # the message is complete
        return out


# -- frames a client sends ------------------------------------------------------------------

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_MESSAGE_OPCODES = (Opcode.TEXT, Opcode.BINARY)
# Bytes of extended payload length announced by the 7-bit length field (section 5.2).
_EXTENDED_LENGTH = {126: 2, 127: 8}


def check_frame(b0: int, length: int, *, deflate: bool, in_message: bool) -> None:
    """Raise :class:`ProtocolError` (1002) for a frame that its first byte and its length
    already condemn (RFC 6455 section 5, RFC 7692 section 6).

    That is: RSV2 or RSV3 set; an unknown opcode; a control frame fragmented, compressed or
    longer than 125 bytes; a continuation with no message to continue; a new message before
    the previous one finished; RSV1 other than on a message's first frame with
    permessage-deflate agreed (``deflate``). ``in_message``: a fragmented message is under
    way. ``length`` may be the 7-bit length field: 126 and 127 are too long for control.
    """
    opcode = b0 & 0x0F
    rsv1 = b0 & 0x40
    if b0 & 0x30:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits RSV2/RSV3 set")
    if opcode >= 8:
        if opcode not in CONTROL_OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if rsv1 or not b0 & 0x80 or length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(
                CloseCode.PROTOCOL_ERROR, "control frame fragmented, compressed or too long"
            )
    elif opcode == Opcode.CONTINUATION:
        if not in_message:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
        if rsv1:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame")
    elif opcode in _MESSAGE_OPCODES:
        if in_message:
            raise ProtocolError(
                CloseCode.PROTOCOL_ERROR, "new message before the previous one finished"
            )
        if rsv1 and not deflate:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 set without permessage-deflate")
    else:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")


def check_client_header(b0: int, b1: int, *, deflate: bool, in_message: bool) -> int:
    """Check the first two bytes of a client frame: masked (section 5.1), then
    :func:`check_frame`. Returns how many header bytes follow them (extended payload
    length and mask key), for :func:`length_and_mask`.
    """
    if not b1 & 0x80:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame is not masked")
    length = b1 & 0x7F
    check_frame(b0, length, deflate=deflate, in_message=in_message)
    return _EXTENDED_LENGTH.get(length, 0) + 4


def length_and_mask(b1: int, rest: bytes) -> tuple[int, bytes]:
    """(payload length, mask key) of a client frame from its second byte and ``rest``, the
    header bytes :func:`check_client_header` said follow it."""
    length = b1 & 0x7F
    if length in _EXTENDED_LENGTH:
        length = int.from_bytes(rest[:-4], "big")
    return length, rest[-4:]


# The most one FrameReader.feed() call takes on: frames (and so events), and bytes inflated
# (besides the message that crosses the mark). A peer that pipelines many frames, or many small
# compressed messages that inflate to a lot, in one read is served in slices like these,
# with other connections' turns in between, and never has more than one slice in memory.
FEED_MAX_FRAMES = 256
FEED_MAX_INFLATED = 1 << 20


class FrameReader:
    """Incremental parser of client-to-server frames (masked, as section 5.1 requires).

    :meth:`feed` returns, in order, the complete events in the bytes so far:
    ``(Opcode.TEXT, str)``, ``(Opcode.BINARY, bytes)`` for whole messages (reassembled,
    inflated), ``(Opcode.PING | PONG | CLOSE, payload)`` for control frames. A violation
    ends the list with ``(None, ProtocolError)``; after that the reader accepts nothing
    more. Text is validated as it arrives, even inside a frame not yet complete, so invalid
    UTF-8 fails at once; ``max_size`` bounds a message's inflated size and no frame larger
    than it is buffered.

    One call parses at most ``FEED_MAX_FRAMES`` frames (so returns at most as many events)
    and inflates at most ``FEED_MAX_INFLATED`` bytes, a frame that inflates to more going on
    in the next call; :attr:`backlog` is then true, and ``feed(b"")`` returns the next slice
    of what is already buffered. A caller stops reading the peer while there is a backlog.

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
        "_inflated",
        "_inflating",
        "_msg_compressed",
        "_msg_data",
        "_msg_opcode",
        "_msg_size",
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
        "max_size",
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
        self._msg_size = 0
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
        self._inflated = 0  # bytes inflated by the current feed() call
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
        self._msg_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held: a partial frame, a backlog, the fragments of an unfinished message,
        and what a frame still inflating has left to inflate."""
        held = len(self._buf) + len(self._rest) - self._rest_pos + self._msg_size
        if self._inflating and self.deflate is not None:
            held += self.deflate.unconsumed
        return held

    def feed(self, data: bytes) -> list[tuple[Any, Any]]:
        if self._failed:
            return []
        buf = self._buf
        events: list[tuple[Any, Any]] = []
        self._inflated = 0
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

    def _parse(self, data: bytes, events: list[tuple[Any, Any]], pos: int = 0) -> None:
        end = len(data)
        max_size = self.max_size
        frames = 0  # frames that complete no message (fragments, pongs) are work as well
        while True:
            if frames >= FEED_MAX_FRAMES or self._inflated >= FEED_MAX_INFLATED:
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
                frames += 1
                continue
            payload = apply_mask(data[start + 4 : stop], data[start : start + 4])
            pos = stop
            frames += 1
            if (b0 == 0x81 or b0 == 0x82) and self._msg_opcode < 0:
                # The common case: a whole, unfragmented, uncompressed message.
                if b0 == 0x81:
                    try:
                        events.append((Opcode.TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise ProtocolError(
                            CloseCode.INVALID_PAYLOAD, "text message is not valid UTF-8"
                        ) from None
                else:
                    events.append((Opcode.BINARY, payload))
            else:
                self._frame(b0, payload, events)
        if pos < end:
            self._buf += data[pos:] if pos else data

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
        room = FEED_MAX_INFLATED - self._inflated + 1
        limit = self.max_size - self._msg_size
        if payload is None:
            piece = deflate.inflate_more(limit, room)
        else:
            piece = deflate.inflate(payload, limit, self._inflate_fin, room)
        self._inflated += len(piece)
        self._inflating = len(piece) == room
        if self._inflating:
            self._inflate_whole = False  # its pieces gather in the message buffer
            self._take(piece, False, False, events)
        else:
            self._take(piece, self._inflate_fin, self._inflate_whole, events)

    def _take(self, payload: bytes, fin: bool, whole: bool, events: list[tuple[Any, Any]]) -> None:
        """Add a data frame's (inflated) ``payload`` to its message; ``whole``: it is all of
        it; ``fin``: the message ends with it."""
        self._msg_size += len(payload)
        if self._msg_size > self.max_size:
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
        self._msg_size = 0
        self._msg_text = None
