"""RFC 6455 frames without I/O: opcodes, close codes, masking, the server's frames, and the
rules a client's frame header must keep (section 5). Shared by the engines and the load tester."""

from __future__ import annotations

import enum
import importlib
import struct
from collections.abc import Callable
from typing import cast

MAX_CONTROL_PAYLOAD = 125
# A close reason must fit in a control frame after the two-byte code.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2


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


def frame_header(
    opcode: int, length: int, *, fin: bool = True, rsv1: bool = False, masked: bool = False
) -> bytes:
    """The header of a frame carrying ``length`` bytes: unmasked (server-to-client), or with
    the mask bit set (``masked``: a client's, the 4-byte mask key to follow it)."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 65536:
        return _pack_16(b0, mask_bit | 126, length)
    return _pack_64(b0, mask_bit | 127, length)


# The headers of whole, uncompressed server messages of up to 125 bytes, by opcode and length:
# the echo path takes its header from here instead of building one per message.
SHORT_HEADERS: tuple[tuple[bytes, ...], ...] = tuple(
    tuple(frame_header(opcode, length) for length in range(126))
    for opcode in (Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY)
)


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked frame (what a server sends)."""
    return frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) + payload


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
