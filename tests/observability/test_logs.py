"""Log formats and secret redaction."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import BASE_CONF, Service, raw_http, start_service, upgrade_request
from tornado_echo.observability.logs import (
    JsonFormatter,
    TextFormatter,
    escape_controls,
    stderr_is_journal,
    syslog_priority,
)


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
    assert line.endswith(
        f"INFO [{os.getpid()}] tornado_echo.test: connect postgresql://u:***@h/d"
    ), line


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


# C1 controls a client put in a header (Tornado decodes headers as latin-1): NEL ends a
# line for some readers, CSI starts a terminal escape sequence.
HOSTILE = "cross-site\x85forged line\x9b31m\nINFO fake\x1b[2J\u2028"


def test_control_characters_are_escaped_in_text_lines() -> None:
    line = TextFormatter().format(make_record("refused: %s", HOSTILE))
    assert "\n" not in line and not any(0x7F <= ord(c) <= 0x9F for c in line), repr(line)
    assert line.endswith(
        "refused: cross-site\\x85forged line\\x9b31m\\x0aINFO fake\\x1b[2J\\u2028"
    ), line
    assert escape_controls("tab\tstays") == "tab\tstays"


def test_a_traceback_keeps_its_lines_and_escapes_what_is_in_them() -> None:
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record = make_record("failed")
        record.exc_info = sys.exc_info()
    line = TextFormatter().format(record)
    assert line.splitlines()[1] == "Traceback (most recent call last):"
    assert line.splitlines()[-1].startswith("ValueError: cross-site\\x85forged")
    assert not any(0x7F <= ord(c) <= 0x9F for c in line)


def test_control_characters_are_escaped_in_json_lines() -> None:
    record = make_record("refused: %s", HOSTILE, header=HOSTILE)
    line = JsonFormatter().format(record)
    assert "\n" not in line and not any(0x7F <= ord(c) <= 0x9F or c == "\u2028" for c in line)
    entry = json.loads(line)  # escapes that parse back to what was logged
    assert entry["msg"] == "refused: " + HOSTILE and entry["header"] == HOSTILE


@pytest.mark.parametrize(
    "logged",
    [
        "GET /api/sessions?token=s3cr%2Ft+k%C3%A9y (127.0.0.1)",
        "GET /api/sessions?token=s3cr%2ft%20k%c3%a9y (127.0.0.1)",
        "GET /api/sessions?token=%73%33%63%72%2F%74%20%6B%C3%A9%79 (127.0.0.1)",
        "GET /api/sessions?token=s3cr/t kéy (127.0.0.1)",
    ],
)
def test_a_percent_encoded_secret_is_redacted(logged: str) -> None:
    line = TextFormatter(["s3cr/t kéy"]).format(make_record("200 %s", logged))
    assert line.endswith("200 GET /api/sessions?token=*** (127.0.0.1)"), line


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.gen_test(timeout=60)
async def test_a_hostile_sec_fetch_site_reaches_the_log_escaped(
    tmp_path: Path, services: list[Service], log_format: str
) -> None:
    service = start_service(tmp_path, BASE_CONF + f'log_format = "{log_format}"\n')
    services.append(service)
    hostile = upgrade_request(Sec_Fetch_Site="cross-site\x85\x9b31m")
    status, _, _ = await raw_http(service.port, hostile.decode().encode("latin-1"))
    assert status == 403
    service.process.terminate()
    assert service.wait_exit() == 0
    text = service.log.read_text(encoding="utf-8")
    escaped = "cross-site\\x85\\x9b31m" if log_format == "text" else "cross-site\\u0085\\u009b31m"
    assert escaped in text, text
    assert not any(0x7F <= ord(c) <= 0x9F for c in text), text


def test_levels_map_to_syslog_priorities() -> None:
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    assert [syslog_priority(level) for level in levels] == [7, 6, 4, 3, 2]


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = make_record("it failed")
        record.levelno, record.levelname = logging.ERROR, "ERROR"
        record.exc_info = sys.exc_info()
    lines = TextFormatter(journal=True).format(record).split("\n")
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines), lines
    entry = JsonFormatter(journal=True).format(make_record("hello"))
    assert entry.startswith("<6>{")
    assert json.loads(entry[3:])["pid"] == os.getpid()


def test_stderr_is_the_journal_only_when_device_and_inode_match(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as stream, (tmp_path / "b").open("w") as other:
        stat = os.fstat(stream.fileno())
        same = f"{stat.st_dev}:{stat.st_ino}"
        assert stderr_is_journal({"JOURNAL_STREAM": same}, stream.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": same}, other.fileno())
        assert not stderr_is_journal({}, stream.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "nonsense"}, stream.fileno())


@pytest.mark.gen_test(timeout=60)
async def test_a_service_under_journald_writes_priorities_workers_and_rejection_fields(
    tmp_path: Path, services: list[Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "server.log"  # start_service truncates it: same inode
    log.touch()
    stat = log.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    service = start_service(tmp_path, BASE_CONF + 'workers = 2\nlog_format = "json"\n')
    services.append(service)
    for _ in range(3):  # the same refusal again and again: one line, three counts
        status, _, _ = await raw_http(service.port, upgrade_request(Sec_WebSocket_Version="8"))
        assert status == 500
    lines = log.read_text().splitlines()
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    entries = [(int(line[1]), json.loads(line[3:])) for line in lines]
    started = [e for _, e in entries if e["msg"].startswith("listening on")]
    assert sorted(e["worker"] for e in started) == [0, 1]
    assert len({e["pid"] for e in started}) == 2
    rejected = [(p, e) for p, e in entries if e["msg"].startswith("rejected WebSocket upgrade")]
    # Each worker logs the first and withholds the rest (connections land on either).
    assert len(rejected) == len({e["pid"] for _, e in rejected}), rejected
    priority, entry = rejected[0]
    assert priority == 4
    assert entry["peer"] == "127.0.0.1"
    assert entry["status"] == 500
    assert entry["reason"] == "unsupported Sec-WebSocket-Version '8' (supported: 13)"
    service.process.terminate()
    assert service.wait_exit() == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_percent_encoded_admin_token_in_a_query_is_redacted_at_debug_level(
    tmp_path: Path, services: list[Service]
) -> None:
    conf = BASE_CONF + 'log_level = "debug"\naccess_log = true\nadmin_token = "s3cr/t+tok"\n'
    service = start_service(tmp_path, conf)
    services.append(service)
    request = b"GET /api/sessions?token=s3cr%2ft%2Btok HTTP/1.1\r\nHost: localhost\r\n\r\n"
    status, _, _ = await raw_http(service.port, request)
    assert status == 400  # an unknown parameter; the access line still names the URI
    service.process.terminate()
    assert service.wait_exit() == 0
    text = service.log.read_text()
    assert "/api/sessions?token=*** " in text, text
    assert "s3cr" not in text, text
