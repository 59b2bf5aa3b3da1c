"""Pure protocol checks, without sockets."""

from __future__ import annotations

import struct

import pytest

from tornado_echo.protocol import close_frame_problem, is_valid_close_code


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_valid_close_codes(code: int) -> None:
    assert is_valid_close_code(code)
    assert close_frame_problem(struct.pack("!H", code) + "raison ✓".encode()) is None


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code: int) -> None:
    assert not is_valid_close_code(code)
    assert close_frame_problem(struct.pack("!H", code)) == (1002, f"invalid close code {code}")


def test_empty_close_payload_is_valid() -> None:
    assert close_frame_problem(b"") is None


def test_one_byte_close_payload() -> None:
    assert close_frame_problem(b"\x03") == (1002, "close frame payload of one byte")


def test_close_reason_must_be_utf8() -> None:
    assert close_frame_problem(struct.pack("!H", 1000) + b"\xc3\x28") == (
        1007,
        "close reason is not valid UTF-8",
    )
