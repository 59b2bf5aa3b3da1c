"""Each private Tornado name the project uses, and each Tornado log line it takes over, still
exists in the installed Tornado."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import tornado.http1connection
import tornado.iostream
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

from tornado_echo.compat import (
    MALFORMED_HTTP_LOG,
    PRIVATE_NAMES,
    SSL_ERROR_LOG,
    UNSATISFIABLE_READ_LOG,
    unsent_bytes,
)


@contextmanager
def instance_of(owner: type) -> Iterator[Any]:
    """A fresh instance, for names that are instance attributes."""
    left, right = socket.socketpair()
    try:
        stream = IOStream(left)
        if owner is IOStream:
            yield stream
            return
        request = HTTPServerRequest(
            start_line=RequestStartLine("GET", "/", "HTTP/1.1"),
            headers=HTTPHeaders({"Host": "127.0.0.1", "Sec-WebSocket-Version": "13"}),
            connection=HTTP1Connection(stream, is_client=False),
        )
        if owner is WebSocketProtocol13:
            # Made the way Tornado makes it, as tornado_echo.web.echo does for EchoProtocol.
            yield WebSocketHandler(tornado.web.Application(), request).get_websocket_protocol()
        else:
            assert issubclass(owner, tornado.web.RequestHandler)
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
        assert hasattr(instance, name), f"{dotted} is gone: update tornado_echo/compat.py"


@pytest.mark.parametrize("line", [SSL_ERROR_LOG, UNSATISFIABLE_READ_LOG])
def test_tornado_still_logs_the_lines_the_http_server_takes_over(line: str) -> None:
    assert line in inspect.getsource(tornado.iostream), (
        f"{line!r} is gone from tornado.iostream: update tornado_echo/compat.py"
    )


def test_tornado_still_logs_malformed_requests_with_the_line_the_server_takes_over() -> None:
    assert MALFORMED_HTTP_LOG in inspect.getsource(tornado.http1connection), (
        f"{MALFORMED_HTTP_LOG!r} is gone from tornado.http1connection: update compat.py"
    )


def test_unsent_bytes_of_a_stream_that_a_failed_write_closed_is_zero() -> None:
    # Tornado drops a closed stream's write buffer; an echo racing the peer's reset must
    # not fail on it (seen with a client killed mid-pipeline on the stock engine).
    with instance_of(IOStream) as stream:
        stream.close()
        assert unsent_bytes(stream) == 0
