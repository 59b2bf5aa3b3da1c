"""A real tornado-echo process and a real headless Chromium driven through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` packages (installed by .ci/run); the tests
skip with the reason when they are missing. Selenium is given both paths, so its manager
never looks for (or downloads) a browser or a driver.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService

from tests.helpers import BASE_CONF, Service, start_service

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Every network feature Chromium has of its own is off: the only traffic is to the server
# under test on loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)

# The engines the browser tests run against, one server each. Once the `engine` config key
# is on main, this is the one line to change: ENGINES = ["fast", "tornado"]. None leaves the
# configuration's default.
ENGINES: list[str | None] = [None]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver not installed (Debian: chromium chromium-driver)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: webdriver.Chrome) -> webdriver.Chrome:
    """The module's browser on a blank page with an empty console log."""
    chromium.get("about:blank")
    chromium.set_window_size(1280, 900)
    chromium.get_log("browser")  # reading the log empties it
    return chromium


@pytest.fixture(params=ENGINES, ids=lambda engine: engine or "default-engine")
def engine(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def serve(tmp_path: Path, services: list[Service], engine: str | None) -> Callable[..., Service]:
    """Starts tornado-echo as its own process with extra conf lines (key=TOML value)."""

    def start(**conf: str) -> Service:
        if engine is not None:
            conf.setdefault("engine", f'"{engine}"')
        lines = "".join(f"{key} = {value}\n" for key, value in conf.items())
        directory = tmp_path / f"server{len(services)}"
        directory.mkdir()
        service = start_service(directory, BASE_CONF + lines)
        services.append(service)
        return service

    return start
