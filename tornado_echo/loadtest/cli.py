"""Command line: ``tornado-echo-loadtest URL [options]`` and ``... merge FILE...``.

Exit codes (:data:`EXIT_CODES`, also in ``--help``): 0 all good, 1 a check or CI threshold
failed (each failure is named), 2 bad input (one line on stderr, no traceback), 3 the run
itself could not be carried out, 130 stopped early by Ctrl-C/SIGTERM (the partial result
is still printed and saved).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from tornado_echo.loadtest import engine, htmlreport, preflight, report
from tornado_echo.loadtest.config import (
    LoadConfig,
    Scenario,
    SizeSpec,
    Stage,
    Target,
    default_workers,
)
from tornado_echo.loadtest.errors import LoadtestConfigError, LoadtestError, ResultFormatError
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.metrics import LiveMetrics

log = logging.getLogger(__name__)
PROG = "tornado-echo-loadtest"
EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    every echo right, every connection opened and kept, every threshold met
  {EXIT_THRESHOLD}    a check failed: a wrong, lost, duplicated or retyped echo, a failed or
       dropped connection (unless --allow-errors), or a threshold (each on a FAILED line)
  {EXIT_USAGE}    bad input (one line on stderr)
  {EXIT_FAILED}    the run could not be carried out, e.g. not one connection opened
  {EXIT_INTERRUPTED}  stopped by Ctrl-C or SIGTERM (the partial result is still printed and saved)
"""


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none (None, off, empty, zero) or its help
    says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.default or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checks and CI thresholds (exit 1 when failed)")
    group.add_argument(
        "--allow-errors",
        action="store_true",
        help="do not fail on wrong/lost/duplicated/retyped echoes or failed/dropped "
        "connections (they still count in --max-error-rate)",
    )
    group.add_argument("--max-p50-ms", type=_positive_float, help="highest allowed p50 latency")
    group.add_argument("--max-p99-ms", type=_positive_float, help="highest allowed p99 latency")
    group.add_argument("--max-p999-ms", type=_positive_float, help="highest allowed p99.9 latency")
    group.add_argument(
        "--max-latency-ms", type=_positive_float, help="highest allowed maximum latency"
    )
    group.add_argument(
        "--max-error-rate",
        type=_positive_float,
        help="highest allowed share of errors among connections and messages, e.g. 0.001",
    )
    group.add_argument(
        "--max-conn-failure-rate",
        type=_positive_float,
        help="highest allowed share of connections that failed to open, e.g. 0.01",
    )
    group.add_argument("--min-throughput", type=_positive_float, help="lowest echoed msgs/s")
    group.add_argument(
        "--fail-client-bound",
        action="store_true",
        help="fail when the load generator was the bottleneck (CLIENT-BOUND), since its "
        "figures then understate the server",
    )
    parser.add_argument("--json", metavar="FILE", help="write the whole result as JSON")
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML report (charts, figures, verdicts; no network needed)",
    )


