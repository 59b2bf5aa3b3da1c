"""Helpers shared by the benchmark scripts: build Go programs, start servers, run the tester."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
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


SERVER_KINDS = ("tornado-echo", "tornado", "aiohttp", "picows", "go")
# Scripts that print their port on the first line of stdout.
_PEER_SCRIPTS = {
    "tornado": "echo_server.py",
    "aiohttp": "aiohttp_server.py",
    "picows": "picows_server.py",
}


class Server:
    """An echo server process pinned to ``cpu``, listening at ``url`` once constructed.

    ``kind``: "tornado-echo" (this project, SQLite session records in ``workdir``,
    ``journal`` mode), "tornado" (the stock handler of echo_server.py), "aiohttp"
    (aiohttp_server.py), "picows" (picows_server.py) or "go" (gorilla); ``extra``: flags
    for the server, such as ``--engine tornado``; ``tls``: a (certificate, key) pair to
    serve wss:// with (all but "go").
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


def start_supervised(
    workdir: Path, cpus: str, workers: int, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """tornado-echo with ``workers`` processes pinned to ``cpus`` (a taskset list), at the
    default conf but for SQLite records in ``workdir`` and ``extra`` flags; its log in
    ``workdir/server.log``. Returns (process, port, log) once every worker is ready."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = workdir / "server.log"
    cmd = [
        "taskset", "-c", cpus, sys.executable, "-m", "tornado_echo", "--port", str(port),
        "--workers", str(workers), "--database-url", f"sqlite:///{workdir}/echo.db", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while f"all {workers} workers ready" not in log.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit("the server did not start:\n" + log.read_text())
        time.sleep(0.1)
    say(f"server: {' '.join(cmd[3:])}")
    return proc, port, log


def stop_supervised(proc: subprocess.Popen[bytes], workdir: Path, log: Path) -> None:
    """SIGTERM and wait; print the workers the supervisor killed and the session records
    by end state."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(120)
    text = log.read_text()
    say(f"workers SIGKILLed by the supervisor: {text.count('killing it')}")
    say(f"supervisor gave up: {'giving up' in text}; exit code {proc.returncode}")
    db = sqlite3.connect(workdir / "echo.db")
    query = "SELECT coalesce(end_state, 'open'), count(*) FROM ws_sessions GROUP BY 1"
    states = dict(db.execute(query).fetchall())
    db.close()
    say(f"sessions by end state: {states}")
