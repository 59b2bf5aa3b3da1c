"""Helpers shared by the benchmark scripts: build Go programs, start servers, run the tester."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"  # Debian's golang-github-gorilla-websocket-dev lives here


def say(text: str) -> None:
    """One line of benchmark output."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def build_go(name: str, outdir: Path) -> Path:
    """Build benchmarks/NAME/main.go with Debian's Go toolchain (GOPATH mode, offline)."""
    if shutil.which("go") is None:
        sys.exit("go not found: apt-get install -y golang-go golang-github-gorilla-websocket-dev")
    binary = outdir / name
    env = dict(
        os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", GOCACHE=str(outdir / "gocache")
    )
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=HERE / name, env=env, check=True)
    return binary


SERVER_KINDS = ("tornado-echo", "tornado", "aiohttp", "go")
# Scripts that print their port on the first line of stdout.
_PEER_SCRIPTS = {"tornado": "echo_server.py", "aiohttp": "aiohttp_server.py"}


class Server:
    """An echo server process pinned to ``cpu``, listening at ``url`` once constructed.

    ``kind``: "tornado-echo" (this project, SQLite session records in ``workdir``,
    ``journal`` mode), "tornado" (the stock handler of echo_server.py), "aiohttp"
    (aiohttp_server.py) or "go" (gorilla); ``extra``: flags for the server, such as
    ``--engine tornado``; ``tls``: a (certificate, key) pair to serve wss:// with (all but
    "go").
    """

    def __init__(
        self,
        kind: str,
        cpu: int,
        workdir: Path,
        journal: str = "off",
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        env = dict(os.environ, GOMAXPROCS="1")
        if tls is not None:
            if kind == "go":
                raise RuntimeError("the Go server has no TLS")
            extra = (*extra, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]))
        if kind == "tornado-echo":
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            cmd = [
                sys.executable,
                "-m",
                "tornado_echo",
                "--port",
                str(port),
                # The default log level: the per-session line is the access log, off
                # unless an ``extra`` flag turns it on (its lines go to server.log).
                "--database-url",
                f"sqlite:///{workdir}/echo.db",
                "--journal",
                journal,
                "--max-connections",  # the most one process's 20000 fds allow
                "19500",
                *extra,
            ]
            with (workdir / "server.log").open("a") as log:
                self.proc = subprocess.Popen(
                    ["taskset", "-c", str(cpu), *cmd], cwd=workdir, stderr=log
                )
            _wait_listening(port)
        else:
            cmd = (
                [str(build_go("goserver", workdir))]
                if kind == "go"
                else [sys.executable, str(HERE / _PEER_SCRIPTS[kind])]
            ) + list(extra)
            self.proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *cmd], stdout=subprocess.PIPE, text=True, env=env
            )
            assert self.proc.stdout is not None
            port = int(self.proc.stdout.readline())
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ws"

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server came up on port {port}")


def run_loadtest(cpu: int | None, args: list[str], timeout: float = 300) -> dict[str, Any]:
    """Run tornado-echo-loadtest (optionally pinned); the whole --json result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "tornado_echo.loadtest.cli", *args, "-q", "--json", str(out)]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode not in (0, 1) or not out.exists():
            sys.exit(f"loadtest failed ({proc.returncode}): {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result
