"""The closing handshake of one server connection (RFC 6455 sections 5.5.1 and 7), no I/O.

Both engines keep their close state in a :class:`CloseHandshake` and do what its answers
say: send the close frame payload it returns, stop reading once the peer has terminated,
hang up once both sides have. The session's record reads what it kept: the close code and
reason, and whether the peer sent a close frame at all (a clean close, not a dropped
connection).
"""

from __future__ import annotations

from tornado_echo.wire.frames import CloseCode, close_payload, parse_close_payload


class CloseHandshake:
    """Who has terminated, and the code and reason the session ends with."""

    __slots__ = ("client_terminated", "code", "frame_received", "reason", "server_terminated")

    def __init__(self) -> None:
        # The peer's close frame came, or the connection failed: no more of it is read.
        self.client_terminated = False
        # Our close frame is out: nothing may follow it.
        self.server_terminated = False
        self.code: int | None = None
        self.reason: str | None = None
        self.frame_received = False

    def receive(self, payload: bytes) -> int | None:
        """The peer's close frame: returns the code to answer with, its own (section 5.5.1).

        Raises :class:`~tornado_echo.wire.ProtocolError` for a frame that may not be sent
        (fail the connection with its code, :meth:`fail`).
        """
        code, reason = parse_close_payload(payload)
        self.client_terminated = self.frame_received = True
        self.code, self.reason = code, reason or None
        return code

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): no more is read; our close carries ``code``."""
        self.client_terminated = True
        self.code, self.reason = code, reason

    def send(self, code: int | None, reason: str | None) -> bytes | None:
        """The payload of our close frame, while it is still to be sent; None afterwards."""
        if self.server_terminated:
            return None
        self.server_terminated = True
        return close_payload(code, reason)

    def give_up(self, code: int, reason: str) -> bytes | None:
        """The peer stopped answering: :meth:`send` our close frame, but waiting for the
        peer's is pointless; the session ends as dropped (1006) for ``reason``."""
        payload = self.send(code, reason)
        self.client_terminated = True
        self.code, self.reason = CloseCode.ABNORMAL_CLOSURE, reason
        return payload


class CloseState:
    """A protocol's close state kept in ``self.closing``, under the attribute names of
    Tornado's ``WebSocketProtocol`` (which sets and reads them itself), for both engines."""

    __slots__ = ()
    closing: CloseHandshake

    @property
    def client_terminated(self) -> bool:
        return self.closing.client_terminated

    @client_terminated.setter
    def client_terminated(self, value: bool) -> None:
        self.closing.client_terminated = value

    @property
    def server_terminated(self) -> bool:
        return self.closing.server_terminated

    @server_terminated.setter
    def server_terminated(self, value: bool) -> None:
        self.closing.server_terminated = value

    @property
    def close_code(self) -> int | None:
        return self.closing.code

    @close_code.setter
    def close_code(self, value: int | None) -> None:
        self.closing.code = value

    @property
    def close_reason(self) -> str | None:
        return self.closing.reason

    @close_reason.setter
    def close_reason(self, value: str | None) -> None:
        self.closing.reason = value

    @property
    def close_frame_received(self) -> bool:
        return self.closing.frame_received
