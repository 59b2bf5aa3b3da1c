"""RFC 6455 client-side wire protocol, without sockets.

Everything here is pure: :func:`encode_frame` builds masked client frames,
:class:`FrameParser` turns server bytes into messages, :class:`HandshakeParser`
checks the upgrade response, :class:`Deflate` does permessage-deflate (RFC 7692).
Checking the upgrade response against the offer and the deflate work itself are the
`websockets` package's sans-I/O parts (this is the one module that imports them); the
per-message frame path is this module's own, for speed. The socket-facing
:mod:`tornado_echo.loadtest.protocol` only glues these together.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, PayloadTooBig
from websockets.exceptions import ProtocolError as WebSocketsProtocolError
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame
from websockets.frames import Opcode as WebSocketsOpcode
from websockets.headers import build_extension
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri
from websockets.utils import generate_key

from tornado_echo import wire
from tornado_echo.loadtest.errors import HandshakeError

# The opcodes as plain ints (compared on every echo), from the shared RFC 6455 module.
OP_CONT = int(wire.Opcode.CONTINUATION)
OP_TEXT = int(wire.Opcode.TEXT)
OP_BINARY = int(wire.Opcode.BINARY)
OP_CLOSE = int(wire.Opcode.CLOSE)
OP_PING = int(wire.Opcode.PING)
OP_PONG = int(wire.Opcode.PONG)

_PROTOCOL = int(wire.CloseCode.PROTOCOL_ERROR)
_TOO_BIG = int(wire.CloseCode.MESSAGE_TOO_BIG)
_INVALID = int(wire.CloseCode.INVALID_PAYLOAD)
_getrandbits = random.getrandbits
_apply_mask = wire.apply_mask  # the C helper of `websockets` when installed


def frame_header(opcode: int, length: int, *, rsv1: bool = False, fin: bool = True) -> bytes:
    """The header of a masked client frame of ``length`` bytes, without the mask key."""
    return wire.frame_header(opcode, length, fin=fin, rsv1=rsv1, masked=True)


def mask_frame(header: bytes, payload: bytes) -> bytes:
    """``header`` (from :func:`frame_header`), a fresh random mask key, the masked payload.

    A sender of many equal-length frames builds the header once and calls only this.
    """
    mask = _getrandbits(32).to_bytes(4, "big")
    return header + mask + _apply_mask(payload, mask)


def encode_frame(opcode: int, payload: bytes, *, rsv1: bool = False, fin: bool = True) -> bytes:
    """One masked client frame carrying ``payload`` (a fresh random mask each time)."""
    return mask_frame(frame_header(opcode, len(payload), rsv1=rsv1, fin=fin), payload)


def encode_close(code: int, reason: str = "") -> bytes:
    """A masked close frame with ``code`` and a UTF-8 ``reason`` (cut to fit)."""
    return encode_frame(OP_CLOSE, wire.close_payload(code, reason))


class Deflate:
    """permessage-deflate (RFC 7692) of one connection: the `websockets` extension object.

    Negotiation and the zlib work are the `websockets` package's (pure, no I/O); this only
    adapts it to whole messages and to the shared :class:`wire.ProtocolError`.
    """

    def __init__(self, extension: PerMessageDeflate) -> None:
        self._extension = extension

    @classmethod
    def accepted(cls, params: Sequence[tuple[str, str | None]]) -> Deflate:
        """The state for the server's accepted ``params`` (HandshakeError if unacceptable)."""
        try:
            extension = _deflate_offer().process_response_params(params, [])
        except InvalidHandshake as exc:
            raise HandshakeError(str(exc), "handshake_bad_extension") from None
        return cls(extension)

    @property
    def server_no_takeover(self) -> bool:
        return bool(self._extension.remote_no_context_takeover)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._extension.encode(Frame(WebSocketsOpcode.BINARY, data)).data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        try:
            frame = self._extension.decode(
                Frame(WebSocketsOpcode.BINARY, data, rsv1=True), max_size=max_size
            )
        except PayloadTooBig:
            raise wire.ProtocolError(_TOO_BIG, "decompressed message too big") from None
        except WebSocketsProtocolError as exc:
            raise wire.ProtocolError(
                _INVALID, f"bad deflate data: {exc.__cause__ or exc}"
            ) from None
        return bytes(frame.data)


def _deflate_offer() -> ClientPerMessageDeflateFactory:
    # What the client offers: permessage-deflate, any client window the server asks for.
    return ClientPerMessageDeflateFactory(client_max_window_bits=True)


