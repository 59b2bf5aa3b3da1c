"""Who may read operator endpoints (/metrics, /api): loopback peers, or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from tornado.httputil import HTTPServerRequest


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


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
