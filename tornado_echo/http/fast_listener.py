"""The fast engine's HTTP/1.1 listener: asyncio transports, httptools' C parser, and the
Tornado Application driven through Tornado's public server interfaces.

Each accepted connection is one :class:`HTTP11Connection`: an :class:`asyncio.Protocol` on
the running loop's transport (uvloop's when it is the loop) and, to the Application, a
:class:`tornado.httputil.HTTPConnection`. Requests go to the Application as Tornado's own
HTTPServer hands them over (``start_request``, ``headers_received``, ``finish`` of an
``HTTPMessageDelegate``), so routing, ``RequestHandler``\\ s and ``WebSocketHandler``
subclasses run as Tornado documents. An upgrade accepted by the fast engine takes the very
transport over (:meth:`HTTP11Connection.hand_over`): no socket moves, and the bytes read
past the request go to the engine, not read again.

Every limit of :mod:`tornado_echo.http.listener` holds here too, with its constants: bodies
refused with 413 before they are read (``Expect: 100-continue`` gets the 413, not a 100;
chunked requests likewise), headers over ``MAX_HEADER_SIZE`` answered 431 (no more than the
limit plus one read is buffered), headers that do not arrive within ``http_timeout`` (and
idle keep-alive connections) closed, ``max_http_connections`` answered 503, trusted proxies
believed per request. Beyond them, what a stranger can make it
hold is bounded: pipelined requests are parsed from one read at most (the connection is not
read while any request is queued or served), and requests that cannot be parsed get 400.

TLS (``tls_cert``) runs on the loop's own SSL transport (uvloop's, in C, when it is the
loop): each accepted socket is wrapped by the context current when it was accepted, so a
certificate reloaded on SIGHUP serves new connections while open ones keep their session.
The TLS handshake counts as part of the HTTP phase: within ``http_timeout`` (a client that
never sends its ClientHello is closed then), and among the ``max_http_connections``. A
handshake that fails on a TLS error (plain HTTP on the TLS port, a client that does not
trust the certificate) is counted (``on_tls_failure``) and logged through the throttle.

Connections are accepted by the :class:`~tornado_echo.http.listener.Acceptor`, at most
``ACCEPT_BATCH`` a turn of the loop, pausing accept() for ``ACCEPT_BACKOFF`` on EMFILE as
Tornado's listener does. Not by uvloop's own server (``loop.create_server``), though its
accept costs half as many instructions: libuv accepts until the backlog is empty on every
turn, and in a connection storm the workers took in far more than they could upgrade before
the clients gave up (C100K: 15% of the clients timed out, and CPU per connection tripled;
docs/performance.md, ninth session).

A ``WebSocketHandler`` that is not the fast engine's (Tornado's own protocol needs an
IOStream) is served on Tornado's listener (``engine = "tornado"``), TLS included.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, cast

import httptools
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)

from tornado_echo.compat import RequestHeaders
from tornado_echo.config import LiveConfig
from tornado_echo.http.admission import ADDRESS_FULL, FULL, HTTPAdmission
from tornado_echo.http.listener import (
    BODY_REFUSED,
    HEADERS_REFUSED,
    LINGER,
    MAX_HEADER_SIZE,
    Acceptor,
    LiveSettings,
    answer,
    has_body,
    is_tls_failure,
    spawn,
)
from tornado_echo.http.tls import transport_options
from tornado_echo.observability.throttle import LogThrottle

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

# Requests parsed from one read and not yet answered, at most; past them the connection is
# answered up to there and closed (a client may resend what a closed connection left).
MAX_PIPELINED = 64
# A request line's method as RFC 9110 spells one (a token, then a space): an unknown one is
# answered 501; anything else the parser refuses there (a TLS hello, NUL bytes) is garbage, 400.
METHOD_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32} ")
# The response buffer above which the Application's writes wait (as Tornado's do).
WRITE_HIGH_WATER = 256 * 1024


class _Context:
    """What ``HTTPServerRequest`` and :func:`~tornado_echo.http.access.socket_peer` read of
    a connection (``connection.context``), as Tornado's HTTPServer provides it."""

    __slots__ = ("address", "address_family", "forwarded", "peer", "protocol", "remote_ip")

    def __init__(self, address: Any, family: int, protocol: str) -> None:
        self.address = address
        self.address_family = family
        self.protocol = protocol
        self.peer = str(address[0]) if family in (socket.AF_INET, socket.AF_INET6) else ""
        self.remote_ip = self.peer
        self.forwarded = False  # remote_ip came from a trusted proxy's header


