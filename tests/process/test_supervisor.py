"""workers = N: one supervisor speaking for N SO_REUSEPORT workers, with real processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import WebSocketClosedError, websocket_connect

from tests.helpers import (
    BASE_CONF,
    Service,
    eventually,
    eventually_blocking,
    fetch_rows,
    metric,
    start_service,
)
from tornado_echo.process.supervisor import (
    HEARTBEAT_STALE,
    RESTART_BURST,
    RestartWindow,
    runqueue_wait,
    stop_limit,
    stuck_for,
)


def worker_pids(service: Service) -> list[int]:
    return [
        int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", service.log.read_text())
    ]


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_workers_share_the_port_metrics_reload_restart_and_stop(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n", watchdog_usec=2_000_000)
    services.append(service)
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"
    url = f"ws://127.0.0.1:{service.port}/ws"
    clients = [await websocket_connect(url) for _ in range(20)]
    for client in clients:
        await client.write_message("hi")
        assert await client.read_message() == "hi"

    # Any worker answers a scrape with the sum over both, once each has folded its figures in.
    http = AsyncHTTPClient()

    async def scrape() -> tuple[float, float]:
        text = (await http.fetch(f"http://127.0.0.1:{service.port}/metrics")).body.decode()
        return (
            metric(text, "tornado_echo_connections_open"),
            metric(text, 'tornado_echo_messages_total{direction="in"}'),
        )

    async def both_workers_counted() -> bool:
        return await scrape() == (20, 20)

    await eventually(
        both_workers_counted, "20 connections and 20 messages in the metrics", timeout=15
    )
    for _ in range(4):
        assert await scrape() == (20, 20)

    service.process.send_signal(signal.SIGHUP)
    reload_messages = service.messages("READY=1")
    assert any(m.startswith("RELOADING=1") for m in reload_messages)

    # A worker killed outright is replaced; the service keeps serving. Its sessions must be
    # in the database first: kill -9 loses what a worker has not written yet (at most one
    # batch window), and without the rows there is nothing for its replacement to mark.
    database = f"sqlite:///{tmp_path}/echo.db"
    await eventually(
        lambda: len(fetch_rows(database, "SELECT id FROM ws_sessions")) == 20,
        "the 20 sessions in the database",
    )
    victim = worker_pids(service)[0]
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: service.log.read_text().count("listening on") == 3,
        "the replacement to listen",
        timeout=15,
        detail=service.log.read_text,
    )
    assert "exited unexpectedly with -9" in service.log.read_text()
    fresh = await websocket_connect(url)
    await fresh.write_message("still here")
    assert await fresh.read_message() == "still here"

    survivors = [fresh]
    for client in clients:  # the killed worker's clients find their connection gone
        try:
            await client.write_message("alive?")
        except WebSocketClosedError:
            continue
        if await client.read_message() == "alive?":
            survivors.append(client)
    # Some of the 20 were the killed worker's and are gone; the other worker's still echo
    # (SO_REUSEPORT put all 20 on one worker with a chance of 2 in a million).
    assert 1 < len(survivors) < 21

    service.process.send_signal(signal.SIGTERM)
    assert service.messages("STOPPING=1")[-1] == "STOPPING=1"
    for client in survivors:
        await client.read_message()
    assert {client.close_code for client in survivors} == {1001}
    assert service.wait_exit() == 0

    rows = fetch_rows(database, "SELECT server_id, end_state FROM ws_sessions")
    assert {row["server_id"].rsplit(":", 1)[1] for row in rows} == {"0", "1"}
    states = [row["end_state"] for row in rows]
    assert len(rows) == 21
    # Sessions of the killed worker are marked crashed by its replacement.
    assert set(states) <= {"server_shutdown", "crashed"}
    assert "crashed" in states


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; its parent reaps it.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_the_restart_window_allows_a_burst_then_refuses_until_it_slides() -> None:
    window = RestartWindow(burst=3, interval=10.0)
    assert [window.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not window.allow(9.9)  # a fourth within 10 s of the first
    assert window.recent(9.9) == 3
    assert window.allow(10.5)  # the first has left the window
    assert window.recent(10.5) == 3
    assert not RestartWindow(burst=0, interval=1.0).allow(0.0)


@pytest.mark.slow
def test_a_stuck_worker_is_killed_and_replaced_alone(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n", watchdog_usec=1_000_000)
    services.append(service)
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"
    healthy, stuck = worker_pids(service)
    os.kill(stuck, signal.SIGSTOP)  # its event loop can no longer check in
    eventually_blocking(lambda: len(worker_pids(service)) == 3, "a replacement worker", timeout=20)
    log = service.log.read_text()
    assert re.search(rf"worker 1 \(pid {stuck}\) has not checked in for [\d.]+ s; killing it", log)
    assert f"worker 1 (pid {stuck}) exited unexpectedly with -9" in log
    assert not alive(stuck)
    assert alive(healthy)  # the other worker and its connections were left alone
    # The supervisor never stopped vouching for the service.
    assert "withholding the watchdog" not in log
    assert service.messages("WATCHDOG=1")[-1] == "WATCHDOG=1"
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0


def test_workers_dying_too_often_stop_the_service_with_a_failure(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n")
    services.append(service)
    killed: set[int] = set()

    def fresh() -> list[int]:
        return [pid for pid in worker_pids(service) if pid not in killed]

    for _ in range(RESTART_BURST + 1):  # the first two are the original workers
        eventually_blocking(fresh, "a worker not yet killed", timeout=20)
        victim = fresh()[0]
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
    assert service.wait_exit() == 1
    assert f"{RESTART_BURST} worker restarts within 60 s; giving up" in service.log.read_text()


def test_workers_exit_when_the_supervisor_is_killed(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n")
    services.append(service)
    pids = worker_pids(service)
    service.process.kill()
    service.process.wait()
    eventually_blocking(
        lambda: not any(alive(pid) for pid in pids), "the orphaned workers to exit", timeout=20
    )
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=2).close()


# Two workers under a real supervisor. Worker 0 is busy: after READY it never checks in
# again, but its loop's beat counter keeps moving (as a worker's does while it works
# through a storm in many short slices). Worker 1 is stuck: after READY it spins in one
# call, its counter still. It starts (READY) only once worker 0 has, so worker 0 has been
# silent at least as long: a supervisor that went by check-ins alone kills both.
BUSY_AND_STUCK = """
import logging, os, sys, time
from tornado_echo.process.supervisor import Supervisor
from tornado_echo.process.systemd import Notifier

