"""``meltica-engine run``: the gateway against live Binance until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import sys

from meltica.broker import BrokerError
from meltica.commands.common import apply_log_level
from meltica.config import load_config
from meltica.engine import Engine
from meltica.errors import ConfigError, MelticaError


async def run_gateway(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides=args.set)
        apply_log_level(args, config)
        engine = Engine(config)  # reads the OTEL_* variables (docs/tracing.md)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        await engine.run(duration_s=args.duration)
    except BrokerError as exc:  # the broker's config keys: like any config error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MelticaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
