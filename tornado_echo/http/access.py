"""Who may read operator endpoints (/metrics, /api), and whose forwarded address to believe.

Trust rests on three things only: the socket peer (loopback), a bearer token, and the
reverse proxies the operator listed in ``trusted_proxies``. A forwarded header never grants
anything: loopback trust needs a loopback socket peer, a client address that no header
supplied, and a Host header naming this server, so that a web page whose DNS name was
rebound to 127.0.0.1 cannot read the endpoints through a local browser. (A request a
trusted proxy forwards for 127.0.0.1 is refused without the token: the proxy may pass on
what its client wrote.)
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tornado.httputil import HTTPHeaders, HTTPServerRequest

from tornado_echo.addresses import ip, is_loopback, parse_network
from tornado_echo.config import Config

LOOPBACK_NAMES = frozenset({"localhost"})
# The refusal of a client that is neither loopback nor holds the token (deny() words it for
# the endpoint); any other refusal is a loopback client with a foreign Host.
NOT_LOOPBACK = "needs a loopback client or the bearer token"
WRONG_TOKEN = "missing or wrong bearer token"
BEARER_CHALLENGE = 'Bearer realm="tornado-echo"'


# The client address of a request whose forwarding headers are malformed or contradict each
# other: no IP address, so it matches no trusted network and is never loopback.
UNKNOWN_CLIENT = "unknown"


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For / X-Real-Ip headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(parse_network(entry) for entry in entries)

    def __contains__(self, address: object) -> bool:
        parsed = ip(address) if isinstance(address, str) else None
        return parsed is not None and any(
            parsed.version == net.version and parsed in net for net in self.networks
        )

    def client_address(self, peer: str, headers: HTTPHeaders) -> tuple[str, bool]:
        """(the client's address, whether a header gave it) for a request from ``peer``.

        ``peer`` itself unless it is a trusted proxy that sent forwarding headers. Then:

        * X-Forwarded-For is read from the right: each proxy appends the address it saw, so
          the right-most entry that is not itself a trusted proxy is the client (entries
          left of it were written by the client and prove nothing). Every entry a trusted
          proxy vouches for must be an address (``1.2.3.4``, ``1.2.3.4:port``, ``[v6]:port``).
        * X-Real-Ip is the address the nearest proxy saw (nginx: ``$remote_addr``), set
          whole; exactly one, an address.
        * Both present: they must name the same client, unless X-Real-Ip is itself a
          trusted proxy (a chain of proxies, X-Forwarded-For going further back). A proxy
          that sets one of them and passes the other on as the client wrote it would
          otherwise let the client choose, and this server cannot tell which one it set.

        Anything malformed or contradictory gives :data:`UNKNOWN_CLIENT`: fail closed.
        """
        if peer not in self:
            return peer, False
        forwarded_for = headers.get_list("X-Forwarded-For")
        real_ips = headers.get_list("X-Real-Ip")
        if not forwarded_for and not real_ips:
            return peer, False
        walked = self._walk(forwarded_for) if forwarded_for else None
        if not real_ips:
            return walked or UNKNOWN_CLIENT, True
        real = forwarded_address(real_ips[0]) if len(real_ips) == 1 else None
        if real is None or walked == UNKNOWN_CLIENT:
            return UNKNOWN_CLIENT, True
        if walked is None or walked == real or real in self:
            return walked or real, True
        return UNKNOWN_CLIENT, True

    def _walk(self, values: list[str]) -> str:
        hops = [hop for value in values for hop in value.split(",")]
        client = UNKNOWN_CLIENT
        for hop in reversed(hops):
            address = forwarded_address(hop)
            if address is None:
                return UNKNOWN_CLIENT
            client = address
            if address not in self:
                return address
        return client  # every hop a trusted proxy: the farthest one is the client


def forwarded_address(entry: str) -> str | None:
    """The IP address of one forwarded-header entry (an optional port dropped), canonical
    (``::ffff:1.2.3.4`` -> ``1.2.3.4``); None when it is not one."""
    entry = entry.strip()
    if entry.startswith("["):  # [v6] or [v6]:port
        inside, bracket, port = entry[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
        entry = inside
    elif entry.count(":") == 1:  # v4:port
        entry, _, port = entry.partition(":")
        if not port.isdigit():
            return None
    parsed = ip(entry) if entry else None
    return None if parsed is None else str(parsed)


def trusted_proxies(config: Config) -> TrustedProxies | None:
    """The proxies ``config`` believes; None unless ``behind_proxy`` is on."""
    return TrustedProxies(config.trusted_proxies) if config.behind_proxy else None


def socket_peer(request: HTTPServerRequest) -> str:
    """The IP address at the other end of the request's socket ("" if none, e.g. a unix
    socket or a request built without a connection)."""
    context = getattr(request.connection, "context", None)
    return context_peer(context) if context is not None else ""


def forwarded_by_proxy(request: HTTPServerRequest) -> bool:
    """Whether ``request.remote_ip`` came from a trusted proxy's forwarding header."""
    context = getattr(request.connection, "context", None)
    return bool(getattr(context, "forwarded", False))


