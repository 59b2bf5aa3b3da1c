"""Each private name of Tornado and prometheus_client the project uses, and each Tornado log
line it takes over, still exists in the installed versions."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import tornado.http1connection
import tornado.httpclient
import tornado.httpserver
import tornado.iostream
import tornado.testing
import tornado.web
from prometheus_client import CollectorRegistry, Histogram
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

from tornado_echo.compat import (
    MALFORMED_HTTP_LOG,
    PRIVATE_NAMES,
    PROMETHEUS_PRIVATE_NAMES,
    SSL_ERROR_LOG,
    UNSATISFIABLE_READ_LOG,
    add_to_histogram,
    release_response_state,
    reset_response,
    unsent_bytes,
)


def served_handler() -> tornado.web.RequestHandler:
    """A handler that has answered a real request over a socket: some of the names (such as
    ``_transforms``) exist only once a handler serves."""
    served: list[tornado.web.RequestHandler] = []

    class Capture(tornado.web.RequestHandler):
        def get(self) -> None:
            served.append(self)
            self.write("ok")

    async def fetch() -> None:
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(tornado.web.Application([("/", Capture)]))
        server.add_sockets([sock])
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            await client.fetch(f"http://127.0.0.1:{port}/")
        finally:
            client.close()
            server.stop()

    asyncio.run(fetch())
    return served[0]


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
            assert owner is tornado.web.RequestHandler
            yield served_handler()
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


@pytest.mark.parametrize("dotted", sorted(PROMETHEUS_PRIVATE_NAMES))
def test_private_prometheus_client_name_exists(dotted: str) -> None:
    histogram = Histogram("h", "doc", registry=None)
    assert hasattr(histogram, PROMETHEUS_PRIVATE_NAMES[dotted]), (
        f"{dotted} is gone: update tornado_echo/compat.py"
    )


def test_observations_added_by_bucket_are_what_a_scrape_reads() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h", "doc", registry=registry, buckets=(10, 100))
    add_to_histogram(histogram, [2, 0, 3], 2 * 5 + 3 * 1000)
    assert registry.get_sample_value("h_bucket", {"le": "10.0"}) == 2
    assert registry.get_sample_value("h_bucket", {"le": "100.0"}) == 2  # cumulative
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 5
    assert registry.get_sample_value("h_count") == 5
    assert registry.get_sample_value("h_sum") == 3010


def test_a_sent_response_s_state_is_released() -> None:
    handler = served_handler()
    handler.set_header("X-Sent", "yes")
    release_response_state(handler)
    for name in ("ui", "_transforms", "_write_buffer"):
        assert name not in vars(handler), name
    assert "X-Sent" not in handler._headers
    assert handler.request.path == "/"  # the request stays


def test_importing_compat_leaves_prometheus_client_unimported() -> None:
    # prometheus_client picks its multiprocess mode when first imported; the CLI sets that
    # up before importing the metrics, and compat sits below the CLI's imports.
    code = "import sys, tornado_echo.compat; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_reset_response_is_tornado_s_clear_with_the_date_given() -> None:
    handler = served_handler()
    tornado.web.RequestHandler.clear(handler)
    date = handler._headers["Date"]
    cleared = (sorted(handler._headers.get_all()), handler._status_code, handler._reason)
    handler.set_status(404)
    handler.set_header("X-Left", "over")
    handler._write_buffer.append(b"body")
    reset_response(handler, date)
    assert (sorted(handler._headers.get_all()), handler._status_code, handler._reason) == cleared
    assert handler._write_buffer == []
