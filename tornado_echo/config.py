"""The one typed configuration object, built and validated once at start.

Precedence, lowest first: defaults < conf file (TOML) < environment ``TORNADO_ECHO_<KEY>`` <
command-line flags. Every key is a flat top-level TOML key; its environment and flag names
are derived from it (``max_message_size`` -> ``TORNADO_ECHO_MAX_MESSAGE_SIZE``,
``--max-message-size``). Any invalid value raises :class:`ConfigError` naming where it came
from, the key and the value, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TORNADO_ECHO_"
# Read when no --config is given, first existing wins.
DEFAULT_CONFIG_PATHS = (Path("conf/tornado-echo.toml"), Path("/etc/tornado-echo/tornado-echo.toml"))
SECRET_KEYS = frozenset({"admin_token", "metrics_token"})

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
JOURNAL_MODES = ("off", "meta", "full")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {_num(low)} and {_num(high)}"

    return check


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def _ws_path(value: Any) -> str | None:
    return None if value.startswith("/") and " " not in value else "must be a path starting with /"


def _database_url(value: Any) -> str | None:
    scheme = value.split(":", 1)[0]
    if scheme == "sqlite" and value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if scheme in ("postgresql", "postgres") and value.startswith(scheme + "://"):
        return None
    return "must be sqlite:///PATH or postgresql://USER@HOST[:PORT]/DBNAME"


def resolve_sqlite_url(url: str, state_dir: str) -> str:
    """A relative ``sqlite:///PATH`` made relative to ``state_dir``, not to the working
    directory, so that the server and ``tornado-echo sessions`` run from anywhere agree."""
    if not url.startswith("sqlite:///"):
        return url
    path = url[len("sqlite:///") :]
    return url if os.path.isabs(path) else "sqlite:///" + os.path.join(state_dir, path)


def _origins(value: Any) -> str | None:
    for origin in value:
        if origin != "*" and not (origin.startswith(("http://", "https://")) and "://" in origin):
            return f"entry {origin!r} must be '*' or an origin like https://example.com"
    return None


def _opt(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "check": check})


@dataclass(frozen=True)
class Config:
    """Effective settings of one tornado-echo process. Immutable once built."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8080, "TCP port to listen on (0 lets the OS pick)", _between(0, 65535))
    ws_path: str = _opt("/ws", "URL path of the WebSocket echo endpoint", _ws_path)
    allowed_origins: tuple[str, ...] = _opt(
        (), "browser Origins allowed besides same-host ones ('*' allows all)", _origins
    )
    max_message_size: int = _opt(
        1024 * 1024, "largest message in bytes; larger ones close with 1009", _between(1, 1 << 30)
    )
    max_connections: int = _opt(
        10000, "open WebSockets at most; more get HTTP 503", _between(1, 10_000_000)
    )
    ping_interval: float = _opt(
        20.0, "seconds between keepalive pings (0 disables)", _between(0, 3600)
    )
    ping_timeout: float = _opt(
        20.0, "seconds to wait for a pong before closing", _between(0.1, 3600)
    )
    compression: bool = _opt(True, "negotiate permessage-deflate when the client offers it")
    behind_proxy: bool = _opt(False, "trust X-Forwarded-For / X-Real-Ip from a reverse proxy")
    database_url: str = _opt(
        "sqlite:///tornado-echo.db",
        "sqlite:///PATH (relative to state_dir) or sqlite:////ABSOLUTE/PATH or postgresql://...",
        _database_url,
    )
    state_dir: str = _opt("var", "directory for local state (spool files)")
    journal: str = _opt("off", "message journal: off, meta or full", _one_of(JOURNAL_MODES))
    retention_days: float = _opt(
        0.0,
        "delete ended sessions and their journal opened more than this many days ago (0: keep)",
        _between(0, 36500),
    )
    batch_size: int = _opt(1000, "records per database batch", _between(1, 100_000))
    batch_delay: float = _opt(
        0.05, "seconds a record may wait for its batch to fill", _between(0.001, 60)
    )
    readiness_needs_store: bool = _opt(
        True, "/readyz answers 503 while the database is unreachable (false: 200 degraded)"
    )
    queue_limit: int = _opt(
        100_000,
        "records held in memory while the database is slow; beyond, spooled to state_dir",
        _between(1, 100_000_000),
    )
    log_level: str = _opt("info", "debug, info, warning or error", _one_of(LOG_LEVELS))
    log_format: str = _opt("text", "text (terminal) or json (journald)", _one_of(LOG_FORMATS))
    shutdown_deadline: float = _opt(
        10.0, "seconds to drain connections and the store on shutdown", _between(0, 3600)
    )
    workers: int = _opt(1, "processes sharing the port (SO_REUSEPORT)", _between(1, 256))
    event_loop: str = _opt(
        "auto", "auto (uvloop when installed), uvloop or asyncio", _one_of(EVENT_LOOPS)
    )
    admin_token: str = _opt("", "bearer token for /api (empty: loopback only)")
    metrics_token: str = _opt("", "bearer token for /metrics (empty: loopback only)")

    def __post_init__(self) -> None:
        # Resolved once here: every consumer of database_url sees the same file.
        resolved = resolve_sqlite_url(self.database_url, self.state_dir)
        object.__setattr__(self, "database_url", resolved)

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced by ``***``, for display and logs."""
        values = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            if values[key]:
                values[key] = "***"
        values["database_url"] = mask_url(self.database_url)
        return values

    def secrets(self) -> list[str]:
        """Secret strings that must never appear in a log line."""
        found = [getattr(self, key) for key in SECRET_KEYS if getattr(self, key)]
        password = urlsplit(self.database_url).password
        if password:
            found.append(password)
        return found


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _kind(key: str) -> str:
    annotation = str(FIELDS[key].type)
    return {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string"}.get(
        annotation, "a list of strings"
    )


def _coerce_native(key: str, value: Any) -> Any:
    """Check a TOML value's type; returns it in the field's Python type or raises ValueError."""
    kind = _kind(key)
    if kind == "an integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "a number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "a boolean" and isinstance(value, bool):
        return value
    if kind == "a string" and isinstance(value, str):
        return value
    if kind == "a list of strings" and isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
    raise ValueError(f"expected {kind}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce_text(key: str, text: str) -> Any:
    """Parse an environment or command-line string into the field's type or raise ValueError."""
    kind = _kind(key)
    try:
        if kind == "an integer":
            return int(text.strip())
        if kind == "a number":
            return float(text.strip())
    except ValueError:
        raise ValueError(f"expected {kind}") from None
    if kind == "a boolean":
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError("expected a boolean (true/false)")
    if kind == "a list of strings":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def _validated(source: str, key: str, value: Any) -> Any:
    check = FIELDS[key].metadata["check"]
    problem = check(value) if check else None
    if problem:
        shown = "***" if key in SECRET_KEYS else value
        if isinstance(shown, tuple):
            shown = list(shown)
        raise ConfigError(f"{source}: key '{key}': {problem}, got {shown!r}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse one TOML conf file into validated values; raises ConfigError."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key '{key}' (value {value!r})")
        try:
            native = _coerce_native(key, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}': {exc}, got {value!r}") from None
        values[key] = _validated(str(path), key, native)
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Validated values from ``TORNADO_ECHO_*`` variables; unknown names are errors."""
    values: dict[str, Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == env_name("config"):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        source = f"environment {name}"
        if key not in FIELDS:
            raise ConfigError(f"{source}: unknown setting (value {text!r})")
        values[key] = _from_text(source, key, text)
    return values


def read_flags(flags: Mapping[str, str | None]) -> dict[str, Any]:
    """Validated values from command-line flags given as {key: text or None (absent)}."""
    values: dict[str, Any] = {}
    for key, text in flags.items():
        if text is not None:
            values[key] = _from_text(f"command line {flag_name(key)}", key, text)
    return values


def _from_text(source: str, key: str, text: str) -> Any:
    try:
        native = _coerce_text(key, text)
    except ValueError as exc:
        raise ConfigError(f"{source}: key '{key}': {exc}, got {text!r}") from None
    return _validated(source, key, native)


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The conf file: --config, else $TORNADO_ECHO_CONFIG, else the first default that exists."""
    chosen = explicit or environ.get(env_name("config"))
    if chosen:
        return Path(chosen)
    return next((path for path in DEFAULT_CONFIG_PATHS if path.is_file()), None)


def build_config(
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> tuple[Config, Path | None]:
    """Merge every source into one validated :class:`Config`; returns it and the file read."""
    environ = os.environ if environ is None else environ
    path = find_config_file(config_path, environ)
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_config_file(path))
    values.update(read_environment(environ))
    values.update(read_flags(flags or {}))
    return Config(**values), path
