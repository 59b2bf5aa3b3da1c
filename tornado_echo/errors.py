"""The one exception root of tornado-echo.

Every error the package raises on purpose derives from :class:`EchoError`, so callers
can tell our failures (a bad config value, an unreachable database) from bugs.
"""

from __future__ import annotations


class EchoError(Exception):
    """Root of all tornado-echo errors."""


class ConfigError(EchoError):
    """The configuration is invalid; the message names the source, key and value."""


class StoreError(EchoError):
    """The store cannot be opened or used (bad URL, unreachable database)."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a log or stderr: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
