"""conf/nginx.conf passes ``nginx -t`` inside a minimal main config.

``nginx -t`` opens the listening sockets, so the fragment's ``listen 80`` lines are
replaced by a free loopback port from the OS; everything else is tested as shipped.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tornado_echo.config import Config

NGINX_CONF = Path(__file__).resolve().parent.parent / "conf" / "nginx.conf"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).is_file()), None
)

# Only the tests that run nginx need it; the directive checks read the file.
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx not installed (Debian package 'nginx-light' or 'nginx'); "
    "conf/nginx.conf not checked",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_nginx_conf(fragment: str, tmp_path: Path, port: int) -> Path:
    """A minimal main config in ``tmp_path`` holding ``fragment``, listening on loopback
    ``port`` instead of 80; returns its path."""
    listens = re.findall(r"^\s*listen\s+[^;]*;", fragment, flags=re.MULTILINE)
    assert listens == ["    listen 80;", "    listen [::]:80;"]
    fragment = fragment.replace("listen 80;", f"listen 127.0.0.1:{port};")
    fragment = fragment.replace("listen [::]:80;", "")
    (tmp_path / "tornado-echo.conf").write_text(fragment)
    # Debian's nginx has absolute compile-time temp paths; keep everything in tmp_path.
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        "error_log stderr;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp_paths}\n"
        f"    include {tmp_path / 'tornado-echo.conf'};\n"
        "}\n"
    )
    return tmp_path / "nginx.conf"


def nginx_test(fragment: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    write_nginx_conf(fragment, tmp_path, free_port())
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_nginx
def test_nginx_conf_is_valid(tmp_path: Path) -> None:
    result = nginx_test(NGINX_CONF.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("least_conn;", "least_con;", 'unknown directive "least_con"'),
        ("proxy_read_timeout 75s;", "proxy_read_timeout 75x;", '"proxy_read_timeout"'),
        ("deny all;", "deny all", 'invalid number of arguments in "deny"'),
    ],
)
def test_broken_conf_is_caught(old: str, new: str, expected: str, tmp_path: Path) -> None:
    text = NGINX_CONF.read_text()
    assert old in text
    result = nginx_test(text.replace(old, new, 1), tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr


def test_websocket_proxy_settings() -> None:
    text = NGINX_CONF.read_text()
    # Directives, not comments: these are what make the WebSocket upgrade pass through.
    directives = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for needed in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "least_conn;",
    ):
        assert needed in directives
    timeout = re.search(r"^\s*proxy_read_timeout (\d+)s;", text, flags=re.MULTILINE)
    assert timeout is not None
    # Must outlast the default ping_interval so idle healthy sockets stay open.
    assert int(timeout.group(1)) > Config().ping_interval


def test_console_upstream_has_the_same_servers() -> None:
    text = NGINX_CONF.read_text()
    upstreams = dict(
        re.findall(r"^upstream (\w+) \{(.*?)^\}", text, flags=re.MULTILINE | re.DOTALL)
    )
    servers = {
        name: re.findall(r"^\s*server (.+);", body, flags=re.MULTILINE)
        for name, body in upstreams.items()
    }
    assert servers["tornado_echo"]
    assert servers["tornado_echo_console"] == servers["tornado_echo"]
