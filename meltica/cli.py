"""The ``meltica-engine`` command line.

Only the CLI configures logging and turns errors into exit statuses: 0 on
success, 2 for bad input (unreadable capture, invalid config), 1 when a run
finished but rejected frames.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

from meltica import __version__, log
from meltica._core.events import MARKETS, VENUES
from meltica.errors import CaptureError, ConfigError

# record's default channels (meltica.record.DEFAULT_STREAMS, not imported: it pulls picows in)
DEFAULT_RECORD_STREAMS = ("depth", "trade", "book_ticker")

EXIT_OK = 0
EXIT_REJECTS = 1
EXIT_BAD_INPUT = 2


class _Version(argparse._VersionAction):
    """``--version``: the version and the parser's simdjson kernel (imported only here)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from meltica._core.parser import SIMD_KERNEL, SIMD_REASON

        print(f"meltica-engine {__version__} (simdjson kernel {SIMD_KERNEL}: {SIMD_REASON})")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr and exit status 2 (no usage dump:
    the line names the argument, ``--help`` has the rest)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class _Help(argparse.HelpFormatter):
    """Text lines are wrapped, indented ones (the epilogs' example commands) kept as
    written; every option's help ends with its default: the one it states itself
    ("(default: stdout)"), else the value argparse has."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line
            if line.startswith("  ")
            else super(_Help, self)._fill_text(line, width, indent)
            for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is argparse.SUPPRESS or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a positional argument: given, no default
        if isinstance(default, bool) and action.nargs == 0:
            shown = "off"  # a flag: not given unless given
        elif default is None:
            return text  # an option without a default must say what not giving it means
        elif isinstance(default, (list, tuple)):
            shown = ",".join(map(str, default)) or "none"
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _cmd_normalize(args: argparse.Namespace) -> int:
    from meltica.commands.common import open_output
    from meltica.normalize import normalize_capture

    with ExitStack() as stack:
        sink = open_output(stack, args.output)
        if sink is None:
            return EXIT_BAD_INPUT
        try:
            summary = normalize_capture(
                args.capture, sink, args.format, venue=args.venue, market=args.market
            )
        except CaptureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        sink.flush()
    for line in summary.lines():
        print(line, file=sys.stderr)
    return EXIT_REJECTS if summary.total_rejects and args.strict else EXIT_OK


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be 'max' or a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _synthetic_markets(text: str) -> tuple[str, ...]:
    from meltica.replay.synthetic import MARKETS as SYNTHETIC_MARKETS

    markets = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in markets if m not in SYNTHETIC_MARKETS]
    if bad or not markets:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(SYNTHETIC_MARKETS)}"
        )
    return markets


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (the default), else stdlib asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _serve_fake_exchange(args: argparse.Namespace) -> int:
    from meltica.replay.exchange import FakeExchange
    from meltica.replay.faults import FaultPlan
    from meltica.replay.source import CaptureSource, MarketSource

    source: MarketSource
    if args.capture and args.synthetic:
        print("error: give a CAPTURE or --synthetic, not both", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.capture:
        source = CaptureSource(args.capture, market=args.market)
    else:
        from meltica.replay.synthetic import SyntheticMarket

        source = SyntheticMarket(
            markets=args.markets, symbols_per_market=args.symbols, seed=args.seed
        )
    try:
        faults = FaultPlan.parse(args.fault)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ws_ports = {"spot": args.ws_port_spot, "usdm": args.ws_port_usdm}
    exchange = FakeExchange(
        source,
        speed=args.speed,
        faults=faults,
        ws_ports={k: v for k, v in ws_ports.items() if v},
        rest_port=args.rest_port,
        subscribers=args.subscribers,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with exchange:
        for market in source.markets:
            print(f"ws {market}: {exchange.ws_url(market)}", flush=True)
        print(f"rest: {exchange.rest_url}", flush=True)
        waiters = [asyncio.ensure_future(stop.wait())]
        if args.exit_when_done:
            waiters.append(asyncio.ensure_future(exchange.finished.wait()))
        _, pending = await asyncio.wait(
            waiters, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        for w in pending:
            w.cancel()
    print(
        f"frames read: {exchange.frames_read}, published: {exchange.frames_published}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_fake_exchange(args: argparse.Namespace) -> int:
    try:
        return _run_async(_serve_fake_exchange(args))
    except CaptureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cmd_record(args: argparse.Namespace) -> int:
    from meltica.record import RecordOptions, record

    options = RecordOptions(
        out=Path(args.out),
        symbols=list(args.symbols),
        market=args.market,
        streams=[s.strip() for s in args.streams.split(",") if s.strip()],
        depth_speed_ms=args.depth_speed_ms,
        ws_url=args.ws_url,
        rest_url=args.rest_url,
        duration_s=args.duration,
        snapshot_limit=args.snapshot_limit,
    )

    async def go() -> int:
        recorder = await record(options)
        print(
            f"recorded {recorder.frames} frames, {recorder.snapshots} snapshots to {args.out}",
            file=sys.stderr,
        )
        return EXIT_OK

    try:
        return _run_async(go())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cmd_check_config(args: argparse.Namespace) -> int:
    from meltica.config import check_config

    try:
        return check_config(args.file)
    except ConfigError as exc:  # check_config reports its own; this is a backstop
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cmd_run(args: argparse.Namespace) -> int:
    from meltica.commands.run import run_gateway

    return _run_async(run_gateway(args))


# The 'view' extra (pip install 'meltica-engine[view]'): the live terminal view
# (rich) and its latency histograms (hdrhistogram).  demo, top and replay need
# it; the gateway itself (run, normalize, record, tail, ctl, ...) does not.
VIEW_EXTRA = {"rich": "rich", "hdrh": "hdrhistogram"}


def view_extra_missing(command: str) -> int | None:
    """One line on stderr and EXIT_BAD_INPUT when the 'view' extra is not installed."""
    import importlib

    missing = []
    for module, dist in VIEW_EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if not missing:
        return None
    print(
        f"error: meltica-engine {command} needs the 'view' extra ({', '.join(missing)} not "
        "installed): pip install 'meltica-engine[view]'",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


def _cmd_demo(args: argparse.Namespace) -> int:
    if (code := view_extra_missing("demo")) is not None:
        return code
    from meltica.commands.demo import run_demo

    return _run_async(run_demo(args))


def _cmd_replay(args: argparse.Namespace) -> int:
    if (code := view_extra_missing("replay")) is not None:
        return code
    from meltica.commands.replay import run_replay

    return _run_async(run_replay(args))


def _cmd_tail(args: argparse.Namespace) -> int:
    from meltica.commands.tail import run_tail

    return _run_async(run_tail(args))


def _tail_start(text: str) -> object:
    from meltica.commands.tail import parse_start

    return parse_start(text)


def _cmd_ctl(args: argparse.Namespace) -> int:
    from meltica.commands.ctl import run_ctl

    return _run_async(run_ctl(args))


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be a number of seconds in (0, 3600]")
    return value


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="YAML config file (default: $MELTICA_CONFIG, else built-in defaults)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. bus.capacity=1024 (repeatable; default: none)",
    )


_LOG_LEVEL_HELP = (
    "TRACE, DEBUG, INFO, WARNING or ERROR (default: the config's log.level, "
    "MELTICA_LOG__LEVEL, else INFO); accepted before or after the command"
)
_LOG_FORMAT_HELP = (
    "log line format, text or json (default: the config's log.format, "
    "MELTICA_LOG__FORMAT, else text); accepted before or after the command"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meltica-engine",
        description="Meltica: Binance market data as canonical, idempotent events.",
        formatter_class=_Help,
        epilog="example:\n  meltica-engine demo            # the whole gateway offline, live view\n"
        "  meltica-engine run --config config/default.yaml\n"
        "  meltica-engine COMMAND --help  # each command's options and an example",
    )
    parser.add_argument(
        "--version", action=_Version, help="show the version and the simdjson kernel, and exit"
    )
    parser.add_argument("--log-level", default=None, help=_LOG_LEVEL_HELP)
    parser.add_argument("--log-format", default=None, help=_LOG_FORMAT_HELP)
    # every subcommand takes --log-level too; SUPPRESS keeps a value given
    # before the command when it is not repeated after it
    common = _Parser(add_help=False, formatter_class=_Help)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=_LOG_LEVEL_HELP)
    common.add_argument("--log-format", default=argparse.SUPPRESS, help=_LOG_FORMAT_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        # every command's help shows each option's default and an example (its epilog);
        # _Help keeps the epilog's indented lines as written, as RawDescription would
        kw["formatter_class"] = _Help
        return sub.add_parser(name, parents=[common], **kw)

    p = command(
        "normalize",
        help="turn a capture into wire-format events (JSONL), offline",
        description="Read a capture and write one wire-JSON event per line; "
        "a summary goes to stderr.",
        epilog="example:\n  meltica-engine normalize btcusdt_20240808.gz -o events.jsonl --strict",
    )
    p.add_argument("capture", help="capture file (Meltica, hftbacktest or cryptofeed format)")
    p.add_argument("-o", "--output", help="output JSONL file (default: stdout)")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "meltica", "hftbacktest", "cryptofeed"),
        help="capture format (default: detect)",
    )
    p.add_argument("--market", choices=MARKETS, help="override the market (default: the capture's)")
    p.add_argument("--venue", choices=VENUES, help="override the venue (default: the capture's)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any frame was rejected")
    p.set_defaults(func=_cmd_normalize)

    p = command(
        "fake-exchange",
        help="serve a capture or a synthetic market as a local fake Binance",
        description="A local Binance (WebSocket + REST on loopback) replaying CAPTURE, "
        "or a synthetic market when no capture is given.",
        epilog="example:\n  meltica-engine fake-exchange --synthetic --markets usdm --symbols 2 "
        "--fault drop:symbol=BTCUSDT,at_s=5,count=3",
    )
    p.add_argument("capture", nargs="?", help="capture file to replay (default: none, synthetic)")
    p.add_argument(
        "--synthetic", action="store_true", help="serve a synthetic market (the default)"
    )
    p.add_argument(
        "--market", choices=MARKETS, help="capture market override (default: the capture's)"
    )
    p.add_argument(
        "--markets",
        type=_synthetic_markets,
        default=("spot", "usdm"),
        help="synthetic markets, comma-separated",
    )
    p.add_argument(
        "--symbols", type=_positive_int, default=4, help="synthetic symbols per market (>= 1)"
    )
    p.add_argument("--seed", type=int, default=1, help="synthetic market seed")
    p.add_argument(
        "--speed", type=_speed, default=1.0, help="'max', 1 (recorded time) or N× (default: 1)"
    )
    for name in ("spot", "usdm"):
        p.add_argument(
            f"--ws-port-{name}",
            type=int,
            default=0,
            help=f"{name} WebSocket port on 127.0.0.1 (default: 0, a free port)",
        )
    p.add_argument(
        "--rest-port", type=int, default=0, help="REST port on 127.0.0.1 (default: 0, a free port)"
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        help="scripted fault, e.g. drop:symbol=X,count=3 (repeatable; default: none)",
    )
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: until SIGINT)"
    )
    p.add_argument(
        "--exit-when-done", action="store_true", help="stop when the capture is exhausted"
    )
    p.add_argument(
        "--subscribers",
        type=_positive_int,
        default=1,
        help="start the replay once every stream has this many subscribed connections "
        "(default: 1, the first subscription)",
    )
    p.set_defaults(func=_cmd_fake_exchange)

    p = command(
        "record",
        help="record live frames and REST snapshots into a capture",
        description="Record the streams of SYMBOLS (frames with their receive time) and a REST "
        "depth snapshot per symbol into a gzip capture that replay, normalize and "
        "fake-exchange read.",
        epilog="example:\n  meltica-engine record BTCUSDT ETHUSDT --market usdm "
        "--streams depth,agg_trade,book_ticker --duration 600 --out usdm.gz",
    )
    p.add_argument("symbols", nargs="+", help="symbols, e.g. BTCUSDT ETHUSDT")
    p.add_argument("--out", required=True, help="capture file to write (gzip JSON lines)")
    p.add_argument("--market", choices=("spot", "usdm"), default="spot", help="the market")
    p.add_argument(
        "--streams",
        default=",".join(DEFAULT_RECORD_STREAMS),
        help="comma-separated channels, named as in the config (binance.<market>.streams) and "
        "ctl: trade, agg_trade, book_ticker, depth, depth5, mark_price, kline_1m, ...; any "
        "other name is a Binance stream kind recorded as written (e.g. depth@500ms, avgPrice)",
    )
    p.add_argument(
        "--depth-speed-ms",
        type=int,
        default=100,
        help="update speed of the depth channels, as binance.<market>.depth_speed_ms "
        "(spot 100 or 1000; usdm 0, 100, 250 or 500)",
    )
    p.add_argument("--ws-url", help="WebSocket base URL (default: Binance)")
    p.add_argument("--rest-url", help="REST base URL (default: Binance)")
    p.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    p.add_argument(
        "--snapshot-limit", type=int, default=1000, help="levels per side of the depth snapshot"
    )
    p.set_defaults(func=_cmd_record)

    p = command(
        "run",
        help="run the gateway against live Binance",
        description="Connect to Binance with the configured markets, symbols and streams, "
        "keep books, serve /metrics and the bus until SIGINT/SIGTERM.",
        epilog="example:\n  meltica-engine run --config config/default.yaml "
        "--set binance.usdm.symbols=[btcusdt,ethusdt] --log-format json",
    )
    _config_args(p)
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: until SIGTERM)"
    )
    p.set_defaults(func=_cmd_run)

    p = command(
        "demo",
        help="the whole gateway offline against a local fake Binance, with a live view",
        description="Start a fake Binance with a synthetic market in its own process, run "
        "the gateway against it over loopback and show books, rates and latency.",
        epilog="example:\n  meltica-engine demo --symbols 2 --duration 30",
    )
    _config_args(p)
    p.add_argument(
        "--duration",
        type=float,
        help="stop after this many seconds, with a summary (default: until Ctrl-C)",
    )
    p.add_argument("--symbols", type=int, default=3, help="symbols per market")
    p.add_argument("--seed", type=int, default=1, help="synthetic market seed")
    p.add_argument("--speed", type=float, default=1.0, help="market speed (1 = real time)")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="/metrics port (default: a free one)"
    )
    p.add_argument(
        "--no-view", dest="view", action="store_false", help="no live view, summary only"
    )
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON (default: none)")
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        help="write the view's last frame at 80x24: SVG (.svg), HTML (.html), ANSI (.ans), "
        "else text (default: none)",
    )
    p.set_defaults(func=_cmd_demo)

    from meltica.commands.top import add_parser as _add_top

    _add_top(command)

    p = command(
        "replay",
        help="replay a capture through the whole gateway, writing bus events",
        description="Serve CAPTURE from a local fake Binance, subscribe the gateway to its "
        "symbols and streams and write every Data Bus event as wire JSON.  A summary table "
        "goes to stdout (to stderr when stdout carries the events or the JSON report); "
        "exit status 1 when the replay found gaps (any gap manifest entry), drops, book "
        "mismatches or a book that is not live.",
        epilog="example:\n  meltica-engine replay btcusdt_20240808.gz -o events.jsonl "
        "--report-json report.json --plot replay.png",
    )
    p.add_argument("capture", nargs="+", help="capture file(s) of one session")
    _config_args(p)
    p.add_argument(
        "--speed", type=_speed, default=None, help="'max', 1 (recorded time) or N× (default: max)"
    )
    p.add_argument("-o", "--output", help="output JSONL file (default: stdout; '-' too)")
    p.add_argument(
        "--market", choices=MARKETS, help="capture market override (default: the capture's)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr about every second: share read, rate, ETA "
        "(default: on when stderr is a terminal)",
    )
    p.add_argument(
        "--report-json",
        metavar="FILE",
        help="write the full report as JSON to FILE ('-': stdout, with -o FILE) "
        "(default: none, the summary table only)",
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="draw events/s and latency percentiles over exchange time, with gaps and "
        "resyncs marked, into PNG (needs the 'plot' extra: matplotlib) (default: none)",
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="append the gap manifest to FILE as JSON lines, one per gap (docs/gaps.md) "
        "(default: none; the report has its summary)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        help="scripted fault of the fake exchange, e.g. close:at_frame=500 "
        "(repeatable; docs/fake-exchange.md) (default: none)",
    )
    p.set_defaults(func=_cmd_replay)

    p = command(
        "tail",
        help="print the bus events of a running gateway",
        description="Print a gateway's Data Bus events as wire JSON lines: from its HTTP "
        "endpoint (a slow reader loses the oldest, never slows the gateway), or with --nats "
        "from the NATS JetStream stream it publishes to (nothing lost; --durable resumes).  "
        "With --nats it connects with the config's nats section (--config, MELTICA_NATS__* "
        "variables, --set: credentials, TLS); --nats URL replaces nats.url.",
        epilog="example:\n  meltica-engine tail --url http://127.0.0.1:9464 --kind trade "
        "--symbol BTCUSDT --count 10\n"
        "  meltica-engine tail --nats nats://127.0.0.1:4222 --start all --durable audit",
    )
    _config_args(p)
    p.add_argument(
        "--url", default="http://127.0.0.1:9464", help="the gateway's metrics/tail endpoint"
    )
    p.add_argument(
        "--nats",
        metavar="URL",
        nargs="?",
        const="",
        help="read the NATS stream at URL instead of --url (without URL: the config's "
        "nats.url) (default: off, --url is read)",
    )
    p.add_argument(
        "--start",
        type=_tail_start,
        default="new",
        help="with --nats: new (default), all, a stream sequence or an ISO 8601 time",
    )
    p.add_argument(
        "--durable",
        metavar="NAME",
        help="with --nats: a consumer name that resumes where it stopped "
        "(default: none, a consumer that ends with the command)",
    )
    p.add_argument(
        "--stream", help="with --nats: the JetStream stream (default: the config's, MELTICA)"
    )
    for name in ("kind", "symbol", "market"):
        p.add_argument(
            f"--{name}",
            action="append",
            default=[],
            help=f"only this event {name} (repeatable; default: all)",
        )
    p.add_argument("--count", type=int, help="stop after this many events (default: no limit)")
    p.set_defaults(func=_cmd_tail)

    p = command(
        "ctl",
        help="send a control request (subscribe, unsubscribe, list, status, resync, book) to a "
        "gateway",
        description="Send one control request to a running gateway over NATS (--nats) or its "
        "HTTP server (--url, the default) and print the reply as JSON.  The config (--config, "
        "MELTICA_* variables, --set) gives the NATS connection (the nats section: url, "
        "credentials, TLS) and the HTTP bearer token (telemetry.control_token); NATS is used "
        "only with --nats, whose URL, when given, replaces nats.url.  Several --url: ctl "
        "routes to the shard that owns the symbols.  Exit status: 0 ok, "
        "1 error reply, 2 unreachable, bad usage or bad config.",
        epilog="example:\n  meltica-engine ctl subscribe --market usdm --symbols btcusdt,ethusdt "
        "--channels agg_trade,book_ticker,depth\n"
        "  meltica-engine ctl status --nats nats://127.0.0.1:4222\n"
        "  meltica-engine ctl book --market usdm --symbol BTCUSDT --depth 5\n"
        "  meltica-engine ctl resync --market usdm --symbols ethusdt "
        "--url http://10.0.0.1:9464 --url http://10.0.0.2:9464",
    )
    _config_args(p)
    p.add_argument(
        "op",
        choices=("subscribe", "unsubscribe", "list", "status", "resync", "book"),
        help="the request",
    )
    p.add_argument("--market", choices=MARKETS, help="the market of --symbols (default: none)")
    p.add_argument(
        "--symbols", help="comma-separated symbols, e.g. btcusdt,ethusdt (default: none)"
    )
    p.add_argument("--symbol", help="one symbol (book), e.g. BTCUSDT (default: none)")
    p.add_argument(
        "--depth",
        type=_positive_int,
        help="book: levels per side to show (default: every level the gateway keeps)",
    )
    p.add_argument(
        "--channels",
        help="comma-separated channels, named as in the config (binance.<market>.streams) and "
        "record: trade, agg_trade, book_ticker, depth, depth5, mark_price, kline_1m, ... "
        "(default: none)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--nats",
        metavar="URL",
        nargs="?",
        const="",
        help="reach gateways over NATS at URL (without URL: the config's nats.url; "
        "then give OP before --nats) (default: off, HTTP at --url)",
    )
    where.add_argument(
        "--url",
        action="append",
        help="a gateway's HTTP server; repeat it for shards: list and status ask every URL, "
        "other ops go to the URL whose status names the shard owning --symbols, and a "
        "request refused with owner_shard is resent to that shard's URL "
        "(default: http://127.0.0.1:9464)",
    )
    p.add_argument(
        "--gateway",
        metavar="ID",
        help="with --nats: the gateway.id to ask (meltica.control.ID); without it list and "
        "status gather every gateway's reply, other ops need exactly one gateway "
        "(default: none)",
    )
    p.add_argument(
        "--token",
        help="with --url: the bearer token (default: the config's telemetry.control_token, "
        "e.g. $MELTICA_TELEMETRY__CONTROL_TOKEN)",
    )
    p.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for a reply")
    p.add_argument(
        "--wait",
        type=_seconds,
        default=0.5,
        help="with --nats and no --gateway: seconds to gather replies",
    )
    p.set_defaults(func=_cmd_ctl)

    p = command(
        "check-config",
        help="validate a config file and print the result",
        description="Load FILE like run does (environment variables included), print ok and "
        "the effective configuration (secrets masked), or the errors, each naming its key.",
        epilog="example:\n  meltica-engine check-config config/default.yaml",
    )
    p.add_argument("file", help="YAML config file")
    p.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    # --log-level / --log-format win over the config's log section, which the
    # commands that load a config apply once they have it
    # (meltica.commands.common.apply_log_level)
    level = args.log_level or _env_log(os.environ, "LEVEL") or "INFO"
    fmt = args.log_format or _env_log(os.environ, "FORMAT") or "text"
    try:
        log.level_number(level)
    except ValueError as exc:
        source = "--log-level" if args.log_level else "MELTICA_LOG__LEVEL"
        print(f"error: {source}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        log.check_format(fmt)
    except ValueError as exc:
        source = "--log-format" if args.log_format else "MELTICA_LOG__FORMAT"
        print(f"error: {source}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    log.configure(level, fmt)
    code: int = args.func(args)
    return code


def _env_log(env: Mapping[str, str], key: str) -> str | None:
    """``MELTICA_LOG__<KEY>`` (any case, as the config loader reads it) or None."""
    for name, value in env.items():
        if name.upper() == f"MELTICA_LOG__{key}":
            return value
    return None


if __name__ == "__main__":
    raise SystemExit(main())
