"""Checks before the first connection: say what to change instead of failing later.

Resolves the target once (no DNS on the event loop), refuses non-loopback targets
unless allowed, raises the soft fd limit to the hard one, checks that each worker's
share of connections fits in it, and that the ephemeral port range times the source
addresses covers the connections (picking 127.0.0.x sources itself for loopback).
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from dataclasses import dataclass
from typing import Any

from tornado_echo.loadtest.config import LoadConfig
from tornado_echo.loadtest.engine import WorkerPlan
from tornado_echo.loadtest.errors import LoadtestConfigError
from tornado_echo.process.fdlimit import raise_soft_limit

FD_MARGIN = 64  # descriptors a worker needs besides its sockets
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_USE = 0.9  # leave some ports for TIME_WAIT leftovers and other programs
# The kernel's ephemeral-port search slows down sharply as one source address fills up
# (measured: 19k connections opened in 25 s from one address, 9 s from four), so
# loopback runs spread over 127.0.0.x well before the ports run out.
FAST_PER_SOURCE = 5000


@dataclass(frozen=True)
class Preflight:
    """What the checks found and decided."""

    family: int
    sockaddr: tuple[Any, ...]
    sources: tuple[str, ...]
    fd_limit: int
    port_range: tuple[int, int]
    notes: tuple[str, ...]


def resolve(host: str, port: int, allow_remote: bool) -> tuple[int, tuple[Any, ...]]:
    """First address of ``host``; LoadtestConfigError if unknown or not loopback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LoadtestConfigError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    if not allow_remote and not ipaddress.ip_address(sockaddr[0]).is_loopback:
        raise LoadtestConfigError(
            f"{host} ({sockaddr[0]}) is not a loopback address; "
            "pass --allow-remote to load a server you own elsewhere"
        )
    return int(family), tuple(sockaddr)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    return raise_soft_limit(1 << 20)  # with no hard limit: enough for any one worker


def port_range(path: str = PORT_RANGE_FILE) -> tuple[int, int]:
    try:
        with open(path) as handle:
            low, high = (int(part) for part in handle.read().split())
    except (OSError, ValueError):
        return 32768, 60999  # the Linux default
    return low, high


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal shares (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def fd_problem(connections: int, workers: int, fd_limit: int) -> str | None:
    """What to change when a worker's share of ``connections`` exceeds ``fd_limit``.

    The advice is one that passes this same check: a --workers value, when one exists.
    """
    per_worker = max(split(connections, workers))
    if per_worker + FD_MARGIN <= fd_limit:
        return None
    need = f"{per_worker} connections per worker need about {per_worker + FD_MARGIN} file "
    raise_it = "raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
    room = fd_limit - FD_MARGIN  # sockets one worker can hold
    if room < 1:
        return (
            f"{need}descriptors but the limit is {fd_limit}, less than the {FD_MARGIN} a "
            f"worker needs besides its sockets: no --workers value helps; {raise_it}"
        )
    workers_needed = math.ceil(connections / room)
    return (
        f"{need}descriptors but the limit is {fd_limit}: use --workers {workers_needed} "
        f"or more, or {raise_it}"
    )


def check(cfg: LoadConfig, *, ports: tuple[int, int] | None = None) -> Preflight:
    """Run every check; LoadtestConfigError says what to change."""
    family, sockaddr = resolve(cfg.target.host, cfg.target.port, cfg.allow_remote)
    notes: list[str] = []
    fd_limit = raise_fd_limit()
    problem = fd_problem(cfg.connections, cfg.workers, fd_limit)
    if problem is not None:
        raise LoadtestConfigError(problem)
    low, high = ports or port_range()
    per_source = int((high - low + 1) * PORT_USE)
    sources = cfg.source_ips
    needed = math.ceil(cfg.connections / per_source)
    if sources:
        for source in sources:
            try:
                ipaddress.ip_address(source)
            except ValueError:
                raise LoadtestConfigError(f"--source-ip {source!r} is not an IP address") from None
        if len(sources) < needed:
            raise LoadtestConfigError(
                f"{cfg.connections} connections need {needed} source addresses with the "
                f"ephemeral port range {low}-{high}; give more --source-ip or widen "
                "net.ipv4.ip_local_port_range"
            )
    elif needed > 1 or cfg.connections > FAST_PER_SOURCE:
        if family == socket.AF_INET and ipaddress.ip_address(sockaddr[0]).is_loopback:
            count = max(needed, math.ceil(cfg.connections / FAST_PER_SOURCE))
            sources = tuple(f"127.0.0.{i}" for i in range(1, count + 1))
            notes.append(f"spreading connections over source addresses {', '.join(sources)}")
        elif needed > 1:
            raise LoadtestConfigError(
                f"{cfg.connections} connections exceed the {per_source} usable ephemeral ports "
                f"({low}-{high}) of one source address: give {needed} --source-ip addresses "
                "or widen net.ipv4.ip_local_port_range"
            )
    return Preflight(family, sockaddr, sources, fd_limit, (low, high), tuple(notes))


def make_plans(cfg: LoadConfig, pre: Preflight) -> list[WorkerPlan]:
    """Each worker's share: connections, arrival rate, and the same start time."""
    start = time.time()
    plans = []
    first = 0
    for index, count in enumerate(split(cfg.connections, cfg.workers)):
        plans.append(
            WorkerPlan(
                index=index,
                connections=count,
                first_connection=first,
                connect_rate=cfg.connect_rate * count / cfg.connections,
                family=pre.family,
                sockaddr=pre.sockaddr,
                sources=pre.sources,
                start_wall=start,
            )
        )
        first += count
    return plans
