"""Each private Tornado name the project uses still exists in the installed Tornado."""

from __future__ import annotations

import socket

import pytest
from tornado.iostream import IOStream

from tornado_echo.tornado_compat import PRIVATE_NAMES


@pytest.mark.parametrize("dotted", sorted(PRIVATE_NAMES))
def test_private_tornado_name_exists(dotted: str) -> None:
    owner, name = PRIVATE_NAMES[dotted]
    if hasattr(owner, name):
        return
    assert owner is IOStream, f"{dotted} is gone: update tornado_echo/tornado_compat.py"
    left, right = socket.socketpair()  # instance attributes need an instance
    try:
        assert hasattr(IOStream(left), name), f"{dotted} is gone"
    finally:
        left.close()
        right.close()
