"""systemd integration without a dependency: sd_notify and the fd limit.

The notify protocol (``sd_notify(3)``) is one datagram per message, newline separated
``KEY=VALUE`` lines, sent over an ``AF_UNIX``/``SOCK_DGRAM`` socket whose address systemd
puts in ``NOTIFY_SOCKET``. An address starting with ``@`` is in the abstract namespace.
Without ``NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` is not ``notify``) every
method is a no-op, so callers need no branch for "running under systemd or not".

Sending never blocks the event loop: the socket is non-blocking and a datagram that
cannot be queued is dropped. systemd notifications are advisory, so a failed send is
logged (once at WARNING, then at DEBUG) and never raised.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from tornado_echo.process.fdlimit import raise_soft_limit

__all__ = ["Notifier", "raise_nofile_limit"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to the service manager.

    ``Notifier(address)`` only stores; the socket is opened by :meth:`start` or on the
    first message, and released by :meth:`close`. Both are idempotent; a message after
    :meth:`close` reopens the socket.

    Typical use: :meth:`ready` once listening, :meth:`watchdog` every
    :meth:`watchdog_interval` seconds while the loop is healthy, :meth:`reloading` then
    :meth:`ready` around a SIGHUP reload, :meth:`stopping` when the drain begins.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address = address or None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._warned = False
        # A counter of work done that a supervising process reads (see WorkerLink).
        self.beats: memoryview | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        ``environ`` defaults to :data:`os.environ`; it is read here, once.
        """
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def start(self) -> None:
        """Open the socket now rather than on the first message. Idempotent."""
        if self._sock is not None or self._address is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        """Release the socket. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # -- messages ------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is finished: ``READY=1``."""
        return self.notify("READY=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(*self._status_field(text))

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload began: ``RELOADING=1`` with the ``CLOCK_MONOTONIC`` timestamp.

        systemd >= 253 wants the timestamp with every ``RELOADING=1`` (sd_notify(3)) to
        order the reload against its own clock; older versions ignore it. Send
        :meth:`ready` when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown began: ``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram. Returns True if it was queued.

        Returns False, without raising, when there is no socket or the send failed.
        """
        if self._address is None or not fields:
            return False
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            # vsock: and other schemes of newer systemd are not supported here.
            self._warn_once(
                "unsupported NOTIFY_SOCKET address %r; notifications disabled", self._address
            )
            self._address = None
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            self.start()
            if self._sock is None:  # pragma: no cover - start() always opens here
                return False
            self._sock.sendto(payload, address)
        except OSError as exc:
            self._warn_once("sd_notify to %s failed: %s", self._address, exc)
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings, or None when no watchdog is wanted.

        That is half of ``WATCHDOG_USEC`` (as ``sd_watchdog_enabled(3)`` advises). None
        when it is unset or zero, or when ``WATCHDOG_PID`` names another process (the
        variables were inherited, e.g. by a forked worker). Malformed values are logged
        and treated as unset.
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            logger.warning("ignoring malformed WATCHDOG_USEC=%r", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                logger.warning("ignoring malformed WATCHDOG_PID=%r", self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None
        return usec / 2 / 1_000_000

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # A newline would start a new assignment and could forge e.g. READY=1.
        return ("STATUS=" + " ".join(text.splitlines()),)

    def _warn_once(self, msg: str, *args: object) -> None:
        if self._warned:
            logger.debug(msg, *args)
        else:
            self._warned = True
            logger.warning(msg, *args)


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the new soft limit.

    ``wanted`` is the number of descriptors the configuration needs (connections plus
    headroom). When it exceeds what can be had, log a WARNING naming both numbers: the
    server still starts, but connections beyond the limit will be refused by accept().
    The hard limit is the administrator's (``LimitNOFILE=``); it is never raised here.
    """
    soft = raise_soft_limit(wanted)
    if wanted > soft:
        logger.warning(
            "%d file descriptors wanted but RLIMIT_NOFILE is %d; raise LimitNOFILE=", wanted, soft
        )
    return soft
