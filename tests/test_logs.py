"""Log formats and secret redaction."""

from __future__ import annotations

import json
import logging
import sys

from tornado_echo.logs import JsonFormatter, TextFormatter


def make_record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "tornado_echo.test", "levelno": 20, "levelname": "INFO", "msg": msg, "args": args}
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_text_line_redacts_secrets_in_arguments() -> None:
    line = TextFormatter(["hunter2"]).format(
        make_record("connect %s", "postgresql://u:hunter2@h/d")
    )
    assert line.endswith("INFO tornado_echo.test: connect postgresql://u:***@h/d")


def test_json_line_has_fields_extras_and_redacted_traceback() -> None:
    try:
        raise RuntimeError("password hunter2 rejected")
    except RuntimeError:
        record = make_record("session %s ended", "abc", close_code=1000)
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter(["hunter2"]).format(record))
    assert entry["level"] == "info"
    assert entry["logger"] == "tornado_echo.test"
    assert entry["msg"] == "session abc ended"
    assert entry["close_code"] == 1000
    assert "RuntimeError: password *** rejected" in entry["exc"]
    assert "hunter2" not in json.dumps(entry)
