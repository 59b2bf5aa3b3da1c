"""The closing handshake's state without I/O (both engines keep theirs in it)."""

from __future__ import annotations

import struct

import pytest

from tornado_echo.wire import CloseHandshake, CloseState, ProtocolError


def test_the_peer_closes_first_and_is_answered_with_its_own_code() -> None:
    closing = CloseHandshake()
    assert closing.receive(struct.pack("!H", 4001) + "bye ✓".encode()) == 4001
    assert (closing.client_terminated, closing.server_terminated) == (True, False)
    assert (closing.code, closing.reason, closing.frame_received) == (4001, "bye ✓", True)
    assert closing.send(4001, None) == struct.pack("!H", 4001)
    assert closing.server_terminated
    assert closing.send(1000, "again") is None  # nothing may follow our close frame


def test_the_server_closes_first_then_the_peer_answers() -> None:
    closing = CloseHandshake()
    assert closing.send(1001, "going away") == struct.pack("!H", 1001) + b"going away"
    assert (closing.client_terminated, closing.code) == (False, None)
    assert closing.receive(b"") is None  # a close frame without a code
    assert (closing.client_terminated, closing.frame_received) == (True, True)
    assert (closing.code, closing.reason) == (None, None)


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x03", 1002), (struct.pack("!H", 1005), 1002), (struct.pack("!H", 1000) + b"\xff", 1007)],
)
def test_a_close_frame_that_may_not_be_sent_fails_the_connection(payload: bytes, code: int) -> None:
    closing = CloseHandshake()
    with pytest.raises(ProtocolError) as raised:
        closing.receive(payload)
    assert raised.value.code == code
    assert not closing.client_terminated and not closing.frame_received
    closing.fail(raised.value.code, raised.value.reason)
    assert closing.client_terminated and not closing.frame_received
    assert closing.code == code
    sent = closing.send(closing.code, closing.reason)
    assert sent is not None and struct.unpack("!H", sent[:2])[0] == code


def test_a_peer_that_stopped_answering_is_given_up_on() -> None:
    closing = CloseHandshake()
    assert closing.give_up(1011, "ping timed out") == struct.pack("!H", 1011) + b"ping timed out"
    assert closing.client_terminated and closing.server_terminated
    assert (closing.code, closing.reason, closing.frame_received) == (
        1006,
        "ping timed out",
        False,
    )
    closed_first = CloseHandshake()
    closed_first.send(1000, None)
    assert closed_first.give_up(1011, "ping timed out") is None


def test_tornado_s_names_for_the_close_state_read_and_set_the_handshake() -> None:
    class Protocol(CloseState):
        def __init__(self) -> None:
            self.closing = CloseHandshake()
            self.client_terminated = self.server_terminated = False  # as Tornado's base does

    protocol = Protocol()
    protocol.closing.receive(struct.pack("!H", 1000) + b"done")
    assert (protocol.client_terminated, protocol.server_terminated) == (True, False)
    assert (protocol.close_code, protocol.close_reason, protocol.close_frame_received) == (
        1000,
        "done",
        True,
    )
    protocol.server_terminated = True
    protocol.close_code, protocol.close_reason = 1006, None
    assert protocol.closing.server_terminated
    assert (protocol.closing.code, protocol.closing.reason) == (1006, None)