flags = sys.argv[1]
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

def flag(name):
    return os.path.join(flags, name)

def run_worker(index, link):
    if index == 0:
        link.notify("READY=1")
        open(flag("busy"), "w").close()
        while True:
            link.beats[0] += 1
            sum(range(10000))
    if os.path.exists(flag("stuck")):  # the replacement: idle, checking in
        link.notify("READY=1")
        while True:
            link.notify("WATCHDOG=1")
            time.sleep(0.5)
    while not os.path.exists(flag("busy")):
        time.sleep(0.01)
    link.notify("READY=1")
    open(flag("stuck"), "w").close()
    while True:
        pass

sys.exit(Supervisor(2, run_worker, Notifier(None), shutdown_deadline=1.0).run())
"""


@pytest.mark.slow
def test_a_busy_worker_that_progresses_is_kept_and_a_stuck_one_is_killed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "supervisor.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", BUSY_AND_STUCK, str(tmp_path)], stderr=err, text=True
        )
    try:

        def started() -> list[tuple[str, int]]:
            found = re.findall(r"worker (\d) started \(pid (\d+)\)", log.read_text())
            return [(index, int(pid)) for index, pid in found]

        eventually_blocking(lambda: len(started()) == 3, "worker 1 replaced", timeout=30)
        text = log.read_text()
        assert not re.search(r"worker 0 \(pid \d+\) has not checked in", text), text
        (busy, _), (stuck, _) = [(pid, index) for index, pid in started()[:2]]
        assert re.search(rf"worker 1 \(pid {stuck}\) has not checked in for [\d.]+ s", text)
        assert "worker 0" not in text.replace(f"worker 0 started (pid {busy})", "")
        assert alive(busy)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


STARVED = """
import logging, os, sys, time
from tornado_echo.process.supervisor import Supervisor
from tornado_echo.process.systemd import Notifier

flags, cpu, turn = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

def run_worker(index, link):
    os.sched_setaffinity(0, {cpu})
    # The hog on the same CPU takes nearly all of it: this worker is runnable but waits.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    link.notify("READY=1")
    began = time.monotonic()
    used = time.process_time()
    while time.monotonic() - began < turn:  # one long turn of the loop: no beats
        pass
    with open(os.path.join(flags, "done"), "w") as done:
        done.write(f"{time.monotonic() - began} {time.process_time() - used}")
    while True:
        link.notify("WATCHDOG=1")
        time.sleep(0.5)

