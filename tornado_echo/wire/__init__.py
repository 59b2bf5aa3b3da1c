"""RFC 6455 (WebSocket) and RFC 7692 (permessage-deflate) without I/O.

The one home of every protocol fact, shared by the server's engines and the load tester:
:mod:`~tornado_echo.wire.frames` (opcodes, close codes, masking, frame headers and the rules a
client's frame must keep), :mod:`~tornado_echo.wire.handshake` (the accept value, the deflate
offer's answer), :mod:`~tornado_echo.wire.deflate` (compress and inflate a connection's
messages), :mod:`~tornado_echo.wire.reader` (bytes in, checked messages out) and
:mod:`~tornado_echo.wire.closing` (the closing handshake's state). Everything
here is testable without sockets; this package re-exports their public names.
"""

from __future__ import annotations

from tornado_echo.wire.closing import CloseHandshake, CloseState
from tornado_echo.wire.deflate import DEFLATE_TAIL, PerMessageDeflate
from tornado_echo.wire.frames import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    MAX_CLOSE_REASON,
    MAX_CONTROL_PAYLOAD,
    SENDABLE_CLOSE_CODES,
    SHORT_HEADERS,
    CloseCode,
    Opcode,
    ProtocolError,
    apply_mask,
    check_client_header,
    check_frame,
    close_payload,
    encode_frame,
    frame_header,
    is_sendable_close_code,
    length_and_mask,
    parse_close_payload,
)
from tornado_echo.wire.handshake import GUID, accept_value, negotiate_deflate, parse_extensions
from tornado_echo.wire.reader import FEED_MAX_FRAMES, FEED_MAX_INFLATED, FrameReader

__all__ = [
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "DEFLATE_TAIL",
    "FEED_MAX_FRAMES",
    "FEED_MAX_INFLATED",
    "GUID",
    "MAX_CLOSE_REASON",
    "MAX_CONTROL_PAYLOAD",
    "SENDABLE_CLOSE_CODES",
    "SHORT_HEADERS",
    "CloseCode",
    "CloseHandshake",
    "CloseState",
    "FrameReader",
    "Opcode",
    "PerMessageDeflate",
    "ProtocolError",
    "accept_value",
    "apply_mask",
    "check_client_header",
    "check_frame",
    "close_payload",
    "encode_frame",
    "frame_header",
    "is_sendable_close_code",
    "length_and_mask",
    "negotiate_deflate",
    "parse_close_payload",
    "parse_extensions",
]
