from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tornado_echo.loadtest import preflight
from tornado_echo.loadtest.config import LoadConfig, Target
from tornado_echo.loadtest.errors import LoadtestConfigError


def cfg(**options: object) -> LoadConfig:
    return LoadConfig.validated(target=Target.parse("ws://127.0.0.1:9/"), **options)


def test_soft_fd_limit_is_raised_to_hard() -> None:
    limit = preflight.raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == soft
    assert hard == resource.RLIM_INFINITY or soft == hard


def test_too_many_connections_per_worker_names_the_fix() -> None:
    limit = preflight.raise_fd_limit()
    with pytest.raises(LoadtestConfigError) as info:
        preflight.check(cfg(connections=limit, workers=1))
    assert "--workers 2" in str(info.value)
    preflight.check(cfg(connections=limit, workers=2), ports=(1024, 65535))


def test_sources_are_picked_for_loopback_past_the_port_range() -> None:
    pre = preflight.check(cfg(connections=250, workers=1), ports=(60000, 60099))
    assert pre.sources == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert pre.notes
    with pytest.raises(LoadtestConfigError) as info:
        preflight.check(cfg(connections=250, source_ips=("127.0.0.2",)), ports=(60000, 60099))
    assert "ip_local_port_range" in str(info.value)


def test_port_range_file(tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("1000\t2000\n")
    assert preflight.port_range(str(path)) == (1000, 2000)
    assert preflight.port_range(str(tmp_path / "missing")) == (32768, 60999)


def test_plans_split_connections_and_rate() -> None:
    config = cfg(connections=7, workers=3, connect_rate=70.0)
    plans = preflight.make_plans(config, preflight.check(config))
    assert [p.connections for p in plans] == [3, 2, 2]
    assert [p.first_connection for p in plans] == [0, 3, 5]
    assert sum(p.connect_rate for p in plans) == pytest.approx(70.0)
    assert len({p.start_wall for p in plans}) == 1


def test_remote_target_needs_opt_in() -> None:
    remote = LoadConfig.validated(target=Target.parse("ws://192.0.2.1:9/"))
    with pytest.raises(LoadtestConfigError):
        preflight.check(remote)


def test_large_loopback_runs_spread_sources_early() -> None:
    pre = preflight.check(
        cfg(connections=preflight.FAST_PER_SOURCE + 1, workers=1), ports=(1024, 65535)
    )
    assert pre.sources == ("127.0.0.1", "127.0.0.2")
    small = preflight.check(cfg(connections=100), ports=(1024, 65535))
    assert small.sources == ()


@pytest.mark.parametrize(
    ("connections", "limit"), [(100, 60), (100, 64), (100, 65), (300, 200), (5000, 1024)]
)
def test_fd_advice_passes_its_own_check_or_says_none_exists(connections: int, limit: int) -> None:
    problem = preflight.fd_problem(connections, 1, limit)
    assert problem is not None
    if limit <= preflight.FD_MARGIN:
        assert "no --workers value helps" in problem
        assert all(preflight.fd_problem(connections, w, limit) for w in (1, 2, connections))
        return
    workers = int(problem.split("--workers ")[1].split()[0])
    assert preflight.fd_problem(connections, workers, limit) is None
    assert preflight.fd_problem(connections, workers - 1, limit) is not None


@pytest.mark.parametrize(
    ("hard", "advice"), [(60, "no --workers value helps"), (200, "--workers 3")]
)
def test_cli_under_a_low_hard_fd_limit(hard: int, advice: str) -> None:
    # A real hard limit, set in a child process (it cannot be raised back in this one).
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({hard}, {hard}))\n"
        "from tornado_echo.loadtest.cli import main\n"
        "sys.exit(main(['ws://127.0.0.1:9/', '-c', '300', '-w', '1', '-q']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert advice in proc.stderr and "Traceback" not in proc.stderr
