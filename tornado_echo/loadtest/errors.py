"""Errors of the load tester, all below :class:`tornado_echo.errors.EchoError`."""

from __future__ import annotations

from tornado_echo.errors import ConfigError, EchoError


class LoadtestError(EchoError):
    """Root of the load tester's own errors."""


class LoadtestConfigError(ConfigError, LoadtestError):
    """A command-line value or combination is invalid; the message says which and why."""


class HandshakeError(LoadtestError):
    """The opening handshake failed; ``category`` is the error class we count."""

    def __init__(self, message: str, category: str, status: int | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.status = status


class ResultFormatError(LoadtestError):
    """A JSON result file given to ``merge`` is not one of ours or is damaged."""
