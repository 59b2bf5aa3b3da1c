"""The README's commands do what it says: the quick start, the echo snippet, the log filter."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import eventually, fetch_rows, make_server
from tornado_echo.observability.logs import JsonFormatter

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def quick_start() -> list[str]:
    """The commands of the quick start's first code block, comments dropped."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_and_ci_runs_the_test_command() -> None:
    assert quick_start() == ["scripts/quickstart.sh", "scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "scripts/test.sh" in ci
    # Up front, before anything else: how long the tests take, and what they do to
    # the PostgreSQL server they find.
    head = README.split("## Documentation", 1)[0]
    assert re.search(r"the tests, about \d+ minutes on 2 cores", head)
    assert "create and drop databases and roles" in " ".join(head.split())
    assert "127.0.0.1:5432" in head


def test_the_readme_has_one_logs_section_and_links_the_moved_pages() -> None:
    assert re.findall(r"^#+ Logs$", README, re.MULTILINE) == ["## Logs"]
    for page in ("operations", "security", "tuning", "architecture"):
        assert f"(docs/{page}.md)" in README
        assert (REPO / "docs" / f"{page}.md").is_file()


@pytest.mark.gen_test(timeout=60)
async def test_the_echo_snippet_echoes_and_closes_cleanly(tmp_path: Path, sqlite_url: str) -> None:
    found = re.search(r'^\.venv/bin/python -c "\n(.*?)"$', README, re.MULTILINE | re.DOTALL)
    assert found, "no echo snippet in the README"
    server = make_server(tmp_path, sqlite_url)
    await server.start()
    try:
        code = found.group(1).replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert (process.returncode, out) == (0, b"hello\n")

        def ended() -> list[dict[str, object]]:
            return fetch_rows(sqlite_url, "SELECT end_state, close_code FROM ws_sessions")

        rows = await eventually(
            lambda: [r for r in ended() if r["end_state"] != "open"], timeout=10
        )
        assert rows == [{"end_state": "closed", "close_code": 1000}]
    finally:
        await server.shutdown()


def journal_entry(message: str, **fields: str) -> str:
    """One line of ``journalctl -o json`` as journald writes it (a subset of its fields)."""
    entry = {
        "__CURSOR": "s=1;i=1",
        "__REALTIME_TIMESTAMP": "1764748800000000",
        "_BOOT_ID": "0" * 32,
        "PRIORITY": "6",
        "_HOSTNAME": "echo1",
        "MESSAGE": message,
        **fields,
    }
    return json.dumps(entry)


SERVICE = {
    "_TRANSPORT": "stdout",
    "SYSLOG_IDENTIFIER": "tornado-echo",
    "_SYSTEMD_UNIT": "tornado-echo.service",
    "_PID": "4242",
}
SYSTEMD = {
    "_TRANSPORT": "journal",
    "SYSLOG_IDENTIFIER": "systemd",
    "_SYSTEMD_UNIT": "init.scope",
    "UNIT": "tornado-echo.service",
    "_PID": "1",
}


def test_the_log_command_keeps_the_services_json_lines_and_only_those(tmp_path: Path) -> None:
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq not installed (Debian package 'jq'); the README's log filter not run")
    [line] = [line for line in README.splitlines() if "-o json | jq" in line]
    command = shlex.split(line.split("#", 1)[0])
    assert command[:4] == ["journalctl", "-u", "tornado-echo", "-o"]
    program = command[command.index("|") + 1 :]
    assert program[0] == "jq"

    formatter = JsonFormatter(journal=False)  # journald strips the <N> priority prefix
    record = logging.LogRecord("tornado_echo.web.echo", logging.INFO, __file__, 1, "%s", (), None)
    record.msg = "session ended (closed)"
    record.close_code = 1000
    served = formatter.format(record)
    journal = [
        journal_entry(
            "Starting tornado-echo.service - tornado-echo WebSocket echo server...", **SYSTEMD
        ),
        journal_entry(served, **SERVICE),
        journal_entry(
            "tornado-echo: config error: /etc/tornado-echo/tornado-echo.toml: key"
            " 'max_connections': must be between 1 and 10000000, got -5",
            **SERVICE,
        ),
        journal_entry(
            "tornado-echo.service: Control process exited, code=exited, status=2/INVALIDARGUMENT",
            **SYSTEMD,
        ),
        journal_entry(
            "Reload failed for tornado-echo.service - tornado-echo WebSocket echo server.",
            **SYSTEMD,
        ),
        journal_entry(served.replace("session ended", "second"), **SERVICE),
    ]
    result = subprocess.run(
        [jq, *program[1:]],
        input="\n".join(journal) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [entry["msg"] for entry in out] == [
        "session ended (closed)",
        "tornado-echo: config error: /etc/tornado-echo/tornado-echo.toml: key"
        " 'max_connections': must be between 1 and 10000000, got -5",
        "second (closed)",
    ]
    assert out[0]["close_code"] == 1000 and out[0]["logger"] == "tornado_echo.web.echo"


@pytest.mark.slow
def test_the_quick_start_installs_what_serving_needs_once() -> None:
    stamp = REPO / ".venv" / ".installed"
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in the checkout: run the README's commands first")
    stamp.unlink(missing_ok=True)

    def quickstart() -> subprocess.CompletedProcess[str]:
        command = [str(REPO / "scripts" / "quickstart.sh"), "--version"]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    first = quickstart()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("tornado-echo ")
    # The package alone: not its test extra, which scripts/test.sh adds.
    assert "installing . into .venv" in first.stderr
    again = quickstart()
    assert (again.returncode, again.stderr) == (0, "")  # no pip this time
    assert again.stdout == first.stdout
