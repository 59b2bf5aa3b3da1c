"""The load tester's one typed configuration, validated once and passed down."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from urllib.parse import urlsplit

from tornado_echo import wire
from tornado_echo.loadtest.errors import LoadtestConfigError

SEQ_WIDTH = 16  # every payload starts with its sequence number as 16 hex digits


@dataclass(frozen=True)
class SizeSpec:
    """Payload sizes: fixed ``N``, uniform ``A-B`` or a choice ``A,B,C`` (bytes)."""

    low: int
    high: int
    choices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SizeSpec:
        try:
            if "," in text:
                values = tuple(int(part) for part in text.split(","))
                spec = cls(min(values), max(values), values)
            elif "-" in text:
                low_text, high_text = text.split("-", 1)
                spec = cls(int(low_text), int(high_text))
            else:
                spec = cls(int(text), int(text))
        except ValueError:
            raise LoadtestConfigError(
                f"--size {text!r}: expected N, A-B or A,B,C in bytes"
            ) from None
        if spec.low < SEQ_WIDTH:
            raise LoadtestConfigError(
                f"--size {text!r}: payloads need at least {SEQ_WIDTH} bytes for the sequence number"
            )
        if spec.high < spec.low:
            raise LoadtestConfigError(f"--size {text!r}: range is empty")
        return spec

    def sample(self, rng: random.Random) -> int:
        if self.choices:
            return rng.choice(self.choices)
        if self.low == self.high:
            return self.low
        return rng.randint(self.low, self.high)

    def describe(self) -> str:
        if self.choices:
            return ",".join(map(str, self.choices))
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Stage:
    """One load stage (k6 / Artillery style): over ``seconds`` move linearly to ``connections``
    open connections and, when given, ``rate`` messages/s per connection (open loop)."""

    seconds: float
    connections: int
    rate: float | None = None

    @classmethod
    def parse(cls, text: str) -> Stage:
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            seconds, connections = float(parts[0]), int(parts[1])
            rate = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise LoadtestConfigError(
                f"--stage {text!r}: expected SECONDS:CONNECTIONS or SECONDS:CONNECTIONS:RATE"
            ) from None
        if not seconds > 0 or connections < 0 or (rate is not None and not rate > 0):
            raise LoadtestConfigError(
                f"--stage {text!r}: seconds and rate must be positive, connections not negative"
            )
        return cls(seconds, connections, rate)


class Profile:
    """Where the stages are at a time since the start: pure, so tested without a clock."""

    def __init__(self, stages: tuple[Stage, ...], start_rate: float) -> None:
        self.stages = stages
        self.start_rate = start_rate
        self.duration = sum(stage.seconds for stage in stages)

    def at(self, elapsed: float) -> tuple[float, float]:
        """(connections, rate per connection) wanted ``elapsed`` seconds into the run.

        Connections ramp from 0, the rate from ``start_rate``; a stage without a rate
        keeps the one before. After the last stage its targets hold.
        """
        connections, rate = 0.0, self.start_rate
        for stage in self.stages:
            goal = stage.rate if stage.rate is not None else rate
            if elapsed < stage.seconds:
                share = elapsed / stage.seconds
                return (
                    connections + (stage.connections - connections) * share,
                    rate + (goal - rate) * share,
                )
            elapsed -= stage.seconds
            connections, rate = float(stage.connections), goal
        return connections, rate


KINDS = ("echo", "ping", "idle")


@dataclass(frozen=True)
class Scenario:
    """One kind of session in a mix (``--scenario``), drawn for each connection by weight.

    ``kind``: "echo" (send messages, check their echoes), "ping" (send pings, check their
    pongs as echoes: same exact checks) or "idle" (open, send nothing, close at the end).
    ``messages``: the session's messages (or pings), then it closes with ``close`` and a new
    connection takes its place with a newly drawn scenario; None: until the run ends.
    ``think``: seconds between an echo and the next message. ``hold``: seconds after which
    the session closes, whatever it was doing (how an idle session ends before the run
    does). None fields keep the run's settings (``--size``, ``--binary``).

    A weight is a share of the sessions started: a session that lasts longer holds its
    place longer, so the population open at a time leans towards long sessions.
    """

    spec: str
    weight: float = 1.0
    kind: str = "echo"
    messages: int | None = None
    sizes: SizeSpec | None = None
    binary: bool | None = None
    think: float = 0.0
    hold: float | None = None
    close: int = 1000

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """``KEY=VALUE`` words: weight, kind, messages, size, binary, text, think, hold, close."""
        fields: dict[str, object] = {"spec": text}
        try:
            for word in text.split():
                key, _, value = word.partition("=")
                if key in ("binary", "text") and not value:
                    fields["binary"] = key == "binary"
                elif key == "weight":
                    fields["weight"] = float(value)
                elif key == "kind":
                    fields["kind"] = value
                elif key == "messages":
                    fields["messages"] = int(value)
                elif key == "size":
                    fields["sizes"] = SizeSpec.parse(value)
                elif key == "think":
                    fields["think"] = float(value)
                elif key == "hold":
                    fields["hold"] = float(value)
                elif key == "close":
                    fields["close"] = int(value)
                else:
                    raise ValueError(f"unknown word {word!r}")
        except ValueError as exc:
            raise LoadtestConfigError(f"--scenario {text!r}: {exc}") from None
        scenario = cls(**fields)  # type: ignore[arg-type]
        scenario.check()
        return scenario

    def check(self) -> None:
        def bad(why: str) -> LoadtestConfigError:
            return LoadtestConfigError(f"--scenario {self.spec!r}: {why}")

        if not self.weight > 0:
            raise bad("weight must be positive")
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}")
        if self.messages is not None and self.messages < 1:
            raise bad("messages must be at least 1")
        if self.think < 0:
            raise bad("think must not be negative")
        if self.hold is not None and not self.hold > 0:
            raise bad("hold must be positive")
        if not wire.is_sendable_close_code(self.close):
            raise bad(f"close code {self.close} may not be sent")
        if self.kind == "ping" and self.sizes is not None and self.sizes.high > 125:
            raise bad("a ping carries at most 125 bytes")

    def apply(self, cfg: LoadConfig) -> LoadConfig:
        """The run's settings as this scenario's sessions use them."""
        return _replace(
            cfg,
            sizes=self.sizes or cfg.sizes,
            binary=cfg.binary if self.binary is None else self.binary,
            churn=self.messages,
            messages=None,
            kind=self.kind,
            think=self.think,
            hold=self.hold,
            close_code=self.close,
            scenarios=(),
        )


@dataclass(frozen=True)
class Target:
    """Where to connect, split out of the ws:// or wss:// URL."""

    url: str
    secure: bool
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. an unclosed [IPv6 literal
            raise LoadtestConfigError(f"URL {url!r}: {exc}") from None
        if parts.scheme not in ("ws", "wss"):
            raise LoadtestConfigError(f"URL {url!r}: scheme must be ws:// or wss://")
        if not parts.hostname:
            raise LoadtestConfigError(f"URL {url!r}: no host")
        try:
            port = parts.port or (443 if parts.scheme == "wss" else 80)
        except ValueError:
            raise LoadtestConfigError(f"URL {url!r}: bad port") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(url, parts.scheme == "wss", parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class LoadConfig:
    """Everything one run needs. Build with :meth:`validated`, never mutate."""

    target: Target
    connections: int = 1
    connect_rate: float = 0.0  # new connections/s over all workers; 0 = no pacing
    connect_concurrency: int = 1000  # handshakes in progress per worker
    duration: float | None = 10.0
    messages: int | None = None  # per connection; ends the connection's work
    mode: str = "closed"  # "closed" or "open"
    inflight: int = 1  # closed loop: messages outstanding per connection
    rate: float = 0.0  # open loop: messages/s per connection
    sizes: SizeSpec = field(default_factory=lambda: SizeSpec(64, 64))
    binary: bool = False
    deflate: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    origin: str | None = None
    subprotocols: tuple[str, ...] = ()
    insecure: bool = False
    timeout: float = 5.0  # an echo later than this counts as lost
    connect_timeout: float = 10.0
    workers: int = 1
    source_ips: tuple[str, ...] = ()
    max_message: int = 64 * 1024 * 1024
    progress_interval: float = 1.0
    allow_remote: bool = False
    seed: int | None = None
    stages: tuple[Stage, ...] = ()  # ramp connections and rate over time
    churn: int | None = None  # messages per connection, then close and open another
    reconnect: bool = False  # open a new connection in place of each that ends early
    scenarios: tuple[Scenario, ...] = ()  # a mix of sessions, drawn by weight
    # One session's behaviour (set per connection from its scenario).
    kind: str = "echo"
    think: float = 0.0  # seconds between an echo and the next message
    hold: float | None = None  # seconds after which a session closes
    close_code: int = 1000

    @property
    def replaces_connections(self) -> bool:
        """Whether connections come and go during the run (stages, churn, reconnect)."""
        return bool(self.stages) or self.churn is not None or self.reconnect or bool(self.scenarios)

    @property
    def profile(self) -> Profile | None:
        return Profile(self.stages, self.rate) if self.stages else None

    @classmethod
    def validated(cls, **kwargs: object) -> LoadConfig:
        """Build and check; raises LoadtestConfigError naming the bad option."""
        cfg = cls(**kwargs)  # type: ignore[arg-type]
        cfg.check()
        return cfg

    def check(self) -> None:
        def bad(message: str) -> LoadtestConfigError:
            return LoadtestConfigError(message)

        if self.connections < 1:
            raise bad("--connections must be at least 1")
        if self.workers < 1:
            raise bad("--workers must be at least 1")
        if self.workers > self.connections:
            raise bad(f"--workers {self.workers} exceeds --connections {self.connections}")
        if self.duration is None and self.messages is None:
            raise bad("give --duration or --messages")
        if self.duration is not None and self.duration <= 0:
            raise bad("--duration must be positive")
        if self.messages is not None and self.messages < 0:
            raise bad("--messages must not be negative")
        if self.mode not in ("closed", "open"):
            raise bad(f"--mode {self.mode!r}: expected closed or open")
        if self.mode == "open" and self.rate <= 0:
            raise bad("open loop needs --rate or --total-rate above 0")
        if self.mode == "closed" and self.rate > 0:
            raise bad("--rate/--total-rate apply to --mode open only")
        if self.inflight < 1:
            raise bad("--inflight must be at least 1")
        if self.connect_rate < 0:
            raise bad("--connect-rate must not be negative")
        if self.connect_concurrency < 1:
            raise bad("--connect-concurrency must be at least 1")
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise bad("timeouts must be positive")
        if self.sizes.high > self.max_message:
            raise bad("--size exceeds the maximum message size")
        if self.churn is not None and self.churn < 1:
            raise bad("--churn must be at least 1 message per connection")
        if self.churn is not None and self.messages is not None:
            raise bad("give --churn or --messages, not both")
        if self.replaces_connections and self.duration is None:
            raise bad("--stage, --churn, --reconnect and --scenario need --duration")
        if self.scenarios and (self.churn is not None or self.messages is not None):
            raise bad("a --scenario gives each session its messages: not with --churn or -n")
        if self.scenarios and self.mode == "open" and any(s.think for s in self.scenarios):
            raise bad("a scenario's think time is for closed loop")
        if self.scenarios and self.inflight != 1:
            raise bad("--scenario sessions have one message in flight: not with --inflight")
        for scenario in self.scenarios:
            if scenario.kind == "ping" and (scenario.sizes or self.sizes).high > 125:
                raise bad(f"--scenario {scenario.spec!r}: a ping carries at most 125 bytes")
            if scenario.kind == "ping" and self.deflate:
                raise bad(f"--scenario {scenario.spec!r}: pings are not compressed (--deflate)")
        if self.stages and self.connections != max(stage.connections for stage in self.stages):
            raise bad("with --stage, the connections are the stages' peak")
        if any(stage.rate is not None for stage in self.stages) and self.mode != "open":
            raise bad("a --stage rate needs open loop (--rate or --mode open)")
        if self.progress_interval <= 0:
            raise bad("--progress-interval must be positive")
        for name, value in self.headers:
            if not name or any(ch in name + value for ch in "\r\n") or ":" in name:
                raise bad(f"--header {name!r}: expected 'Name: value' without line breaks")

    def summary(self) -> dict[str, object]:
        """The settings that matter for reading a result (goes into the JSON)."""
        return {
            "url": self.target.url,
            "connections": self.connections,
            "connect_rate": self.connect_rate,
            "duration": self.duration,
            "messages": self.messages,
            "mode": self.mode,
            "inflight": self.inflight,
            "rate_per_connection": self.rate,
            "size": self.sizes.describe(),
            "binary": self.binary,
            "deflate": self.deflate,
            "timeout": self.timeout,
            "workers": self.workers,
            "source_ips": list(self.source_ips),
            "stages": [[st.seconds, st.connections, st.rate] for st in self.stages],
            "churn": self.churn,
            "reconnect": self.reconnect,
            "scenarios": [scenario.spec for scenario in self.scenarios],
        }


def default_workers() -> int:
    """One worker per core the process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
