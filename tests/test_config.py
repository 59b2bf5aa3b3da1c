"""Config: precedence of sources and one clear message for every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tornado_echo.config import FIELDS, LIVE_KEYS, Config, LiveConfig, build_config, mask_url
from tornado_echo.errors import ConfigError


def write_conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "echo.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./conf/tornado-echo.toml here
    config, path = build_config(environ={})
    if Path("/etc/tornado-echo/tornado-echo.toml").exists():
        pytest.skip("a system-wide conf file exists on this machine")
    assert path is None
    assert config == Config()


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, 'port = 9001\nlog_level = "debug"\nws_path = "/echo"\n')
    environ = {"TORNADO_ECHO_PORT": "9002", "TORNADO_ECHO_LOG_LEVEL": "warning"}
    config, path = build_config(str(conf), environ, {"port": "9003", "log_level": None})
    assert path == conf
    assert config.port == 9003  # flag beats environment
    assert config.log_level == "warning"  # environment beats file
    assert config.ws_path == "/echo"  # file beats default
    assert config.ping_interval == 20.0  # default


def test_config_path_from_environment(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "port = 9100\n")
    config, path = build_config(environ={"TORNADO_ECHO_CONFIG": str(conf)})
    assert (config.port, path) == (9100, conf)


def test_default_conf_file_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tornado-echo.toml").write_text("port = 9200\n")
    monkeypatch.chdir(tmp_path)
    config, path = build_config(environ={})
    assert config.port == 9200
    assert path == Path("conf/tornado-echo.toml")


def test_shipped_conf_file_equals_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[1] / "conf" / "tornado-echo.toml"
    config, _ = build_config(str(shipped), environ={})
    assert config == Config()


def test_typed_values_from_text_sources(tmp_path: Path) -> None:
    environ = {
        "TORNADO_ECHO_COMPRESSION": "false",
        "TORNADO_ECHO_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "TORNADO_ECHO_PING_INTERVAL": "2.5",
    }
    config, _ = build_config(str(write_conf(tmp_path, "")), environ)
    assert config.compression is False
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.ping_interval == 2.5


def test_integer_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    config, _ = build_config(str(write_conf(tmp_path, "shutdown_deadline = 3\n")), {})
    assert config.shutdown_deadline == 3.0


FILE_ERRORS = [
    ("prot = 1\n", "unknown key 'prot' (value 1)"),
    ('port = "80"\n', "key 'port': expected an integer, got '80'"),
    ("port = 70000\n", "key 'port': must be between 0 and 65535, got 70000"),
    ("port = true\n", "key 'port': expected an integer, got True"),
    ("compression = 1\n", "key 'compression': expected a boolean, got 1"),
    ('log_level = "loud"\n', "key 'log_level': must be one of debug, info, warning, error"),
    ('journal_writer = "fork"\n', "key 'journal_writer': must be one of thread, process"),
    ('ws_path = "ws"\n', "key 'ws_path': must be a path starting with /, got 'ws'"),
    ('console_path = "/c"\n', "key 'console_path': must be a path starting and ending with /"),
    ('console_path = "/a b/"\n', "key 'console_path': must be a path starting and ending with /"),
    ('database_url = "mysql://x"\n', "key 'database_url': must be sqlite:///PATH or postgresql"),
    ("allowed_origins = [1]\n", "key 'allowed_origins': expected a list of strings"),
    ('allowed_origins = ["evil"]\n', "entry 'evil' must be '*' or an origin"),
    ("ping_timeout = 0\n", "key 'ping_timeout': must be between 0.1 and 3600, got 0.0"),
    (
        "journal_max_bytes_per_second = 1.5\n",
        "key 'journal_max_bytes_per_second': expected an integer, got 1.5",
    ),
    (
        "max_http_connections_per_ip = -1\n",
        "key 'max_http_connections_per_ip': must be between 0 and 10000000, got -1",
    ),
    ("port = \n", "not valid TOML"),
    ('ws_path = "/ws?x"\n', "key 'ws_path': must be printable ASCII without spaces, '?' or '#'"),
    ('database_url = "postgresql://[::1"\n', "key 'database_url': must be sqlite:///PATH or"),
    ('database_url = "postgresql://h:99999/db"\n', "Port out of range"),
    ('host = "no such host"\n', "key 'host': must be an IP address"),
    ('state_dir = ""\n', "key 'state_dir': must be a directory path, got ''"),
    ('trusted_proxies = ["10.0.0.0/33"]\n', "entry '10.0.0.0/33' must be an IP address or net"),
    ('server_names = ["a.example:80"]\n', "entry 'a.example:80' must be a host name"),
    ("admin_token = 12345\n", "key 'admin_token': expected a string, got '***'"),
    ('listener = "uvicorn"\n', "key 'listener': must be one of auto, tornado, got 'uvicorn'"),
    ('access_log = "yes"\n', "key 'access_log': expected a boolean, got 'yes'"),
    ("max_inflight_bytes = -1\n", "key 'max_inflight_bytes': must be between 0 and 10995"),
]


@pytest.mark.parametrize(("text", "expected"), FILE_ERRORS, ids=[e[1][:30] for e in FILE_ERRORS])
def test_file_errors_name_file_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    conf = write_conf(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        build_config(str(conf), {})
    message = str(raised.value)
    assert message.startswith(f"{conf}: ")
    assert expected in message


def test_a_byte_that_is_not_utf8_is_named_with_its_position(tmp_path: Path) -> None:
    conf = tmp_path / "echo.toml"
    conf.write_bytes(b'port = 8080\nws_path = "/w\xffs"\n')
    with pytest.raises(ConfigError) as raised:
        build_config(str(conf), {})
    assert str(raised.value) == f"{conf}: not UTF-8 text: byte 0xff at line 2, column 14"


def test_accepted_values_that_look_odd_are_kept_literally(tmp_path: Path) -> None:
    text = 'ws_path = "/ws("\nhost = "::"\ndatabase_url = "postgresql://u@[::1]:5/d"\n'
    config, _ = build_config(str(write_conf(tmp_path, text)), {})
    assert (config.ws_path, config.host) == ("/ws(", "::")
    assert config.secrets() == [] and config.masked()["database_url"].endswith("[::1]:5/d")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        build_config(str(tmp_path / "nope.toml"), {})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TORNADO_ECHO_PORT": "eighty"}, "environment TORNADO_ECHO_PORT: key 'port': expected"),
        ({"TORNADO_ECHO_PROT": "80"}, "environment TORNADO_ECHO_PROT: unknown setting"),
        ({"TORNADO_ECHO_COMPRESSION": "maybe"}, "expected a boolean (true/false), got 'maybe'"),
        ({"TORNADO_ECHO_WORKERS": "0"}, "key 'workers': must be between 1 and 256, got 0"),
    ],
)
def test_environment_errors(tmp_path: Path, environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(str(write_conf(tmp_path, "")), environ)
    assert expected in str(raised.value)


def test_flag_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(str(write_conf(tmp_path, "")), {}, {"max_message_size": "0"})
    assert str(raised.value) == (
        "command line --max-message-size: key 'max_message_size':"
        " must be between 1 and 1073741824, got 0"
    )


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(str(write_conf(tmp_path, "admin_token = 12345\n")), {})
    assert "admin_token" in str(raised.value)


def test_masked_view_hides_secrets() -> None:
    config = Config(database_url="postgresql://echo:s3cret@db.example/echo", admin_token="tok-123")
    masked = config.masked()
    assert masked["database_url"] == "postgresql://echo:***@db.example/echo"
    assert masked["admin_token"] == "***"
    assert masked["metrics_token"] == ""
    assert set(config.secrets()) == {"s3cret", "tok-123"}


def test_mask_url_without_password_is_unchanged() -> None:
    assert mask_url("postgresql://echo@db/echo") == "postgresql://echo@db/echo"


def test_every_key_is_documented() -> None:
    assert all(spec.metadata["doc"] for spec in FIELDS.values())


def test_relative_sqlite_paths_are_resolved_against_state_dir() -> None:
    assert Config(database_url="sqlite:///x.db", state_dir="/srv/echo").database_url == (
        "sqlite:////srv/echo/x.db"
    )
    assert Config(database_url="sqlite:////abs/x.db", state_dir="/srv").database_url == (
        "sqlite:////abs/x.db"
    )
    assert Config(state_dir="var").database_url == "sqlite:///var/tornado-echo.db"
    url = "postgresql://u@h/d"
    assert Config(database_url=url, state_dir="/srv").database_url == url


def test_a_reload_applies_live_keys_and_keeps_the_rest() -> None:
    running = Config(max_connections=5, port=8080)
    live = LiveConfig(running)
    reload = live.reload(Config(max_connections=1, port=9090, metrics_token="t"))
    assert "port" not in LIVE_KEYS
    assert (reload.applied, reload.kept) == (["max_connections", "metrics_token"], ["port"])
    assert live.current is reload.config
    assert (live.current.max_connections, live.current.port) == (1, 8080)
    assert live.current.metrics_token == "t"


def test_a_reload_switching_tls_on_or_off_keeps_the_tls_files() -> None:
    # Live while TLS stays on; turning it on or off needs a restart.
    live = LiveConfig(Config(tls_cert="a.pem", tls_key="a.key"))
    renewed = live.reload(Config(tls_cert="b.pem", tls_key="b.key"))
    assert renewed.applied == ["tls_cert", "tls_key"] and renewed.kept == []
    switched_off = live.reload(Config())
    assert switched_off.applied == [] and switched_off.kept == ["tls_cert", "tls_key"]
    assert live.current.tls_cert == "b.pem"


def test_a_reload_of_the_same_values_changes_nothing() -> None:
    live = LiveConfig(Config())
    reload = live.reload(Config())
    assert (reload.applied, reload.kept) == ([], [])


def test_reloads_leave_a_relative_sqlite_path_resolved_once() -> None:
    # Resolved against state_dir when built; a reload must not resolve it again.
    live = LiveConfig(Config(state_dir="var"))
    for _ in range(2):
        reload = live.reload(Config(state_dir="var", port=1))
        assert reload.kept == ["port"]
    assert live.current.database_url == "sqlite:///var/tornado-echo.db"
