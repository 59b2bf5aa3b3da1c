"""Log output: readable lines on a terminal, JSON lines for journald, secrets redacted.

Redaction happens on the fully formatted line (message, arguments and traceback alike), so
a database password cannot leak through an exception text either.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class TextFormatter(logging.Formatter):
    """``2026-11-26 01:02:03,456 INFO tornado_echo.server: message``, redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra`` fields, exc."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._redact(json.dumps(entry, default=str, ensure_ascii=False))


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Route all logging to stderr in the chosen format; safe to call again on reload."""
    secrets = list(secrets)
    formatter: logging.Formatter = (
        JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets)
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tornado_echo", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._tornado_echo = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Tornado logs every request at INFO; keep that noise for debug level.
    logging.getLogger("tornado.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
