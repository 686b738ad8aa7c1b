"""``meltica-engine tail``: a running gateway's bus events as wire JSON lines.

Without ``--nats`` it reads the gateway's ``/tail`` endpoint (served beside
``/metrics``), where it is a ``drop_oldest`` bus consumer: a slow terminal
loses the oldest events (and sees a ``gap`` marker), it never slows the
gateway.  With ``--nats URL`` it reads the JetStream stream through
``meltica.client`` instead: nothing is lost, ``--start`` picks where to begin
and ``--durable`` resumes where the last run with that name stopped.  It
connects with the ``nats`` section of the config (``--config``, ``MELTICA_*``
variables, ``--set``, as ``run`` reads it): ``--nats URL`` replaces
``nats.url``, ``--nats`` alone keeps it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import aiohttp

from meltica.errors import ConfigError, MelticaError


def parse_start(text: str) -> str | int | dt.datetime:
    """``new``, ``all``, a stream sequence, or an ISO 8601 time (UTC when no offset)."""
    if text in ("new", "all"):
        return text
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected new, all, a stream sequence or an ISO 8601 time, got {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def run_tail(args: argparse.Namespace) -> int:
    if args.nats is not None:
        return await _tail_nats(args)
    if args.durable or args.stream or args.start != "new":
        print("error: --start, --durable and --stream need --nats URL", file=sys.stderr)
        return 2
    params = [("kind", k) for k in args.kind]
    params += [("symbol", s) for s in args.symbol]
    params += [("market", m) for m in args.market]
    seen = 0
    out = sys.stdout.buffer
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            session.get(args.url.rstrip("/") + "/tail", params=params) as resp,
        ):
            if resp.status != 200:
                reason = (await resp.text()).strip().partition("\n")[0]
                print(f"error: {args.url} answered {resp.status}: {reason}", file=sys.stderr)
                return 2
            async for line in resp.content:
                out.write(line)
                out.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    except aiohttp.ClientError as exc:
        print(f"error: cannot read {args.url}/tail: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


async def _tail_nats(args: argparse.Namespace) -> int:
    from meltica.client import connect
    from meltica.config import load_config
    from meltica.wire import encode

    out = sys.stdout.buffer
    seen = 0
    try:
        config = load_config(args.config, overrides=args.set)
        options = {"stream": args.stream} if args.stream else {}
        if args.nats:
            options["url"] = args.nats
        async with connect(config.nats, name="meltica-tail", **options) as client:
            sub = client.subscribe(
                market=args.market or None,
                kind=args.kind or None,
                symbol=args.symbol or None,
                start=args.start,
                durable=args.durable,
            )
            if args.count == 0:
                return 0
            async for ev in sub:
                # one write per event: a reader of the pipe sees whole lines as they come
                out.write(encode(ev) + b"\n")
                out.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    except (ConfigError, MelticaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0
