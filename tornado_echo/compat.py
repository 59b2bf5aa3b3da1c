"""Every private name of a dependency (Tornado, prometheus_client) tornado-echo touches.

A Tornado or prometheus_client upgrade that renames one of these fails here, and
``tests/test_compat.py`` names each of them, so it fails in CI rather than as a 500 on every
upgrade in production. The supported ranges are ``setup.py``'s; CI runs the suite at their
lowest versions too.
"""

from __future__ import annotations

import asyncio
import contextvars
import http.cookies
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any

import tornado
import tornado.httputil
import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.iostream import IOStream
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

if TYPE_CHECKING:
    # Not imported at run time: prometheus_client chooses its multiprocess mode when first
    # imported, which the CLI sets up first; this module sits below everything.
    from prometheus_client import Histogram

logger = logging.getLogger(__name__)

# What Application.find_handler returns (an override must say so).
HandlerDelegate = tornado.web._HandlerDelegate

_normalize_header = tornado.httputil._normalize_header

# The names below, for the test that checks they still exist.
PRIVATE_NAMES = {
    "tornado.web._HandlerDelegate": (tornado.web, "_HandlerDelegate"),
    "tornado.web.RequestHandler._check_cross_origin": (RequestHandler, "_check_cross_origin"),
    "tornado.web.RequestHandler._execute": (RequestHandler, "_execute"),
    "tornado.httputil._normalize_header": (tornado.httputil, "_normalize_header"),
    "tornado.httputil.HTTPHeaders._as_list": (HTTPHeaders(), "_as_list"),
    "tornado.httputil.HTTPHeaders._combined_cache": (HTTPHeaders(), "_combined_cache"),
    "tornado.web._HandlerDelegate.execute": (HandlerDelegate, "execute"),
    "tornado.websocket.WebSocketHandler._detach_stream": (WebSocketHandler, "_detach_stream"),
    "tornado.iostream.IOStream._read_buffer": (IOStream, "_read_buffer"),
    "tornado.iostream.IOStream._read_buffer_size": (IOStream, "_read_buffer_size"),
    "tornado.iostream.IOStream._write_buffer": (IOStream, "_write_buffer"),
    "tornado.web.RequestHandler._headers": (RequestHandler, "_headers"),
    "tornado.web.RequestHandler._request_summary": (RequestHandler, "_request_summary"),
    "tornado.web.RequestHandler._reason": (RequestHandler, "_reason"),
    "tornado.web.RequestHandler._status_code": (RequestHandler, "_status_code"),
    "tornado.web.RequestHandler._transforms": (RequestHandler, "_transforms"),
    "tornado.web.RequestHandler._write_buffer": (RequestHandler, "_write_buffer"),
    # What tornado_echo.engines.stock.EchoProtocol overrides or uses of its base class.
    "tornado.websocket.WebSocketProtocol13._receive_frame": (WebSocketProtocol13, "_receive_frame"),
    "tornado.websocket.WebSocketProtocol13._read_bytes": (WebSocketProtocol13, "_read_bytes"),
    "tornado.websocket.WebSocketProtocol13._handle_message": (
        WebSocketProtocol13,
        "_handle_message",
    ),
    "tornado.websocket.WebSocketProtocol13._write_frame": (WebSocketProtocol13, "_write_frame"),
    "tornado.websocket.WebSocketProtocol13._run_callback": (WebSocketProtocol13, "_run_callback"),
    "tornado.websocket.WebSocketProtocol13._abort": (WebSocketProtocol13, "_abort"),
    "tornado.websocket.WebSocketProtocol13._compressor": (WebSocketProtocol13, "_compressor"),
    "tornado.websocket.WebSocketProtocol13._decompressor": (WebSocketProtocol13, "_decompressor"),
    "tornado.websocket.WebSocketProtocol13._create_compressors": (
        WebSocketProtocol13,
        "_create_compressors",
    ),
    "tornado.websocket.WebSocketProtocol13._message_bytes_in": (
        WebSocketProtocol13,
        "_message_bytes_in",
    ),
}


class RequestHeaders(HTTPHeaders):
    """A request's headers: Tornado's ``HTTPHeaders``, whose ``get`` of an absent header does
    not go through a KeyError (``Mapping.get`` catches one; an upgrade looks up half a dozen
    headers clients seldom send: Origin, Sec-Fetch-Site, Sec-WebSocket-Extensions...), and
    normalises the name once."""

    def get(self, name: str, default: Any = None) -> Any:
        key = _normalize_header(name)
        combined = self._combined_cache.get(key)
        if combined is None:
            values = self._as_list.get(key)
            if values is None:
                return default
            combined = self._combined_cache[key] = ",".join(values)
        return combined


# prometheus_client's, by owner (a Histogram without labels) and name: see add_to_histogram.
PROMETHEUS_PRIVATE_NAMES = {
    "prometheus_client.Histogram._buckets": "_buckets",
    "prometheus_client.Histogram._sum": "_sum",
}

