"""The per-turn work budget and the in-flight memory budget, as pure logic (turns by hand)."""

from __future__ import annotations

import asyncio
import itertools
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import (
    client_frame,
    deflated,
    eventually,
    fetch_rows,
    open_raw_websocket,
    read_server_frame,
)
from tornado_echo.config import Config
from tornado_echo.connections import Connections
from tornado_echo.engines.budget import (
    BACKGROUND,
    CLOSE_COST,
    INFLATING,
    PLAIN,
    RESUME_ALLOWANCE,
    SHARE,
    TURN_BYTES,
    TURN_FRAMES,
    MemoryBudget,
    TurnBudget,
    loop_budgets,
)
from tornado_echo.engines.fast import FastProtocol
from tornado_echo.web.echo import EchoWebSocket
from tornado_echo.wire import FEED_MAX_INFLATED, PerMessageDeflate


class Turns:
    """A stand-in for the loop's call_soon: what is booked runs at the next run()."""

    def __init__(self) -> None:
        self.booked: list[Callable[[], None]] = []

    def __call__(self, callback: Callable[[], None]) -> None:
        self.booked.append(callback)

    def run(self) -> None:
        booked, self.booked = self.booked, []
        for callback in booked:
            callback()


def test_a_turn_grants_until_spent_then_waiters_go_on_next_turn_oldest_first() -> None:
    turns = Turns()
    budget = TurnBudget(turns, frames=10, nbytes=1000)
    assert budget.grant(256, 1 << 20) == (10, 1000)
    budget.spend(4, 600)
    assert budget.grant(256, 1 << 20) == (6, 400)
    budget.spend(1, 400)
    assert budget.spent and budget.grant(1, 1) == (0, 0)
    order: list[str] = []
    budget.wait(lambda: order.append("a"))
    budget.wait(lambda: order.append("b"))
    assert order == []
    turns.run()
    assert order == ["a", "b"] and not budget.spent
    assert budget.grant(256, 1 << 20) == (10, 1000)
    assert budget.turns == 1


def test_round_robin_no_connection_starves_and_each_turn_stays_within_the_budget() -> None:
    turns = Turns()
    budget = TurnBudget(turns, frames=100, nbytes=1 << 20)
    slice_bytes = 300_000  # each connection's own slice; three fit a turn, four do not
    left = {name: 2_000_000 for name in "abcdefgh"}  # bytes each still has to inflate
    per_turn: list[int] = []
    served: list[list[str]] = []

    def reader(name: str) -> Callable[[], None]:
        def read() -> None:
            _, room = budget.grant(1, slice_bytes)
            if room == 0:
                budget.wait(read)
                return
            took = min(room, left[name])
            left[name] -= took
            budget.spend(1, took)
            served[-1].append(name)
            if left[name]:
                budget.wait(read)  # a backlog: the back of the queue

        return read

    # Every connection's first read arrives in the same turn.
    served.append([])
    for name in left:
        reader(name)()
    while any(left.values()):
        before = sum(left.values())
        served.append([])
        turns.run()
        per_turn.append(before - sum(left.values()))
        assert len(per_turn) < 100
    # No turn inflated more than its budget plus one slice's overshoot.
    assert max(per_turn) <= (1 << 20) + slice_bytes
    # Round-robin: between two slices of one connection, every other one waiting had one.
    order = [name for turn in served for name in turn]
    for name in left:
        positions = [i for i, n in enumerate(order) if n == name]
        assert all(b - a <= len(left) for a, b in itertools.pairwise(positions))


def test_each_lane_has_its_share_of_a_busy_turn_and_plain_reads_go_first() -> None:
    turns = Turns()
    budget = TurnBudget(turns, frames=400, nbytes=1 << 20)
    served: list[str] = []

    def work(name: str, frames: int, nbytes: int, lane: int, again: bool) -> Callable[[], None]:
        def run() -> None:
            budget.spend(frames, nbytes)
            served.append(name)
            if again:
                budget.wait(run, lane)

        return run

    for _ in range(1000):
        budget.defer(work("close", 10, 0, BACKGROUND, False))
    for _ in range(5):
        budget.wait(work("inflating", 1, 100_000, INFLATING, True), INFLATING)
    for _ in range(5):
        budget.wait(work("plain", 50, 0, PLAIN, True), PLAIN)
    turns.run()
    # Reserved shares (a quarter each: 100 frames, 256 KiB): 2 plain reads, 3 inflating
    # ones, 10 closes; then the rest, but for a quarter kept: 2 more plain reads.
    assert served[:2] == ["plain"] * 2
    assert served.count("plain") == 4
    assert served.count("inflating") == 3
    assert served.count("close") == 400 // SHARE // 10


