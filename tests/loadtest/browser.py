"""Headless Chromium driven over the DevTools protocol (with the `websockets` client).

Opens a page, records every console error, uncaught exception and network request, and
can evaluate an expression or take a screenshot. Debian's ``chromium`` package; a fresh
profile per browser, nothing in the background that talks to the network.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1200,1000",
)


@dataclass
class PageLog:
    """What a page did while it loaded."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self) -> None:
        assert CHROMIUM is not None, "chromium is not installed"
        # Chromium's helper processes may still be writing there for a moment after it exits.
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        profile = Path(self._profile.name)
        self._active_port = profile / "DevToolsActivePort"
        self._process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers in one process group, ended with it
        )
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._session = ""

    def __enter__(self) -> Browser:
        # Chromium writes its port and browser endpoint to the profile once it listens.
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while len(lines) < 2:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start listening")
            if self._active_port.exists():
                lines = self._active_port.read_text().split()
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        self._ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=30))
        target = self.call("Target.createTarget", url="about:blank", session=False)
        attached = self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True, session=False
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # it may be gone already
                self._send("Browser.close", {}, session=False)
        self._stack.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # helpers left behind, if any
            os.killpg(self._process.pid, signal.SIGKILL)
        self._profile.cleanup()

    def _send(self, method: str, params: dict[str, Any], session: bool) -> int:
        assert self._ws is not None
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        return ident

    def _events(self, deadline: float, log: PageLog | None) -> Any:
        assert self._ws is not None
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if log is not None:
                _record(message, log)
            yield message

    def call(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events in between are dropped)."""
        ident = self._send(method, params, session)
        for message in self._events(time.monotonic() + 30, None):
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
        raise AssertionError("unreachable")

    def load(self, url: str, timeout: float = 30) -> PageLog:
        """Navigate to ``url`` and wait for its load event; what happened meanwhile."""
        log = PageLog()
        self._send("Page.navigate", {"url": url}, True)
        for message in self._events(time.monotonic() + timeout, log):
            if message.get("method") == "Page.loadEventFired":
                return log
        raise AssertionError("unreachable")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1200,
            height=int(height),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


def _record(message: dict[str, Any], log: PageLog) -> None:
    method = message.get("method")
    params = message.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        log.errors.append(details.get("exception", {}).get("description") or details["text"])
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        log.errors.append(" ".join(str(arg.get("value")) for arg in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        log.errors.append(params["entry"].get("text", ""))
    elif method == "Network.requestWillBeSent":
        log.requests.append(params["request"]["url"])