def _thresholds(args: argparse.Namespace) -> report.Thresholds:
    return report.Thresholds(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(report.Thresholds)}
    )


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Load-test a WebSocket echo server. Subcommand: merge FILE... "
        "(combine --json results from several hosts).",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    p.add_argument("url", help="ws:// or wss:// URL of an echo endpoint")
    p.add_argument(
        "-c", "--connections", type=int, help="connections (default 1; with --stage, its peak)"
    )
    p.add_argument(
        "--connect-rate",
        type=_positive_float,
        default=0.0,
        help="new connections per second (ramp-up); 0 = as fast as possible",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=1000,
        help="handshakes in progress at once per worker (default %(default)s)",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=_positive_float,
        help="seconds (default 10 unless --messages is given)",
    )
    p.add_argument("-n", "--messages", type=int, help="messages per connection")
    p.add_argument(
        "--mode",
        choices=("closed", "open"),
        help="closed: send, await the echo, send again (the default); open: send on a fixed "
        "schedule, latency corrected for coordinated omission (the default with --rate)",
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=1,
        help="closed loop: messages outstanding per connection (default %(default)s)",
    )
    shapes = p.add_argument_group("load shapes")
    shapes.add_argument(
        "--stage",
        type=Stage.parse,
        action="append",
        default=[],
        metavar="SECONDS:CONNECTIONS[:RATE]",
        help="ramp linearly to CONNECTIONS open (from 0) and RATE msgs/s per connection "
        "over SECONDS (repeatable, in order; -d defaults to their sum)",
    )
    shapes.add_argument(
        "--churn",
        type=int,
        metavar="N",
        help="each connection sends N messages, closes, and a new one takes its place "
        "(measures handshakes per second and their latency)",
    )
    shapes.add_argument(
        "--reconnect",
        action="store_true",
        help="open a new connection in place of each one the server drops",
    )
    shapes.add_argument(
        "--scenario",
        type=Scenario.parse,
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="a kind of session in a weighted mix (repeatable): weight=W (default 1), "
        "kind=echo|ping|idle, messages=N (then close, and a new session takes its place), "
        "size=SPEC, binary or text, think=SECONDS between echo and next message, "
        "hold=SECONDS (then close), close=CODE; "
        "e.g. 'weight=3 messages=20 size=64-512 think=0.1' 'kind=ping messages=5' 'kind=idle'",
    )
    p.add_argument(
        "--rate", type=_positive_float, help="open loop: msgs/s per connection (implies open)"
    )
    p.add_argument(
        "--total-rate", type=_positive_float, help="open loop: msgs/s in total (implies open)"
    )
    p.add_argument(
        "-s", "--size", default="64", help="payload bytes: N, A-B or A,B,C (default %(default)s)"
    )
    p.add_argument("--binary", action="store_true", help="binary frames (default text)")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    p.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        help="extra upgrade header 'Name: value' (repeatable)",
    )
    p.add_argument("--origin", help="Origin header of the upgrade request")
    p.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        help="offer this Sec-WebSocket-Protocol (repeatable)",
    )
    p.add_argument("--insecure", action="store_true", help="wss: skip certificate checks")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        help="seconds before an unanswered echo counts as lost (late if it comes after all; "
        "default %(default)s)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=10.0,
        help="seconds for TCP connect, TLS and upgrade together (default 10)",
    )
    p.add_argument("-w", "--workers", type=int, help="processes (default: one per core)")
    p.add_argument(
        "--source-ip",
        action="append",
        default=[],
        help="local source address(es), comma-separated or repeated",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (auto: uvloop when installed)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback target (only a server you own)",
    )
    p.add_argument(
        "--progress-interval",
        type=_positive_float,
        help="seconds between progress lines (default 1 on a terminal, else 5)",
    )
    p.add_argument("--seed", type=int, help="seed for payload-size sampling")
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve live Prometheus metrics of the run on this port (0: any free one, "
        "named on stderr), on --metrics-address",
    )
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address of --metrics-port (default %(default)s)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _add_thresholds(p)
    return p


def merge_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} merge",
        description="Merge --json results from several hosts.",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="--json results to merge")
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="merge runs with different URL, mode, size, binary or deflate (with a warning) "
        "instead of refusing",
    )
    _add_thresholds(p)
    return p