def test_a_plain_read_waits_a_turn_not_behind_every_inflating_one() -> None:
    turns = Turns()
    budget = TurnBudget(turns)
    inflated: list[int] = []
    for n in range(1000):  # each wants a whole slice of 1 MiB
        budget.wait(lambda n=n: (budget.spend(1, 1 << 20), inflated.append(n)), INFLATING)
    echoed: list[bool] = []
    budget.wait(lambda: (budget.spend(1, 0), echoed.append(True)), PLAIN)
    turns.run()
    assert echoed == [True]
    assert 0 < len(inflated) <= TURN_BYTES // (1 << 20)
    while turns.booked:
        turns.run()
    assert inflated == list(range(1000))  # the rest in order, none lost


def test_background_work_takes_the_rest_of_idle_turns() -> None:
    # Without readers, closes take all but the share kept for this turn's arrivals.
    turns2 = Turns()
    idle = TurnBudget(turns2, frames=400, nbytes=1 << 20)
    done: list[int] = []

    def idle_close(n: int) -> Callable[[], None]:
        def run() -> None:
            idle.spend(10, 0)
            done.append(n)

        return run

    for n in range(1000):
        idle.defer(idle_close(n))
    turns2.run()
    assert len(done) == (400 - 400 // SHARE) // 10
    # And all of them end, in order, turn after turn.
    while turns2.booked:
        turns2.run()
    assert done == list(range(1000))


def test_beats_count_work_so_a_busy_loop_is_seen_progressing() -> None:
    turns = Turns()
    budget = TurnBudget(turns, frames=10, nbytes=100)
    start = budget.beats[0]
    budget.spend(1, 1)
    budget.spend(1, 1)
    turns.run()  # a turn that did work beats once
    assert budget.beats[0] == start + 1
    turns.run()  # an idle one is not a turn of the budget's
    assert budget.beats[0] == start + 1
    budget.wait(lambda: None)
    turns.run()
    assert budget.beats[0] == start + 2
    # A shared slot can stand in for the private counter.
    shared = memoryview(bytearray(16)).cast("Q")
    budget.beats = shared[1:2]
    budget.spend(1, 1)
    turns.run()
    assert shared[1] == 1 and shared[0] == 0


def test_memory_over_the_limit_makes_readers_wait_until_released() -> None:
    turns = Turns()
    memory = MemoryBudget(turns, limit=4 * RESUME_ALLOWANCE)
    memory.charge(5 * RESUME_ALLOWANCE)
    assert memory.over
    resumed: list[int] = []
    for n in range(6):
        memory.wait(lambda n=n: resumed.append(n))
    turns.run()
    assert resumed == [] and memory.waiting == 6
    memory.charge(-2 * RESUME_ALLOWANCE)  # 3 held of 4: room for one slice
    turns.run()
    assert resumed == [0]
    memory.charge(-3 * RESUME_ALLOWANCE)  # nothing held: room for four more
    turns.run()
    assert resumed == [0, 1, 2, 3, 4]
    assert memory.peak == 5 * RESUME_ALLOWANCE
    # A waiter that comes while there is room goes on at the next turn.
    memory.wait(lambda: resumed.append(9))
    turns.run()
    assert resumed[-2:] == [5, 9]


def test_a_memory_limit_of_zero_never_holds_anyone_back() -> None:
    turns = Turns()
    memory = MemoryBudget(turns, limit=0)
    memory.charge(1 << 40)
    assert not memory.over


# -- over real sockets: what one turn of the loop does across connections ----------------


class TurnMeter:
    """Counts work between two turns of the running loop: a callback that books itself
    for every next turn takes each turn's total and keeps the largest."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.turns = 0
        self._stopped = False
        asyncio.get_running_loop().call_soon(self._turn)

    def add(self, amount: int) -> None:
        self.now += amount

    def _turn(self) -> None:
        self.most = max(self.most, self.now)
        self.now = 0
        self.turns += 1
        if not self._stopped:
            asyncio.get_running_loop().call_soon(self._turn)

    def stop(self) -> None:
        self._stopped = True


def bomb(size: int) -> bytes:
    """One compressed binary frame that inflates to ``size`` zero bytes."""
    return rsv_frame(client_frame(0x2, deflated(b"\0" * size)), 0x40)


async def read_echo(reader: asyncio.StreamReader) -> bytes:
    opcode, payload = await asyncio.wait_for(read_server_frame(reader), 60)
    assert opcode == 0x2
    return zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")


def rsv_frame(frame: bytes, bits: int) -> bytes:
    return bytes([frame[0] | bits]) + frame[1:]


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=90)
@pytest.mark.app_config(max_message_size=1 << 20)
async def test_compressed_messages_of_many_connections_inflate_a_budget_per_turn(
    http_server: Any, http_port: int, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 22: each connection's own slice bounded one connection, not the turn: 24
    # one-kilobyte frames that inflate to 1 MiB each, arriving together, were all inflated
    # in one turn of the loop (24 MiB; 5,000 of them held a worker for seconds).
    meter = TurnMeter()
    if engine == "fast":
        for name in ("inflate", "inflate_more"):
            original = getattr(PerMessageDeflate, name)

            def counting(self: Any, *args: Any, _original: Any = original) -> bytes:
                out: bytes = _original(self, *args)
                meter.add(len(out))
                return out

            monkeypatch.setattr(PerMessageDeflate, name, counting)
    else:  # Tornado inflates a message whole, just before on_message
        original_on_message = EchoWebSocket.on_message

        def counting_on_message(self: Any, message: Any) -> Any:
            meter.add(len(message))
            return original_on_message(self, message)

        monkeypatch.setattr(EchoWebSocket, "on_message", counting_on_message)
    peers = [await open_raw_websocket(http_port, deflate=True) for _ in range(24)]
    size = (1 << 20) - 64
    frame = bomb(size)
    for _, writer in peers:  # all written before the server's loop has another turn
        writer.write(frame)
    echoes = await asyncio.gather(*(read_echo(reader) for reader, _ in peers))
    meter.stop()
    assert all(echo == b"\0" * size for echo in echoes)
    # A turn of the loop may see the end of one budget's window and the start of the next,
    # and each may go at most one message (Tornado's) or slice past it.
    assert meter.most <= 2 * (TURN_BYTES + (1 << 20))
    for _, writer in peers:
        writer.close()


@pytest.mark.gen_test(timeout=90)
@pytest.mark.app_config(max_message_size=1 << 20, compression_level=9)
async def test_messages_in_flight_across_connections_stay_within_the_memory_budget(
    http_server: Any, http_port: int, connections: Connections
) -> None:
    # Each connection held a whole inflated message while its echo waited for the deflate
    # pool: 2,000 of them held 2.5 GB. Over the process's budget, connections that hold
    # nothing in flight are not read until the others' echoes are out.
    limit = 3 << 20
    memory = loop_budgets().memory
    monkeypatch_limit = memory.limit
    memory.limit = limit
    try:
        peers = [await open_raw_websocket(http_port, deflate=True) for _ in range(32)]
        await eventually(lambda: len(connections) == 32)
        held_most = 0

        def in_flight() -> int:
            # What the connections hold, read from their state (not from the budget's sum).
            total = 0
            for session in list(connections._open):
                protocol = session._protocol  # type: ignore[attr-defined]
                assert isinstance(protocol, FastProtocol) and protocol.reader is not None
                total += protocol.reader.message_bytes
                total += sum(len(m) for _, m, waiter in protocol._outbox or () if waiter)
                total += sum(len(p) for op, p in protocol._pending if op is not None)
            return total

        def sample() -> None:
            nonlocal held_most
            held_most = max(held_most, in_flight())
            if not done:
                asyncio.get_running_loop().call_soon(sample)

        done = False
        sample()
        # Repeated random blocks: small on the wire, each 1 MiB echo deflated off the loop
        # (slowly, at level 9).
        size = 1 << 20
        payload = os.urandom(16384) * (size // 16384)
        frame = rsv_frame(client_frame(0x2, deflated(payload)), 0x40)
        for _, writer in peers:
            writer.write(frame)
        echoes = await asyncio.gather(*(read_echo(reader) for reader, _ in peers))
        done = True
        assert all(echo == payload for echo in echoes)
        # The budget and what one connection may add before it is checked again (one
        # message: here a slice is one message).
        assert held_most <= limit + size + FEED_MAX_INFLATED
        assert memory.peak <= limit + size + FEED_MAX_INFLATED
        await eventually(lambda: memory.held == 0)
        for _, writer in peers:
            writer.close()
    finally:
        memory.limit = monkeypatch_limit


@pytest.mark.usefixtures("engine")
@pytest.mark.gen_test(timeout=120)
async def test_connections_that_vanish_together_end_over_several_turns(
    http_server: Any,
    http_port: int,
    connections: Connections,
    app_config: Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 19: thousands of connections of one worker closing at once ran every on_close
    # (record, metrics, log line) in one turn of the loop. Closes are work of the turn
    # budget now: a few hundred a turn, and the survivors are read between them.
    count = 1500
    meter = TurnMeter()
    original_on_close = EchoWebSocket.on_close

    def counting_on_close(self: Any) -> None:
        meter.add(1)
        original_on_close(self)

    monkeypatch.setattr(EchoWebSocket, "on_close", counting_on_close)
    peers = [await open_raw_websocket(http_port) for _ in range(count)]
    survivor_reader, survivor = await open_raw_websocket(http_port)
    await eventually(lambda: len(connections) == count + 1, timeout=30)
    for _, writer in peers:  # all gone before the server's loop has another turn
        writer.transport.abort()
    survivor.write(client_frame(0x1, b"still here"))
    assert await asyncio.wait_for(read_server_frame(survivor_reader), 30) == (0x1, b"still here")
    await eventually(lambda: len(connections) == 1, timeout=60)
    meter.stop()
    # A turn of the loop may see the end of one budget's window and the start of the next.
    assert meter.most <= 2 * (TURN_FRAMES // CLOSE_COST)
    # Every session ended and was recorded as such.
    database = app_config.database_url

    def recorded() -> bool:
        rows = fetch_rows(database, "SELECT end_state FROM ws_sessions")
        return sum(row["end_state"] == "aborted" for row in rows) == count

    await eventually(recorded, "every vanished session recorded as aborted", timeout=30)
    survivor.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_peer_gone_before_shutdown_whose_end_waits_its_turn_ends_aborted(
    http_server: Any, http_port: int, connections: Connections, app_config: Config
) -> None:
    # The peer hangs up while the turn is spent: its end (on_close, the record) waits in
    # the background lane. A shutdown meanwhile must not call it a server shutdown.
    reader, writer = await open_raw_websocket(http_port)
    writer.write(client_frame(0x1, b"hi"))
    assert await read_server_frame(reader) == (0x1, b"hi")
    [session] = list(connections._open)
    protocol = session._protocol  # type: ignore[attr-defined]
    assert isinstance(protocol, FastProtocol)
    turn = loop_budgets().turn
    frames = turn.frames
    turn.frames = turn.frames_left = 0  # every turn spent, until restored
    try:
        writer.transport.abort()
        await eventually(lambda: protocol.lost, "the server saw the peer go", timeout=10)
        assert len(connections) == 1  # its end waits for a turn
        connections.close_all()
    finally:
        turn.frames = turn.frames_left = frames
        turn.wait(lambda: None)  # a turn with room
    await eventually(lambda: len(connections) == 0, timeout=10)

    def recorded() -> list[Any]:
        return [
            row["end_state"]
            for row in fetch_rows(app_config.database_url, "SELECT end_state FROM ws_sessions")
        ]

    assert await eventually(recorded, timeout=10) == ["aborted"]
