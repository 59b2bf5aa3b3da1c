"""Log output: readable lines on a terminal, JSON lines for journald, secrets redacted,
control characters escaped.

Redaction happens on the fully formatted line (message, arguments and traceback alike), so
a database password cannot leak through an exception text either; a secret is found
percent-encoded too (a token in a query string, in the debug access log).

Clients put what they like into paths and headers, and some of it reaches log lines (Tornado
formats a Sec-Fetch-Site value with ``%s``, for one). So every control character is escaped
where lines are made, not where each argument is logged: C0 (a newline would forge a line),
DEL, C1 (NEL 0x85 ends a line for some readers; CSI 0x9b starts a terminal escape sequence)
and the Unicode line and paragraph separators. Text lines show them as ``\x85``; JSON lines
as ``\u0085`` escapes, which parse back to the same string.

Every line names the process: its pid, and with ``workers > 1`` the worker index. When
stderr is the journal (systemd sets ``JOURNAL_STREAM`` to its ``device:inode``), every
line starts with the syslog priority, ``<3>`` for an error, which journald strips and
stores as ``PRIORITY=`` (``journalctl -p warning`` then finds warnings); ``-o cat`` shows
the line without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_worker: int | None = None  # this process's worker index; None for a single process


def set_worker(index: int | None) -> None:
    """Name the worker this process is in every line it logs from now on."""
    global _worker
    _worker = index


def syslog_priority(levelno: int) -> int:
    """The syslog(3) priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal (``JOURNAL_STREAM``).

    Comparing device and inode, as sd_journal_stream_fd(3) advises, tells the journal from
    a pipe or file that the variable was merely inherited past (``tornado-echo ... | less``).
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(fd)
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


# What a text line escapes (tab stays); JSON escapes C0 itself, and the rest here.
_TEXT_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_JSON_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029]")


# How the pieces of a formatted traceback that are not an exception's text begin: its
# header, a frame, a repeated-frames note, the line between chained exceptions.
_TRACEBACK_STRUCTURE = ("Traceback ", "  File ", "  [", "\n")


def escape_controls(text: str) -> str:
    """``text`` with its control characters (see the module docstring) as ``\\xNN``."""
    return _TEXT_CONTROLS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _percent_encoded(secret: str) -> re.Pattern[str]:
    """Matches ``secret`` with any of its characters percent-encoded (either case of hex
    digit), as a URL may carry it; a space also as ``+``."""
    parts = []
    for char in secret:
        encoded = "".join(
            "%" + "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")
            for byte in char.encode("utf-8")
        )
        literal = re.escape(char) + ("|\\+" if char == " " else "")
        parts.append(f"(?:{literal}|{encoded})")
    return re.compile("".join(parts))


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]
        self._encoded = [_percent_encoded(s) for s in self.secrets]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if "%" in text:
            for pattern in self._encoded:
                text = pattern.sub("***", text)
        return text


def _journal_prefix(text: str, levelno: int) -> str:
    # Each line of a traceback is an entry of its own in the journal: all get the priority.
    prefix = f"<{syslog_priority(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """``2026-11-26 01:02:03,456 INFO [w1 1234] tornado_echo.process.server: message``, redacted.

    ``[w1 1234]`` is worker 1, pid 1234; a single process (or the supervisor) shows
    ``[1234]``.
    """

    def __init__(self, secrets: Iterable[str] = (), journal: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(_proc)s] %(name)s: %(message)s")
        self._redact = _Redactor(secrets)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        record._proc = f"{record.process}" if _worker is None else f"w{_worker} {record.process}"
        text = self._redact(super().format(record))
        return _journal_prefix(text, record.levelno) if self.journal else text

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # A traceback keeps its lines, but an exception's own text (which may quote a
        # client) is one line: a newline in it would forge the next.
        pieces = []
        for piece in traceback.format_exception(*ei):
            if piece.startswith(_TRACEBACK_STRUCTURE):
                pieces.append("\n".join(escape_controls(line) for line in piece.split("\n")))
            else:
                pieces.append(escape_controls(piece.removesuffix("\n")) + "\n")
        return "".join(pieces).removesuffix("\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, worker, pid, msg, ``extra`` fields, exc."""

    def __init__(self, secrets: Iterable[str] = (), journal: bool = False) -> None:
        super().__init__()
        self._redact = _Redactor(secrets)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "worker": _worker,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        text = json.dumps(entry, default=str, ensure_ascii=False)
        text = self._redact(_JSON_CONTROLS.sub(_json_escaped, text))
        return _journal_prefix(text, record.levelno) if self.journal else text


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Route all logging to stderr in the chosen format; safe to call again on reload."""
    secrets = list(secrets)
    journal = stderr_is_journal()
    formatter: logging.Formatter = (
        JsonFormatter(secrets, journal) if fmt == "json" else TextFormatter(secrets, journal)
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
