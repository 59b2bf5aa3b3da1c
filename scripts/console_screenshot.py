#!/usr/bin/env python3
"""Take docs/console.png: the console of a running local server, with some traffic.

    tornado-echo --port 8080 &            # a server on this machine
    scripts/console_screenshot.py [http://127.0.0.1:8080/] [docs/console.png]

Needs Debian's chromium and chromium-driver and the test extras (selenium). A few loopback
clients echo for about half a minute so that the figures and the chart have something to
show; the page itself sends a text and a binary message.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests/
from tests.console.conftest import CHROMIUM_FLAGS

SECONDS = 30
CLIENTS = 4


def clients(ws_url: str, stop: threading.Event) -> None:
    def run(number: int) -> None:
        with connect(ws_url) as client:
            while not stop.wait(0.01 * (number + 1)):
                client.send(f"client {number}")
                client.recv()

    for number in range(CLIENTS):
        threading.Thread(target=run, args=(number,), daemon=True).start()


def main(page_url: str = "http://127.0.0.1:8080/", out: str = "docs/console.png") -> int:
    parts = urlsplit(page_url)
    if parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        print("the traffic this makes is for a server on this machine only", file=sys.stderr)
        return 2
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp()}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    stop = threading.Event()
    try:
        driver.set_window_size(1280, 1000)
        driver.get(page_url)
        ws_url = driver.find_element(By.ID, "url").get_attribute("value")
        clients(ws_url, stop)
        driver.find_element(By.ID, "connect").click()
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "state").text == "open")
        driver.find_element(By.ID, "message").send_keys("Hello from the console ✓")
        driver.find_element(By.ID, "send").click()
        driver.find_element(By.CSS_SELECTOR, 'input[value="hex"]').click()
        driver.find_element(By.ID, "message").clear()
        driver.find_element(By.ID, "message").send_keys("de ad be ef 00 01 02 03")
        driver.find_element(By.ID, "send").click()
        time.sleep(SECONDS)  # the chart fills by the second
        stop.set()
        driver.save_screenshot(out)
    finally:
        stop.set()
        driver.quit()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
