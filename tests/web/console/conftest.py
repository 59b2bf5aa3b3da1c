"""A real tornado-echo process and a real headless Chromium driven through chromedriver.

Debian's ``chromium`` and ``chromium-driver`` packages (installed by .ci/run); the tests
skip with the reason when they are missing. Selenium is given both paths, so its manager
never looks for (or downloads) a browser or a driver.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService

from tests.helpers import BASE_CONF, Service, eventually_blocking, start_service
from tests.test_nginx import NGINX, NGINX_CONF, free_port, write_nginx_conf

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
)


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


@pytest.fixture
def serve(tmp_path: Path, services: list[Service], engine: str) -> Callable[..., Service]:
    """Starts tornado-echo as its own process, on each engine (the ``engine`` fixture), with
    extra conf lines (key=TOML value)."""

    def start(**conf: str) -> Service:
        conf.setdefault("engine", f'"{engine}"')
        lines = "".join(f"{key} = {value}\n" for key, value in conf.items())
        directory = tmp_path / f"server{len(services)}"
        directory.mkdir()
        service = start_service(directory, BASE_CONF + lines)
        services.append(service)
        return service

    return start


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int], int]]:
    """Runs the shipped conf/nginx.conf in front of a backend port; returns nginx's port."""
    if NGINX is None:
        pytest.skip("nginx not installed (Debian package 'nginx-light' or 'nginx')")
    running: list[subprocess.Popen[str]] = []

    def start(backend: int) -> int:
        assert NGINX is not None
        text = NGINX_CONF.read_text()
        text = re.sub(r"^\s*server 127\.0\.0\.1:8082 .*\n", "", text, flags=re.MULTILINE)
        text = text.replace("server 127.0.0.1:8081", f"server 127.0.0.1:{backend}")
        port = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        conf = write_nginx_conf(text, prefix, port)
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stderr=(prefix / "stderr").open("w"),
            text=True,
        )
        running.append(process)
        eventually_blocking(
            lambda: process.poll() is not None or listening(port),
            "nginx listening",
            timeout=30,
            detail=(prefix / "stderr").read_text,
        )
        assert process.poll() is None, (prefix / "stderr").read_text()
        return port

    yield start
    for process in running:
        process.terminate()
        process.wait(30)
