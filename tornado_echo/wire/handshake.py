"""The opening handshake without I/O: Sec-WebSocket-Accept (RFC 6455 section 4.2.2) and the
answer to a client's permessage-deflate offer (RFC 7692 section 7.1)."""

from __future__ import annotations

import base64
import hashlib

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept that answers ``key`` (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode()


# -- permessage-deflate (RFC 7692) ----------------------------------------------------------

_WINDOW_PARAMS = ("server_max_window_bits", "client_max_window_bits")
_FLAG_PARAMS = ("server_no_context_takeover", "client_no_context_takeover")


def parse_extensions(header: str) -> list[tuple[str, dict[str, str | None]]]:
    """``Sec-WebSocket-Extensions`` as [(name, {param: value or None})]; lenient on spaces."""
    offers = []
    for item in header.split(","):
        name, *raw_params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        params: dict[str, str | None] = {}
        for raw in raw_params:
            key, sep, value = raw.partition("=")
            key = key.strip()
            if key in params:
                params["\0duplicate"] = key  # makes the offer unacceptable, see below
            params[key] = value.strip().strip('"') if sep else None
        offers.append((name.lower(), params))
    return offers


def negotiate_deflate(header: str) -> tuple[dict[str, str | None], str] | None:
    """Accept the first valid permessage-deflate offer: (agreed params, response header).

    An offer with an unknown or repeated parameter, or a window size outside 9..15, is
    declined (RFC 7692 section 5): the next offer is tried, and with none left the
    connection simply goes on uncompressed. A server window of 8 bits is declined too:
    zlib cannot produce raw deflate in a 256-byte window.
    """
    for name, params in parse_extensions(header):
        if name != "permessage-deflate":
            continue
        agreed = _deflate_params(params)
        if agreed is None:
            continue
        parts = ["permessage-deflate"]
        for key, value in agreed.items():
            parts.append(key if value is None else f"{key}={value}")
        return agreed, "; ".join(parts)
    return None


def _deflate_params(params: dict[str, str | None]) -> dict[str, str | None] | None:
    agreed: dict[str, str | None] = {}
    for key, value in params.items():
        if key in _FLAG_PARAMS:
            if value is not None:
                return None
            agreed[key] = None
        elif key in _WINDOW_PARAMS:
            if value is None:
                if key == "server_max_window_bits":
                    return None
                continue  # client_max_window_bits alone: the client may use up to 15
            if not (value.isdigit() and 9 <= int(value) <= 15):
                return None
            agreed[key] = str(int(value))
        else:
            return None
    return agreed
