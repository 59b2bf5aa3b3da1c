#!/usr/bin/env python3
"""Instructions the server executes per WebSocket handshake (connect, upgrade, close), counted
by valgrind's callgrind: a figure that, unlike handshakes per second, does not move with
the load other processes put on the machine. For before/after comparisons of the handshake
path (issue 19); the rate against peers is benchmarks/engine_vs_peers.py's.

Run by hand (valgrind installed):

    .venv/bin/python benchmarks/handshake_cost.py [--handshakes 1000] [-- SERVER FLAGS...]

tornado-echo starts at the default conf (SQLite session records in a temporary directory,
metrics, logs as shipped) under callgrind with instrumentation off; after a warm-up, the
counters are zeroed, N handshakes run 64 at a time, the session records are left a moment
to be written, and the instructions of every thread of the process are dumped and divided
by N. ``--bare`` counts connections that send nothing and half-close instead (the accept
path alone). ``--profile FILE`` keeps the callgrind output (callgrind_annotate FILE). ``--server``
measures a peer of engine_vs_peers instead (tornado, aiohttp, picows), the same way.
``--tls`` serves wss:// on engine_vs_peers' certificate (ECDSA P-256) and makes every cycle
a full TLS handshake (no session resumed): the figure less the plain one is what TLS costs.
Only user-space instructions are counted: the kernel's share of a handshake (accept,
reads, writes, close) is not in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import _PEER_SCRIPTS, HERE, _wait_listening, make_certificate, say
from _rawclient import frame, insecure_tls, open_ws


async def cycles(
    port: int,
    count: int,
    tls: ssl.SSLContext | None = None,
    concurrency: int = 64,
    bare: bool = False,
) -> int:
    left = count
    failed = 0
    close = frame(0x8, struct.pack("!H", 1000))

    async def worker() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            try:
                if bare:  # connect, half-close, wait for the server's close
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write_eof()
                else:
                    reader, writer = await open_ws(port, tls=tls)
                    writer.write(close)
                await reader.read()
                writer.close()
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    # Under valgrind the server runs ~50x slower: a longer batch delay gives the session
    # records' batches about as many sessions as the default delay does at full rate.
    parser.add_argument("--batch-delay", type=float, default=4.0)
    parser.add_argument("--profile", type=Path, help="keep the callgrind output here")
    parser.add_argument(
        "--server",
        choices=("tornado-echo", *_PEER_SCRIPTS),
        default="tornado-echo",
        help="the server measured: tornado-echo, or a peer of engine_vs_peers",
    )
    parser.add_argument("--tls", action="store_true", help="wss://: a TLS handshake per cycle")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="connections that send nothing and half-close (the accept path alone: accept,"
        " admission, the protocol, the close) instead of WebSocket handshakes",
    )
    parser.add_argument("flags", nargs="*", help="extra tornado-echo flags (after --)")
    args = parser.parse_args()
    if args.bare and args.tls:
        parser.error("--bare half-closes a plain connection; it does not go with --tls")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        out = Path(tmp) / "callgrind.out"
        tls = insecure_tls() if args.tls else None
        pair = make_certificate(Path(tmp)) if args.tls else None
        tls_flags = ["--tls-cert", str(pair[0]), "--tls-key", str(pair[1])] if pair else []
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable,
        ]  # fmt: skip
        if args.server == "tornado-echo":
            cmd += [
                "-m", "tornado_echo", "--port", str(port),
                "--database-url", f"sqlite:///{tmp}/echo.db",
                "--batch-delay", str(args.batch_delay), *tls_flags, *args.flags,
            ]  # fmt: skip
        else:
            cmd += [str(HERE / _PEER_SCRIPTS[args.server]), *tls_flags]
        with (Path(tmp) / "server.log").open("a") as log:
            proc = subprocess.Popen(
                cmd, cwd=tmp, stderr=log, stdout=subprocess.PIPE if args.server in
                _PEER_SCRIPTS else log, text=True,
            )  # fmt: skip
        if proc.stdout is not None:  # a peer prints the port it chose
            port = int(proc.stdout.readline())
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    _wait_listening(port)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        sys.exit((Path(tmp) / "server.log").read_text()[-2000:])
            control(proc.pid, "-i", "on")
            asyncio.run(cycles(port, args.warmup, tls, bare=args.bare))
            time.sleep(args.batch_delay + 2)
            control(proc.pid, "-z")
            failed = asyncio.run(cycles(port, args.handshakes, tls, bare=args.bare))
            time.sleep(args.batch_delay + 3)  # the records written, the closes' timers run
            control(proc.pid, "-d")
            totals = 0
            for dump in Path(tmp).glob("callgrind.out*"):
                text = dump.read_text(errors="replace")
                match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
                if match and dump.stat().st_mtime > 0:
                    totals = max(totals, int(match.group(1)))
                if args.profile is not None:
                    shutil.copy(dump, args.profile)
        finally:
            proc.terminate()
            proc.wait(60)
    done = args.handshakes - failed
    per = totals / max(done, 1) / 1e3
    what = "bare connections" if args.bare else "handshakes"
    kind = "TLS + " if args.tls else ""
    say(f"{args.server}: {done} {kind}{what} ({failed} failed): {per:.0f}k instructions each")


if __name__ == "__main__":
    main()
