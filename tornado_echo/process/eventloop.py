"""The event loop a process runs on: uvloop (faster I/O) or asyncio's own, chosen once.

The server (``event_loop`` setting) and the load tester (``--loop``) choose the same way:
"uvloop", "asyncio", or "auto" for uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], choice: str, unavailable: Exception) -> T:
    """Run ``main`` to completion on the loop ``choice`` names; return its result.

    ``unavailable`` is raised (in the caller's words: a setting or a flag) when uvloop was
    asked for by name and is not installed; ``main`` is closed unstarted then.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise unavailable from None
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)
