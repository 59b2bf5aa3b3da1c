"""Listening sockets, bound as Tornado's ``bind_sockets`` binds them, with nothing left open
when a bind fails.

``tornado.netutil.bind_sockets`` (6.x) leaves the socket whose bind failed, and those it
bound before it (a host name with an IPv4 and an IPv6 address), to the garbage collector:
their descriptors stay open, the earlier ones listening on the port, for as long as the
exception is kept, and each is then reported as a ResourceWarning. Here every socket made
is closed before the error goes on.
"""

from __future__ import annotations

import errno
import socket


def bind_sockets(
    port: int, host: str, backlog: int = 128, reuse_port: bool = False
) -> list[socket.socket]:
    """Non-blocking sockets listening on ``port`` at every address of ``host`` (IPv6 ones
    IPv6 only, all on the same port when ``port`` is 0), with SO_REUSEADDR and, when
    ``reuse_port``, SO_REUSEPORT. Raises OSError, with no socket left open."""
    family = socket.AF_UNSPEC if socket.has_ipv6 else socket.AF_INET
    addresses = socket.getaddrinfo(
        host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    bound_port: int | None = None
    try:
        for af, kind, proto, _name, address in sorted(set(addresses), key=lambda a: a[0]):
            sock = socket.socket(af, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6:
                # Otherwise [::] would take the IPv4 port too, and the IPv4 socket fail.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and bound_port is not None:
                address = (address[0], bound_port, *address[2:])
            sock.setblocking(False)
            try:
                sock.bind(address)
            except OSError as exc:
                # A host with IPv6 half disabled (docker's default) resolves "localhost"
                # to ::1 as well but cannot bind it: served on IPv4 alone, as Tornado does.
                ipv6_off = exc.errno == errno.EADDRNOTAVAIL and af == socket.AF_INET6
                if ipv6_off and host == "localhost":
                    sockets.pop().close()
                    continue
                raise
            bound_port = sock.getsockname()[1]
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
