"""Who may read the operator endpoints, and whose forwarded address is believed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from tests.helpers import (
    assert_no_traceback,
    fetch_rows,
    json_body,
    own_ipv4_address,
    raw_http,
    started_server,
    upgrade_request,
)
from tornado_echo.addresses import is_loopback
from tornado_echo.http.access import (
    NOT_LOOPBACK,
    WRONG_TOKEN,
    TrustedProxies,
    deny,
    host_name,
    refusal,
)

OWN_ADDRESS = own_ipv4_address()
needs_own_address = pytest.mark.skipif(
    OWN_ADDRESS is None, reason="no non-loopback address on this machine to connect from"
)


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback(None) and not is_loopback("x")


@pytest.mark.parametrize(
    ("peer", "client", "host", "authorization", "token", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:8080", "", "", True),
        ("127.0.0.1", "127.0.0.1", "localhost", "", "tok", True),
        ("::1", "::1", "[::1]:8080", "", "", True),
        ("127.0.0.1", "127.0.0.2", "localhost", "", "", True),  # a loopback peer's own
        ("127.0.0.1", "203.0.113.7", "localhost", "", "", False),  # forwarded for a stranger
        ("203.0.113.7", "127.0.0.1", "localhost", "", "", False),  # a forged header
        ("203.0.113.7", "203.0.113.7", "localhost", "", "", False),
        ("203.0.113.7", "203.0.113.7", "x", "Bearer ", "", False),  # no token: nothing matches
        ("203.0.113.7", "203.0.113.7", "x", "Bearer wrong", "tok", False),
        ("203.0.113.7", "203.0.113.7", "x", "Basic tok", "tok", False),
        ("203.0.113.7", "203.0.113.7", "x", "Bearer tok", "tok", True),
        ("203.0.113.7", "203.0.113.7", "x", "bearer  tok ", "tok", True),
    ],
)
def test_refusal(
    peer: str, client: str, host: str, authorization: str, token: str, allowed: bool
) -> None:
    refused = refusal(peer, client, host, authorization, token, ())
    assert (refused is None) is allowed
    if not allowed:
        assert refused == NOT_LOOPBACK


def test_an_address_from_a_header_never_earns_loopback_trust() -> None:
    assert refusal("127.0.0.1", "127.0.0.1", "localhost", "", "", ()) is None
    assert refusal("127.0.0.1", "127.0.0.1", "localhost", "", "", (), True) == NOT_LOOPBACK
    assert refusal("::1", "::1", "localhost", "", "", (), forwarded=True) == NOT_LOOPBACK
    # The token still opens the door to a forwarded client.
    assert refusal("127.0.0.1", "203.0.113.7", "x", "Bearer tok", "tok", (), True) is None


@pytest.mark.parametrize(
    ("host", "names", "allowed"),
    [
        ("localhost", (), True),
        ("LOCALHOST:80", (), True),
        ("127.0.0.1", (), True),
        ("[::1]", (), True),
        ("attacker.example", (), False),
        ("attacker.example:8080", (), False),
        ("", (), False),
        ("localhost.attacker.example", (), False),
        ("echo.example.com:443", ("Echo.Example.com",), True),
    ],
)
def test_loopback_clients_need_a_host_naming_this_server(
    host: str, names: tuple[str, ...], allowed: bool
) -> None:
    refused = refusal("127.0.0.1", "127.0.0.1", host, "", "", names)
    assert (refused is None) is allowed
    if not allowed:
        assert refused is not None and refused.startswith(f"Host {host!r}")
    # A token holder is not asked which name it used.
    assert refusal("127.0.0.1", "127.0.0.1", host, "Bearer t", "t", names) is None


def request_from(peer: str, **headers: str) -> HTTPServerRequest:
    """A request as the listener hands it over: its socket peer in the connection context."""
    context = SimpleNamespace(address=(peer, 40000), address_family=socket.AF_INET, remote_ip=peer)
    return HTTPServerRequest(
        start_line=RequestStartLine("GET", "/metrics", "HTTP/1.1"),
        headers=HTTPHeaders(headers),
        connection=SimpleNamespace(context=context),
    )


@pytest.mark.parametrize(
    ("peer", "headers", "token", "status", "reason"),
    [
        ("127.0.0.1", {"Host": "localhost"}, "", None, None),
        ("203.0.113.7", {"Host": "x", "Authorization": "Bearer tok"}, "tok", None, None),
        ("203.0.113.7", {"Host": "x"}, "", 403, "loopback only"),  # no credential could help
        ("203.0.113.7", {"Host": "x"}, "tok", 401, WRONG_TOKEN),
        ("203.0.113.7", {"Host": "x", "Authorization": "Bearer no"}, "tok", 401, WRONG_TOKEN),
        ("127.0.0.1", {"Host": "attacker.example"}, "", 403, "Host 'attacker.example' does"),
        ("127.0.0.1", {"Host": "attacker.example"}, "tok", 403, "Host 'attacker.example' does"),
    ],
)
def test_deny_is_the_one_access_decision(
    peer: str, headers: dict[str, str], token: str, status: int | None, reason: str | None
) -> None:
    denial = deny(request_from(peer, **headers), token, (), loopback_only="loopback only")
    if status is None:
        assert denial is None
        return
    assert denial is not None
    assert (denial.status, denial.reason[: len(reason or "")]) == (status, reason)
    challenge = {"WWW-Authenticate": 'Bearer realm="tornado-echo"'}
    assert denial.headers == (challenge if status == 401 else {})


def test_host_name() -> None:
    assert host_name("[::1]:8080") == "::1" and host_name("::1") == "::1"
    assert host_name("Example.COM:80") == "example.com" and host_name("a:b") == "a:b"


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "client"),
    [
        ("127.0.0.1", "203.0.113.9", None, "203.0.113.9"),
        ("127.0.0.1", "127.0.0.1, 203.0.113.9", None, "203.0.113.9"),  # client wrote the left
        ("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.5", None, "203.0.113.9"),  # 2 proxies
        ("127.0.0.1", "10.0.0.5, 127.0.0.1", None, "10.0.0.5"),  # every hop trusted
        ("127.0.0.1", "203.0.113.9, garbage", None, "unknown"),  # a proxy's hop malformed
        ("127.0.0.1", "garbage, 203.0.113.9", None, "203.0.113.9"),  # the client's: unread
        ("127.0.0.1", "198.51.100.7:51000", None, "198.51.100.7"),  # a port is dropped
        ("127.0.0.1", "[2001:db8::7]:51000", None, "2001:db8::7"),
        ("127.0.0.1", "::ffff:203.0.113.9", None, "203.0.113.9"),
        ("127.0.0.1", "1.2.3.4:x", None, "unknown"),
        ("127.0.0.1", "[2001:db8::7", None, "unknown"),
        ("127.0.0.1", "", None, "unknown"),
        ("127.0.0.1", None, "203.0.113.4", "203.0.113.4"),
        ("127.0.0.1", None, "not an address", "unknown"),
        ("127.0.0.1", None, None, "127.0.0.1"),
        ("203.0.113.7", "127.0.0.1", "127.0.0.1", "203.0.113.7"),  # not a proxy: ignored
        # A proxy that sets X-Real-Ip and passes the client's own X-Forwarded-For on (the
        # issue 22 attack strings): they disagree, so nobody is believed.
        ("127.0.0.1", "127.0.0.1", "203.0.113.4", "unknown"),
        ("127.0.0.1", "garbage", "203.0.113.4", "unknown"),
        ("127.0.0.1", "198.51.100.7:51000", "203.0.113.4", "unknown"),
        # nginx as conf/nginx.conf has it: the appended X-Forwarded-For agrees.
        ("127.0.0.1", "127.0.0.1, 203.0.113.4", "203.0.113.4", "203.0.113.4"),
        # X-Real-Ip names a proxy further out: X-Forwarded-For goes on from there.
        ("127.0.0.1", "203.0.113.4, 10.0.0.5", "10.0.0.5", "203.0.113.4"),
    ],
)
def test_client_address_behind_trusted_proxies(
    peer: str, forwarded_for: str | None, real_ip: str | None, client: str
) -> None:
    headers = HTTPHeaders()
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if real_ip is not None:
        headers["X-Real-Ip"] = real_ip
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "::1"])
    forwarded = forwarded_for is not None or real_ip is not None
    assert proxies.client_address(peer, headers) == (client, forwarded and peer in proxies)


def test_two_real_ip_headers_are_not_believed() -> None:
    headers = HTTPHeaders()
    headers.add("X-Real-Ip", "127.0.0.1")
    headers.add("X-Real-Ip", "203.0.113.4")
    assert TrustedProxies(["127.0.0.1"]).client_address("127.0.0.1", headers) == (
        "unknown",
        True,
    )


def request(path: str, **headers: str) -> bytes:
    fields = {"Host": "127.0.0.1", **{name.replace("_", "-"): v for name, v in headers.items()}}
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@needs_own_address
@pytest.mark.parametrize("behind_proxy", [True, False])
@pytest.mark.gen_test(timeout=30)
async def test_forged_loopback_header_from_a_remote_peer_is_refused(
    tmp_path: Path,
    sqlite_url: str,
    behind_proxy: bool,
    listener: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await started_server(
        tmp_path, sqlite_url, behind_proxy=behind_proxy, listener=listener
    )
    forged = {"X_Real_Ip": "127.0.0.1", "X_Forwarded_For": "127.0.0.1"}
    try:
        for path in ("/api/sessions", "/metrics"):
            status, _, body = await raw_http(
                server.port, request(path, **forged), source=OWN_ADDRESS
            )
            assert status == 403, (path, body)
            assert "loopback" in json_body(body)["error"]
            # The same request from loopback itself: with behind_proxy the loopback peer is
            # a proxy, and an address from its headers earns no loopback trust; without,
            # the headers are not read and the loopback peer is served.
            status = (await raw_http(server.port, request(path, **forged)))[0]
            assert status == (403 if behind_proxy else 200)
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@needs_own_address
@pytest.mark.gen_test(timeout=30)
async def test_forwarded_address_of_a_trusted_proxy_is_the_session_peer(
    tmp_path: Path, sqlite_url: str, listener: str
) -> None:
    server = await started_server(tmp_path, sqlite_url, behind_proxy=True, listener=listener)
    try:
        # From the trusted (loopback) proxy: the right-most address not a proxy's own.
        trusted = upgrade_request(X_Forwarded_For="198.51.100.1, 203.0.113.9, 127.0.0.1")
        # From a peer that is no proxy: its headers are ignored.
        untrusted = upgrade_request(X_Forwarded_For="203.0.113.5", X_Real_Ip="203.0.113.5")
        for raw, source in ((trusted, None), (untrusted, OWN_ADDRESS)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, local_addr=None if source is None else (source, 0)
            )
            writer.write(raw)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            writer.close()
        while server.connections.total < 2 or len(server.connections):
            await asyncio.sleep(0.01)
    finally:
        await server.shutdown()
    rows = fetch_rows(sqlite_url, "SELECT peer FROM ws_sessions ORDER BY opened_at")
    assert [row["peer"] for row in rows] == ["203.0.113.9", OWN_ADDRESS]


@pytest.mark.gen_test(timeout=30)
async def test_loopback_trust_is_refused_for_a_foreign_host(
    tmp_path: Path, sqlite_url: str, listener: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started_server(
        tmp_path,
        sqlite_url,
        server_names=("echo.example.com",),
        admin_token="s3cret",
        listener=listener,
    )
    port = server.port
    try:
        for path in ("/api/sessions", "/metrics"):
            status, _, body = await raw_http(port, request(path, Host="attacker.example"))
            assert status == 403, body
            assert json_body(body)["error"].startswith("Host 'attacker.example' does not name")
            for host in (f"localhost:{port}", f"[::1]:{port}", "echo.example.com"):
                assert (await raw_http(port, request(path, Host=host)))[0] == 200, host
        # A token holder may use any name (the API has a token here).
        authorized = request(
            "/api/sessions", Host="attacker.example", Authorization="Bearer s3cret"
        )
        assert (await raw_http(port, authorized))[0] == 200
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)


@pytest.mark.parametrize("forwarded_for", ["127.0.0.1", "garbage", "198.51.100.7:51000", None])
@pytest.mark.gen_test(timeout=30)
async def test_a_proxied_client_gets_no_loopback_trust(
    tmp_path: Path, sqlite_url: str, forwarded_for: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # The trusted loopback proxy sets X-Real-Ip (a loopback client of its own, even) and
    # passes on whatever X-Forwarded-For its client wrote (issue 22).
    server = await started_server(tmp_path, sqlite_url, behind_proxy=True)
    headers = {"X_Real_Ip": "127.0.0.1"}
    if forwarded_for is not None:
        headers["X_Forwarded_For"] = forwarded_for
    try:
        for path in ("/api/sessions", "/metrics", "/console/live"):
            raw = request(path, Authorization="Bearer x", **headers)
            status, _, body = await raw_http(server.port, raw)
            if path == "/console/live":  # the public figures, without the sessions
                assert status == 200 and "rows" not in json_body(body)["sessions"], body
            else:
                assert status == 403, (path, body)
            # Straight from loopback, no proxy in between: served.
            assert (await raw_http(server.port, request(path)))[0] == 200
    finally:
        await server.shutdown()
    assert_no_traceback(caplog.records)