# Tornado's own log lines (on tornado.general, from tornado/iostream.py) for one client's
# mistake on one connection, which the HTTP server takes over: a failed TLS handshake, and
# headers over max_header_size (the server answers 431 and logs that itself).
SSL_ERROR_LOG = "SSL Error on %s %s: %s"
# And a request its parser refuses (answered 400 by Tornado), on tornado.general too.
MALFORMED_HTTP_LOG = "Malformed HTTP message from %s: %s"
UNSATISFIABLE_READ_LOG = "Unsatisfiable read, closing connection: "


def cross_origin_problem(handler: RequestHandler, check: Callable[[str], bool]) -> str | None:
    """Tornado's own cross-origin verdict (Sec-Fetch-Site, Origin vs Host, ``check``)."""
    problem: str | None = handler._check_cross_origin(check)
    return problem


def detach_stream(handler: WebSocketHandler) -> IOStream:
    """Take the connection's stream from Tornado's HTTP machinery after the 101 answer."""
    return handler._detach_stream()


def unread_bytes(stream: IOStream) -> bytes:
    """Bytes the stream read past the HTTP request (frames a client sent right away)."""
    return bytes(stream._read_buffer[: stream._read_buffer_size])


def unsent_bytes(stream: IOStream) -> int:
    """Bytes written to the stream that the kernel has not accepted yet (0 once closed)."""
    buffer = stream._write_buffer  # None once a failed write has closed the stream
    return len(buffer) if buffer is not None else 0


# RequestHandler attributes that only serve writing an HTTP response body.
_RESPONSE_ONLY = frozenset({"ui", "_transforms", "_write_buffer"})


def release_response_state(handler: RequestHandler) -> None:
    """Forget what only writing the response of ``handler`` needed, once it is sent: its
    header set, and the attributes that serve writing a body."""
    handler._headers = HTTPHeaders()
    # The handler's attribute dict has outgrown CPython's compact shared-key form by now
    # (about 1.6 KB); a fresh copy without the response-only attributes takes half that.
    handler.__dict__ = {
        name: value for name, value in vars(handler).items() if name not in _RESPONSE_ONLY
    }


# The headers RequestHandler.clear() starts every response with, but its Date.
_SERVER = f"TornadoServer/{tornado.version}"
_CONTENT_TYPE = "text/html; charset=UTF-8"


def reset_response(handler: RequestHandler, date: str) -> None:
    """What ``RequestHandler.clear()`` does before ``set_default_headers()``, with ``date``
    (already formatted) as the Date header."""
    headers = HTTPHeaders()
    headers["Server"] = _SERVER
    headers["Content-Type"] = _CONTENT_TYPE
    headers["Date"] = date
    handler._headers = headers
    handler._write_buffer = []
    handler._status_code = 200
    handler._reason = "OK"


def request_summary(handler: RequestHandler) -> str:
    """Tornado's ``METHOD URI (remote_ip)`` line of a request, as its access log has it."""
    summary: str = handler._request_summary()
    return summary


# The headers every 101 ends with but the accept key: set on the handler, they would be
# validated, stored and then discarded with the rest of its response (no Tornado interface
# reads a response's headers back), so they are written here.
_UPGRADE_HEADERS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
# Headers of the handler's that a 101 does not carry, or carries as set above.
_NOT_IN_101 = frozenset(("Content-Type", "Upgrade", "Connection", "Sec-WebSocket-Accept"))


def switching_protocols(handler: RequestHandler, accept: str) -> bytes:
    """The ``101 Switching Protocols`` answer: every header ``handler`` has set but its
    Content-Type, then Upgrade, Connection and ``accept`` as Sec-WebSocket-Accept."""
    lines = [f"HTTP/1.1 101 {handler._reason}"]
    lines.extend(
        f"{name}: {value}" for name, value in handler._headers.get_all() if name not in _NOT_IN_101
    )
    # Cookies set before the upgrade (in prepare, say) go out with it, as Tornado's flush()
    # sends them; set_cookie() keeps them in _new_cookie until then (test_surface names it).
    cookies: http.cookies.SimpleCookie | None = getattr(handler, "_new_cookie", None)
    if cookies:
        lines.extend(f"Set-Cookie: {cookie.OutputString(None)}" for cookie in cookies.values())
    lines.append(_UPGRADE_HEADERS + accept)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def tls_handshake_failure(record: logging.LogRecord) -> tuple[str, str] | None:
    """(peer address, error) when ``record`` is Tornado's line for a failed TLS handshake."""
    if record.msg != SSL_ERROR_LOG or not isinstance(record.args, tuple):
        return None
    _fd, peer, error = record.args
    return str(peer[0] if isinstance(peer, tuple) else peer), str(error)