def build_config(args: argparse.Namespace) -> LoadConfig:
    """The one LoadConfig from parsed arguments (LoadtestConfigError on bad input)."""
    target = Target.parse(args.url)
    stages = tuple(args.stage)
    connections = args.connections
    if stages:
        peak = max(stage.connections for stage in stages)
        if connections is not None and connections != peak:
            raise LoadtestConfigError(
                f"--connections {connections} differs from the stages' peak {peak}: give one"
            )
        connections = peak
    if connections is None:
        connections = 1
    workers = (
        args.workers if args.workers is not None else min(default_workers(), max(1, connections))
    )
    if args.rate is not None and args.total_rate is not None:
        raise LoadtestConfigError("give --rate or --total-rate, not both")
    rate = args.rate or 0.0
    if args.total_rate is not None:
        rate = args.total_rate / max(1, connections)
    staged_rates = [stage.rate for stage in stages if stage.rate is not None]
    if staged_rates and not rate:
        rate = staged_rates[0]  # a ramp of rates starts at the first one given
    paced = args.rate is not None or args.total_rate is not None or bool(staged_rates)
    if paced and args.mode == "closed":
        raise LoadtestConfigError("--rate/--total-rate send on a schedule: not with --mode closed")
    mode = args.mode or ("open" if paced else "closed")
    duration = args.duration
    if duration is None and stages:
        duration = sum(stage.seconds for stage in stages)
    if duration is None and args.messages is None:
        duration = 10.0
    sources = tuple(s.strip() for item in args.source_ip for s in item.split(",") if s.strip())
    return LoadConfig.validated(
        target=target,
        connections=connections,
        connect_rate=args.connect_rate,
        connect_concurrency=args.connect_concurrency,
        duration=duration,
        messages=args.messages,
        mode=mode,
        inflight=args.inflight,
        rate=rate,
        sizes=SizeSpec.parse(args.size),
        binary=args.binary,
        deflate=args.deflate,
        headers=tuple(args.header),
        origin=args.origin,
        subprotocols=tuple(args.subprotocol),
        insecure=args.insecure,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        workers=workers,
        source_ips=sources,
        progress_interval=args.progress_interval or (1.0 if sys.stderr.isatty() else 5.0),
        allow_remote=args.allow_remote,
        seed=args.seed,
        stages=stages,
        churn=args.churn,
        reconnect=args.reconnect,
        scenarios=tuple(args.scenario),
    )


def banner(cfg: LoadConfig) -> str:
    """The settings of a run in one line, said before it starts."""
    if cfg.mode == "open":
        loop = f"open loop {cfg.rate:g} msgs/s per connection"
    else:
        loop = f"closed loop, {cfg.inflight} in flight per connection"
    length = f"{cfg.duration:g} s" if cfg.duration is not None else f"{cfg.messages} messages"
    shape = []
    if cfg.stages:
        shape.append(f"{len(cfg.stages)} stages")
    if cfg.churn is not None:
        shape.append(f"churn every {cfg.churn} messages")
    if cfg.reconnect:
        shape.append("reconnect")
    if cfg.scenarios:
        shape.append(f"{len(cfg.scenarios)} scenarios")
    kind = "binary" if cfg.binary else "text"
    return ", ".join(
        [
            cfg.target.url,
            f"{cfg.connections} connections",
            loop,
            length,
            f"{cfg.sizes.describe()}-byte {kind}" + (" deflated" if cfg.deflate else ""),
            f"timeout {cfg.timeout:g} s",
            f"{cfg.workers} worker{'s' if cfg.workers != 1 else ''}",
            *shape,
        ]
    )