class FrameParser:
    """Incremental parser of server-to-client frames.

    :meth:`feed` returns complete events in order: ``(opcode, payload)`` with opcode
    OP_TEXT/OP_BINARY for whole (reassembled, decompressed) messages, or OP_PING,
    OP_PONG, OP_CLOSE with the control frame body. Violations raise the shared
    :class:`wire.ProtocolError`: every frame other than a whole unfragmented text or
    binary one is checked by :func:`wire.check_frame` once its header is in (so a control
    frame over 125 bytes is refused before its body is read), the one rule set of the
    server's reader too.
    """

    def __init__(self, max_size: int, deflate: Deflate | None = None) -> None:
        self.max_size = max_size
        self.deflate = deflate
        self._buf = bytearray()
        self._frag_opcode = -1
        self._frag_rsv1 = False
        self._frags: list[bytes] = []
        self._frag_len = 0
        # No partial frame buffered and no fragmented message in progress: a read that is
        # exactly one whole unfragmented data frame is then that message, so a caller may
        # take this common case without feed(). An attribute, not a property, because it
        # is read on every echo; feed() keeps it current.
        self.between_frames = True

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        # Parses straight from ``data`` when nothing is buffered (the common case of
        # whole frames per read) and only buffers an incomplete tail.
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        events: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        max_size = self.max_size
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length >= 126:
                if length == 126:
                    if end - pos < 4:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                    start = pos + 4
                else:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    start = pos + 10
            if b1 & 0x80:
                raise wire.ProtocolError(_PROTOCOL, "server sent a masked frame")
            # A whole unfragmented, uncompressed text or binary frame keeps every rule.
            plain = (b0 == 0x81 or b0 == 0x82) and self._frag_opcode < 0
            if not plain:
                wire.check_frame(
                    b0, length, deflate=self.deflate is not None, in_message=self._frag_opcode >= 0
                )
            if length > max_size:
                raise wire.ProtocolError(_TOO_BIG, f"frame of {length} bytes exceeds the limit")
            stop = start + length
            if stop > end:
                break
            payload = data[start:stop] if start or stop != end else data
            pos = stop
            if plain:
                events.append((b0 & 0x0F, payload))
            else:
                self._frame(b0, payload, events)
        if pos < end:
            buf += data[pos:]
        self.between_frames = not buf and self._frag_opcode < 0
        return events

    def _frame(self, b0: int, payload: bytes, events: list[tuple[int, bytes]]) -> None:
        # A frame wire.check_frame() has passed.
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        rsv1 = bool(b0 & 0x40)
        if opcode >= 8:
            events.append((opcode, payload))
            return
        if opcode == OP_CONT:
            self._frag_len += len(payload)
            if self._frag_len > self.max_size:
                raise wire.ProtocolError(_TOO_BIG, "message exceeds the size limit")
            self._frags.append(payload)
            if not fin:
                return
            opcode, rsv1 = self._frag_opcode, self._frag_rsv1
            payload = b"".join(self._frags)
            self._frags = []
            self._frag_opcode = -1
            self._frag_len = 0
        elif not fin:
            self._frag_opcode, self._frag_rsv1 = opcode, rsv1
            self._frags = [payload]
            self._frag_len = len(payload)
            return
        if rsv1 and self.deflate is not None:
            payload = self.deflate.decompress(payload, self.max_size)
        events.append((opcode, payload))


@dataclass(frozen=True)
class HandshakeRequest:
    """What the client asks for in its upgrade request."""

    host: str
    path: str
    headers: Sequence[tuple[str, str]] = ()
    origin: str | None = None
    subprotocols: Sequence[str] = ()
    deflate: bool = False
    key: str = field(default_factory=generate_key)

    def encode(self) -> bytes:
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.origin:
            lines.append(f"Origin: {self.origin}")
        if self.subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(self.subprotocols)}")
        if self.deflate:
            offer = _deflate_offer()
            extensions = build_extension([(offer.name, offer.get_request_params())])
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class HandshakeResult:
    """The accepted upgrade: negotiated subprotocol and extension state."""

    subprotocol: str | None
    deflate: Deflate | None
    leftover: bytes


class HandshakeParser:
    """Collects the upgrade response and validates it against ``request``."""

    MAX_HEADER = 65536

    def __init__(self, request: HandshakeRequest) -> None:
        self.request = request
        self._buf = bytearray()

    def feed(self, data: bytes) -> HandshakeResult | None:
        """None until the header is complete; then the result, or HandshakeError."""
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > self.MAX_HEADER:
                raise HandshakeError("upgrade response header too large", "handshake_invalid")
            return None
        head = bytes(self._buf[:end]).decode("latin-1")
        leftover = bytes(self._buf[end + 4 :])
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HandshakeError(f"bad status line {status_line!r}", "handshake_invalid")
        status = int(parts[1])
        if status != 101:
            raise HandshakeError(
                f"server answered the upgrade with HTTP {status}", f"handshake_{status}", status
            )
        headers = Headers()
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise HandshakeError(f"bad header line {line!r}", "handshake_invalid", status)
            headers[name.strip()] = value.strip()
        request = self.request
        client = _checker(request.host, request.deflate, tuple(request.subprotocols))
        client.key = request.key  # what this connection offered; the rest is shared
        try:
            client.process_response(Response(status, parts[2] if len(parts) > 2 else "", headers))
        except InvalidHandshake as exc:
            # Extensions are checked first: if they alone fail, the fault is theirs.
            try:
                client.process_extensions(headers)
            except InvalidHandshake:
                category = "handshake_bad_extension"
            else:
                category = "handshake_invalid"
            raise HandshakeError(f"invalid upgrade response: {exc}", category, status) from None
        deflate = None
        for extension in client.extensions:
            if isinstance(extension, PerMessageDeflate):
                deflate = Deflate(extension)
        return HandshakeResult(client.subprotocol, deflate, leftover)


@functools.lru_cache(maxsize=64)
def _checker(host: str, deflate: bool, subprotocols: tuple[str, ...]) -> ClientProtocol:
    # The `websockets` client state machine, used only to check upgrade responses against
    # what was offered (accept key, upgrade headers, extension and subprotocol choice). One
    # per kind of offer, reused: building one costs more than the check (measured 8 + 4 us
    # against 6 us), only the key differs between connections, and HandshakeParser.feed()
    # sets it and reads the outcome without yielding, so connections never interleave.
    return ClientProtocol(
        parse_uri(f"ws://{host}/"),
        extensions=[_deflate_offer()] if deflate else None,
        subprotocols=[Subprotocol(name) for name in subprotocols] or None,
    )
