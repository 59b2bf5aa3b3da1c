"""The console in headless Chromium against a real server process: the browser's own
WebSocket client echoes, negotiates compression, watches the figures move and sees the
server's close."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from tests.helpers import Service
from tests.web.console.conftest import webdriver

# Real processes (server, browser, nginx): seconds each.
pytestmark = pytest.mark.slow

TIMEOUT = 30.0  # seconds; the machine is shared, every wait is on a condition


def wait(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any]) -> Any:
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(condition)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def number(driver: webdriver.Chrome, element_id: str, attribute: str = "data-value") -> float:
    return float(driver.find_element(By.ID, element_id).get_attribute(attribute) or 0)


def open_console(driver: webdriver.Chrome, service: Service) -> None:
    driver.get(f"http://127.0.0.1:{service.port}/")
    wait(driver, lambda d: text(d, "live-status").startswith("updated"))


def connect_page(driver: webdriver.Chrome) -> None:
    driver.find_element(By.ID, "connect").click()
    wait(driver, lambda d: text(d, "state") == "open")


def echoes(driver: webdriver.Chrome, count: int) -> list[Any]:
    """The log entries once ``count`` messages have been echoed, oldest first."""
    selector = "#log li.sent[data-equal]"
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= count)
    return list(reversed(driver.find_elements(By.CSS_SELECTOR, selector)))


def severe(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_loads_clean_and_fits_a_phone(browser: webdriver.Chrome, serve: Any) -> None:
    service = serve()
    open_console(browser, service)
    url = browser.find_element(By.ID, "url").get_attribute("value")
    assert url == f"ws://127.0.0.1:{service.port}/ws"
    # Every control is labelled: a <label>, or a button's own text.
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, textarea, button, select')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim())"
        ".map(e => e.outerHTML)"
    )
    assert unlabelled == []
    browser.set_window_size(390, 844)
    wait(browser, lambda d: d.execute_script("return window.innerWidth") <= 400)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow == 0
    # A few refreshes of the live view, then not one error in the console.
    shown = text(browser, "live-status")
    wait(browser, lambda d: text(d, "live-status") != shown)
    assert severe(browser) == []
    assert browser.get_log("browser") == []


def test_typed_text_and_hex_binary_echo_equal_by_keyboard(
    browser: webdriver.Chrome, serve: Any
) -> None:
    open_console(browser, serve())
    browser.find_element(By.ID, "url").send_keys(Keys.ENTER)  # submits the connect form
    wait(browser, lambda d: text(d, "state") == "open")
    message = browser.switch_to.active_element
    assert message.get_attribute("id") == "message"
    typed = "héllo, wörld ✓ <b>not html</b>"
    message.send_keys(typed, Keys.CONTROL, Keys.ENTER)
    (echo,) = echoes(browser, 1)
    assert echo.get_attribute("data-kind") == "text"
    assert echo.get_attribute("data-equal") == "true"
    assert echo.find_element(By.CLASS_NAME, "payload").text == typed
    assert float(echo.get_attribute("data-rtt")) > 0

    text_radio = browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="text"]')
    text_radio.send_keys(Keys.ARROW_RIGHT)  # the radio group moves to "Binary from hex"
    assert browser.find_element(By.CSS_SELECTOR, 'input[value="hex"]').is_selected()
    message = browser.find_element(By.ID, "message")
    message.clear()
    message.send_keys("00 ff 10:80 7F", Keys.CONTROL, Keys.ENTER)
    _, binary = echoes(browser, 2)
    assert binary.get_attribute("data-kind") == "binary"
    assert binary.get_attribute("data-size") == "5"
    assert binary.get_attribute("data-equal") == "true"
    assert binary.find_element(By.CLASS_NAME, "payload").text == "00 ff 10 80 7f"

    message.clear()
    message.send_keys("abc", Keys.CONTROL, Keys.ENTER)  # odd digits: refused on the page
    assert "even number of digits" in text(browser, "send-error")

    browser.find_element(By.ID, "disconnect").send_keys(Keys.ENTER)
    wait(browser, lambda d: text(d, "state") == "closed")
    assert text(browser, "close") == "1000"  # the server answers with the code alone
    assert severe(browser) == []


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "no-compression"])
def test_compression_and_a_large_file_round_trip(
    browser: webdriver.Chrome, serve: Any, tmp_path: Path, compression: bool
) -> None:
    open_console(browser, serve(compression=str(compression).lower()))
    connect_page(browser)
    expected = "permessage-deflate" if compression else "none"
    assert text(browser, "extensions").startswith(expected)
    assert text(browser, "protocol") == "none"
    # 200 KB: compressible text with random bytes in it, sent as a binary message.
    payload = (b"tornado-echo " * 8000 + os.urandom(100_000))[:204_800]
    upload = tmp_path / "large.bin"
    upload.write_bytes(payload)
    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="file"]').click()
    browser.find_element(By.ID, "file").send_keys(str(upload))
    browser.find_element(By.ID, "send").click()
    (echo,) = echoes(browser, 1)
    assert echo.get_attribute("data-size") == str(len(payload))
    assert echo.get_attribute("data-equal") == "true"
    assert severe(browser) == []


@contextmanager
def traffic(port: int, clients: int) -> Iterator[threading.Event]:
    """``clients`` loopback connections echoing a message every 20 ms until the block ends;
    each closes with 1000."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(f"ws://127.0.0.1:{port}/ws") as client:
                while not stop.wait(0.02):
                    client.send("tick")
                    assert client.recv(timeout=10) == "tick"
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert errors == []