sys.exit(Supervisor(1, run_worker, Notifier(None), shutdown_deadline=1.0).run())
"""

HOG = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


@pytest.mark.slow
def test_a_worker_starved_of_cpu_for_longer_than_the_stale_time_is_not_killed(
    tmp_path: Path,
) -> None:
    cpu = max(os.sched_getaffinity(0))
    log = tmp_path / "supervisor.log"
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu)])
    try:
        with log.open("w") as err:
            process = subprocess.Popen(
                # A turn of 2 s more than the stale time, mostly spent waiting for the CPU
                [sys.executable, "-c", STARVED, str(tmp_path), str(cpu), str(HEARTBEAT_STALE + 2)],
                stderr=err,
                text=True,
            )
        try:
            done = tmp_path / "done"
            eventually_blocking(
                lambda: done.exists() or "killing it" in log.read_text(),
                "the starved turn ended, or the worker killed",
                timeout=60,
            )
            text = log.read_text()
            assert "killing it" not in text, text
            eventually_blocking(lambda: done.read_text() != "", "its wall time", timeout=5)
            took, ran = map(float, done.read_text().split())
            assert took > HEARTBEAT_STALE + 1
            # Starved: it had the CPU for a small part of its turn (SCHED_IDLE beside a hog).
            assert ran < HEARTBEAT_STALE / 2, (
                f"not starved enough to test: {ran:.1f} of {took:.1f} s"
            )
            assert len(re.findall(r"worker 0 started", text)) == 1
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        hog.kill()
        hog.wait()


def test_time_spent_waiting_for_a_cpu_is_not_time_stuck() -> None:
    assert stuck_for(6.0, 1.0, 5.5) == pytest.approx(1.5)
    assert stuck_for(6.0, None, 5.5) == 6.0  # no schedstat: wall time, as before
    assert stuck_for(6.0, 2.0, 2.0) == 6.0  # blocked or spinning, never waiting
    assert stuck_for(6.0, 3.0, 2.0) == 6.0  # a replaced pid's counter going back
    wait = runqueue_wait(os.getpid())
    assert wait is not None and wait >= 0


def listen_backlogs(port: int) -> list[int]:
    """The backlog of each socket listening on ``port`` (ss's Send-Q of a listener)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_listening_socket_takes_the_listen_backlog_setting(
    tmp_path: Path, services: list[Service], workers: int
) -> None:
    conf = BASE_CONF + f"workers = {workers}\nlisten_backlog = 77\n"
    service = start_service(tmp_path, conf)
    services.append(service)
    assert listen_backlogs(service.port) == [77] * workers
    service.process.send_signal(signal.SIGTERM)
    assert service.wait_exit() == 0


# Three workers under a real supervisor stopping with a short deadline and grace. Each
# checks in until SIGTERM; then worker 0 keeps making progress (beats) past the deadline
# and grace and exits by itself; worker 1 blocks in one call; worker 2 makes progress for
# ever.
STOPPING = """
import logging, os, signal, sys, time
from tornado_echo.process.supervisor import Supervisor
from tornado_echo.process.systemd import Notifier

flags, deadline, grace, slow = sys.argv[1], *map(float, sys.argv[2:])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

def run_worker(index, link):
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
    link.notify("READY=1")
    while not stopping:
        link.notify("WATCHDOG=1")
        time.sleep(0.1)
    if index == 1:
        time.sleep(3600)
    while index == 2 or time.monotonic() - stopping[0] < slow:
        link.beats[0] += 1
        time.sleep(0.1)
    open(os.path.join(flags, "slow-done"), "w").close()
    return 0

sys.exit(Supervisor(3, run_worker, Notifier(None), deadline, kill_grace=grace).run())
"""


@pytest.mark.slow
def test_at_stop_only_workers_making_no_progress_are_killed_until_the_limit(
    tmp_path: Path,
) -> None:
    deadline, grace = 1.0, 6.0
    # Worker 1 is stale before the deadline and grace are past: they decide when it dies.
    assert deadline + grace > HEARTBEAT_STALE + 1
    slow = deadline + grace + 2  # past the deadline and grace, short of the limit
    assert slow < stop_limit(deadline, grace) - 1
    log = tmp_path / "supervisor.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", STOPPING, str(tmp_path), str(deadline), str(grace), str(slow)],
            stderr=err,
            text=True,
        )
    try:
        eventually_blocking(
            lambda: len(re.findall(r"worker \d started", log.read_text())) == 3,
            "three workers",
            timeout=20,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(stop_limit(deadline, grace) + 10) == 1  # two were killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    pids = dict(re.findall(r"worker (\d) started \(pid (\d+)\)", text))
    # Slow but progressing past the deadline and its grace: left to finish on its own.
    assert (tmp_path / "slow-done").exists()
    assert f"worker 0 (pid {pids['0']}) exited with 0" in text, text
    assert not re.search(r"worker 0 \(pid \d+\) .*killing it", text), text
    # Blocked: killed once the deadline and grace are past, not before.
    blocked = re.search(
        rf"worker 1 \(pid {pids['1']}\) is stopping ([\d.]+) s past the shutdown deadline and"
        r" has made no progress for ([\d.]+) s; killing it",
        text,
    )
    assert blocked, text
    assert grace <= float(blocked.group(1)) < grace + HEARTBEAT_STALE
    assert float(blocked.group(2)) >= HEARTBEAT_STALE
    assert f"worker 1 (pid {pids['1']}) exited with -9" in text
    # Progressing for ever: killed at the limit.
    capped = re.search(
        rf"worker 2 \(pid {pids['2']}\) is still stopping ([\d.]+) s after SIGTERM, the limit",
        text,
    )
    assert capped, text
    assert float(capped.group(1)) >= stop_limit(deadline, grace)
    assert f"worker 2 (pid {pids['2']}) exited with -9" in text
