"""Who may read operator endpoints (/metrics, /api): loopback peers, or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from tornado.httputil import HTTPServerRequest


def is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return ip.is_loopback


def is_authorized(request: HTTPServerRequest, token: str) -> bool:
    """True for a loopback peer, or for ``Authorization: Bearer <token>`` when one is set.

    Behind a reverse proxy on the same host every peer looks like loopback unless
    ``behind_proxy`` is on (then the forwarded address counts): the proxy must not pass
    these paths through, as conf/nginx.conf does not.
    """
    if is_loopback(request.remote_ip):
        return True
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
