"""The command line: threshold exit codes, bad input, JSON output and merge."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.loadtest.conftest import Servers
from tornado_echo.loadtest.cli import ProgressLine, main
from tornado_echo.loadtest.engine import Progress


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def quick(servers: Servers, path: str = "/echo") -> list[str]:
    return [
        servers.url(path),
        "-c",
        "2",
        "-n",
        "5",
        "-w",
        "1",
        "-q",
        "--loop",
        "asyncio",
        "--timeout",
        "0.3",
    ]


def test_passing_run_prints_summary_and_exits_zero(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys,
        *quick(servers),
        "--max-p99-ms",
        "60000",
        "--max-error-rate",
        "0",
        "--min-throughput",
        "0.001",
    )
    assert code == 0
    assert "echoed ok 10" in out
    assert "round trip (corrected)" in out
    assert "THRESHOLD" not in out


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--max-p99-ms", "0.000001"], "--max-p99-ms"),
        (["--min-throughput", "1e12"], "--min-throughput"),
    ],
)
def test_latency_and_throughput_thresholds_fail_with_exit_1(
    servers: Servers, capsys: pytest.CaptureFixture[str], args: list[str], name: str
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers), *args)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("THRESHOLD FAILED")]
    assert len(failed) == 1 and name in failed[0]


def test_error_rate_threshold_fails_on_lost_echoes(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers, "/drop"), "--max-error-rate", "0.01")
    assert code == 1
    assert "THRESHOLD FAILED --max-error-rate" in out
    assert "lost 2" in out


def test_no_connection_opened_fails_without_thresholds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as closed_port:  # bound, never listening: connections refused
        closed_port.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{closed_port.getsockname()[1]}/ws"
        code, out, err = run_cli(capsys, url, "-c", "2", "-n", "1", "-w", "1", "-q")
    assert code == 3
    assert "refused 2" in out
    assert "none of 2 connections opened (refused 2)" in err


def test_error_rate_threshold_on_refused_upgrade(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers, "/status/503"), "--max-error-rate", "0.5")
    assert code == 1
    assert "handshake_503 2" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["http://127.0.0.1:1/"], "scheme must be ws:// or wss://"),
        (["ws://[::1/"], "Invalid IPv6 URL"),
        (["ws://127.0.0.1:1/", "-c", "x"], "invalid int value"),
        (["ws://127.0.0.1:1/", "-c", "0"], "--connections"),
        (["ws://127.0.0.1:1/", "--size", "8"], "--size"),
        (["ws://127.0.0.1:1/", "--rate", "10"], "--mode open"),
        (["ws://127.0.0.1:1/", "--mode", "open"], "--rate"),
        (["ws://127.0.0.1:1/", "-H", "nocolon"], "Name: value"),
        (["ws://192.0.2.1:1/"], "not a loopback address"),
        (["ws://127.0.0.1:1/", "--source-ip", "nonsense"], "--source-ip"),
        (["ws://127.0.0.1:1/", "-c", "30000", "-w", "1"], "--workers"),
        (["ws://127.0.0.1:1/", "--bogus"], "unrecognized arguments"),
        (["ws://127.0.0.1:1/", "--json", "/nonexistent/x.json"], "not writable"),
        ([], "required"),
        (["merge"], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tornado-echo-loadtest: error:")
    assert fragment in err
    assert "Traceback" not in err + out


def test_json_then_merge_adds_up_exactly(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first, second, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    assert run_cli(capsys, *quick(servers), "--json", str(first))[0] == 0
    assert run_cli(capsys, *quick(servers), "-n", "7", "--json", str(second))[0] == 0
    code, out, _ = run_cli(capsys, "merge", str(first), str(second), "--json", str(merged))
    assert code == 0
    a, b, m = (json.loads(p.read_text()) for p in (first, second, merged))
    assert m["stats"]["counters"]["messages_received"] == 10 + 14
    lat = [d["stats"]["histograms"]["latency"] for d in (a, b, m)]
    assert lat[2]["count"] == lat[0]["count"] + lat[1]["count"]
    buckets: dict[int, int] = {}
    for index, count in lat[0]["buckets"] + lat[1]["buckets"]:
        buckets[index] = buckets.get(index, 0) + count
    assert dict(map(tuple, lat[2]["buckets"])) == buckets
    assert lat[2]["max"] == max(lat[0]["max"], lat[1]["max"])
    assert m["sources"] == [str(first), str(second)]
    assert "echoed ok 24" in out


def test_merge_of_one_result_prints_what_the_run_printed(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = tmp_path / "a.json"
    code, run_out, _ = run_cli(capsys, *quick(servers, "/close/1011"), "--json", str(result))
    assert code == 0
    assert "connections over time (1 s per row)" in run_out
    code, merge_out, _ = run_cli(capsys, "merge", str(result))
    assert code == 0
    assert merge_out == run_out
    timeline = json.loads(result.read_text())["summary"]["timeline"]
    assert sum(row["dropped"] for row in timeline) == 2


def test_merge_thresholds_and_bad_files(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = tmp_path / "a.json"
    run_cli(capsys, *quick(servers), "--json", str(result))
    code, out, _ = run_cli(capsys, "merge", str(result), "--min-throughput", "1e12")
    assert code == 1 and "THRESHOLD FAILED --min-throughput" in out
    garbage = tmp_path / "g.json"
    garbage.write_text("{not json")
    for path in (garbage, tmp_path / "missing.json"):
        code, _, err = run_cli(capsys, "merge", str(path))
        assert code == 2 and err.count("\n") == 1 and str(path) in err
    other = tmp_path / "o.json"
    other.write_text('{"tool": "something else"}')
    code, _, err = run_cli(capsys, "merge", str(other))
    assert code == 2 and "not a tornado-echo-loadtest result" in err


def test_progress_lines_off_a_terminal() -> None:
    out = io.StringIO()
    line = ProgressLine(out, interval=1.0)
    snap = Progress(
        worker=0,
        elapsed=1.0,
        open=3,
        established=3,
        failed=1,
        dropped=0,
        sent=10,
        received=9,
        errors=1,
    )
    line([snap, snap])
    line([snap, snap])  # same second: not repeated
    line([replace(snap, elapsed=2.0, received=19), snap])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "open 6" in lines[0] and "failed 2" in lines[0] and "echoed 18" in lines[0]
    assert "echoed 28 (10/s)" in lines[1]


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--max-p99-ms" in capsys.readouterr().out


def test_script_wrapper_reports_bad_input_without_traceback() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "loadtest.py"
    proc = subprocess.run(
        [sys.executable, str(script), "ws://127.0.0.1:1/", "-c", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--connections" in proc.stderr
