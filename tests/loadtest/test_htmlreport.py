"""The --html report: one self-contained file that renders in a real browser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.loadtest.browser import CHROMIUM, Browser
from tests.loadtest.conftest import Servers
from tornado_echo.loadtest.cli import main
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.htmlreport import render, spectrum
from tornado_echo.loadtest.report import document
from tornado_echo.loadtest.stats import Stats

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed"
)


def report(servers: Servers, tmp_path: Path, path: str, *options: str) -> tuple[int, Path]:
    page = tmp_path / "report.html"
    argv = [servers.url(path), "-c", "3", "-w", "1", "-q", "--loop", "asyncio", "--timeout", "0.3"]
    return main([*argv, *options, "--html", str(page)]), page


@needs_chromium
@pytest.mark.parametrize(
    ("path", "options", "verdict"),
    [
        ("/echo", ("--rate", "50", "-d", "1.2"), "every check and threshold passed"),
        # How many are lost is the engine tests' business (a busy machine may add a late one).
        ("/drop", ("-n", "6"), "CHECK FAILED errors: lost "),
    ],
)
def test_report_renders_offline_without_console_errors(
    servers: Servers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    options: tuple[str, ...],
    verdict: str,
) -> None:
    code, page = report(servers, tmp_path, path, *options)
    capsys.readouterr()
    assert code in (0, 1)
    with Browser() as browser:
        log = browser.load(page.as_uri())
        assert log.errors == []
        # Self-contained: the file itself is the only thing the page loads.
        assert log.requests == [page.as_uri()]
        assert browser.evaluate("document.body.dataset.rendered") == "4"  # four charts
        assert browser.evaluate("document.querySelectorAll('.uplot canvas').length") == 4
        verdicts = browser.evaluate("document.querySelector('ul.verdicts').innerText")
        assert verdict in verdicts
        if os.environ.get("LOADTEST_REPORT_SCREENSHOT"):  # docs/loadtest-report.png
            browser.screenshot(Path(os.environ["LOADTEST_REPORT_SCREENSHOT"]))


@needs_chromium
def test_the_browser_check_sees_errors_and_requests(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('said'); null.boom;</script>"
    )
    with Browser() as browser:
        log = browser.load(page.as_uri())
    assert any("said" in error for error in log.errors)
    assert any("boom" in error for error in log.errors)
    assert "http://127.0.0.1:9/x.png" in log.requests


def test_spectrum_points_are_percentiles_of_the_histogram() -> None:
    hist = Histogram()
    for value in range(1, 1001):
        hist.record(value * 1_000_000)  # 1 .. 1000 ms
    points = spectrum(hist)
    assert points[0] == [1.0, 1.0]  # 0th percentile: the minimum
    assert points[-1][0] == pytest.approx(1000)  # as far as 1000 samples resolve (99.9%)
    assert points[-1][1] == pytest.approx(999, rel=1e-3)
    xs = [x for x, _ in points]
    assert xs == sorted(xs)
    assert spectrum(Histogram()) == []


def test_the_page_says_which_latency_it_shows_and_reads_like_settings() -> None:
    stats = Stats()
    stats.histograms["latency"].record(2_000_000)
    stats.histograms["latency_uncorrected"].record(1_000_000)
    config = {"url": "ws://127.0.0.1:1/ws", "mode": "open", "messages": None, "size": "64"}
    runs = [{"run_id": str(i), "label": f"/tmp/r{i}.json"} for i in range(2)]
    page = render(document(stats, config, runs), [])
    assert "latency ms, corrected for coordinated omission" in page
    assert "latency ms, as sent" in page
    assert "<title>tornado-echo-loadtest: ws://127.0.0.1:1/ws (2 runs merged)</title>" in page
    assert "null" not in page.split("<script")[0] and "&quot;64&quot;" not in page
    closed = render(document(stats, dict(config, mode="closed"), runs[:1]), [])
    assert "latency ms, closed loop (not corrected)" in closed
