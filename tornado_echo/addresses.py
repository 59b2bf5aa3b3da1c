"""IP addresses and networks as the server reads them: from sockets, headers and the conf file.

Below every layer that needs them (the config validates ``trusted_proxies`` with
:func:`parse_network`; the HTTP side decides trust with :func:`ip` and :func:`is_loopback`).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip(address: str | None) -> IPAddress | None:
    """The address as an IP (IPv4-mapped IPv6 unwrapped), or None when it is not one."""
    try:
        parsed = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return parsed


def is_loopback(address: str | None) -> bool:
    parsed = ip(address)
    return parsed is not None and parsed.is_loopback


def parse_network(text: str) -> Network:
    """An address or CIDR (``10.0.0.0/8``, ``::1``); raises ValueError."""
    return ipaddress.ip_network(text.strip(), strict=False)
