"""What /metrics exports: build info, process figures, histograms, bounded close codes; and
Metrics.refresh folds running totals into the Prometheus counters exactly once."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tornado
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

import tornado_echo
from tests.helpers import BASE_CONF, Service, make_server, metric, start_service
from tornado_echo import __version__
from tornado_echo.config import Config
from tornado_echo.connections import Connections
from tornado_echo.engines.budget import loop_budgets
from tornado_echo.observability.metrics import (
    CLOSE_END_STATES,
    DIRECTIONS,
    HANDSHAKE_OUTCOMES,
    KNOWN_CLOSE_CODES,
    REFUSAL_REASONS,
    Metrics,
    close_code_label,
)
from tornado_echo.store import Store


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_close_code_labels_are_bounded() -> None:
    assert close_code_label(1000) == "1000"
    assert close_code_label(1015) == "1015"
    assert {close_code_label(code) for code in range(0, 70000)} == {
        str(code) for code in KNOWN_CLOSE_CODES
    } | {"other"}


def expected_zero_series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    series = {("tornado_echo_handshakes_total", (("outcome", o),)) for o in HANDSHAKE_OUTCOMES}
    series |= {("tornado_echo_rejections_total", (("reason", r),)) for r in REFUSAL_REASONS}
    for name in ("tornado_echo_messages_total", "tornado_echo_bytes_total"):
        series |= {(name, (("direction", d),)) for d in DIRECTIONS}
    codes = [*map(str, KNOWN_CLOSE_CODES), "other"]
    series |= {
        ("tornado_echo_close_codes_total", (("code", c), ("end_state", e)))
        for c in codes
        for e in CLOSE_END_STATES
    }
    return series


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.gen_test(timeout=60)
async def test_a_fresh_server_exports_every_known_series_at_zero(
    tmp_path: Path, services: list[Service], workers: int
) -> None:
    service = start_service(tmp_path, BASE_CONF + f"workers = {workers}\n")
    services.append(service)
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{service.port}/metrics")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in samples(response.body.decode())
        if s.name.endswith("_total")
    }
    wanted = expected_zero_series()
    assert len(wanted) > 60
    assert wanted - set(found) == set()
    assert {found[series] for series in wanted} == {0.0}
    for counter in ("store_errors", "store_payloads_shed", "tls_failures"):
        assert found[(f"tornado_echo_{counter}_total", ())] == 0.0
    service.process.terminate()
    assert service.wait_exit() == 0


def refusal_labels_in_the_code() -> set[str]:
    """Every metric label a refusal site in web/ and http/ passes: a string literal, or a name
    (a module constant such as http.admission's FULL, or a local assigned from them)."""
    found: set[str] = set()
    package = Path(tornado_echo.__file__).parent
    trees = [
        ast.parse(path.read_text())
        for path in [*package.glob("web/**/*.py"), *package.glob("http/**/*.py")]
    ]
    assigned: dict[str, list[ast.expr]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.value)

    def labels(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            return labels(node.body) | labels(node.orelse)
        if isinstance(node, ast.Name) and node.id in assigned:
            # Every assignment to that name in these files (names are reused: keep those
            # that read as labels; at least one must).
            found: set[str] = set()
            for value in assigned[node.id]:
                with contextlib.suppress(AssertionError):
                    found |= labels(value)
            if found:
                return found
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get":
            return labels(node.args[1])  # kwargs.get("label", default)
        if isinstance(node, ast.Attribute):  # passed on (refusal.label): found where made
            return set()
        raise AssertionError(f"a refusal label this test cannot read: {ast.dump(node)}")

    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_upgrade_problem":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple):
                        found |= labels(ret.value.elts[0])
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            position = {"_reject": 1, "refuse": 2, "_refusal": 1, "_Refusal": 1}.get(name)
            if name == "on_refusal" and node.args:
                position = 0
            # _reject(500, *problem) passes what _upgrade_problem returns, found above.
            starred = any(isinstance(arg, ast.Starred) for arg in node.args)
            if position is not None and not starred and len(node.args) > position:
                arg = node.args[position]
                # Listener._refusal(stream, answer(...), linger) is another _refusal.
                if not (name == "_refusal" and isinstance(arg, ast.Call)):
                    found |= labels(arg)
            first = node.args[0] if node.args else None
            if name == "get" and isinstance(first, ast.Constant) and first.value == "label":
                found |= labels(node.args[1])  # write_error's default
    return found


def test_every_refusal_label_the_code_uses_is_known_in_advance() -> None:
    used = refusal_labels_in_the_code()
    assert {"origin", "request_body", "connection_limit_http", "key", "error"} <= used
    assert used <= set(REFUSAL_REASONS), used - set(REFUSAL_REASONS)


@pytest.mark.gen_test(timeout=30)
async def test_metrics_of_one_process(tmp_path: Path, sqlite_url: str) -> None:
    server = make_server(tmp_path, sqlite_url, max_connections=123)
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"
        for code in (4321, 3999, 1000):  # two application codes share "other"
            client = await websocket_connect(url)
            for payload in ("x" * 10, "y" * 5000):
                await client.write_message(payload)
                await client.read_message()
            client.close(code)
            assert await client.read_message() is None
        http = AsyncHTTPClient()
        base = f"http://127.0.0.1:{server.port}/metrics"
        deadline = time.monotonic() + 10
        while True:  # the server notes a close when the client's TCP close arrives
            text = (await http.fetch(base)).body.decode()
            if "tornado_echo_connection_duration_seconds_count 3.0" in text:
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.05)
        build = {"version": __version__, "python": platform.python_version()}
        build |= {"tornado": tornado.version, "engine": Config().engine}
        assert value(text, "tornado_echo_build_info", **build) == 1
        assert value(text, "tornado_echo_max_connections") == 123
        assert value(text, "process_open_fds") > 5
        assert value(text, "process_max_fds") > value(text, "process_open_fds")
        assert value(text, "process_resident_memory_bytes") > 1_000_000
        name = "tornado_echo_message_size_bytes_bucket"
        assert value(text, name, le="16.0") == 3
        assert value(text, name, le="4096.0") == 3
        assert value(text, name, le="16384.0") == 6
        assert value(text, "tornado_echo_message_size_bytes_sum") == 3 * 5010
        closes = "tornado_echo_close_codes_total"
        assert value(text, closes, code="other", end_state="closed") == 2
        assert value(text, closes, code="1000", end_state="closed") == 1
        assert value(text, "tornado_echo_connection_duration_seconds_count") == 3
        assert value(text, "tornado_echo_connection_duration_seconds_bucket", le="0.1") == 3
        assert value(text, "tornado_echo_handshakes_total", outcome="accepted") == 3
        assert value(text, "tornado_echo_connections_total") == 3

        accept = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
        openmetrics = await http.fetch(base, headers={"Accept": accept})
        assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
        assert openmetrics.body.endswith(b"# EOF\n")
        plain = await http.fetch(base)
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        await server.shutdown()


async def scrape_until(port: int, done: Callable[[str], bool], timeout: float = 10) -> str:
    """/metrics, scraped until ``done`` holds for its text (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
        text = response.body.decode()
        if done(text):
            return text
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.1)


@pytest.mark.gen_test(timeout=60)
async def test_metrics_of_workers_have_process_figures_per_pid(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\nmax_connections = 100\n")
    services.append(service)
    # Each worker copies its figures every tick.
    text = await scrape_until(
        service.port,
        lambda text: all(s.value > 5 for s in samples(text) if s.name == "process_open_fds"),
    )
    fds = [s for s in samples(text) if s.name == "process_open_fds"]
    assert len({s.labels["pid"] for s in fds}) == 2, fds
    assert value(text, "tornado_echo_max_connections") == 200  # the service's capacity
    assert value(text, "process_cpu_seconds_total") > 0
    assert [s.labels["engine"] for s in samples(text) if s.name == "tornado_echo_build_info"]
    service.process.terminate()
    assert service.wait_exit() == 0


@dataclass(eq=False)
class Session:
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def close_for_shutdown(self, code: int, reason: str) -> None:
        pass


@pytest.mark.gen_test(timeout=60)
async def test_sessions_of_every_worker_are_counted_in_any_workers_scrape(
    tmp_path: Path, services: list[Service]
) -> None:
    service = start_service(tmp_path, BASE_CONF + "workers = 2\n")
    services.append(service)
    for _ in range(20):  # spread over both workers by the kernel (SO_REUSEPORT)
        client = await websocket_connect(f"ws://127.0.0.1:{service.port}/ws")
        client.close(1000)
        assert await client.read_message() is None
    # Each worker folds its counts every tick, the answering one at the scrape too.
    text = await scrape_until(
        service.port,
        lambda text: value(text, "tornado_echo_connection_duration_seconds_count") == 20,
    )
    assert value(text, "tornado_echo_handshakes_total", outcome="accepted") == 20
    assert value(text, "tornado_echo_connections_total") == 20
    assert value(text, "tornado_echo_close_codes_total", code="1000", end_state="closed") == 20


def test_sessions_are_folded_into_the_metrics_once(store: Store, connections: Connections) -> None:
    metrics = Metrics()
    metrics.session_opened()
    metrics.session_opened()
    metrics.observe_close(1000, "closed", 0.05)
    metrics.refresh(connections, store)
    metrics.observe_close(4444, "aborted", 100.0)
    metrics.refresh(connections, store)
    metrics.refresh(connections, store)
    text = metrics.exposition()[0].decode()
    assert value(text, "tornado_echo_handshakes_total", outcome="accepted") == 2
    assert value(text, "tornado_echo_connections_total") == 2
    closes = "tornado_echo_close_codes_total"
    assert value(text, closes, code="1000", end_state="closed") == 1
    assert value(text, closes, code="other", end_state="aborted") == 1
    durations = "tornado_echo_connection_duration_seconds"
    assert value(text, durations + "_bucket", le="0.1") == 1
    assert value(text, durations + "_bucket", le="60.0") == 1
    assert value(text, durations + "_bucket", le="300.0") == 2
    assert value(text, durations + "_count") == 2
    assert value(text, durations + "_sum") == pytest.approx(100.05)


def test_each_refresh_adds_only_what_is_new(store: Store, connections: Connections) -> None:
    metrics = Metrics()
    ended, running = Session(2, 2, 10, 10), Session(1, 1, 5, 5)
    connections.add(ended)
    connections.add(running)
    metrics.refresh(connections, store)
    connections.discard(ended)  # its traffic stays in the totals
    running.messages_in, running.bytes_in = 4, 20
    metrics.refresh(connections, store)
    metrics.refresh(connections, store)
    text = metrics.exposition()[0].decode()
    assert metric(text, 'tornado_echo_messages_total{direction="in"}') == 6
    assert metric(text, 'tornado_echo_messages_total{direction="out"}') == 3
    assert metric(text, 'tornado_echo_bytes_total{direction="in"}') == 30
    assert metric(text, "tornado_echo_connections_open") == 1
    assert metric(text, "tornado_echo_store_records_written_total") == 0


@pytest.mark.gen_test
async def test_the_loops_budgets_are_in_the_metrics(store: Store, connections: Connections) -> None:
    metrics = Metrics()
    budgets = loop_budgets()
    budgets.memory.charge(12345)
    budgets.turn.spend(budgets.turn.frames, 0)  # the turn is spent: the next read waits
    budgets.turn.wait(lambda: None)
    try:
        metrics.refresh(connections, store)
        text = metrics.exposition()[0].decode()
        assert metric(text, "tornado_echo_inflight_bytes") == 12345
        assert metric(text, "tornado_echo_turn_waiting") == 1
    finally:
        budgets.memory.charge(-12345)