def test_counters_move_when_traffic_runs(browser: webdriver.Chrome, serve: Any) -> None:
    service = serve()
    open_console(browser, service)
    assert text(browser, "open") == "0"
    with traffic(service.port, clients=3):
        wait(browser, lambda d: text(d, "open") == "3")
        wait(browser, lambda d: number(d, "msg-rate") > 0)  # the last second's rate
        wait(browser, lambda d: number(d, "messages") >= 30)
        wait(browser, lambda d: number(d, "chart", "data-peak") > 0)
        wait(browser, lambda d: text(d, "lag").endswith(" ms"))
    wait(browser, lambda d: text(d, "open") == "0")
    wait(browser, lambda d: "1000 normal closed 3" in text(d, "close-codes"))
    assert "accepted 3" in text(browser, "handshakes")
    assert severe(browser) == []


def test_server_shutdown_shows_going_away(browser: webdriver.Chrome, serve: Any) -> None:
    service = serve()
    open_console(browser, service)
    connect_page(browser)
    service.process.send_signal(signal.SIGTERM)
    wait(browser, lambda d: text(d, "state") == "closed")
    assert browser.find_element(By.ID, "close").get_attribute("data-code") == "1001"
    assert text(browser, "close") == "1001 server shutting down"
    assert service.wait_exit() == 0
    wait(browser, lambda d: "server unreachable" in text(d, "live-status"))


def test_behind_the_shipped_nginx_conf(
    browser: webdriver.Chrome, serve: Any, nginx: Callable[[int], int]
) -> None:
    service = serve(behind_proxy="true", admin_token='"s3cret"')  # as conf/production.toml
    port = nginx(service.port)
    browser.get(f"http://127.0.0.1:{port}/")
    wait(browser, lambda d: text(d, "live-status").startswith("updated"))
    assert browser.find_element(By.ID, "url").get_attribute("value") == f"ws://127.0.0.1:{port}/ws"
    connect_page(browser)
    assert text(browser, "extensions").startswith("permessage-deflate")
    browser.find_element(By.ID, "message").send_keys("through nginx", Keys.CONTROL, Keys.ENTER)
    (echo,) = echoes(browser, 1)
    assert echo.get_attribute("data-equal") == "true"

    # Sessions are asked for only once a token is given. (Who may see them is tested in
    # test_handlers: this browser is a loopback peer, through nginx too.)
    browser.find_element(By.CSS_SELECTOR, "#admin summary").click()
    assert not browser.find_element(By.ID, "sessions").is_displayed()
    browser.find_element(By.ID, "token").send_keys("s3cret", Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.ID, "sessions").is_displayed())
    assert "127.0.0.1" in text(browser, "sessions")  # the proxied peer: this browser
    assert severe(browser) == []
