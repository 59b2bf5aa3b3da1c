"""A real server killed with SIGKILL under load loses no message it echoed: with the journal's
writer process, an echo leaves only after its row is in the writer's socket, and the writer
outlives its server long enough to write what it was handed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    client_frame,
    eventually,
    fetch_rows,
    open_raw_websocket,
    read_server_frame,
    started_server,
)
from tests.test_cli import start_server

CONNECTIONS = 40
WINDOW = 16  # messages each connection keeps in flight: the server's turns are busy
PAYLOAD = b"journalled-echo!"
ECHO_SIZE = 2 + len(PAYLOAD)  # an unmasked server frame: two header bytes
ROUNDS = 2
LOAD = 20_000  # echoes before the kill: many turns of the server's loop


async def pipelined_client(port: int, echoed: list[int], index: int) -> None:
    """Keeps WINDOW messages in flight; counts every echo it reads until the server dies."""
    reader, writer = await open_raw_websocket(port)
    frame = client_frame(0x2, PAYLOAD)
    received = 0
    try:
        writer.write(frame * WINDOW)
        while True:
            data = await reader.read(65536)
            if not data:
                return
            before = received // ECHO_SIZE
            received += len(data)
            echoes = received // ECHO_SIZE
            echoed[index] = echoes
            writer.write(frame * (echoes - before))
    except OSError:  # reset by the dying server: what was read is counted
        return
    finally:
        writer.close()


def writer_processes(pid: int) -> list[int]:
    """The server's children (its journal writer), from every one of its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def load_and_kill(tmp_path: Path, settings: dict[str, str]) -> list[int]:
    """A server under load, SIGKILLed; the echoes each connection counted. Returns once its
    journal writer has ended (it writes what it was handed, then ends with its socket)."""
    process, port = await start_server(tmp_path, tmp_path / "server.log", **settings)
    try:
        writers = await eventually(
            lambda: writer_processes(process.pid), "the journal writer", timeout=15
        )
        echoed = [0] * CONNECTIONS
        clients = [
            asyncio.ensure_future(pipelined_client(port, echoed, index))
            for index in range(CONNECTIONS)
        ]
        await eventually(lambda: min(echoed) > 0, "every connection echoed", timeout=15)
        await eventually(lambda: sum(echoed) >= LOAD, "the load", timeout=60)
        os.kill(process.pid, signal.SIGKILL)  # under full load, in the middle of a turn
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    await eventually(lambda: all(gone(pid) for pid in writers), "the writer to end", timeout=30)
    return echoed


@pytest.mark.parametrize("engine", ["fast", "tornado"])
@pytest.mark.gen_test(timeout=180)
async def test_a_server_killed_under_load_loses_no_echoed_message(
    engine: str, postgres_url: str, tmp_path: Path
) -> None:
    settings = {"database_url": postgres_url, "journal": "full", "engine": engine}
    echoed: list[int] = []
    for _ in range(ROUNDS):  # a kill may land anywhere in a turn: more than one
        echoed += await load_and_kill(tmp_path, settings)
    rows = fetch_rows(postgres_url, "SELECT session_id, seq FROM ws_messages")
    keys = Counter((str(row["session_id"]), row["seq"]) for row in rows)
    assert max(keys.values()) == 1, "a row written twice"
    sessions: dict[str, list[int]] = {}
    for session, seq in keys:
        sessions.setdefault(session, []).append(seq)
    gaps = [s for s, seqs in sessions.items() if sorted(seqs) != list(range(1, len(seqs) + 1))]
    assert gaps == []
    # Each connection is one session: its rows cover every echo it counted.
    journalled = sorted((len(seqs) for seqs in sessions.values()), reverse=True)
    counted = sorted(echoed, reverse=True)
    assert len(journalled) == len(counted)
    short = [(j, c) for j, c in zip(journalled, counted, strict=True) if j < c]
    assert short == [], f"echoed but not journalled: {sum(echoed) - len(rows)} of {sum(echoed)}"
    assert sum(echoed) >= ROUNDS * LOAD


@pytest.mark.parametrize("engine", ["fast", "tornado"])
@pytest.mark.gen_test(timeout=60)
async def test_held_echoes_keep_their_order_with_the_close(
    engine: str, sqlite_url: str, tmp_path: Path
) -> None:
    # The handoff's bound at its least (1 MiB: 512 KiB in flight), the writer stopped: the
    # rows of the messages below do not fit, so their echoes are held (then, after the
    # hold limit, the rows go to the store's queue and the echoes are released).
    server = await started_server(
        tmp_path, sqlite_url, journal="full", engine=engine, queue_bytes_limit=4 << 20
    )
    handoff = server.store.handoff
    assert handoff is not None and handoff.process is not None
    os.kill(handoff.process.pid, signal.SIGSTOP)
    try:
        reader, writer = await open_raw_websocket(server.port)
        messages = [bytes([number]) * 60_000 for number in range(12)]
        writer.write(
            b"".join(client_frame(0x2, m) for m in messages)
            + client_frame(0x8, struct.pack("!H", 1000))
        )
        for message in messages:
            assert await asyncio.wait_for(read_server_frame(reader), 10) == (0x2, message)
        opcode, payload = await asyncio.wait_for(read_server_frame(reader), 10)
        assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1000))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then the server hangs up
        writer.close()
        assert handoff.status().spilled > 0  # it was the held path
    finally:
        os.kill(handoff.process.pid, signal.SIGCONT)
    try:
        await eventually(lambda: server.store.status().pending == 0, timeout=15)
    finally:
        await server.shutdown()
    rows = fetch_rows(sqlite_url, "SELECT seq FROM ws_messages ORDER BY seq")
    assert [row["seq"] for row in rows] == list(range(1, 13))
