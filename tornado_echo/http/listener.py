"""The HTTP listener: Tornado's HTTPServer with the limits a public port needs.

It serves ``engine = "tornado"``, ``listener = "tornado"`` and TLS; the fast engine's own
listener (:mod:`tornado_echo.http.fast_listener`) keeps the same limits with the constants
and helpers defined here.

* **Client address.** ``request.remote_ip`` is the socket peer, or, when that peer is one of
  ``trusted_proxies`` and ``behind_proxy`` is on, the client it forwards for
  (:meth:`TrustedProxies.client_address` has the rule). The socket peer stays available
  through :func:`~tornado_echo.http.access.socket_peer`, whatever the headers say, and
  :func:`~tornado_echo.http.access.forwarded_by_proxy` tells an address a header gave.
  (Tornado's own ``xheaders`` believes the headers from every peer, so it is not used.)
* **No bodies.** No route takes a request body: a request announcing one gets 413 before
  any of it is read.
* **Bounded time.** Headers must arrive within ``http_timeout`` (Tornado closes the
  connection otherwise; it also bounds a TLS handshake and the WebSocket handshake).
* **Bounded headers.** Headers over ``MAX_HEADER_SIZE`` get 431 and the connection is
  closed; no more than the limit plus one read is ever buffered (Tornado stops reading
  there, and would close the connection without an answer).
* **Live settings.** ``max_http_connections``, ``max_http_connections_per_ip``,
  ``behind_proxy`` and ``trusted_proxies`` are read from the running configuration
  (:class:`LiveConfig`), so a reload applies them.
* **Bounded count, fairly shared.** At most ``max_http_connections`` connections in the
  HTTP phase (keep-alive, requests, handshakes in flight), and ``max_http_connections_per_ip``
  per client address; when full, a newcomer takes the slot of an idle connection of the
  address holding the most (:class:`~tornado_echo.http.admission.HTTPAdmission`), else gets
  503 at once. Upgraded WebSockets leave this count for ``max_connections``.
* **Descriptors exhausted.** accept() failing with EMFILE/ENFILE pauses accepting for
  ``ACCEPT_BACKOFF`` seconds, logged once per interval, instead of a busy loop. (The fast
  listener's plain connections on uvloop are shed instead: see its module.)
* **Quiet about client mistakes.** Tornado's lines for each failed TLS handshake (a plain
  HTTP client on the TLS port, say) and each malformed request go through the server's
  :class:`LogThrottle`.

Only Tornado's public interfaces are overridden (``close_fd`` is the one Tornado leaves to
stream subclasses); the one thing read beyond them is the per-connection request context
(``connection.context``: its address and ``remote_ip``), here and nowhere else. The Tornado
log lines taken over are named in :mod:`tornado_echo.compat`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from http.client import responses
from typing import Any

import tornado.httpserver
from tornado import gen
from tornado.http1connection import HTTP1Connection
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError, UnsatisfiableReadError
from tornado.log import gen_log
from tornado.netutil import ssl_wrap_socket

from tornado_echo.compat import is_unsatisfiable_read, malformed_request, tls_handshake_failure
from tornado_echo.config import Config, LiveConfig
from tornado_echo.http.access import TrustedProxies, context_peer, trusted_proxies
from tornado_echo.http.admission import ADDRESS_FULL, FULL, HTTPAdmission
from tornado_echo.observability.throttle import LogThrottle

logger = logging.getLogger(__name__)

ACCEPT_BACKOFF = 0.5  # seconds without accept() after EMFILE/ENFILE
ACCEPT_BATCH = 128  # connections accepted per readiness event, as Tornado does
LINGER = 1.0  # seconds a refused client may go on sending before we close
MAX_HEADER_SIZE = 16 * 1024
# accept() failing with these means "no descriptor or memory right now", not a bad client.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


BODY_REFUSED = "request bodies are not accepted (no route takes one)"
HEADERS_REFUSED = f"request headers over {MAX_HEADER_SIZE} bytes"


def has_body(headers: HTTPHeaders) -> bool:
    """True when the request announces a body (any length but 0, or a transfer coding)."""
    length = headers.get("Content-Length")
    return "Transfer-Encoding" in headers or (length is not None and length.strip() != "0")


def error_body(status: int, reason: str) -> bytes:
    """The JSON body of every error the server answers: ``{"status": N, "error": text}``."""
    return json.dumps({"status": status, "error": reason}).encode()


def answer(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body, closing the connection."""
    body = error_body(status, reason)
    head = (
        f"HTTP/1.1 {status} {responses[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def is_tls_failure(error: object) -> bool:
    """Whether a stream closed on ``error`` ended on a TLS failure (as Tornado logs them),
    not on the peer just going away (SSL_ERROR_EOF, SSL_ERROR_ZERO_RETURN)."""
    return isinstance(error, ssl.SSLError) and error.args[:1] in (
        (ssl.SSL_ERROR_SSL,),
        (ssl.SSL_ERROR_SYSCALL,),
    )


class _HTTPStream(IOStream):
    """A connection's stream: headers over the limit leave it open for a 431 answer.

    Tornado reports headers over ``max_header_size`` by closing the stream with an
    :class:`UnsatisfiableReadError` (no other read of the HTTP phase has a limit: bodies are
    refused). Its descriptor then goes to ``on_oversized`` instead of being closed.
    """

    on_oversized: Callable[[socket.socket], None] | None = None
    on_tls_failure: Callable[[], None] | None = None
    _oversized = False

    def close(self, exc_info: Any = False) -> None:
        if not self.closed():
            if isinstance(exc_info, UnsatisfiableReadError):
                self._oversized = self.on_oversized is not None
            elif is_tls_failure(exc_info) and self.on_tls_failure is not None:
                # Counted here, not from Tornado's log line, which a log level can silence.
                self.on_tls_failure()
        super().close(exc_info)

    def close_fd(self) -> None:
        # Called by close() once the descriptor has left the IOLoop, so it can move on.
        if not self._oversized or self.on_oversized is None:
            super().close_fd()
            return
        sock = self.socket
        self.socket = None  # type: ignore[assignment]
        self.on_oversized(sock)


class _HTTPSStream(_HTTPStream, SSLIOStream):
    pass


class _TornadoLines(logging.Filter):
    """Takes over Tornado's per-connection lines about a client's mistake (tornado.general):
    a failed TLS handshake goes through the server's throttle; headers over the limit are
    answered and logged by the server itself."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        failure = tls_handshake_failure(record)
        if failure is not None:
            self.throttle.log(
                "tls_handshake", logging.WARNING, "TLS handshake failed with %s: %s", *failure
            )
            return False
        malformed = malformed_request(record)
        if malformed is not None:
            self.throttle.log(
                "malformed_request", logging.INFO, "malformed HTTP request from %s: %s", *malformed
            )
            return False
        return not is_unsatisfiable_read(record)


class LiveSettings:
    """What both listeners read of the running configuration (:class:`LiveConfig`) as they
    accept and serve, so that a reload applies to what comes next."""

    config: LiveConfig
    _proxies: TrustedProxies | None = None
    _proxies_of: Config | None = None

    @property
    def timeout(self) -> float:
        return self.config.current.http_timeout

    @property
    def max_http_connections(self) -> int:
        return self.config.current.max_http_connections

    @property
    def proxies(self) -> TrustedProxies | None:
        """The running configuration's trusted proxies (None unless behind_proxy)."""
        config = self.config.current
        if config is not self._proxies_of:  # made again after a reload only
            self._proxies, self._proxies_of = trusted_proxies(config), config
        return self._proxies

    def follow_config(self, admission: HTTPAdmission[Any]) -> None:
        """The running configuration's HTTP-phase limits, for the next admission."""
        config = self.config.current
        admission.limit = config.max_http_connections
        admission.per_address = config.max_http_connections_per_ip


class EchoHTTPServer(LiveSettings, tornado.httpserver.HTTPServer):
    """HTTPServer with the policies above; build it with :func:`make_http_server`.

    It accepts connections itself (Tornado's accept loop spins on EMFILE) and counts the
    connections it serves through the public delegate interface.
    """

    admission: HTTPAdmission[IOStream]  # who holds the HTTP phase's slots
    open_http = 0  # connections handed to Tornado's HTTP/1 code and not yet closed/upgraded
    lingering = 0  # refused connections still being answered and closed
    on_refusal: Callable[[str], None] | None = None
    on_tls_failure: Callable[[], None] | None = None
    throttle: LogThrottle
    tornado_lines: logging.Filter
    listeners: list[Acceptor]

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        # Installed when serving starts, not when the server is built: a start that fails
        # before this leaves Tornado's logging as it was. addFilter() skips one already there.
        gen_log.addFilter(self.tornado_lines)
        for sock in sockets:
            acceptor = Acceptor(sock, self._accepted, self.throttle)
            acceptor.start()
            self.listeners.append(acceptor)

    async def start_serving(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on ``sockets`` (listening already) until :meth:`stop`; as the fast
        listener's, which may have to wait for the loop."""
        self.add_sockets(sockets)

    def stop(self) -> None:
        for acceptor in self.listeners:
            acceptor.close()
        self.listeners.clear()
        gen_log.removeFilter(self.tornado_lines)
        super().stop()

    def set_ssl_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for connections accepted from now on (certificate reload)."""
        self.ssl_options = context

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        stream: _HTTPStream
        if self.ssl_options is None:
            stream = _HTTPStream(
                connection,
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )
        else:
            try:
                connection = ssl_wrap_socket(
                    connection, self.ssl_options, server_side=True, do_handshake_on_connect=False
                )
            except OSError as exc:  # ssl.SSLError too: a client gone before the handshake
                logger.debug("TLS wrap failed for %s: %s", address, exc)
                connection.close()
                return
            stream = _HTTPSStream(
                connection,
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )
        stream.on_oversized = functools.partial(self._headers_too_large, address)
        stream.on_tls_failure = self.on_tls_failure
        self.handle_stream(stream, address)

    def _headers_too_large(self, address: Any, connection: socket.socket) -> None:
        # A fresh stream: the one that read the headers is closed, with a read pending.
        stream = (
            SSLIOStream(connection)
            if isinstance(connection, ssl.SSLSocket)
            else IOStream(connection)
        )
        self.throttle.log(
            "request_headers",
            logging.INFO,
            "refused a request from %s: headers over %d bytes",
            str(address[0]) if address else "?",
            MAX_HEADER_SIZE,
        )
        self.refuse(stream, 431, "request_headers", HEADERS_REFUSED)

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        # An IP address (a unix socket's peer has none: one shared bucket, "?").
        peer = str(address[0]) if isinstance(address, tuple) and address else "?"
        exempt = self.proxies is not None and peer in self.proxies
        self.follow_config(self.admission)
        verdict = self.admission.admit(stream, peer, exempt=exempt)
        if not verdict.admitted:
            full = verdict.refusal == FULL
            label = FULL if full else ADDRESS_FULL
            self.refuse(
                stream,
                503,
                label,
                "too many open HTTP connections"
                if full
                else "too many HTTP connections from your address",
            )
            self.throttle.log(
                label,
                logging.WARNING,
                "refused a connection from %s: %d HTTP connections open, %d from it (%s)",
                peer,
                len(self.admission),
                self.admission.held_by(peer),
                "max_http_connections" if full else "max_http_connections_per_ip",
            )
            return
        if verdict.evict is not None:
            # Its slot goes to the newcomer; Tornado's loop on it ends and calls on_close.
            if self.on_refusal is not None:
                self.on_refusal("idle_http_evicted")
            verdict.evict.close()
        self.open_http += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        # Called once per connection served, when it closes or is upgraded (detached).
        self.open_http -= 1
        self.admission.release(_stream_of(server_conn))
        super().on_close(server_conn)

    def start_request(
        self, server_conn: object, request_conn: HTTPConnection
    ) -> HTTPMessageDelegate:
        # Called when the connection waits for a request (its first, or the next one on
        # keep-alive): idle, so its slot may go to a newcomer, until headers come.
        self.admission.idle(_stream_of(server_conn))
        return _Guard(self, super().start_request(server_conn, request_conn), request_conn)

    def refuse(self, stream: IOStream, status: int, label: str, reason: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(label)
        # Lingering keeps a descriptor for up to LINGER seconds outside every connection
        # limit: no more of them than max_http_connections, or a flood of refused clients
        # could use up the descriptors that the limits are there to keep.
        linger = LINGER if self.lingering < self.max_http_connections else 0.0
        self.lingering += 1
        spawn(self._refusal(stream, answer(status, reason), linger))

    async def _refusal(self, stream: IOStream, response: bytes, linger: float) -> None:
        try:
            await _answer_and_close(stream, response, linger)
        finally:
            self.lingering -= 1


class _Guard(HTTPMessageDelegate):
    """Sets the client address and refuses bodies before the application sees a request."""

    def __init__(
        self, server: EchoHTTPServer, delegate: HTTPMessageDelegate, connection: HTTPConnection
    ) -> None:
        self.server = server
        self.delegate = delegate
        self.connection = connection

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(self.connection, HTTP1Connection)
        self.server.admission.busy(self.connection.stream)
        context: Any = self.connection.context
        peer = context_peer(context)
        proxies = self.server.proxies
        if peer:
            # Set per request: a keep-alive connection from a proxy carries many clients.
            if proxies is None:
                context.remote_ip, context.forwarded = peer, False
            else:
                context.remote_ip, context.forwarded = proxies.client_address(peer, headers)
        if has_body(headers):
            self.server.throttle.log(
                "request_body",
                logging.INFO,
                "refused a request with a body from %s: %s",
                context.remote_ip,
                getattr(start_line, "path", "?"),
            )
            self.server.refuse(
                self.connection.detach(),
                413,
                "request_body",
                BODY_REFUSED,
            )
            return None
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


def _stream_of(server_conn: object) -> IOStream:
    stream: IOStream = server_conn.stream  # type: ignore[attr-defined]
    return stream


_tasks: set[asyncio.Future[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` as a task, held until done (the loop holds tasks weakly)."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _answer_and_close(stream: IOStream, response: bytes, linger: float) -> None:
    """Send ``response``, then close without a reset losing it.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    response before the client reads it; so half-close and discard what the client still
    sends, for at most ``linger`` seconds (0: close at once).
    """
    try:
        await stream.write(response)
        if not linger:
            return
        if stream.socket is not None:
            stream.socket.shutdown(socket.SHUT_WR)
        deadline = IOLoop.current().time() + linger
        while True:
            await gen.with_timeout(
                deadline,
                stream.read_bytes(65536, partial=True),
                quiet_exceptions=StreamClosedError,
            )
    except (StreamClosedError, OSError, asyncio.TimeoutError):
        pass
    finally:
        stream.close()


class Acceptor:
    """Accepts connections on a listening socket for ``callback(connection, address)``, on
    the running asyncio loop. Like tornado.netutil.add_accept_handler, but pauses
    ``ACCEPT_BACKOFF`` seconds on resource errors (EMFILE...) instead of spinning (asyncio's
    own server logs a traceback each time). Serves Tornado's listener, and the fast one for
    TLS and on asyncio's loop."""

    def __init__(
        self,
        sock: socket.socket,
        callback: Callable[[socket.socket, Any], None],
        throttle: LogThrottle,
    ) -> None:
        self.sock = sock
        self.callback = callback
        self.throttle = throttle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        if self._loop is None and not self._closed:
            self.sock.setblocking(False)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        elif self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._closed:
                return
            try:
                connection, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                pause = exc.errno in RESOURCE_ERRORS
                self.throttle.log(
                    f"accept_{exc.errno}",
                    logging.ERROR,
                    "accept() failed: %s%s",
                    exc.strerror or exc,
                    f"; not accepting for {ACCEPT_BACKOFF} s" if pause else "",
                )
                if pause and self._loop is not None:
                    self._loop.remove_reader(self.sock.fileno())
                    self._resume = self._loop.call_later(ACCEPT_BACKOFF, self._resumed)
                return
            self.callback(connection, address)

    def _resumed(self) -> None:
        self._resume = None
        if not self._closed and self._loop is not None:
            self._loop.add_reader(self.sock.fileno(), self._accept)


def make_http_server(
    app: HTTPServerConnectionDelegate,
    config: LiveConfig,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_refusal: Callable[[str], None] | None = None,
    on_tls_failure: Callable[[], None] | None = None,
) -> EchoHTTPServer:
    timeout = config.current.http_timeout
    server = EchoHTTPServer(
        app,
        ssl_options=ssl_context,
        idle_connection_timeout=timeout,
        body_timeout=timeout,
        max_body_size=0,
        max_header_size=MAX_HEADER_SIZE,
    )
    server.config = config
    server.admission = HTTPAdmission(
        config.current.max_http_connections, config.current.max_http_connections_per_ip
    )
    server.on_refusal = on_refusal
    server.on_tls_failure = on_tls_failure
    server.throttle = LogThrottle(logger)
    server.tornado_lines = _TornadoLines(server.throttle)
    server.listeners = []
    return server
