"""The systemd units in conf/: systemd-analyze verify, and agreement with the config.

``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and the
real one (/opt/tornado-echo/venv/bin/tornado-echo) exists only on an installed host. So
the unit is verified as a copy in which that one path is replaced by an executable stub
in tmp_path; every other line, /bin/kill and the system targets are checked as shipped.
verify reports most mistakes (unknown keys, unparsable values) as warnings with exit
status 0, so any output counts as a failure too; test_broken_unit_is_caught proves it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tornado_echo.process.supervisor import KILL_WAIT, stop_limit

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

CONF = Path(__file__).resolve().parent.parent / "conf"
EXEC_PATH = "/opt/tornado-echo/venv/bin/tornado-echo"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found (Debian package 'systemd'); unit files not verified",
)


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order, repeats kept."""
    settings = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {raw!r}"
        settings.append((section, key.strip(), value.strip()))
    return settings


def setting(path: Path, section: str, key: str) -> str:
    values = [v for s, k, v in unit_settings(path) if (s, k) == (section, key)]
    assert len(values) == 1, f"{path.name}: [{section}] {key}= set {len(values)} times"
    return values[0]


def verify(unit_text: str, unit_name: str, tmp_path: Path) -> str:
    """Run systemd-analyze verify on ``unit_text``; return its complaints ('' if none)."""
    assert SYSTEMD_ANALYZE is not None
    stub = tmp_path / "bin" / "tornado-echo"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / unit_name
    unit.write_text(unit_text.replace(EXEC_PATH, str(stub)))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not complaints:
        complaints = f"exit status {result.returncode}"
    return complaints


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("source", "unit_name"),
    [
        ("tornado-echo.service", "tornado-echo.service"),
        ("tornado-echo@.service", "tornado-echo@8081.service"),
    ],
)
def test_unit_verifies(source: str, unit_name: str, tmp_path: Path) -> None:
    text = (CONF / source).read_text()
    # The rewrite must touch the binary of ExecStart and of the check before a reload.
    assert text.count(EXEC_PATH) == 2
    assert f"ExecStart={EXEC_PATH} " in text and f"ExecReload={EXEC_PATH} " in text
    assert verify(text, unit_name, tmp_path) == ""


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("Type=notify", "Type=notfy", "Failed to parse service type"),
        ("WatchdogSec=30", "WatchdogSecs=30", "Unknown key"),
        ("LimitNOFILE=1048576", "LimitNOFILE=lots", "Failed to parse resource value"),
        (f"ExecReload={EXEC_PATH}", "ExecReload=/bin/no-such-check", "is not executable"),
        ("[Install]", "[Instal]", "Unknown section"),
    ],
)
def test_broken_unit_is_caught(old: str, new: str, expected: str, tmp_path: Path) -> None:
    text = (CONF / "tornado-echo.service").read_text()
    assert old in text
    assert expected in verify(text.replace(old, new, 1), "tornado-echo.service", tmp_path)


@pytest.mark.parametrize("name", ["tornado-echo.service", "tornado-echo@.service"])
def test_unit_agrees_with_production_config(name: str) -> None:
    unit = CONF / name
    config = tomllib.loads((CONF / "production.toml").read_text())
    assert setting(unit, "Service", "Type") == "notify"
    assert setting(unit, "Service", "NotifyAccess") == "main"
    assert setting(unit, "Service", "User") == "tornado-echo"
    # systemd must not SIGKILL a drain the supervisor still lets finish (nor one it killed
    # and is waiting to see gone).
    limit = stop_limit(config["shutdown_deadline"]) + KILL_WAIT
    assert float(setting(unit, "Service", "TimeoutStopSec")) > limit
    assert int(setting(unit, "Service", "LimitNOFILE")) > config["max_connections"]
    state_dir = "/var/lib/" + setting(unit, "Service", "StateDirectory")
    assert state_dir == config["state_dir"]
    # Nothing in the unit overrides the conf file behind the operator's back.
    environment = [v for s, k, v in unit_settings(unit) if k == "Environment"]
    assert not [v for v in environment if v.startswith("TORNADO_ECHO_")], environment
    assert not [k for s, k, v in unit_settings(unit) if k.startswith("LogsDirectory")]
    exec_start = setting(unit, "Service", "ExecStart").split()
    assert exec_start[:3] == [EXEC_PATH, "--config", "/etc/tornado-echo/tornado-echo.toml"]


def test_template_differs_only_by_port() -> None:
    plain = unit_settings(CONF / "tornado-echo.service")
    template = unit_settings(CONF / "tornado-echo@.service")
    differing = {k for s, k, v in set(plain) ^ set(template)}
    assert differing == {"Description", "ExecStart"}
    assert setting(CONF / "tornado-echo@.service", "Service", "ExecStart").endswith(" --port %i")


HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
)


def security_check(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze security, failing above an exposure of 2.0 (of 10)."""
    assert SYSTEMD_ANALYZE is not None
    unit = tmp_path / "tornado-echo.service"
    unit.write_text(unit_text)
    return subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
def test_unit_is_hardened(tmp_path: Path) -> None:
    result = security_check((CONF / "tornado-echo.service").read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_systemd_analyze
def test_weakened_unit_fails_the_security_check(tmp_path: Path) -> None:
    lines = (CONF / "tornado-echo.service").read_text().splitlines(keepends=True)
    weakened = "".join(line for line in lines if line.split("=", 1)[0] not in HARDENING)
    assert len(weakened) < sum(map(len, lines))
    result = security_check(weakened, tmp_path)
    assert result.returncode != 0
    assert "Overall exposure level" in result.stdout
