"""The one typed configuration object, built and validated once at start.

Precedence, lowest first: defaults < conf file (TOML) < environment ``TORNADO_ECHO_<KEY>`` <
command-line flags. Every key is a flat top-level TOML key; its environment and flag names
are derived from it (``max_message_size`` -> ``TORNADO_ECHO_MAX_MESSAGE_SIZE``,
``--max-message-size``). Any invalid value raises :class:`ConfigError` naming where it came
from, the key and the value, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado_echo.addresses import parse_network
from tornado_echo.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TORNADO_ECHO_"
# Read when no --config is given, first existing wins.
DEFAULT_CONFIG_PATHS = (Path("conf/tornado-echo.toml"), Path("/etc/tornado-echo/tornado-echo.toml"))
SECRET_KEYS = frozenset({"admin_token", "metrics_token"})
# What a reload (SIGHUP) applies to connections opened from then on (LiveConfig.reload);
# any other changed key needs a restart.
LIVE_KEYS = frozenset(
    {
        "allowed_origins",
        "max_message_size",
        "max_messages_per_second",
        "max_bytes_per_second",
        "max_inflight_bytes",
        "max_connections",
        "max_connections_per_ip",
        "ping_interval",
        "ping_timeout",
        "compression",
        "compression_level",
        "journal",
        "journal_max_bytes_per_second",
        "access_log",
        "log_level",
        "log_format",
        "shutdown_deadline",
        "readiness_needs_store",
        "admin_token",
        "metrics_token",
        "server_names",
        "behind_proxy",
        "trusted_proxies",
        "max_http_connections",
        "max_http_connections_per_ip",
        # Live while TLS stays on (or off): switching it needs a restart.
        "tls_cert",
        "tls_key",
    }
)
TLS_KEYS = ("tls_cert", "tls_key")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
JOURNAL_MODES = ("off", "meta", "full")
JOURNAL_WRITERS = ("thread", "process")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
ENGINES = ("fast", "tornado")
LISTENERS = ("auto", "tornado")


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


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def _ws_path(value: Any) -> str | None:
    # Matched literally against the request path, which never holds a query or fragment.
    if not value.startswith("/"):
        return "must be a path starting with /"
    if not _printable(value) or set(value) & set("?#"):
        return "must be printable ASCII without spaces, '?' or '#'"
    return None


def _console_path(value: Any) -> str | None:
    # A directory-like path: the page's relative links (assets, figures, the WebSocket)
    # resolve against it. Plain characters only, as it becomes a route and a proxy rule.
    plain = re.fullmatch(r"/([A-Za-z0-9._~-]+/)*", value) is not None
    if plain and not {".", ".."} & set(value.split("/")):
        return None
    return "must be a path starting and ending with / (letters, digits, . _ ~ -)"


def _database_url(value: Any) -> str | None:
    scheme = value.split(":", 1)[0]
    usage = "must be sqlite:///PATH or postgresql://USER@HOST[:PORT]/DBNAME"
    if "\0" in value:
        return usage
    if scheme == "sqlite" and value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if scheme in ("postgresql", "postgres") and value.startswith(scheme + "://"):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - parsing it is the check: raises ValueError when bad
        except ValueError as exc:
            return f"{usage} ({exc})"
        return None
    return usage


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _host(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            return "must be an IP address (0.0.0.0 or :: for every interface) or a host name"
    return None


def _directory(value: Any) -> str | None:
    return None if value and "\0" not in value else "must be a directory path"


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


def _networks(value: Any) -> str | None:
    for entry in value:
        try:
            parse_network(entry)
        except ValueError:
            return f"entry {entry!r} must be an IP address or network like 10.0.0.0/8"
    return None


def _host_names(value: Any) -> str | None:
    for name in value:
        if not name or any(ch.isspace() or ch in "/:[]@" for ch in name):
            return f"entry {name!r} must be a host name like echo.example.com (no port)"
    return None


@dataclass(frozen=True)
class Parser:
    """How one setting's value is read: from TOML (typed) and from text (environment, flags).

    Both raise ValueError with the text of the error ("expected an integer").
    """

    kind: str
    native: Callable[[Any], Any]
    text: Callable[[str], Any]


def _expect(kind: str, accepts: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Any:
    def parse(value: Any) -> Any:
        if not accepts(value):
            raise ValueError(f"expected {kind}")
        return convert(value)

    return parse


def _number_text(kind: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text.strip())
        except ValueError:
            raise ValueError(f"expected {kind}") from None

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool_text(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ValueError("expected a boolean (true/false)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


INTEGER = Parser(
    "an integer",
    _expect("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool), int),
    _number_text("an integer", int),
)
NUMBER = Parser("a number", _expect("a number", _is_number, float), _number_text("a number", float))
BOOLEAN = Parser("a boolean", _expect("a boolean", lambda v: isinstance(v, bool), bool), _bool_text)
STRING = Parser("a string", _expect("a string", lambda v: isinstance(v, str), str), str)
STRINGS = Parser(
    "a list of strings",
    _expect(
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(item, str) for item in v),
        tuple,
    ),
    lambda text: tuple(item.strip() for item in text.split(",") if item.strip()),
)


def _opt(
    parser: Parser, default: Any, doc: str, check: Callable[[Any], str | None] | None = None
) -> Any:
    return field(default=default, metadata={"doc": doc, "parser": parser, "check": check})


@dataclass(frozen=True)
class Config:
    """Effective settings of one tornado-echo process. Immutable once built."""

    host: str = _opt(STRING, "127.0.0.1", "address to listen on", _host)
    port: int = _opt(
        INTEGER, 8080, "TCP port to listen on (0 lets the OS pick)", _between(0, 65535)
    )
    ws_path: str = _opt(STRING, "/ws", "URL path of the WebSocket echo endpoint", _ws_path)
    console: bool = _opt(BOOLEAN, True, "serve the web console (echo console and live server view)")
    console_path: str = _opt(STRING, "/", "URL path of the web console page", _console_path)
    allowed_origins: tuple[str, ...] = _opt(
        STRINGS, (), "browser Origins allowed besides same-host ones ('*' allows all)", _origins
    )
    max_message_size: int = _opt(
        INTEGER,
        1024 * 1024,
        "largest message in bytes; larger ones close with 1009",
        _between(1, 1 << 30),
    )
    max_connections: int = _opt(
        INTEGER, 10000, "open WebSockets at most; more get HTTP 503", _between(1, 10_000_000)
    )
    ping_interval: float = _opt(
        NUMBER, 20.0, "seconds between keepalive pings (0 disables)", _between(0, 3600)
    )
    ping_timeout: float = _opt(
        NUMBER, 20.0, "seconds to wait for a pong before closing", _between(0.1, 3600)
    )
    compression: bool = _opt(
        BOOLEAN, True, "negotiate permessage-deflate when the client offers it"
    )
    compression_level: int = _opt(
        INTEGER,
        1,
        "zlib level of the messages this server compresses (1 fastest, 9 smallest)",
        _between(1, 9),
    )
    engine: str = _opt(
        STRING,
        "fast",
        "what carries upgraded connections: fast (asyncio transport) or tornado (IOStream)",
        _one_of(ENGINES),
    )
    listener: str = _opt(
        STRING,
        "auto",
        "what serves HTTP: auto (the asyncio listener for the fast engine, TLS included, else"
        " Tornado's HTTPServer) or tornado (always Tornado's HTTPServer)",
        _one_of(LISTENERS),
    )
    access_log: bool = _opt(
        BOOLEAN,
        False,
        "log a line per WebSocket session and per HTTP request (INFO); the session records"
        " in the database are the durable account either way",
    )
    max_messages_per_second: float = _opt(
        NUMBER,
        0.0,
        "messages a connection may send per second (one second's worth at once); more close"
        " it with 1008; 0: no limit",
        _between(0, 1e9),
    )
    max_bytes_per_second: float = _opt(
        NUMBER,
        0.0,
        "message bytes a connection may send per second, likewise; 0: no limit",
        _between(0, 1e12),
    )
    max_inflight_bytes: int = _opt(
        INTEGER,
        64 * 1024 * 1024,
        "bytes of messages in flight per process (inflated, waiting for their echo or to be"
        " deflated); beyond it connections holding none are not read until some is released;"
        " 0: no limit",
        _between(0, 1 << 40),
    )
    max_connections_per_ip: int = _opt(
        INTEGER,
        0,
        "open WebSockets per client address (IPv6: per /64); more get HTTP 503; 0: no limit",
        _between(0, 10_000_000),
    )
    max_http_connections: int = _opt(
        INTEGER,
        1000,
        "connections not (yet) WebSockets at most (requests, handshakes); more get HTTP 503",
        _between(1, 10_000_000),
    )
    max_http_connections_per_ip: int = _opt(
        INTEGER,
        0,
        "connections not (yet) WebSockets per client address (IPv6: per /64; trusted_proxies"
        " exempt); more get HTTP 503; 0: no limit",
        _between(0, 10_000_000),
    )
    http_timeout: float = _opt(
        NUMBER,
        10.0,
        "seconds a connection may take to send its request headers; idle ones close after it",
        _between(0.1, 3600),
    )
    behind_proxy: bool = _opt(
        BOOLEAN, False, "believe X-Forwarded-For / X-Real-Ip from the trusted_proxies"
    )
    trusted_proxies: tuple[str, ...] = _opt(
        STRINGS,
        ("127.0.0.1", "::1"),
        "addresses or networks of the reverse proxies believed when behind_proxy is on",
        _networks,
    )
    server_names: tuple[str, ...] = _opt(
        STRINGS,
        (),
        "Host names of this server besides localhost and loopback addresses, for loopback"
        " clients of /api and /metrics",
        _host_names,
    )
    tls_cert: str = _opt(
        STRING, "", "PEM certificate chain: serve wss:// itself, TLS >= 1.2 (with tls_key)"
    )
    tls_key: str = _opt(STRING, "", "PEM private key of tls_cert (re-read with it on SIGHUP)")
    database_url: str = _opt(
        STRING,
        "sqlite:///tornado-echo.db",
        "sqlite:///PATH (relative to state_dir) or sqlite:////ABSOLUTE/PATH or postgresql://...",
        _database_url,
    )
    state_dir: str = _opt(STRING, "var", "directory for local state (spool files)", _directory)
    journal: str = _opt(STRING, "off", "message journal: off, meta or full", _one_of(JOURNAL_MODES))
    journal_writer: str = _opt(
        STRING,
        "process",
        "where journal rows are written: process (a writer process of each server process, fed"
        " once per loop turn through a socketpair; none is started with journal off) or thread"
        " (the store's writer thread)",
        _one_of(JOURNAL_WRITERS),
    )
    journal_max_payload: int = _opt(
        INTEGER,
        65536,
        "payload bytes journalled per message (full); the rest is marked truncated",
        _between(0, 1 << 30),
    )
    journal_max_bytes_per_second: int = _opt(
        INTEGER,
        1024 * 1024,
        "payload bytes the full journal keeps per second per process (one second's worth at"
        " once); beyond, messages are journalled without payload, marked truncated; 0: no limit",
        _between(0, 1 << 40),
    )
    retention_days: float = _opt(
        NUMBER,
        0.0,
        "delete ended sessions and their journal opened more than this many days ago (0: keep)",
        _between(0, 36500),
    )
    batch_size: int = _opt(INTEGER, 1000, "records per database batch", _between(1, 100_000))
    batch_delay: float = _opt(
        NUMBER, 0.05, "seconds a record may wait for its batch to fill", _between(0.001, 60)
    )
    readiness_needs_store: bool = _opt(
        BOOLEAN, True, "/readyz answers 503 while the database is unreachable (false: 200 degraded)"
    )
    queue_limit: int = _opt(
        INTEGER,
        100_000,
        "records held in memory while the database is slow; beyond, spooled to state_dir",
        _between(1, 100_000_000),
    )
    queue_bytes_limit: int = _opt(
        INTEGER,
        64 * 1024 * 1024,
        "bytes of records held in memory; beyond, spooled to state_dir",
        _between(1024 * 1024, 1 << 40),
    )
    log_level: str = _opt(STRING, "info", "debug, info, warning or error", _one_of(LOG_LEVELS))
    log_format: str = _opt(
        STRING, "text", "text (terminal) or json (journald)", _one_of(LOG_FORMATS)
    )
    shutdown_deadline: float = _opt(
        NUMBER, 10.0, "seconds to drain connections and the store on shutdown", _between(0, 3600)
    )
    workers: int = _opt(INTEGER, 1, "processes sharing the port (SO_REUSEPORT)", _between(1, 256))
    listen_backlog: int = _opt(
        INTEGER,
        4096,
        "connections waiting to be accepted, per listening socket (the kernel caps it at"
        " net.core.somaxconn)",
        _between(1, 65535),
    )
    event_loop: str = _opt(
        STRING, "auto", "auto (uvloop when installed), uvloop or asyncio", _one_of(EVENT_LOOPS)
    )
    admin_token: str = _opt(STRING, "", "bearer token for /api (empty: loopback only)")
    metrics_token: str = _opt(STRING, "", "bearer token for /metrics (empty: loopback only)")

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


def _parser(key: str) -> Parser:
    parser: Parser = FIELDS[key].metadata["parser"]
    return parser


def _shown(key: str, value: Any) -> str:
    if key in SECRET_KEYS:
        return "'***'"
    return repr(list(value) if isinstance(value, tuple) else value)


def _validated(source: str, key: str, value: Any) -> Any:
    check = FIELDS[key].metadata["check"]
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{source}: key '{key}': {problem}, got {_shown(key, value)}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse one TOML conf file into validated values; raises ConfigError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key '{key}' (value {value!r})")
        try:
            native = _parser(key).native(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}': {exc}, got {_shown(key, value)}") from None
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
        native = _parser(key).text(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: key '{key}': {exc}, got {_shown(key, text)}") from None
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


@dataclass(frozen=True)
class Reload:
    """What :meth:`LiveConfig.reload` did: the configuration now running, the changed keys
    it applied, and the changed keys that need a restart (their running values kept)."""

    config: Config
    applied: list[str]
    kept: list[str]


class LiveConfig:
    """The running configuration: one holder, shared by all that serves.

    Handlers read :attr:`current` when a request or connection starts, the HTTP listener
    when it accepts; a reload replaces it whole, so everything begun afterwards sees the new
    values while open connections keep what they read.
    """

    def __init__(self, config: Config) -> None:
        self.current = config

    def reload(self, loaded: Config) -> Reload:
        """Run ``loaded``, but with the running values of changed keys not in LIVE_KEYS."""
        old = self.current
        changed = [key for key in FIELDS if getattr(loaded, key) != getattr(old, key)]
        tls_switched = bool(loaded.tls_cert) != bool(old.tls_cert)
        kept = [
            key for key in changed if key not in LIVE_KEYS or (tls_switched and key in TLS_KEYS)
        ]
        # A copy, not dataclasses.replace(): that would run __post_init__ again and resolve a
        # relative sqlite database_url against state_dir a second time (var/var/...).
        merged = copy.copy(loaded)
        for key in kept:
            object.__setattr__(merged, key, getattr(old, key))
        self.current = merged
        return Reload(self.current, [key for key in changed if key not in kept], kept)
