"""The command line: threshold exit codes, bad input, JSON output and merge."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.loadtest.conftest import Servers
from tornado_echo.loadtest.cli import ProgressLine, build_config, main, merge_parser, run_parser
from tornado_echo.loadtest.engine import Progress
from tornado_echo.loadtest.histogram import Histogram


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
    assert "THRESHOLD" not in out


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--max-p50-ms", "0.000001"], "--max-p50-ms"),
        (["--max-p99-ms", "0.000001"], "--max-p99-ms"),
        (["--max-p999-ms", "0.000001"], "--max-p999-ms"),
        (["--max-latency-ms", "0.000001"], "--max-latency-ms"),
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


def test_closed_loop_says_it_is_not_corrected_and_warns_of_a_hidden_stall(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = tmp_path / "closed.json"
    argv = [servers.url("/stall"), "-c", "1", "-n", "200", "-q", "--loop", "asyncio"]
    code, out, _ = run_cli(capsys, *argv, "--json", str(result))
    assert code == 0
    assert "(corrected)" not in out and "round trip " in out
    assert "NOT corrected for coordinated omission" in out
    [warning] = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert "stalled" in warning and "--rate" in warning
    summary = json.loads(result.read_text())["summary"]
    assert not summary["latency_corrected"] and summary["latency_ms"]["max"] >= 1000
    # Open loop against the same stall: the percentiles show it, nothing to warn about.
    code, out, _ = run_cli(capsys, *argv, "--rate", "400", "--json", str(result))
    assert code == 0
    assert "round trip (corrected)" in out and "WARNING" not in out
    summary = json.loads(result.read_text())["summary"]
    assert summary["latency_corrected"] and summary["latency_ms"]["p90"] >= 500


def test_thresholds_on_a_run_with_no_connection_opened_still_exit_3(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers, "/status/503"), "--max-error-rate", "0.5")
    assert code == 3
    assert "handshake_503 2" in out
    assert "THRESHOLD FAILED --max-error-rate" in out


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/drop", "lost 2"),
        ("/retype", "retyped 2"),
        ("/wrong", "mismatch 10"),
        ("/dup", "duplicate"),
        ("/close/1011", "close_1011 2"),
        ("/flaky", "handshake_503"),
    ],
)
def test_any_error_fails_the_run_by_default(
    servers: Servers, capsys: pytest.CaptureFixture[str], path: str, error: str
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers, path))
    assert code == 1
    [failed] = [line for line in out.splitlines() if "FAILED" in line]
    assert failed.startswith("CHECK FAILED errors: ") and error in failed
    code, out, _ = run_cli(capsys, *quick(servers, path), "--allow-errors")
    assert code == 0 and "FAILED" not in out


def test_connection_failure_rate_threshold(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*quick(servers, "/flaky"), "-c", "4", "--allow-errors"]
    code, out, _ = run_cli(capsys, *argv, "--max-conn-failure-rate", "0.6")
    assert code == 0, out
    code, out, _ = run_cli(capsys, *argv, "--max-conn-failure-rate", "0.1")
    assert code == 1
    assert "THRESHOLD FAILED --max-conn-failure-rate: 2 of 4 connections failed" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["http://127.0.0.1:1/"], "scheme must be ws:// or wss://"),
        (["ws://[::1/"], "Invalid IPv6 URL"),
        (["ws://127.0.0.1:1/", "-c", "x"], "invalid int value"),
        (["ws://127.0.0.1:1/", "-c", "0"], "--connections"),
        (["ws://127.0.0.1:1/", "--size", "8"], "--size"),
        (["ws://127.0.0.1:1/", "--rate", "10", "--mode", "closed"], "--mode closed"),
        (["ws://127.0.0.1:1/", "--mode", "open"], "--rate"),
        (["ws://127.0.0.1:1/", "-H", "nocolon"], "Name: value"),
        (["ws://192.0.2.1:1/"], "not a loopback address"),
        (["ws://127.0.0.1:1/", "--source-ip", "nonsense"], "--source-ip"),
        (["ws://127.0.0.1:1/", "-c", "30000", "-w", "1"], "--workers"),
        (["ws://127.0.0.1:1/", "--bogus"], "unrecognized arguments"),
        (["ws://127.0.0.1:1/", "--stage", "1:5", "-c", "3"], "peak 5"),
        (["ws://127.0.0.1:1/", "--stage", "1:x"], "--stage"),
        (["ws://127.0.0.1:1/", "--churn", "0"], "--churn"),
        (["ws://127.0.0.1:1/", "--reconnect", "-n", "5"], "need --duration"),
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


def test_merge_refuses_a_run_twice_and_different_settings(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first, second, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    big = tmp_path / "big.json"
    assert run_cli(capsys, *quick(servers), "--json", str(first))[0] == 0
    assert run_cli(capsys, *quick(servers), "--json", str(second))[0] == 0
    assert run_cli(capsys, *quick(servers), "-s", "100", "--json", str(big))[0] == 0
    copy = tmp_path / "copy.json"
    copy.write_text(first.read_text())
    for argv in ([first, first], [first, copy]):
        code, _, err = run_cli(capsys, "merge", *map(str, argv))
        assert code == 2 and "already in" in err and "twice" in err
    assert run_cli(capsys, "merge", str(first), str(second), "--json", str(merged))[0] == 0
    code, _, err = run_cli(capsys, "merge", str(merged), str(second))  # inside a merged one
    assert code == 2 and "already in" in err
    code, _, err = run_cli(capsys, "merge", str(first), str(big))
    assert code == 2 and "differ in size" in err and '"100"' in err
    code, out, err = run_cli(capsys, "merge", str(first), str(big), "--allow-mixed")
    assert code == 0
    assert "warning: merged runs with different size" in err
    assert "WARNING: merged runs with different size" in out


def test_merge_counts_time_once_per_span_and_lists_its_runs(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first, second, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    assert run_cli(capsys, *quick(servers), "--json", str(first))[0] == 0
    assert run_cli(capsys, *quick(servers), "--json", str(second))[0] == 0
    page = tmp_path / "m.html"
    argv = ["merge", str(first), str(second), "--json", str(merged), "--html", str(page)]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert str(first) in page.read_text() and str(second) in page.read_text()
    a, b, m = (json.loads(p.read_text()) for p in (first, second, merged))
    # One run after the other: the merged throughput is over both runs' time, not the longer.
    elapsed = a["summary"]["elapsed_s"] + b["summary"]["elapsed_s"]
    # (wall-clock spans: float rounding at ~1.7e9 s is about 1e-7 s)
    assert m["summary"]["elapsed_s"] == pytest.approx(elapsed, abs=1e-5)
    assert m["summary"]["throughput"]["msgs_per_s"] == pytest.approx(20 / elapsed, rel=1e-2)
    assert [run["label"] for run in m["runs"]] == [str(first), str(second)]
    lines = out.splitlines()
    start = lines.index("merged runs") + 2
    assert [line.split()[-1] for line in lines[start : start + 2]] == [str(first), str(second)]


def test_merge_of_one_result_prints_what_the_run_printed(
    servers: Servers, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = tmp_path / "a.json"
    argv = [*quick(servers, "/close/1011"), "--json", str(result), "--allow-errors"]
    code, run_out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert "connections over time (1 s per row)" in run_out
    code, merge_out, _ = run_cli(capsys, "merge", str(result), "--allow-errors")
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
    doc = json.loads(result.read_text())
    run = {"run_id": "a", "label": "x"}
    for runs, windows in (
        ([{"label": "x"}], None),
        ([run, {"run_id": "b"}], None),  # a second run without a label
        ("nonsense", None),
        (None, [[1, "a"]]),
    ):
        damaged = tmp_path / "d.json"
        stats = dict(doc["stats"], windows=windows) if windows else doc["stats"]
        damaged.write_text(json.dumps(dict(doc, runs=runs, stats=stats)))
        code, out, err = run_cli(capsys, "merge", str(damaged))
        assert code == 2 and err.count("\n") == 1 and str(damaged) in err, (runs, err)


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
    assert "p50 - p99 -" in lines[1]  # no latency samples in these snapshots


def test_progress_shows_the_last_intervals_percentiles_and_error_classes() -> None:
    out = io.StringIO()
    fast, slow = Histogram(), Histogram()
    for _ in range(98):
        fast.record(1_000_000)  # 1 ms
    for _ in range(2):
        slow.record(80_000_000)  # 80 ms
    snap = Progress(
        worker=0,
        elapsed=1.0,
        open=2,
        established=2,
        failed=0,
        dropped=1,
        sent=100,
        received=98,
        errors=3,
        latency_buckets=tuple(fast.buckets()),
        error_classes=(("close_1011", 1), ("lost", 2)),
    )
    other = replace(snap, worker=1, latency_buckets=tuple(slow.buckets()), error_classes=())
    ProgressLine(out, interval=1.0)([snap, other])
    [line] = out.getvalue().splitlines()
    # The two workers' intervals merged (a bucket's upper bound: at most 0.1% above).
    assert "p50 1.00 ms p99 80.0" in line
    assert "errors 6 (close_1011 1, lost 2)" in line


@pytest.mark.parametrize("argv", [["--help"], ["merge", "--help"]])
def test_help_exits_zero_and_lists_the_exit_codes(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-p99-ms" in out
    assert "exit codes:" in out and "130" in out


@pytest.mark.parametrize("parser", [run_parser, merge_parser])
def test_every_option_has_help(parser: Callable[[], argparse.ArgumentParser]) -> None:
    actions = parser()._actions
    assert [a.dest for a in actions if not a.help] == []


def test_stages_set_connections_duration_and_open_loop() -> None:
    argv = ["ws://127.0.0.1:1/", "--stage", "2:10:5", "--stage", "3:40"]
    cfg = build_config(run_parser().parse_args(argv))
    assert (cfg.connections, cfg.duration, cfg.mode, cfg.rate) == (40, 5.0, "open", 5.0)
    cfg = build_config(run_parser().parse_args(["ws://127.0.0.1:1/", "--stage", "2:10"]))
    assert (cfg.connections, cfg.duration, cfg.mode) == (10, 2.0, "closed")


def test_rate_alone_means_open_loop() -> None:
    for option in ("--rate", "--total-rate"):
        cfg = build_config(run_parser().parse_args(["ws://127.0.0.1:1/", option, "10"]))
        assert cfg.mode == "open"
    assert build_config(run_parser().parse_args(["ws://127.0.0.1:1/"])).mode == "closed"


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


def test_a_client_starved_of_cpu_is_judged_client_bound(servers: Servers, tmp_path: Path) -> None:
    # The tester at nice 15 shares one CPU with two busy processes at nice 0: it waits in
    # the run queue most of the time it could run, however little CPU it gets.
    cpu = max(os.sched_getaffinity(0))

    def pin(niceness: int) -> Callable[[], None]:
        def apply() -> None:
            os.sched_setaffinity(0, {cpu})
            os.nice(niceness)

        return apply

    # Busy for a bounded time, from after the tester's start-up (imports) on.
    spin = [
        sys.executable,
        "-c",
        "import time\ntime.sleep(0.5)\nend = time.time() + 4\nwhile time.time() < end: pass",
    ]
    spinners = [subprocess.Popen(spin, preexec_fn=pin(0)) for _ in range(2)]
    result = tmp_path / "starved.json"
    try:
        # A starved client reads its echoes late (hundreds of ms in a loaded CI run): that
        # is the condition under test, not an error of the server's, so no echo is "late".
        argv = [*quick(servers), "-c", "10", "-n", "1000000", "-d", "2", "--timeout", "10"]
        argv += ["--json", str(result)]
        proc = subprocess.run(
            [sys.executable, "-m", "tornado_echo.loadtest.cli", *argv],
            preexec_fn=pin(15),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saturation = json.loads(result.read_text())["summary"]["saturation"]
    [worker] = saturation["workers"]
    assert worker["run_queue_fraction"] >= 0.2, worker
    assert saturation["client_bound"]
    assert any("waited for a CPU" in reason for reason in saturation["reasons"])
    assert "CLIENT-BOUND" in proc.stdout


def test_progress_off_a_terminal_covers_its_whole_window_stalls_included() -> None:
    # Lines every 5 s from snapshots every second: a stall inside the window must show.
    out = io.StringIO()
    line = ProgressLine(out, interval=5.0)
    fast, stall = Histogram(), Histogram()
    for _ in range(200):
        fast.record(1_000_000)  # 1 ms
    stall.record(1_000_000_000)  # one echo held for a second
    snap = Progress(
        worker=0,
        elapsed=1.0,
        open=1,
        established=1,
        failed=0,
        dropped=0,
        sent=1,
        received=1,
        errors=0,
        latency_buckets=tuple(fast.buckets()),
    )
    line([snap])
    line([replace(snap, elapsed=2.0, latency_buckets=tuple(stall.buckets()))])
    for second in range(3, 7):
        line([replace(snap, elapsed=float(second))])
        line([replace(snap, elapsed=float(second))])  # a second worker's report: seen once
    first, window = out.getvalue().splitlines()
    assert "max 1.00 ms" in first
    assert "p50 1.00 ms" in window and "max 1000" in window


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for option, default in (
        ("--timeout", "5.0"),
        ("--size", "64"),
        ("--inflight", "1"),
        ("--connect-concurrency", "1000"),
    ):
        start = next(i for i, line in enumerate(lines) if f" {option} " in line)
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  -"))
        assert f"default {default})" in " ".join(" ".join(lines[start:end]).split()), option


def test_a_settings_banner_goes_to_stderr_at_the_start(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a for a in quick(servers) if a != "-q"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0
    first = err.splitlines()[0]
    assert servers.url("/echo") in first
    assert "2 connections" in first and "closed loop" in first and "timeout 0.3 s" in first


def test_client_bound_fails_the_run_when_asked(
    servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "r.json"
    assert run_cli(capsys, *quick(servers), "--json", str(result))[0] == 0
    doc = json.loads(result.read_text())
    for worker in doc["stats"]["workers"]:
        worker.update(cpu_fraction=0.99, elapsed=5.0)  # as a worker held at a full core
    result.write_text(json.dumps(doc))
    code, out, _ = run_cli(capsys, "merge", str(result))
    assert code == 0 and "CLIENT-BOUND" in out
    code, out, _ = run_cli(capsys, "merge", str(result), "--fail-client-bound")
    assert code == 1 and "CHECK FAILED client-bound: worker 0 used 99% of a core" in out


def test_a_closed_loop_prints_no_send_schedule_row_and_says_how_fast_it_opened(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, *quick(servers))
    assert code == 0
    assert "send-schedule lag" not in out
    summary_line = next(line for line in out.splitlines() if line.startswith("connections"))
    # Opened within milliseconds: the rate is over that time, not the whole run's.
    opened = float(summary_line.split("  opened ")[1].split("/s")[0])
    assert opened > 100, summary_line


def test_merged_saturation_reasons_name_the_run_of_each_worker(
    servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.json"
        assert run_cli(capsys, *quick(servers), "--json", str(path))[0] == 0
        doc = json.loads(path.read_text())
        for worker in doc["stats"]["workers"]:
            worker.update(cpu_fraction=0.99, elapsed=5.0)
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    _, out, _ = run_cli(capsys, "merge", *paths)
    assert f"worker 0 of {paths[0]} used 99%" in out and f"worker 0 of {paths[1]} used" in out
