"""What the journal costs the event loop, in instructions per echo (callgrind), not time: one
tornado-echo process under callgrind pinned to CPU 0 with journal off, meta or full on
PostgreSQL (the writer process runs natively), and a lockstep client on CPU 1: 100
connections, each round one 32 B message on every connection, then every echo. Counted from
a zeroing after 10 rounds to a dump after ROUNDS more, on the server's main thread: in total,
in reads (uv__read: on_message, the row, the hold) and in the loop's ready callbacks (the
per-turn flush and the held echoes' writes). The server's housekeeping tick (metrics, every
0.5 s of wall time) is set to an hour: under callgrind its share per echo followed the
machine's load, not the code. Run by hand (a few minutes):

    python benchmarks/journal_loop_instructions.py [--rounds 40] [--modes off,meta,full]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import say  # noqa: E402

SERVER = """
import sys
import tornado_echo.process.server as server
server.TICK = 3600.0
from tornado_echo.cli import main
sys.exit(main())
"""
PARTS = {"reads": "uv__read", "callbacks": "cb_idle_callback"}


def lockstep(port: int, connections: int, warm: int, rounds: int, pid: int) -> None:
    """The client: upgrade, ``warm`` rounds, zero callgrind's counts, ``rounds``, dump."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
            f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    frame = bytes((0x82, 0x80 | 32)) + bytes(4) + b"x" * 32  # mask 0: the payload as is

    def play(count: int) -> None:
        for _ in range(count):
            for sock in socks:
                sock.send(frame)
            for sock in socks:
                got = 0
                while got < 34:
                    got += len(sock.recv(34 - got))

    play(warm)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    play(rounds)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)


def inclusive(path: Path, name: str) -> int:
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+) .*[:_]" + re.escape(name) + r" \[", line)
        if match:
            return int(match.group(1).replace(",", ""))
    return 0


def measure(mode: str, database_url: str, rounds: int, work: Path) -> dict[str, float]:
    port = free_port()
    out = work / f"callgrind.{mode}"
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    command = [
        *("taskset", "-c", "0", "valgrind", "--tool=callgrind", "--separate-threads=yes"),
        f"--callgrind-out-file={out}",
        *(sys.executable, "-c", SERVER, "--port", str(port), "--log-level", "error"),
        *("--state-dir", str(state), "--database-url", database_url, "--journal", mode),
        *("--journal-writer", "process", "--journal-max-bytes-per-second", "0"),
    ]
    server = subprocess.Popen(command, cwd=state, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # a start under callgrind is slow
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        subprocess.run(
            [
                *("taskset", "-c", "1", sys.executable, __file__, "--client"),
                *(str(port), "100", "10", str(rounds), str(server.pid)),
            ],
            check=True,
        )
    finally:
        server.terminate()
        server.wait(300)
    main_thread = Path(f"{out}.1-01")
    echoes = rounds * 100
    total = next(
        int(line.split()[1])
        for line in main_thread.read_text().splitlines()
        if line.startswith(("totals:", "summary:"))
    )
    result = {"total": total / echoes}
    for part, name in PARTS.items():
        result[part] = inclusive(main_thread, name) / echoes
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        lockstep(*(int(arg) for arg in sys.argv[2:7]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--modes", default="off,meta,full")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    import psycopg2

    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    work = Path(tempfile.mkdtemp(prefix="tornado-echo-journal-ir-"))
    say(f"load: {os.getloadavg()}; {args.rounds * 100} echoes per mode, Ir per echo")
    for mode in args.modes.split(","):
        db = "tornado_echo_ir_" + uuid.uuid4().hex[:8]
        admin.cursor().execute(f"CREATE DATABASE {db}")
        try:
            url = re.sub(r"/[^/]*$", "/" + db, args.pg)
            result = measure(mode, url, args.rounds, work)
        finally:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        say(
            f"journal {mode:5} total {result['total']:8,.0f}  reads {result['reads']:8,.0f}"
            f"  ready callbacks {result['callbacks']:8,.0f}"
        )
    admin.close()


if __name__ == "__main__":
    main()
