"""``meltica-engine tail``: a running gateway's bus events as wire JSON lines.

Reads the gateway's ``/tail`` endpoint (served beside ``/metrics``), where it
is a ``drop_oldest`` bus consumer: a slow terminal loses the oldest events
(and sees a ``gap`` marker), it never slows the gateway.
"""

from __future__ import annotations

import argparse
import sys

import aiohttp


async def run_tail(args: argparse.Namespace) -> int:
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
