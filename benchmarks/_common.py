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


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and its key, made with openssl."""
    if shutil.which("openssl") is None:
        sys.exit("openssl not found: apt-get install -y openssl")
    cert, key = directory / "bench.pem", directory / "bench.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


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
    workdir: Path,
    cpus: str,
    workers: int,
    extra: tuple[str, ...] = (),
    port: int = 0,
    log_name: str = "server.log",
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """tornado-echo with ``workers`` processes pinned to ``cpus`` (a taskset list), at the
    default conf but for SQLite records in ``workdir`` and ``extra`` flags, on ``port`` (0:
    a free one); its log in ``workdir/log_name``. Returns (process, port, log) once every
    worker is ready."""
    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    log = workdir / log_name
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


def stop_supervised(
    proc: subprocess.Popen[bytes], workdir: Path, log: Path
) -> tuple[int, dict[str, int]]:
    """SIGTERM and wait; print and return the workers the supervisor killed and the
    session records by end state."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(120)
    text = log.read_text()
    killed = text.count("killing it")
    say(f"workers SIGKILLed by the supervisor: {killed}")
    if at_stop := killed_at_stop(text):  # their open sessions are marked crashed at the next start
        say(f"of them at shutdown (stuck past the deadline and grace, or at the limit): {at_stop}")
    say(f"supervisor gave up: {'giving up' in text}; exit code {proc.returncode}")
    say(f"sessions by end state: {(states := session_states(workdir))}")
    return killed, states


def killed_at_stop(log: str) -> int:
    """Workers the supervisor's log says it SIGKILLed while stopping (the supervisor's
    messages: stuck past the deadline and its grace, or still there at its limit)."""
    return log.count(" past the shutdown deadline and has made no progress") + log.count(
        " after SIGTERM, the limit"
    )


def session_states(workdir: Path) -> dict[str, int]:
    """Session records in ``workdir/echo.db`` by end state."""
    db = sqlite3.connect(workdir / "echo.db")
    query = "SELECT coalesce(end_state, 'open'), count(*) FROM ws_sessions GROUP BY 1"
    states = dict(db.execute(query).fetchall())
    db.close()
    return states


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants now."""
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pids.append(current)
        pending.extend(int(child) for child in children)
    return pids


def tree_usage(pid: int) -> tuple[int, float]:
    """(resident bytes, user + system CPU seconds) of ``pid`` and its descendants now."""
    rss, cpu = 0, 0.0
    for current in tree_pids(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def tree_pss(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants now, in bytes: each page shared
    by n processes counts 1/n in each (the sum is what they hold together; a sum of RSS
    counts a shared page once per process that maps it)."""
    pss = 0
    for current in tree_pids(pid):
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
                break
    return pss


def kernel_settings(connections: int, sources: int, backlog: int) -> None:
    """Print the kernel settings a storm of ``connections`` from ``sources`` loopback
    addresses meets, and what to change (docs/tuning.md); change nothing."""

    def read(name: str) -> str:
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().split("\n")[0]
        except OSError:
            return "?"

    found = {
        name: read(name)
        for name in (
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_syncookies",
        )
    }
    say("kernel: " + ", ".join(f"{k.rsplit('.', 1)[1]} {v.split()}" for k, v in found.items()))
    advice = []
    if found["net.core.somaxconn"].isdigit() and int(found["net.core.somaxconn"]) < backlog:
        advice.append(f"net.core.somaxconn >= {backlog} (the server's listen backlog)")
    syn = found["net.ipv4.tcp_max_syn_backlog"]
    if syn.isdigit() and int(syn) < backlog:
        advice.append(f"net.ipv4.tcp_max_syn_backlog >= {backlog}")
    ports = found["net.ipv4.ip_local_port_range"].split()
    if len(ports) == 2:
        per_source = int(ports[1]) - int(ports[0]) + 1
        if per_source * sources < connections * 1.2:
            advice.append(
                f"more source addresses or a wider net.ipv4.ip_local_port_range ({per_source}"
                f" ports x {sources} addresses for {connections} connections)"
            )
    if found["net.ipv4.tcp_tw_reuse"] == "0":
        advice.append("net.ipv4.tcp_tw_reuse = 2 (loopback reuse of TIME_WAIT ports)")
    say("kernel: suggest " + "; ".join(advice) if advice else "kernel: nothing to suggest")


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters a connection storm moves (system-wide, /proc/net/netstat):
    accept queues overflowed, SYNs retransmitted."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names[0] == "TcpExt:":
            found.update(zip(names[1:], map(int, values[1:]), strict=True))
    return {k: found.get(k, 0) for k in ("ListenOverflows", "TCPSynRetrans", "TCPTimeouts")}


def uptime() -> str:
    """The load averages now."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
