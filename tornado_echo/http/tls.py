"""TLS for serving wss:// directly: the server context built from ``tls_cert`` / ``tls_key``.

Built at start and again on every SIGHUP, so a renewed certificate is picked up by new
connections without a restart; a pair that cannot be loaded is a :class:`ConfigError` naming
the key, and on reload the running context is kept. Every connection is wrapped by the one
current context (building one reads files and costs far more than a handshake).

Renegotiation is refused (``OP_NO_RENEGOTIATION``, whatever the OpenSSL version's default):
each renegotiation is a full handshake's CPU for the server on an open connection, which a
client could ask for again and again; WebSocket has no use for it, and TLS 1.3 has none.

No TLS 1.3 session tickets are sent (``num_tickets = 0``; OpenSSL sends two after every full
handshake). Each ticket costs the server a session serialisation, an encryption and a MAC:
about 8% of a full handshake's instructions per ticket (benchmarks/handshake_cost.py --tls,
docs/performance.md). What one would save is small: a TLS 1.3 resumption without early
data takes the same round trips as a full handshake and saves the server only the
certificate's signature, while the server sends a fresh ticket at every resumption. And a
ticket could only be resumed by the worker process that issued it, before its next reload
or restart (the ticket keys are each context's own: Python's ssl cannot share them), while
SO_REUSEPORT spreads a client's reconnections over the workers. TLS 1.2 clients keep their
session ids and tickets (there resumption saves a round trip).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import sys
from typing import Any

from tornado_echo.config import Config
from tornado_echo.errors import ConfigError

# Seconds the TLS closing handshake (close_notify both ways) may take once a connection is
# closed; then the socket is dropped. The loop's default is 30 s per connection, which a
# peer that never answers would hold a descriptor through.
TLS_SHUTDOWN_TIMEOUT = 5.0


def transport_options(
    loop: asyncio.AbstractEventLoop, context: ssl.SSLContext, handshake_timeout: float
) -> dict[str, Any]:
    """Keyword arguments for ``loop.connect_accepted_socket`` serving TLS on ``context``:
    the handshake bounded by ``handshake_timeout``, the closing one by TLS_SHUTDOWN_TIMEOUT
    where the loop can bound it (uvloop; asyncio's own from Python 3.11)."""
    options: dict[str, Any] = {"ssl": context, "ssl_handshake_timeout": handshake_timeout}
    if sys.version_info >= (3, 11) or type(loop).__module__.startswith("uvloop"):
        options["ssl_shutdown_timeout"] = TLS_SHUTDOWN_TIMEOUT
    return options


def server_context(config: Config) -> ssl.SSLContext | None:
    """A TLS >= 1.2 server context for the configured pair, or None when TLS is off.

    Reads files: call it off the IOLoop thread, with a time limit (a file on a hung network
    mount blocks whatever the checks here).
    """
    if not config.tls_cert and not config.tls_key:
        return None
    if not config.tls_cert or not config.tls_key:
        missing = "tls_cert" if not config.tls_cert else "tls_key"
        raise ConfigError(f"key '{missing}': must be set too: tls_cert and tls_key go together")
    for key in ("tls_cert", "tls_key"):
        path = getattr(config, key)
        try:
            # Opened without blocking and checked: a FIFO (or a device) would block the
            # read, and with it a reload and the shutdown behind it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ConfigError(f"key '{key}': cannot read {path!r}: {exc.strerror}") from None
        if not regular:
            raise ConfigError(f"key '{key}': cannot read {path!r}: not a regular file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.num_tickets = 0
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except ssl.SSLError as exc:
        raise ConfigError(_load_error(config, exc)) from None
    return context


def _load_error(config: Config, exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"key 'tls_key': {config.tls_key!r} is not the key of the certificate in tls_cert"
    try:
        ssl.create_default_context(cafile=config.tls_cert)
    except ssl.SSLError:
        return f"key 'tls_cert': {config.tls_cert!r} holds no PEM certificate"
    return f"key 'tls_key': {config.tls_key!r} holds no usable PEM private key ({exc.reason})"
