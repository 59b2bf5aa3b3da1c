"""Who may read operator endpoints (/metrics, /api), and whose forwarded address to believe.

Trust rests on three things only: the socket peer (loopback), a bearer token, and the
reverse proxies the operator listed in ``trusted_proxies``. A forwarded header never grants
anything by itself: loopback trust needs the socket peer *and* the client it forwards for
(if any) to be loopback, and a Host header naming this server, so that a web page whose
DNS name was rebound to 127.0.0.1 cannot read the endpoints through a local browser.
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


class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For / X-Real-Ip headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(parse_network(entry) for entry in entries)

    def __contains__(self, address: object) -> bool:
        parsed = ip(address) if isinstance(address, str) else None
        return parsed is not None and any(
            parsed.version == net.version and parsed in net for net in self.networks
        )

    def client_address(self, peer: str, headers: HTTPHeaders) -> str:
        """The client's address: ``peer`` itself unless ``peer`` is a trusted proxy.

        From a trusted proxy: the right-most X-Forwarded-For entry that is not itself a
        trusted proxy (entries left of it were written by the client and prove nothing),
        else X-Real-Ip. A malformed entry stops the walk at the last hop that vouched.
        """
        if peer not in self:
            return peer
        hops = [
            hop.strip() for value in headers.get_list("X-Forwarded-For") for hop in value.split(",")
        ]
        if hops:
            client = peer
            for hop in reversed(hops):
                parsed = ip(hop)
                if parsed is None:
                    return client
                client = str(parsed)
                if client not in self:
                    return client
            return client
        real = ip(headers.get("X-Real-Ip"))
        return peer if real is None else str(real)


def trusted_proxies(config: Config) -> TrustedProxies | None:
    """The proxies ``config`` believes; None unless ``behind_proxy`` is on."""
    return TrustedProxies(config.trusted_proxies) if config.behind_proxy else None


def socket_peer(request: HTTPServerRequest) -> str:
    """The IP address at the other end of the request's socket ("" if none, e.g. a unix
    socket or a request built without a connection)."""
    context = getattr(request.connection, "context", None)
    return context_peer(context) if context is not None else ""


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
    peer: str, client: str, host: str, authorization: str, token: str, server_names: Iterable[str]
) -> str | None:
    """Why a request may not read an operator endpoint, or None when it may.

    ``peer`` is the socket peer, ``client`` the address after trusted proxies (the same
    when none is involved), ``host`` and ``authorization`` the request's headers.
    """
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return None
    if not (is_loopback(peer) and is_loopback(client)):
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