def malformed_request(record: logging.LogRecord) -> tuple[str, str] | None:
    """(peer, error) when ``record`` is Tornado's line for a request it could not parse."""
    if record.msg != MALFORMED_HTTP_LOG or not isinstance(record.args, tuple):
        return None
    context, error = record.args
    return str(context), str(error)


def is_unsatisfiable_read(record: logging.LogRecord) -> bool:
    """Whether ``record`` is Tornado's line for a read over its ``max_bytes``."""
    return isinstance(record.msg, str) and record.msg.startswith(UNSATISFIABLE_READ_LOG)


def add_to_histogram(histogram: Histogram, counts: Sequence[int], total: float) -> None:
    """Add ``counts[i]`` observations to bucket ``i`` of ``histogram`` (the last is +Inf),
    and ``total`` to its sum: prometheus_client observes one value at a time only."""
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    if total:
        histogram._sum.inc(total)


class EagerHandlerDelegate(HandlerDelegate):
    """Tornado's delegate from a routed request to its handler (``_HandlerDelegate``), whose
    ``execute`` runs the handler's ``_execute`` at once, up to its first suspension, instead
    of in a new Task from the next turn of the loop. An upgrade whose hooks do not wait for
    anything (the common case) is then served without a Task at all; one that suspends goes
    on in a Task from there (:func:`start_eagerly`).

    Only for handlers whose hooks may run outside a Task (:func:`runs_eagerly`); the others,
    streamed bodies and the debug settings that reload templates get Tornado's ``execute``.
    """

    def execute(self) -> Awaitable[None] | None:
        settings = self.application.settings
        if (
            self.stream_request_body
            or not runs_eagerly(self.handler_class)
            or not settings.get("compiled_template_cache", True)
            or not settings.get("static_hash_cache", True)
        ):
            result: Awaitable[None] | None = super().execute()
            return result
        request = self.request
        self.handler = handler = self.handler_class(
            self.application, request, **self.handler_kwargs
        )
        transforms = [transform(request) for transform in self.application.transforms]
        start_eagerly(handler._execute(transforms, *self.path_args, **self.path_kwargs))
        return None  # a body is not streamed: nothing waits for prepare()


def eager_handler_delegate(
    application: tornado.web.Application,
    request: HTTPServerRequest,
    handler_class: type[RequestHandler],
    handler_kwargs: dict[str, Any],
) -> HandlerDelegate:
    """What ``Application.get_handler_delegate`` returns, with an :class:`EagerHandlerDelegate`."""
    return EagerHandlerDelegate(application, request, handler_class, handler_kwargs, None, None)


# The hooks a handler runs between its construction and the upgrade's first suspension.
_EAGER_HOOKS = ("prepare", "get", "open")
# Whose coroutines are known not to need a current Task before they first suspend.
_EAGER_MODULES = ("tornado.", "tornado_echo.")


def runs_eagerly(handler_class: type[RequestHandler]) -> bool:
    """Whether ``handler_class``'s requests may start outside a Task: none of its hooks that
    run before the first suspension is a coroutine function of the application's own.

    Until it first suspends, a coroutine started by :func:`start_eagerly` has no current Task
    (``asyncio.current_task()`` is None, or the caller's), and ``asyncio.timeout()`` or a
    ``TaskGroup`` entered there would fail: a user's ``async def prepare`` keeps its Task.
    """
    eager = _eager_classes.get(handler_class)
    if eager is None:
        hooks = (getattr(handler_class, name, None) for name in _EAGER_HOOKS)
        eager = _eager_classes[handler_class] = not any(
            inspect.iscoroutinefunction(hook) and not hook.__module__.startswith(_EAGER_MODULES)
            for hook in hooks
        )
    return eager


_eager_classes: dict[type[RequestHandler], bool] = {}


def start_eagerly(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` now, in a copy of the current context as a Task would, up to its first
    suspension; if it suspends, a Task carries it on from there (with that context)."""
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return
    except Exception:  # where Tornado's Task would have logged it
        logger.exception("request handler failed")
        return
    loop = asyncio.get_running_loop()
    task = context.run(loop.create_task, _carry_on(coro, yielded))
    task.add_done_callback(_result)


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """``yield from coro`` for a coroutine already started that yielded ``yielded``: what the
    Task sends or throws goes to ``coro``, what ``coro`` yields goes to the Task."""
    while True:
        try:
            value = yield yielded
        except GeneratorExit:  # closed (a Task destroyed pending): close it too, as yield from
            # unless it is being closed itself: at exit the collector finalizes the Task's
            # cycle in any order, and a second close() would raise "coroutine already
            # executing" out of the collector (which Tornado's Task, holding the handler's
            # coroutine itself, never does).
            if not getattr(coro, "cr_running", False):
                coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as yield from
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(value)
            except StopIteration:
                return


def _result(task: asyncio.Task[None]) -> None:
    # As Tornado's execute(): an exception that escaped _execute goes to the loop's handler.
    if not task.cancelled():
        task.result()