class _Refusal:
    """A request answered by the listener itself (status, metric label, reason)."""

    __slots__ = ("label", "reason", "status")

    def __init__(self, status: int, label: str, reason: str) -> None:
        self.status = status
        self.label = label
        self.reason = reason


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (a refusal or too many requests)."""


class FastHTTPServer(LiveSettings):
    """The listener: accepts on the running loop and serves HTTP/1.1 on its transports.

    Same operator surface as :class:`~tornado_echo.http.listener.EchoHTTPServer`
    (``proxies``, ``max_http_connections``, ``open_http``, ``lingering``, ``start_serving``,
    ``stop``, ``close_all_connections``); build it with :func:`make_fast_http_server`.
    """

    def __init__(
        self,
        delegate: HTTPServerConnectionDelegate,
        config: LiveConfig,
        *,
        on_refusal: Callable[[str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        on_tls_failure: Callable[[], None] | None = None,
    ) -> None:
        self.delegate = delegate
        self.config = config
        self.on_refusal = on_refusal
        self.on_tls_failure = on_tls_failure
        self.throttle = LogThrottle(logger)
        self.ssl_options = ssl_context
        self._tls_connect: Callable[..., Awaitable[Any]] | None = None
        current = config.current
        # Who holds the HTTP phase's slots (fairly shared, as on Tornado's listener).
        self.admission: HTTPAdmission[HTTP11Connection] = HTTPAdmission(
            current.max_http_connections, current.max_http_connections_per_ip
        )
        self.open_http = 0  # connections in the HTTP phase (not yet upgraded, not refused)
        self.lingering = 0  # refused connections answered and draining for LINGER s
        self.connections: set[HTTP11Connection] = set()
        self._acceptors: list[Acceptor] = []
        self._stopped = False
        self._all_closed: asyncio.Event | None = None

    async def start_serving(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on ``sockets`` (listening already) until :meth:`stop`."""
        for sock in sockets:
            if self._stopped:
                sock.close()
            else:
                # With TLS each connection is wrapped by the context current when it comes
                # (a loop's server has a fixed one), and a failed handshake told apart.
                acceptor = Acceptor(sock, self._accepted, self.throttle)
                acceptor.start()
                self._acceptors.append(acceptor)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets (idempotent)."""
        self._stopped = True
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()

    async def close_all_connections(self) -> None:
        """Close every connection still in the HTTP phase; returns once they are gone."""
        while self.connections:
            self._all_closed = asyncio.Event()
            for connection in list(self.connections):
                connection.close()
            await self._all_closed.wait()

    def _admit(self, address: Any, family: int) -> asyncio.Protocol:
        """The protocol for a connection just accepted from ``address``: its HTTP
        connection, or the refusal (503) when the limits leave it no slot."""
        protocol: asyncio.Protocol
        # An IP address (a unix socket's peer has none: one shared bucket, "?").
        peer = str(address[0]) if isinstance(address, tuple) and address else "?"
        proxies = self.proxies
        admission = self.admission
        self.follow_config(admission)
        connection = HTTP11Connection(self, address, family)
        verdict = admission.admit(connection, peer, exempt=proxies is not None and peer in proxies)
        if verdict.admitted:
            if verdict.evict is not None:
                # Its slot goes to the newcomer (it had no request under way).
                if self.on_refusal is not None:
                    self.on_refusal("idle_http_evicted")
                verdict.evict.close()
            if self.ssl_options is not None:
                # In its TLS handshake it has no transport to close (its descriptor would
                # outlive its slot): not evicted until connection_made().
                admission.busy(connection)
            protocol = connection
        else:
            self._forget(connection)
            full = verdict.refusal == FULL
            label = FULL if full else ADDRESS_FULL
            self.throttle.log(
                label,
                logging.WARNING,
                "refused a connection from %s: %d HTTP connections open, %d from it (%s)",
                peer,
                len(admission),
                admission.held_by(peer),
                "max_http_connections" if full else "max_http_connections_per_ip",
            )
            protocol = self._refusal(
                503,
                label,
                "too many open HTTP connections"
                if full
                else "too many HTTP connections from your address",
            )
        return protocol

    def _accepted(self, sock: socket.socket, address: Any) -> None:
        protocol = self._admit(address, sock.family)
        if self.ssl_options is None:
            spawn(_connect(protocol, sock))
            return
        # Only the context and the timeouts are TLS's; failures are told apart and counted.
        connect = self._tls_connect
        if connect is None:  # once per context, not per connection
            loop = asyncio.get_running_loop()
            connect = self._tls_connect = functools.partial(
                loop.connect_accepted_socket,
                **transport_options(loop, self.ssl_options, self.timeout),
            )
        spawn(_connect(protocol, sock, connect, functools.partial(self._tls_failed, address)))

    def set_ssl_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for connections accepted from now on (certificate reload)."""
        self.ssl_options = context
        self._tls_connect = None

    def _tls_failed(self, address: Any, exc: OSError) -> None:
        """A TLS handshake ended on ``exc``: counted and logged when it is a TLS error (not
        a client that went away, nor one that outlasted ``http_timeout``)."""
        if not is_tls_failure(exc):
            return
        if self.on_tls_failure is not None:
            self.on_tls_failure()
        self.throttle.log(
            "tls_handshake",
            logging.WARNING,
            "TLS handshake failed with %s: %s",
            str(address[0]) if address else "?",
            exc,
        )

    def _refusal(self, status: int, label: str, reason: str) -> _Refused:
        if self.on_refusal is not None:
            self.on_refusal(label)
        return self._closing(answer(status, reason))

    def _closing(self, response: bytes) -> _Refused:
        # Lingering keeps a descriptor for up to LINGER seconds outside every connection
        # limit: no more of them than max_http_connections (as the Tornado listener).
        linger = LINGER if self.lingering < self.max_http_connections else 0.0
        return _Refused(self, response, linger)

    def _forget(self, connection: HTTP11Connection) -> None:
        """``connection`` left the HTTP phase (closed, refused or upgraded)."""
        self.admission.release(connection)
        if connection in self.connections:
            self.connections.discard(connection)
            self.open_http -= 1
            if not self.connections and self._all_closed is not None:
                self._all_closed.set()