class ProgressLine:
    """Live progress: one rewritten line on a terminal, plain periodic lines otherwise.

    A line's latency covers every snapshot since the previous line (each worker's taken
    once), so a line every 5 s shows a stall in any of its seconds.
    """

    def __init__(self, out: TextIO, interval: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.interval = interval
        self._last_print = -1e9
        self._last_received = 0
        self._last_elapsed = 0.0
        self._window: Counter[int] = Counter()  # latency buckets since the last line
        self._taken: dict[int, float] = {}  # worker -> elapsed of its snapshot last taken

    def __call__(self, snapshots: list[engine.Progress]) -> None:
        for snapshot in snapshots:
            if self._taken.get(snapshot.worker) != snapshot.elapsed:
                self._taken[snapshot.worker] = snapshot.elapsed
                self._window.update(dict(snapshot.latency_buckets))
        elapsed = max(s.elapsed for s in snapshots)
        if elapsed - self._last_print < self.interval * 0.95:
            return
        received = sum(s.received for s in snapshots)
        span = elapsed - self._last_elapsed
        rate = (received - self._last_received) / span if span > 0 else 0.0
        self._last_print = self._last_elapsed = elapsed
        self._last_received = received
        line = (
            f"[{elapsed:6.1f}s] open {sum(s.open for s in snapshots)}  "
            f"established {sum(s.established for s in snapshots)}  "
            f"failed {sum(s.failed for s in snapshots)}  "
            f"dropped {sum(s.dropped for s in snapshots)}  "
            f"echoed {received} ({rate:.0f}/s)  {self._latency()}  "
            f"errors {sum(s.errors for s in snapshots)}{self._classes(snapshots)}"
        )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def _latency(self) -> str:
        # The workers' intervals since the last line together: their buckets add up exactly.
        hist = Histogram.of_buckets(self._window.items())
        self._window.clear()
        if not hist.total:
            return "p50 - p99 - max -"
        return (
            f"p50 {hist.percentile(50) / 1e6:.2f} ms p99 {hist.percentile(99) / 1e6:.2f} ms "
            f"max {hist.maximum / 1e6:.2f} ms"
        )

    @staticmethod
    def _classes(snapshots: list[engine.Progress]) -> str:
        classes: Counter[str] = Counter()
        for snapshot in snapshots:
            classes.update(dict(snapshot.error_classes))
        if not classes:
            return ""
        return " (" + ", ".join(f"{name} {count}" for name, count in sorted(classes.items())) + ")"

    def finish(self) -> None:
        if self.tty and self._last_print > 0:
            self.out.write("\n")
            self.out.flush()


def _finish(doc: dict[str, Any], args: argparse.Namespace) -> int:
    summary = doc["summary"]
    report.render(summary, sys.stdout)
    failed = [f"THRESHOLD FAILED {m}" for m in report.check_thresholds(summary, _thresholds(args))]
    if not args.allow_errors:
        failed += [f"CHECK FAILED {m}" for m in report.check_errors(summary)]
    saturation = summary["saturation"]
    if args.fail_client_bound and saturation["client_bound"]:
        failed.append(f"CHECK FAILED client-bound: {'; '.join(saturation['reasons'])}")
    for line in failed:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    path = None
    try:
        if args.json:
            path = args.json
            report.write_json(path, doc)
        if args.html:
            path = args.html
            htmlreport.write(path, doc, failed)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot write {path}: {exc.strerror}\n")
        return EXIT_FAILED
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    connections = summary["connections"]
    if connections["attempted"] and not connections["established"]:
        # Not a load test at all: the run could not be carried out.
        errors = ", ".join(f"{name} {count}" for name, count in summary["errors"].items())
        sys.stderr.write(
            f"{PROG}: error: none of {connections['attempted']} connections opened ({errors})\n"
        )
        return EXIT_FAILED
    return EXIT_THRESHOLD if failed else EXIT_OK


def _check_output(args: argparse.Namespace) -> None:
    # Fail before a long run rather than lose its result at the end.
    for option, path in (("--json", args.json), ("--html", args.html)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise LoadtestConfigError(
                f"{option} {path!r}: folder {folder!r} is missing or not writable"
            )


def cmd_run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    _check_output(args)
    pre = preflight.check(cfg)
    for note in pre.notes:
        sys.stderr.write(f"{PROG}: {note}\n")
    plans = preflight.make_plans(cfg, pre)
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {banner(cfg)}\n")
    line = None if args.quiet else ProgressLine(sys.stderr, cfg.progress_interval)
    live = None
    if args.metrics_port is not None:
        live = LiveMetrics(args.metrics_address, args.metrics_port)
        try:
            live.start()
        except OSError as exc:
            raise LoadtestConfigError(
                f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror})"
            ) from None
        sys.stderr.write(f"{PROG}: metrics on http://{args.metrics_address}:{live.port}/\n")

    def progress(snapshots: list[engine.Progress]) -> None:
        if live is not None:
            live.update(snapshots)
        if line is not None:
            line(snapshots)

    try:
        stats = engine.run(cfg, plans, progress, args.loop)
    finally:
        if live is not None:
            live.close()
    if line is not None:
        line.finish()
    config = cfg.summary()
    doc = report.document(stats, config, [report.run_record(stats, config, cfg.target.url)])
    return _finish(doc, args)


def cmd_merge(args: argparse.Namespace) -> int:
    _check_output(args)
    results = [(path, report.load(path)) for path in args.files]
    stats, config, runs, warnings = report.merge(results, args.allow_mixed)
    for warning in warnings:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
    doc = report.document(stats, config, runs, warnings)
    return _finish(doc, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(message)s")
    try:
        if argv and argv[0] == "merge":
            args = merge_parser().parse_args(argv[1:])
            return cmd_merge(args)
        args = run_parser().parse_args(argv)
        return cmd_run(args)
    except (UsageError, LoadtestConfigError, ResultFormatError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except LoadtestError as exc:
        sys.stderr.write(f"{PROG}: run failed: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
