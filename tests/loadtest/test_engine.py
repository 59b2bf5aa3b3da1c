"""The load tester against real (partly misbehaving) servers: every error class."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import socket
import time

import pytest

from tests.loadtest.conftest import Servers
from tests.loadtest.helpers import run_load
from tornado_echo.loadtest import preflight, report
from tornado_echo.loadtest.config import LoadConfig, Scenario, Stage, Target
from tornado_echo.loadtest.engine import Progress, Worker
from tornado_echo.loadtest.stats import Stats


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_correct_server_closed_loop_checks_every_echo(servers: Servers, loop: str) -> None:
    pytest.importorskip(loop)
    stats, summary = run_load(servers.url("/echo"), connections=20, messages=25, loop=loop)
    c = stats.counters
    assert c["connections_established"] == 20
    assert c["messages_sent"] == c["messages_received"] == 500
    assert summary["error_rate"] == 0.0
    assert stats.errors == {}
    assert stats.histograms["latency"].total == 500
    assert stats.histograms["handshake"].total == 20
    assert summary["latency_ms"]["p99"] > 0
    assert c["bytes_received"] == 500 * 64


def test_inflight_binary_sizes_deflate_headers(servers: Servers) -> None:
    stats, summary = run_load(
        servers.url("/echo"),
        connections=4,
        messages=40,
        inflight=4,
        binary=True,
        size="16-3000",
        deflate=True,
        headers=(("X-Require", "yes"),),
        origin="http://x",
        subprotocols=("chat",),
        seed=1,
    )
    assert stats.counters["messages_received"] == 160
    assert summary["error_rate"] == 0.0


def test_custom_header_reaches_server(servers: Servers) -> None:
    stats, _ = run_load(
        servers.url("/echo"), connections=2, messages=3, headers=(("X-Require", "no"),)
    )
    assert stats.errors["close_1008"] == 2


def test_open_loop_records_schedule_and_both_latencies(servers: Servers) -> None:
    stats, summary = run_load(
        servers.url("/echo"), connections=5, mode="open", rate=50.0, messages=10
    )
    c = stats.counters
    assert c["messages_received"] == 50
    assert c["messages_intended"] == 50
    assert stats.histograms["schedule_lag"].total == 50
    assert stats.histograms["latency_uncorrected"].total == 50
    # From the intended time is never shorter than from the actual send time.
    assert summary["latency_ms"]["max"] >= summary["latency_uncorrected_ms"]["max"]


def test_open_loop_counts_sends_due_at_the_end(servers: Servers) -> None:
    stats, summary = run_load(
        servers.url("/echo"), connections=3, mode="open", rate=20.0, duration=0.5
    )
    c = stats.counters
    # At the stop each connection has at most its next send due and not yet made.
    assert c["messages_sent"] > 0
    assert 0 <= c["messages_intended"] - c["messages_sent"] <= 3
    # A busy machine can make the tester itself late, and then it rightly says so; but a
    # run that kept to its schedule is not client-bound for the sends still due at the
    # stop, and a run this short is never judged on CPU.
    saturation = summary["saturation"]
    on_schedule = all(
        w["schedule_lag_p99_ms"] <= 1.0 and w["loop_lag_p99_ms"] <= report.LOOP_LAG_BOUND_MS
        for w in stats.workers
    )
    if on_schedule:
        assert not saturation["client_bound"], saturation["reasons"]
    assert all("lag" in reason for reason in saturation["reasons"]), saturation["reasons"]


def test_duration_mode_stops_by_itself(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/echo"), connections=3, duration=0.5)
    assert stats.counters["messages_received"] > 0
    assert stats.counters["lost"] == 0
    assert summary["connections"]["dropped"] == 0


def test_wrong_echo_counts_mismatches(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/wrong"), connections=2, messages=5)
    assert stats.counters["mismatches"] == 10
    assert stats.counters["messages_received"] == 0
    assert stats.errors["mismatch"] == 10
    assert summary["error_rate"] > 0


@pytest.mark.parametrize("binary", [False, True])
def test_echo_in_the_other_frame_type_is_its_own_error(servers: Servers, binary: bool) -> None:
    stats, summary = run_load(servers.url("/retype"), connections=2, messages=10, binary=binary)
    assert stats.counters["retyped"] == 4  # the 5th and 10th of each connection
    assert stats.errors == {"retyped": 4}
    assert stats.counters["messages_received"] == 16
    assert stats.counters["lost"] == stats.counters["mismatches"] == 0
    assert summary["messages"]["retyped"] == 4
    assert summary["error_rate"] > 0


@pytest.mark.parametrize(("size", "inflight"), [("64", 1), ("17-40", 2)])
def test_a_garbled_sequence_number_is_one_mismatch(
    servers: Servers, size: str, inflight: int
) -> None:
    stats, _ = run_load(
        servers.url("/corrupt-seq"), connections=2, messages=12, size=size, inflight=inflight
    )
    c = stats.counters
    assert c["mismatches"] == 8  # the 3rd, 6th, 9th, 12th of each connection
    assert c["lost"] == c["duplicates"] == 0
    assert c["messages_received"] == 16
    assert stats.errors == {"mismatch": 8}


def test_dropped_messages_count_as_lost(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/drop"), connections=2, messages=6, timeout=0.3)
    assert stats.counters["lost"] == 4  # the 3rd and 6th of each connection
    assert stats.counters["messages_received"] == 8
    assert stats.errors["lost"] == 4


def test_duplicates_are_counted(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/dup"), connections=1, messages=4, inflight=1)
    assert stats.counters["messages_received"] == 4
    assert stats.counters["duplicates"] >= 3  # the last may race the close


def test_reordering_is_counted(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/reorder"), connections=1, messages=8, inflight=2)
    assert stats.counters["messages_received"] == 8
    assert stats.counters["reordered"] == 4
    assert stats.counters["mismatches"] == 0


@pytest.mark.parametrize("status", [500, 503, 403])
def test_refused_upgrade_status(servers: Servers, status: int) -> None:
    stats, summary = run_load(servers.url(f"/status/{status}"), connections=3, messages=1)
    assert stats.errors == {f"handshake_{status}": 3}
    assert summary["connections"]["failed"] == 3
    assert summary["error_rate"] == 1.0


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 4000])
def test_server_close_codes(servers: Servers, code: int) -> None:
    stats, summary = run_load(servers.url(f"/close/{code}"), connections=2, messages=5)
    assert stats.errors[f"close_{code}"] == 2
    assert summary["connections"]["dropped"] == 2


@pytest.mark.parametrize("code", [1005, 1015, 999, 2999])
def test_a_server_that_closes_with_a_code_that_may_not_be_sent_is_flagged(
    servers: Servers, code: int
) -> None:
    stats, summary = run_load(servers.url(f"/close/{code}"), connections=2, messages=5)
    assert stats.errors[f"close_invalid_{code}"] == 2
    assert f"close_{code}" not in stats.errors
    assert summary["connections"]["dropped"] == 2


def test_abrupt_close_is_1006(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/close/1006"), connections=2, messages=5)
    assert stats.errors["close_1006"] == 2
    assert summary["connections"]["dropped"] == 2


def test_oversized_message_closed_with_1009(servers: Servers) -> None:
    url = f"ws://127.0.0.1:{servers.small_port}/echo"
    stats, _ = run_load(url, connections=1, messages=2, size=200)
    assert stats.errors["close_1009"] == 1


def test_connection_refused(servers: Servers) -> None:
    stats, summary = run_load(f"ws://127.0.0.1:{servers.refused_port}/", connections=3, messages=1)
    assert stats.errors == {"refused": 3}
    assert summary["connections"]["failed"] == 3


def test_handshake_timeout(servers: Servers) -> None:
    stats, _ = run_load(
        f"ws://127.0.0.1:{servers.silent_port}/", connections=2, messages=1, connect_timeout=0.3
    )
    assert stats.errors == {"handshake_timeout": 2}


def test_source_addresses_are_used(servers: Servers) -> None:
    sources = ("127.0.0.2", "127.0.0.3")
    stats, _ = run_load(servers.url("/echo"), connections=4, messages=2, source_ips=sources)
    assert stats.counters["messages_received"] == 8
    # What a listener sees: the connections come from those addresses, in turn.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stats, _ = run_load(
            f"ws://127.0.0.1:{port}/",
            connections=4,
            messages=1,
            connect_timeout=0.3,
            source_ips=sources,
        )
        assert stats.errors == {"handshake_timeout": 4}
        listener.settimeout(5)
        peers = []
        for _ in range(4):
            conn, (peer, _) = listener.accept()
            conn.close()
            peers.append(peer)
    assert sorted(peers) == sorted(sources * 2)


def test_two_workers_merge_exactly(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/echo"), connections=6, messages=10, workers=2)
    assert stats.counters["messages_received"] == 60
    assert stats.histograms["latency"].total == 60
    assert len(stats.workers) == 2
    assert {w["connections"] for w in stats.workers} == {3}
    assert summary["saturation"]["workers"] == stats.workers
    # Per-second latency (for the HTML report) merges exactly too: every sample once.
    assert sum(sum(second.values()) for second in stats.latency_seconds) == 60
    assert sum(stats.series["closed"]) == sum(stats.series["established"]) == 6


def test_wss_with_insecure(servers: Servers) -> None:
    url = f"wss://localhost:{servers.tls_port}/echo"
    stats, summary = run_load(url, connections=2, messages=5, insecure=True)
    assert stats.counters["messages_received"] == 10
    assert summary["error_rate"] == 0.0


def test_wss_untrusted_certificate_is_a_tls_error(servers: Servers) -> None:
    stats, _ = run_load(f"wss://localhost:{servers.tls_port}/echo", connections=2, messages=1)
    assert stats.errors == {"tls_error": 2}


def test_series_add_up_to_the_counters(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/close/1011"), connections=3, messages=4)
    assert sum(stats.series["established"]) == 3
    assert sum(stats.series["dropped"]) == 3
    assert sum(stats.series["received"]) == stats.counters["messages_received"]
    assert sum(stats.series["sent"]) == stats.counters["messages_sent"]


@pytest.mark.slow
def test_series_put_counts_in_the_second_they_happened(servers: Servers) -> None:
    cfg = LoadConfig.validated(
        target=Target.parse(servers.url("/echo")), connections=3, duration=60.0
    )
    plan = preflight.make_plans(cfg, preflight.check(cfg))[0]
    reports: list[tuple[int, Progress]] = []  # (the whole second it was made at, what it saw)

    def progress(snapshot: Progress) -> None:
        # A report is due at each whole second of the run; it may come late on a busy
        # machine, or a moment early (uvloop's timers have millisecond resolution), and an
        # early one is repeated until the second is reached.
        reports.append((int(time.time() - plan.start_wall + 0.05), snapshot))
        if reports[-1][0] >= 2:  # stopped by reports, not by a timer a busy machine may skew
            worker.request_stop()

    worker = Worker(cfg, plan, progress)
    stats = asyncio.run(worker.run())
    # The last report at the end of second 0 saw exactly what the series put in it.
    *_, first = (snapshot for made, snapshot in reports if made == 1)
    assert stats.series["established"][0] == first.established
    assert stats.series["received"][0] == first.received
    # The connections open within milliseconds of the start; echoes flow in both seconds.
    assert stats.series["established"][0] == 3
    assert stats.series["received"][0] > 0 and stats.series["received"][1] > 0


@pytest.mark.parametrize(
    ("path", "options", "nonzero"),
    [
        pytest.param(
            "/echo", {"duration": 1.5}, ("established", "received"), marks=pytest.mark.slow
        ),
        ("/close/1011", {"messages": 4}, ("established", "dropped", "received")),
        ("/status/503", {"messages": 1}, ("failed",)),
    ],
)
def test_connections_over_time_add_up_to_the_totals(
    servers: Servers, path: str, options: dict[str, float], nonzero: tuple[str, ...]
) -> None:
    _, summary = run_load(servers.url(path), connections=3, **options)
    totals = {
        "established": summary["connections"]["established"],
        "failed": summary["connections"]["failed"],
        "dropped": summary["connections"]["dropped"],
        "received": summary["messages"]["received"],
    }
    assert all(totals[name] > 0 for name in nonzero), totals
    rows = summary["timeline"]
    for name, total in totals.items():
        assert sum(row[name] for row in rows) == total, name
    out = io.StringIO()
    report.render(summary, out)
    lines = out.getvalue().splitlines()
    start = lines.index("connections over time (1 s per row)") + 2
    printed = [line.split() for line in lines[start : start + len(rows)]]
    assert [cells[0] for cells in printed] == [f"{i}-{i + 1}" for i in range(len(rows))]
    for column, name in enumerate(("established", "failed", "dropped"), start=1):
        assert sum(int(cells[column]) for cells in printed) == totals[name], name
    echoed = sum(float(cells[4]) for cells in printed)  # per second, and each row is 1 s
    assert echoed == pytest.approx(totals["received"], abs=0.05 * len(rows))


@pytest.mark.slow
def test_run_leaves_garbage_collection_as_it_found_it(servers: Servers) -> None:
    threshold = gc.get_threshold()
    run_load(servers.url("/echo"), connections=3, duration=1.2)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


def test_stop_request_gives_a_partial_result_marked_interrupted(servers: Servers) -> None:
    cfg = LoadConfig.validated(
        target=Target.parse(servers.url("/echo")), connections=2, duration=60.0
    )
    plan = preflight.make_plans(cfg, preflight.check(cfg))[0]
    worker = Worker(cfg, plan)

    async def main() -> Stats:
        asyncio.get_running_loop().call_later(0.5, worker.request_stop)
        return await worker.run()

    stats = asyncio.run(main())
    assert stats.interrupted
    assert stats.elapsed < 30  # stopped long before the 60 s duration
    assert stats.counters["messages_received"] > 0
    assert stats.counters["lost"] == 0


def test_progress_snapshots_carry_interval_latency_and_error_classes(servers: Servers) -> None:
    cfg = LoadConfig.validated(
        target=Target.parse(servers.url("/drop")),
        connections=2,
        duration=1.6,
        timeout=0.3,
        progress_interval=0.25,
    )
    plan = preflight.make_plans(cfg, preflight.check(cfg))[0]
    snapshots: list[Progress] = []
    asyncio.run(Worker(cfg, plan, snapshots.append).run())
    # The drop server answers 2 of 3: lost ones show by class while the run goes on.
    assert any(dict(s.error_classes).get("lost", 0) > 0 for s in snapshots)
    # Each snapshot holds only its own interval's samples: together, every sample once.
    assert sum(count for s in snapshots for _, count in s.latency_buckets) == (
        snapshots[-1].received
    )
    assert sum(1 for s in snapshots if s.latency_buckets) >= 2


def test_stages_ramp_connections_up_and_down(servers: Servers) -> None:
    stages = (Stage(0.5, 4), Stage(0.5, 4), Stage(0.5, 0))
    stats, summary = run_load(
        servers.url("/echo"), connections=4, stages=stages, duration=1.5, workers=1
    )
    assert stats.counters["connections_established"] == 4  # none replaced: none closed early
    assert summary["connections"]["peak_open"] == 4
    # Closed by us on the way down: no drops, no errors, all closed again.
    assert stats.errors == {} and stats.counters["messages_received"] > 0
    assert sum(stats.series["closed"]) == 4


def test_churn_replaces_each_connection_after_its_messages(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/echo"), connections=2, churn=3, duration=1.0)
    c = stats.counters
    assert c["connections_established"] >= 6  # each of the 2 slots reopened at least twice
    assert stats.histograms["handshake"].total == c["connections_established"]
    assert stats.errors == {} and c["connections_dropped"] == 0
    assert summary["connections"]["opened_per_s"] > 0


def test_reconnect_opens_a_new_connection_for_each_dropped_one(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/close/1011"), connections=2, reconnect=True, duration=1.0)
    c = stats.counters
    assert c["connections_established"] >= 4
    assert stats.errors["close_1011"] == c["connections_dropped"] >= 3


# The old control loop refilled the slots once per 50 ms tick: at most 20 connections a second
# per slot, whatever the server could take. A slot is now refilled as soon as it is free.
TICK_CAP_PER_SLOT = 20


def test_churn_replaces_connections_at_the_servers_pace_not_a_tick(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/echo"), connections=1, churn=1, duration=1.0)
    c = stats.counters
    assert c["connections_established"] > 3 * TICK_CAP_PER_SLOT, c
    assert stats.errors == {} and c["connections_dropped"] == 0


def test_reconnect_replaces_a_dropped_connection_at_once(servers: Servers) -> None:
    stats, _ = run_load(servers.url("/close/1011"), connections=1, reconnect=True, duration=1.0)
    c = stats.counters
    assert c["connections_established"] > 3 * TICK_CAP_PER_SLOT, c
    assert stats.errors["close_1011"] == c["connections_dropped"]


def test_a_handshake_timeout_is_counted_without_a_traceback(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        stats, _ = run_load(
            f"ws://127.0.0.1:{servers.silent_port}/", connections=3, messages=1, connect_timeout=0.3
        )
        gc.collect()  # an exception never retrieved is logged when its future goes
    assert stats.errors == {"handshake_timeout": 3}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_connections_never_attempted_are_reported_and_fail_the_run(servers: Servers) -> None:
    # 20 connections at 4/s cannot all be attempted in 0.6 s.
    stats, summary = run_load(servers.url("/echo"), connections=20, connect_rate=4.0, duration=0.6)
    c = summary["connections"]
    assert 1 <= c["attempted"] < 20
    assert c["not_attempted"] == 20 - c["attempted"]
    assert stats.errors["not_attempted"] == c["not_attempted"]
    assert report.check_errors(summary)
    out = io.StringIO()
    report.render(summary, out)
    assert f"not attempted {c['not_attempted']}" in out.getvalue()


def test_reordered_echoes_fail_the_run(servers: Servers) -> None:
    stats, summary = run_load(servers.url("/reorder"), connections=1, messages=8, inflight=2)
    assert stats.counters["reordered"] == 4
    assert stats.errors == {"reordered": 4}
    assert report.check_errors(summary)


def test_a_closed_loop_reorder_is_late_and_reordered_not_lost(servers: Servers) -> None:
    # The first echo comes only after the second: past the timeout with one in flight.
    stats, summary = run_load(servers.url("/hold-first"), connections=2, messages=3, timeout=0.3)
    c = stats.counters
    assert c["lost"] == 0
    assert c["late"] == c["reordered"] == 2
    assert c["messages_received"] == 4
    assert stats.errors == {"late": 2, "reordered": 2}
    assert summary["latency_ms"]["count"] == 6  # the late ones timed too
    assert summary["latency_ms"]["max"] >= 300


def test_echoes_after_the_timeout_are_late_and_max_latency_tells_the_truth(
    servers: Servers,
) -> None:
    # The server holds its echoes for a second at the 50th message; the timeout is 0.3 s.
    stats, summary = run_load(servers.url("/stall"), connections=1, messages=60, timeout=0.3)
    c = stats.counters
    assert c["lost"] == 0
    assert c["late"] >= 1
    assert c["messages_received"] + c["late"] == 60
    assert summary["latency_ms"]["max"] >= 900
    out = io.StringIO()
    report.render(summary, out)
    text = out.getvalue()
    assert f"{c['late']} late" in text and "lost" in text


def test_a_reset_is_told_apart_from_a_clean_close_without_a_close_frame(
    servers: Servers,
) -> None:
    reset, _ = run_load(servers.url("/reset"), connections=2, messages=5)
    clean, _ = run_load(servers.url("/close/1006"), connections=2, messages=5)
    assert reset.errors["close_1006_reset"] == 2 and "close_1006" not in reset.errors
    assert clean.errors["close_1006"] == 2 and "close_1006_reset" not in clean.errors


def scenarios(*specs: str) -> tuple[Scenario, ...]:
    return tuple(Scenario.parse(spec) for spec in specs)


def test_a_weighted_mix_of_scenarios_keeps_every_echo_check(servers: Servers) -> None:
    mix = scenarios(
        "weight=2 messages=3 size=20-80 close=4000", "kind=ping messages=3", "kind=idle"
    )
    stats, summary = run_load(
        servers.url("/echo"), connections=6, duration=1.0, scenarios=mix, seed=7
    )
    assert stats.errors == {}
    assert set(summary["scenarios"]) == {scenario.spec for scenario in mix}
    assert all(count > 0 for count in summary["scenarios"].values()), summary["scenarios"]
    c = stats.counters
    assert c["messages_received"] > 0 and c["messages_received"] == c["messages_sent"]
    # Finished sessions were replaced by newly drawn ones; idle ones hold their place.
    assert c["connections_established"] > 6


def test_a_ping_scenario_takes_pongs_as_its_echoes(servers: Servers) -> None:
    # The /wrong server garbles every data echo; pongs are its WebSocket layer's, not its.
    stats, _ = run_load(
        servers.url("/wrong"), connections=2, duration=0.5, scenarios=scenarios("kind=ping")
    )
    assert stats.errors == {}
    assert stats.counters["messages_received"] > 0
    assert stats.histograms["latency"].total == stats.counters["messages_received"]


def test_an_idle_scenario_opens_and_sends_nothing(servers: Servers) -> None:
    stats, _ = run_load(
        servers.url("/echo"), connections=3, duration=0.5, scenarios=scenarios("kind=idle")
    )
    assert stats.errors == {}
    assert stats.counters["connections_established"] == 3
    assert stats.counters["messages_sent"] == 0


def test_think_time_spaces_a_sessions_messages(servers: Servers) -> None:
    stats, _ = run_load(
        servers.url("/echo"),
        connections=1,
        duration=1.0,
        scenarios=scenarios("messages=1000 think=0.2"),
    )
    assert stats.errors == {}
    assert 1 <= stats.counters["messages_sent"] <= 6  # one each 0.2 s, and the first


def test_a_held_idle_session_closes_and_is_replaced(servers: Servers) -> None:
    mix = scenarios("kind=idle hold=0.2")
    stats, _ = run_load(servers.url("/echo"), connections=2, duration=1.0, scenarios=mix)
    assert stats.errors == {}
    assert stats.counters["connections_established"] >= 6  # each place every 0.2 s or so
    assert stats.counters["messages_sent"] == 0


def test_places_waiting_for_handshake_room_are_not_held_to_the_tick(servers: Servers) -> None:
    # 20 places, one handshake in progress at a time: each place opens as soon as the one
    # before it has, not on the next control tick (which would take 19 ticks, 0.95 s).
    stats, _ = run_load(
        servers.url("/echo"), connections=20, reconnect=True, duration=2.0, connect_concurrency=1
    )
    assert stats.counters["connections_established"] == 20
    assert stats.ramp_seconds < 0.6, stats.ramp_seconds
    assert stats.errors == {}