def context_peer(context: Any) -> str:
    """The socket peer's IP address in Tornado's per-connection request context."""
    address = getattr(context, "address", None)
    family = getattr(context, "address_family", None)
    if family in (socket.AF_INET, socket.AF_INET6) and address:
        return str(address[0])
    return ""


def host_name(host: str) -> str:
    """The name part of a Host header value, lower-cased (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def names_this_server(host: str, server_names: Iterable[str]) -> bool:
    """True for a loopback name or address, or one of the configured ``server_names``."""
    name = host_name(host)
    return (
        name in LOOPBACK_NAMES
        or is_loopback(name)
        or name in {configured.lower() for configured in server_names}
    )


def refusal(
    peer: str,
    client: str,
    host: str,
    authorization: str,
    token: str,
    server_names: Iterable[str],
    forwarded: bool = False,
) -> str | None:
    """Why a request may not read an operator endpoint, or None when it may.

    ``peer`` is the socket peer, ``client`` the address after trusted proxies (the same
    when none is involved), ``forwarded`` whether a header gave it, ``host`` and
    ``authorization`` the request's headers.
    """
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return None
    if forwarded or not (is_loopback(peer) and is_loopback(client)):
        return NOT_LOOPBACK
    if not names_this_server(host, server_names):
        return (
            f"Host {host!r} does not name this server: loopback clients must use localhost,"
            " a loopback address or one of server_names"
        )
    return None


def request_refusal(
    request: HTTPServerRequest, token: str, server_names: Iterable[str] = ()
) -> str | None:
    """:func:`refusal` for a request served by :mod:`tornado_echo.http.listener`."""
    headers = request.headers
    return refusal(
        socket_peer(request),
        request.remote_ip or "",
        headers.get("Host", ""),
        headers.get("Authorization", ""),
        token,
        server_names,
        forwarded_by_proxy(request),
    )


@dataclass(frozen=True)
class Denial:
    """Why an operator endpoint refuses a request, as an HTTP status and a reason."""

    status: int
    reason: str

    @property
    def headers(self) -> dict[str, str]:
        """The headers of the refusal: a 401 says which credentials would help."""
        return {"WWW-Authenticate": BEARER_CHALLENGE} if self.status == 401 else {}


def deny(
    request: HTTPServerRequest,
    token: str,
    server_names: Iterable[str],
    *,
    loopback_only: str,
    wrong_token: str = WRONG_TOKEN,
) -> Denial | None:
    """The access decision of every operator endpoint; None when ``request`` may read it.

    401 (``wrong_token``) when a token is set and the request did not give it; 403 when no
    token is set, since no credentials could help (``loopback_only`` words that for the
    endpoint), or when a loopback client's Host does not name this server.
    """
    refused = request_refusal(request, token, server_names)
    if refused is None:
        return None
    if refused != NOT_LOOPBACK:
        return Denial(403, refused)
    if token:
        return Denial(401, wrong_token)
    return Denial(403, loopback_only)
