"""The ``meltica-engine`` command line.

Only the CLI configures logging and turns errors into exit statuses: 0 on
success, 2 for bad input (unreadable capture, invalid config), 1 when a run
finished but rejected frames.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import BinaryIO, cast

from meltica import __version__, log
from meltica.errors import CaptureError, ConfigError

EXIT_OK = 0
EXIT_REJECTS = 1
EXIT_BAD_INPUT = 2


def _cmd_normalize(args: argparse.Namespace) -> int:
    from meltica.normalize import normalize_capture

    with ExitStack() as stack:
        if args.output in (None, "-"):
            sink = cast(BinaryIO, sys.stdout.buffer)
        else:
            try:
                sink = stack.enter_context(open(args.output, "wb"))
            except OSError as exc:
                print(f"error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
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


def _cmd_check_config(args: argparse.Namespace) -> int:
    from meltica.config import check_config

    try:
        return check_config(args.file)
    except ConfigError as exc:  # check_config reports its own; this is a backstop
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meltica-engine",
        description="Meltica: Binance market data as canonical, idempotent events.",
    )
    parser.add_argument("--version", action="version", version=f"meltica-engine {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="TRACE, DEBUG, INFO, WARNING or ERROR"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "normalize",
        help="turn a capture into wire-format events (JSONL), offline",
        description="Read a capture and write one wire-JSON event per line; "
        "a summary goes to stderr.",
    )
    p.add_argument("capture", help="capture file (Meltica, hftbacktest or cryptofeed format)")
    p.add_argument("-o", "--output", help="output JSONL file (default: stdout)")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "meltica", "hftbacktest", "cryptofeed"),
        help="capture format (default: detect)",
    )
    p.add_argument("--market", choices=("spot", "usdm", "coinm"), help="override the market")
    p.add_argument("--venue", choices=("binance", "binance_us"), help="override the venue")
    p.add_argument("--strict", action="store_true", help="exit 1 when any frame was rejected")
    p.set_defaults(func=_cmd_normalize)

    p = sub.add_parser("check-config", help="validate a config file and print the result")
    p.add_argument("file", help="YAML config file")
    p.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        log.configure(args.log_level)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
