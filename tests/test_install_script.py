"""scripts/install-systemd.sh, run for real into a staging tree (--root tmp_path)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-systemd.sh"
CONF = REPO / "conf"
UNITS = ("tornado-echo.service", "tornado-echo@.service")


def run(
    *args: str | Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_help() -> None:
    result = run("--help")
    for option in ("--root", "--uninstall", "--purge", "--no-venv", "--offline"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--uninstall", "--restart"], "--restart does not go with --uninstall"),
        (["--root"], "--root needs a directory"),
        (["--root", "/"], "--root / is the live system"),
        (["--root", "{tmp}/stage", "--no-venv", "{tmp}/nowhere"], "is not a directory"),
        (["--root", "{tmp}/stage", "--no-venv", "{tmp}"], "is not a Python project"),
        (
            ["--root", "{tmp}/stage", "--python", "/bin/false"],
            "/bin/false (/usr/bin/false) does not run",
        ),
    ],
)
def test_bad_usage_is_a_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(*(a.replace("{tmp}", str(tmp_path)) for a in args), check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("install-systemd: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_live_install_needs_root() -> None:
    command = ["bash", str(SCRIPT), "--no-venv"]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and no runuser to drop privileges")
        command = [runuser, "-u", "nobody", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "must run as root" in result.stderr


def test_staged_install_is_idempotent_and_uninstalls(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    etc = root / "etc" / "tornado-echo"
    conf = etc / "tornado-echo.toml"
    unit_dir = root / "etc" / "systemd" / "system"

    first = run("--root", root, "--no-venv")
    assert conf.read_bytes() == (CONF / "production.toml").read_bytes()
    assert mode(conf) == 0o640
    assert mode(etc) == 0o750
    for unit in UNITS:
        assert (unit_dir / unit).read_bytes() == (CONF / unit).read_bytes()
        assert mode(unit_dir / unit) == 0o644
    # Staged: the privileged steps are shown, not done.
    assert "would run: useradd --system" in first.stdout
    assert f"would run: chown root:tornado-echo {conf}" in first.stdout
    assert "would run: systemctl daemon-reload" in first.stdout
    assert "a running service keeps the old code until restarted" in first.stdout
    assert "try-restart" not in first.stdout
    assert not (root / "opt" / "tornado-echo" / "venv").exists()

    conf.write_text(conf.read_text() + "\n# local edit\n")
    edited = conf.read_bytes()
    (unit_dir / UNITS[0]).write_text("stale\n")

    second = run("--root", root, "--no-venv", "--restart")
    assert "keeping the existing" in second.stdout
    # An upgrade with --restart restarts what runs, and only that.
    restart = r"would run: systemctl try-restart tornado-echo.service tornado-echo@\*.service"
    assert second.stdout.splitlines()[-1] == f"install-systemd: {restart}"
    assert conf.read_bytes() == edited
    assert mode(conf) == 0o640
    assert (etc / "tornado-echo.toml.example").read_bytes() == (
        CONF / "production.toml"
    ).read_bytes()
    assert (unit_dir / UNITS[0]).read_bytes() == (CONF / UNITS[0]).read_bytes()

    # An enabled template instance, as systemctl enable would leave it.
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir()
    (wants / "tornado-echo@8081.service").symlink_to("/etc/systemd/system/tornado-echo@.service")
    (wants / "other.service").symlink_to("/etc/systemd/system/other.service")

    run("--root", root, "--uninstall")
    for unit in UNITS:
        assert not (unit_dir / unit).exists()
    assert not (wants / "tornado-echo@8081.service").is_symlink()
    assert (wants / "other.service").is_symlink()
    assert conf.read_bytes() == edited

    run("--root", root, "--uninstall")  # again: nothing left to do, still fine
    drop_ins = [unit_dir / "tornado-echo.service.d", unit_dir / "tornado-echo@8081.service.d"]
    for drop_in in drop_ins:  # as systemctl edit leaves them
        drop_in.mkdir()
        (drop_in / "override.conf").write_text("[Service]\nEnvironment=X=1\n")
    (unit_dir / "other.service.d").mkdir()
    purge = run("--root", root, "--uninstall", "--purge")
    assert not etc.exists()
    assert not [d for d in drop_ins if d.exists()]
    assert (unit_dir / "other.service.d").is_dir()
    assert "would run: userdel tornado-echo" in purge.stdout


def source_copy(tmp_path: Path) -> Path:
    """The installable part of the repo, so pip's in-tree build leaves the repo alone."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(REPO / name, src / name)
    for name in ("tornado_echo", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def offline_python() -> str | None:
    """A system interpreter whose site-packages can build the project without an index.

    --offline makes the venv with --system-site-packages, so the build backend comes from
    the base interpreter, not from the venv running the tests.
    """
    for python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if (
            Path(python).is_file()
            and subprocess.run(
                [python, "-c", "import setuptools, wheel, venv"],
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode
            == 0
        ):
            return python
    return None


@pytest.mark.slow
def test_staged_install_with_offline_venv(tmp_path: Path) -> None:
    python = offline_python()
    if python is None:
        pytest.skip(
            "no system python3 with setuptools and wheel (Debian python3-setuptools "
            "python3-wheel python3-venv) to build offline"
        )
    root = tmp_path / "stage"
    venv = root / "opt" / "tornado-echo" / "venv"
    src = source_copy(tmp_path)
    shipped = sorted(p.relative_to(src) for p in src.rglob("*"))
    # The smoke test runs the installed server: without its dependencies it fails...
    broken = run("--root", root, "--offline", "--python", python, src, check=False)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "install-systemd: failed: the installed server did not start:" in broken.stderr
    assert "No module named" in broken.stderr
    # ...and echoes once they are there (offline: found on the path, as this run's).
    site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with_deps = {**os.environ, "PYTHONPATH": site}
    done = run("--root", root, "--offline", "--python", python, src, env=with_deps)
    assert re.search(
        r"smoke test: the installed server echoed a message on 127\.0\.0\.1:\d+", done.stdout
    ), done.stdout

    entry_point = venv / "bin" / "tornado-echo"
    assert os.access(entry_point, os.X_OK)
    # The staged units start exactly the installed entry point.
    for unit in UNITS:
        text = (root / "etc" / "systemd" / "system" / unit).read_text()
        assert f"ExecStart={str(entry_point).removeprefix(str(root))} " in text
    assert entry_point.read_text().splitlines()[0].startswith(f"#!{venv}/bin/python3")
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import tornado_echo; print(tornado_echo.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(located).is_relative_to(venv)

    # A second run reuses the venv and reinstalls the (changed) tree.
    (src / "tornado_echo" / "__init__.py").write_text('"""changed"""\n__version__ = "0.1.0"\n')
    again = run("--root", root, "--offline", "--python", python, src, env=with_deps)
    assert "creating the venv" not in again.stdout
    installed = Path(located).read_text()
    assert '"""changed"""' in installed

    # A venv made by another interpreter is made again with the one asked for.
    mark = venv / ".installed-with"
    assert mark.read_text() == os.path.realpath(python) + "\n"
    mark.write_text("/opt/pyenv/versions/3.12.0/bin/python3\n")
    switched = run("--root", root, "--offline", "--python", python, src, env=with_deps)
    assert (
        "the venv was made with /opt/pyenv/versions/3.12.0/bin/python3, not"
        f" {os.path.realpath(python)}: recreating it"
    ) in switched.stdout
    assert mark.read_text() == os.path.realpath(python) + "\n"

    # pip built a copy: no build/ or *.egg-info (root-owned, on a live install) in the tree.
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == shipped

    run("--root", root, "--uninstall")
    assert not venv.exists()
    assert not (root / "opt" / "tornado-echo").exists()


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package 'shellcheck'); script not linted")
    scripts = [SCRIPT, *SCRIPT.parent.glob("*.sh"), SCRIPT.parents[1] / ".ci" / "run"]
    result = subprocess.run(
        [shellcheck, *sorted(set(map(str, scripts)))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