async def _connect(
    protocol: asyncio.Protocol,
    sock: socket.socket,
    connect: Callable[..., Awaitable[Any]] | None = None,
    on_failure: Callable[[OSError], None] | None = None,
) -> None:
    # The transport's connection_made() comes from the loop (after the TLS handshake, if
    # any); nothing else waits on it.
    if connect is None:
        connect = asyncio.get_running_loop().connect_accepted_socket
    try:
        await connect(lambda: protocol, sock)
    except OSError as exc:  # reset before serving; a TLS handshake that failed or timed out
        logger.debug("accepted connection lost before serving: %s", exc)
        if on_failure is not None:
            on_failure(exc)
        sock.close()
        if isinstance(protocol, (HTTP11Connection, _Refused)):
            protocol.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """Sends one answer (or none: the last was sent already), half-closes, and discards
    what the client still sends for at most ``linger`` seconds (closing with unread input
    would make the kernel reset the connection, and the answers could be lost with it)."""

    def __init__(self, server: FastHTTPServer, response: bytes, linger: float) -> None:
        self.server = server
        self.response = response
        self.linger = linger
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        if linger:  # one closed at once holds nothing beyond its close
            server.lingering += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        if self.response:
            transport.write(self.response)
        if not self.linger:
            transport.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(self.linger, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # discarded: the answer is sent

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.linger:
            self.server.lingering -= 1


class HTTP11Connection(asyncio.Protocol, HTTPConnection):
    """One connection in the HTTP phase: parses requests, hands them to the Application one
    at a time, writes its responses; ends closed, refused, or handed over to an engine."""

    def __init__(self, server: FastHTTPServer, address: Any, family: int) -> None:
        self.server = server
        self.context = _Context(address, family, "https" if server.ssl_options else "http")
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[RequestStartLine, HTTPHeaders, bool] | _Refusal] = deque()
        self._url = b""
        self._headers: HTTPHeaders | None = None  # of the request being parsed
        self._head_size = 0  # bytes read while its head was incomplete
        self._head_parsed = 0  # bytes of its head the parser has handed over
        self._reading_head = True
        self._leftover = b""  # read past an upgrade request
        self._upgrade_pending = False
        self._serving = False  # a request is with the Application
        self._keep_alive = True
        self._method = ""
        self._version = ""
        self._chunked = False
        self._close_callback: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._closed = False
        self._handed_over = False
        self._stopped = False  # parsing stopped: what is queued is the last served
        self._write_waiters: list[asyncio.Future[None]] = []
        self._paused_writing = False
        self._draining = False  # the next request waits for the answers to drain
        server.connections.add(self)
        server.open_http += 1

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self._stopped:  # closed (at shutdown) before its transport came
            self.transport.close()
            return
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        if self.context.protocol == "https":
            self.server.admission.idle(self)  # its handshake is done
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._leftover = data[upgrade.args[0] :]
            self._upgrade_pending = True
        except httptools.HttpParserError as exc:
            # A callback's own exception is its context (httptools re-raises it so).
            self._stopped = True
            if isinstance(exc, httptools.HttpParserInvalidMethodError) and METHOD_TOKEN.match(data):
                self._queue.append(self._unknown_method(exc))
            elif not isinstance(exc.__context__, _Stop):
                self._queue.append(self._bad_request(exc))
        if self._reading_head and self._head_size > MAX_HEADER_SIZE and not self._stopped:
            # A head still incomplete past the limit: no more of it is read.
            self._stopped = True
            self._queue.append(self._headers_too_large())
        if self._queue or self._upgrade_pending or self._stopped:
            assert self.transport is not None
            self.transport.pause_reading()
            if not self._serving:
                self._next()

    def eof_received(self) -> bool:
        self._eof = True
        # Half-closed by the client: answer what it sent, then close.
        return self._serving or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._drop_parser()
        self._cancel_timer()
        for waiter in self._write_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._write_waiters = []
        if self._handed_over:
            return
        self.server._forget(self)
        self.server.delegate.on_close(self)
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()

    def pause_writing(self) -> None:
        # The client is not taking its answers: it has http_timeout to start again.
        self._paused_writing = True
        self._start_timer()

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._draining:
            self._draining = False
            self._next()
        elif self._serving:
            self._cancel_timer()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if len(self._queue) >= MAX_PIPELINED:
            raise _Stop
        self._url = b""
        self._headers = RequestHeaders()
        self._head_parsed = 0
        self._reading_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_parsed += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._headers is not None
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))
        self._head_parsed += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        # Counted from the callbacks: the read counter above may hold more than one head.
        self._reading_head = False
        self._head_size = 0
        if self._head_parsed > MAX_HEADER_SIZE:
            self._queue.append(self._headers_too_large())
            raise _Stop
        version = "HTTP/" + self.parser.get_http_version()
        method = self.parser.get_method().decode("latin-1")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self._queue.append(_Refusal(400, "bad_request", f"{version} is not served"))
            raise _Stop
        assert self._headers is not None
        if has_body(self._headers):
            self.server.throttle.log(
                "request_body",
                logging.INFO,
                "refused a request with a body from %s: %s",
                self.context.remote_ip,
                self._url.decode("latin-1"),
            )
            self._queue.append(_Refusal(413, "request_body", BODY_REFUSED))
            raise _Stop
        start_line = RequestStartLine(method, self._url.decode("latin-1"), version)
        keep_alive = version == "HTTP/1.1" and self.parser.should_keep_alive()
        self._queue.append((start_line, self._headers, keep_alive))

    def _headers_too_large(self) -> _Refusal:
        self.server.throttle.log(
            "request_headers",
            logging.INFO,
            "refused a request from %s: headers over %d bytes",
            self.context.remote_ip,
            MAX_HEADER_SIZE,
        )
        return _Refusal(431, "request_headers", HEADERS_REFUSED)

    def _bad_request(self, exc: Exception) -> _Refusal:
        self.server.throttle.log(
            "bad_request",
            logging.INFO,
            "refused a malformed HTTP request from %s: %s",
            self.context.remote_ip,
            exc,
        )
        return _Refusal(400, "bad_request", "malformed HTTP request")

    def _unknown_method(self, exc: Exception) -> _Refusal:
        # A method the parser does not know (RFC 9110 section 15.6.2: 501), not a malformed
        # request; no route here serves one.
        self.server.throttle.log(
            "method",
            logging.INFO,
            "refused a request with an unknown method from %s: %s",
            self.context.remote_ip,
            exc,
        )
        return _Refusal(501, "method", "unknown HTTP method (only GET is upgraded)")

    # -- serving ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Hand the next queued request to the Application, or read on, or close."""
        if self._closed:
            return
        assert self.transport is not None
        if not self._queue:
            if self._eof:
                self.transport.close()
            elif self._stopped:
                self._become(self.server._closing(b""))
            elif self._upgrade_pending:
                # An upgrade request answered without an upgrade: HTTP goes on after it.
                self._upgrade_pending = False
                self.parser = httptools.HttpRequestParser(self)
                leftover, self._leftover = self._leftover, b""
                self._start_timer()
                self.transport.resume_reading()
                if leftover:
                    self.data_received(leftover)
            else:  # waiting for the next request: its slot may go to a newcomer
                self.server.admission.idle(self)
                self._start_timer()
                self.transport.resume_reading()
            return
        self._cancel_timer()
        item = self._queue.popleft()
        if isinstance(item, _Refusal):
            self._refuse(item)
            return
        start_line, headers, keep_alive = item
        self.server.admission.busy(self)
        self._serving = True
        self._keep_alive = keep_alive
        self._method = start_line.method
        self._version = start_line.version
        proxies = self.server.proxies
        peer = self.context.peer
        if peer and proxies is not None:
            # Per request: a keep-alive connection from a proxy carries many clients.
            self.context.remote_ip, self.context.forwarded = proxies.client_address(peer, headers)
        delegate = self.server.delegate.start_request(self, self)
        try:
            started = delegate.headers_received(start_line, headers)
        except HTTPInputError as exc:  # Tornado's own checks of a request (no Host, say)
            self._serving = False
            self._refuse(self._bad_request(exc))
            return
        if started is not None:
            spawn(self._finish_later(delegate, started))
        else:
            delegate.finish()

    async def _finish_later(self, delegate: HTTPMessageDelegate, started: Awaitable[None]) -> None:
        await started
        delegate.finish()

    def _refuse(self, refusal: _Refusal) -> None:
        self._become(self.server._refusal(refusal.status, refusal.label, refusal.reason))

    def _become(self, refused: _Refused) -> None:
        """Leave the connection to ``refused`` (answer, linger, close)."""
        assert self.transport is not None
        self.server._forget(self)
        self._handed_over = True
        self.transport.set_protocol(refused)
        refused.connection_made(self.transport)
        self.transport.resume_reading()

    def hand_over(self, protocol: asyncio.Protocol) -> bytes | None:
        """Give the transport to ``protocol`` (the upgraded connection's engine).

        Returns the bytes read past the request (the peer's first frames), for the engine
        to take before anything it reads; None when the connection has ended meanwhile (or
        the client half-closed it), and so cannot be carried on.
        """
        if self._closed or self._eof or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return None
        self._handed_over = True
        self._close_callback = None
        self._cancel_timer()
        self.server._forget(self)
        transport = self.transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self._drop_parser()
        leftover, self._leftover = self._leftover, b""
        return leftover

    def _drop_parser(self) -> None:
        """Part with the parser, which nothing reads for again. It holds this connection
        (it calls back into it): left in place, the two are a reference cycle that outlives
        the connection until one of the collector's full passes, which are rare with tens
        of thousands of connections alive: 0.7 KB per upgraded connection, with what the
        connection holds."""
        if "parser" in vars(self):
            del self.parser

    # -- tornado.httputil.HTTPConnection ---------------------------------------------------

    def write_headers(
        self,
        start_line: RequestStartLine | ResponseStartLine,
        headers: HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, ResponseStartLine)
        code = start_line.code
        self._chunked = (
            self._version == "HTTP/1.1"
            and self._method != "HEAD"
            and code not in (204, 304)
            and not 100 <= code < 200
            and "Content-Length" not in headers
        )
        if self._chunked:
            headers["Transfer-Encoding"] = "chunked"
        if headers.get("Connection", "").lower() == "close":
            self._keep_alive = False  # the handler's word, as Tornado's connection takes it
        elif self._version == "HTTP/1.1" and not self._keep_alive:
            headers["Connection"] = "close"
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers.get_all())
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if chunk:
            data += self._chunk(chunk)
        return self._write(data)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        return self._write(self._chunk(chunk))

    def finish(self) -> None:
        if self._chunked:
            self._write(b"0\r\n\r\n")
            self._chunked = False
        self._serving = False
        self._close_callback = None
        if self._closed:
            return
        if not self._keep_alive:
            self._queue.clear()
            self._stopped = True
        if self._paused_writing:
            # A client that does not read its answers gets no more of them (and no more
            # than http_timeout to take what is buffered): resume_writing() goes on.
            self._draining = True
        else:
            self._next()

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """Called with no arguments if the connection closes while a request is served
        (``RequestHandler.on_connection_close``), as Tornado's connection does."""
        self._close_callback = callback

    def detach(self) -> HTTP11Connection:
        """What ``RequestHandler.detach()`` returns here: this connection, whose transport
        :meth:`hand_over` gives to the upgraded connection's engine (not an IOStream:
        Tornado's own WebSocket protocol is served with ``engine = "tornado"``)."""
        return self

    def close(self) -> None:
        """Close now: with answers the client has not taken still buffered, drop them (as
        Tornado's IOStream does), or the transport would wait for the client to read."""
        transport = self.transport
        if transport is None:
            self._stopped = True  # connection_made() closes it
        elif not self._closed:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _chunk(self, chunk: bytes) -> bytes:
        if self._chunked and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def _write(self, data: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed or self.transport is None:
            future.set_result(None)  # as a write to a closed stream: the close callback tells
            return future
        if data:
            self.transport.write(data)
        if self._paused_writing:
            self._write_waiters.append(future)
        else:
            future.set_result(None)
        return future

    # -- time limit ------------------------------------------------------------------------

    def _start_timer(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self.server.timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        # Headers not complete (or an idle keep-alive) within http_timeout: closed, as
        # Tornado's HTTPServer does; so is a client that has not read its answers for as
        # long (Tornado's would wait for it as long as it stays connected).
        self._timer = None
        if not self._serving or self._paused_writing:
            self.close()


def make_fast_http_server(
    app: HTTPServerConnectionDelegate,
    config: LiveConfig,
    *,
    on_refusal: Callable[[str], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_tls_failure: Callable[[], None] | None = None,
) -> FastHTTPServer:
    return FastHTTPServer(
        app,
        config,
        ssl_context=ssl_context,
        on_tls_failure=on_tls_failure,
        on_refusal=on_refusal,
    )
