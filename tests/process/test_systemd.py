"""sd_notify against real AF_UNIX datagram sockets, and the fd limit helper."""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tornado_echo.process.systemd import Notifier, raise_nofile_limit


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing the service manager, and its path."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def recv_fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_messages_arrive_in_order(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready()
    assert notifier.status("serving 3 connections")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.ready("reloaded")
    assert notifier.stopping()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()

    assert recv_fields(sock) == ["READY=1"]
    assert recv_fields(sock) == ["STATUS=serving 3 connections"]
    assert recv_fields(sock) == ["WATCHDOG=1"]
    reloading = recv_fields(sock)
    assert reloading[0] == "RELOADING=1"
    key, _, value = reloading[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert len(reloading) == 2
    assert recv_fields(sock) == ["READY=1", "STATUS=reloaded"]
    assert recv_fields(sock) == ["STOPPING=1"]


def test_status_newlines_cannot_forge_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    assert notifier.status("draining\nREADY=1")
    notifier.close()
    assert recv_fields(sock) == ["STATUS=draining READY=1"]


def test_abstract_namespace_address() -> None:
    name = f"tornado-echo-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        notifier.close()
        assert recv_fields(sock) == ["READY=1"]
    finally:
        sock.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_everything_is_a_noop(environ: dict[str, str]) -> None:
    fds = open_fds()
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    notifier.start()
    assert open_fds() == fds
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert notifier.watchdog_interval() is None
    notifier.close()
    assert open_fds() == fds


def test_socket_opened_by_start_and_released_by_close(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    fds = open_fds()
    notifier = Notifier(path)
    assert open_fds() == fds, "construction must not open the socket"
    notifier.start()
    notifier.start()
    assert open_fds() == fds + 1
    notifier.close()
    notifier.close()
    assert open_fds() == fds
    # A message after close() reopens rather than failing.
    assert notifier.watchdog()
    assert recv_fields(sock) == ["WATCHDOG=1"]
    notifier.close()
    assert open_fds() == fds


def test_failed_send_is_logged_once_and_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.DEBUG, logger="tornado_echo.process.systemd"):
        assert not notifier.ready()
        assert not notifier.watchdog()
    notifier.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens" in warnings[0].getMessage()


def test_full_receiver_queue_does_not_block(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The receiver never reads; a blocking sendto() would hang once its queue is full.
    _, path = receiver
    notifier = Notifier(path)
    results: list[bool] = []

    def flood() -> None:
        for _ in range(5000):
            results.append(notifier.watchdog())

    with caplog.at_level(logging.WARNING, logger="tornado_echo.process.systemd"):
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        thread.join(timeout=20)
    notifier.close()
    assert not thread.is_alive(), "sendto blocked on a full receiver queue"
    assert results[0] is True
    assert False in results
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_unsupported_address_disables_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier("vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="tornado_echo.process.systemd"):
        assert not notifier.ready()
        assert not notifier.ready()
    assert not notifier.enabled
    assert len(caplog.records) == 1
    assert "vsock:2:1234" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),
        ("1000", None, 0.0005),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    environ = {}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        environ["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_environ(environ).watchdog_interval() == expected


@pytest.mark.parametrize(
    "environ",
    [{"WATCHDOG_USEC": "30s"}, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "main"}],
)
def test_malformed_watchdog_variables_are_logged_and_ignored(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tornado_echo.process.systemd"):
        assert Notifier.from_environ(environ).watchdog_interval() is None
    assert len(caplog.records) == 1
    assert "malformed" in caplog.records[0].getMessage()


def test_raise_nofile_limit_to_hard(lowered_nofile: int, caplog: pytest.LogCaptureFixture) -> None:
    hard = lowered_nofile
    with caplog.at_level(logging.WARNING, logger="tornado_echo.process.systemd"):
        assert raise_nofile_limit(300) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert caplog.records == []


def test_raise_nofile_limit_warns_when_hard_is_too_low(
    lowered_nofile: int, caplog: pytest.LogCaptureFixture
) -> None:
    hard = lowered_nofile
    with caplog.at_level(logging.WARNING, logger="tornado_echo.process.systemd"):
        assert raise_nofile_limit(hard + 1) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert str(hard + 1) in message and str(hard) in message
