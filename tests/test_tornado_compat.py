"""Each private Tornado name the project uses still exists in the installed Tornado."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest
from tornado.iostream import IOStream

from tornado_echo.tornado_compat import PRIVATE_NAMES


@contextmanager
def instance_of(owner: type) -> Iterator[Any]:
    """A fresh instance, for names that are instance attributes."""
    left, right = socket.socketpair()
    try:
        stream = IOStream(left)
        if owner is IOStream:
            yield stream
        else:
            assert issubclass(owner, tornado.web.RequestHandler)
            request = HTTPServerRequest(
                method="GET", uri="/", connection=HTTP1Connection(stream, is_client=False)
            )
            yield owner(tornado.web.Application(), request)
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize("dotted", sorted(PRIVATE_NAMES))
def test_private_tornado_name_exists(dotted: str) -> None:
    owner, name = PRIVATE_NAMES[dotted]
    if hasattr(owner, name):
        return
    with instance_of(owner) as instance:
        assert hasattr(instance, name), f"{dotted} is gone: update tornado_echo/tornado_compat.py"
