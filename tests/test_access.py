"""Who may read the operator endpoints."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from tornado_echo.access import is_authorized, is_loopback


def request(peer: str, authorization: str | None = None) -> HTTPServerRequest:
    headers = HTTPHeaders({"Host": "127.0.0.1"})
    if authorization is not None:
        headers["Authorization"] = authorization
    req = HTTPServerRequest(
        headers=headers, start_line=RequestStartLine("GET", "/metrics", "HTTP/1.1")
    )
    req.remote_ip = peer
    return req


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback(None) and not is_loopback("x")


@pytest.mark.parametrize(
    ("peer", "token", "authorization", "allowed"),
    [
        ("127.0.0.1", "", None, True),
        ("127.0.0.1", "tok", None, True),
        ("203.0.113.7", "", None, False),
        ("203.0.113.7", "", "Bearer ", False),  # no token configured: nothing matches
        ("203.0.113.7", "tok", None, False),
        ("203.0.113.7", "tok", "Bearer wrong", False),
        ("203.0.113.7", "tok", "Basic tok", False),
        ("203.0.113.7", "tok", "Bearer tok", True),
        ("203.0.113.7", "tok", "bearer  tok ", True),
    ],
)
def test_is_authorized(peer: str, token: str, authorization: str | None, allowed: bool) -> None:
    assert is_authorized(request(peer, authorization), token) is allowed
