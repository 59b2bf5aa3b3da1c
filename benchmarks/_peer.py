"""What the peer servers of engine_vs_peers share (echo_server.py, aiohttp_server.py,
picows_server.py): the command line, the TLS context, the port line and the run itself.

A peer prints its port on the first line of stdout (engine_vs_peers.py and
handshake_cost.py read it), then serves until killed, on uvloop when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import resource
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def main(
    description: str | None,
    serve: Callable[[int, ssl.SSLContext | None], Coroutine[Any, Any, None]],
    flag: str = "--max-msg-size",
    default: int = 1 << 20,
) -> None:
    """Parse a peer's command line (--tls-cert, --tls-key and its one integer ``flag``),
    then run ``serve(that integer, the TLS context or None)`` until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--tls-cert", help="serve wss:// with this PEM chain (and --tls-key)")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    run(functools.partial(serve, value, tls_context(args)))


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS >= 1.2 on the one pair given, or None without --tls-cert.

    As tornado_echo/http/tls.py builds it, but for the TLS 1.3 session tickets: a peer
    sends OpenSSL's two per handshake, what a user of that server gets unless told
    otherwise (tornado-echo sends none; see tls.py).
    """
    if not args.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


async def serve_forever(port: int) -> None:
    """Tell the port on the first line of stdout, then wait to be killed."""
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on uvloop (asyncio's loop without it), as many descriptors allowed as
    the hard limit permits: the benchmarks open thousands of connections."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
