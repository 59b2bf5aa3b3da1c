"""Listening sockets: a bind that fails leaves no socket open (Tornado's bind_sockets did)."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import make_server
from tornado_echo.http.sockets import bind_sockets


def open_sockets() -> int:
    """How many socket descriptors this process holds."""
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


@contextlib.contextmanager
def no_resource_warning() -> Iterator[None]:
    gc.collect()  # earlier tests' garbage warns here, not inside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_failed_bind_leaves_no_socket_open() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with no_resource_warning():
            before = open_sockets()
            with pytest.raises(OSError) as failed:
                bind_sockets(port, "127.0.0.1")
            # Counted while the error (and the frames it holds) is still alive.
            assert open_sockets() == before
            del failed


def every_interface_families() -> set[int]:
    """The families of the wildcard addresses ("" binds 0.0.0.0 and :: where both exist)."""
    passive = socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return {info[0] for info in passive}


def test_the_addresses_bound_before_the_failing_one_are_closed() -> None:
    if every_interface_families() != {socket.AF_INET, socket.AF_INET6}:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as busy:  # the IPv6 half taken, IPv4's free
        busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        busy.bind(("::", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with no_resource_warning():
            before = open_sockets()
            with pytest.raises(OSError) as failed:
                bind_sockets(port, "")  # IPv4 first (bound), then IPv6 (in use)
            assert open_sockets() == before
            with socket.socket() as probe:  # nothing listens on the IPv4 port any more
                assert probe.connect_ex(("127.0.0.1", port)) != 0
            del failed


def test_every_family_on_one_port_when_the_port_is_chosen() -> None:
    sockets = bind_sockets(0, "")
    try:
        assert len(sockets) == len(every_interface_families())
        assert all(sock.getblocking() is False for sock in sockets)
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_server_that_cannot_listen_leaves_no_socket_open(
    tmp_path: Path, sqlite_url: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        before = open_sockets()
        server = make_server(tmp_path, sqlite_url, port=busy.getsockname()[1])
        try:
            with pytest.raises(OSError) as failed:
                await server.start()
        finally:
            await server.shutdown()
        assert open_sockets() == before
        del failed
