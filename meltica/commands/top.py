"""``meltica-engine top [URL]``: the live view of a running gateway.

The same screen as ``demo`` (`meltica.view.LiveView`), fed over HTTP from the
gateway's own endpoints: ``URL/metrics`` is scraped every ``--interval``
seconds (connections, frame and event rates, REST weight, bus lag and drops,
book states, latency) and ``URL/tail`` is streamed for the view's event kinds
(book tickers, fused book snapshots, trades), decoded with
``meltica.wire.decode_lines``, for prices.  ``/tail`` is a ``drop_oldest`` bus
consumer, so a slow terminal never slows the gateway.

Tick and step decimals come from exchangeInfo when ``--rest-url`` names the
exchange's REST base, otherwise from the decimal strings received (see
`meltica.view`).  The first scrape must succeed: a wrong URL is one line on
stderr and exit status 2.  Later failures of either feed are shown on the
bottom line while ``top`` keeps retrying.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meltica.errors import MelticaError

if TYPE_CHECKING:  # imported where used: the CLI builds its parser without the 'view' extra
    from meltica.view import LiveView

DEFAULT_URL = "http://127.0.0.1:9464"
HTTP_TIMEOUT_S = 5.0
TAIL_RETRY_S = 1.0
MAX_LINE = 16 << 20  # a /tail line longer than this is not an event: dropped
EXCHANGE_INFO_PATHS = {
    "spot": "/api/v3/exchangeInfo",
    "usdm": "/fapi/v1/exchangeInfo",
    "coinm": "/dapi/v1/exchangeInfo",
}

EPILOG = """\
examples:
  meltica-engine top                                   # the gateway on this host
  meltica-engine top http://10.0.0.7:9464 --rest-url https://api.binance.com \\
      --rest-url usdm=https://fapi.binance.com         # exact tick/step decimals
  meltica-engine top --once --no-color                 # one frame, for scripts

exit status: 0 ok; 1 with --once when not every instrument had a price within
--timeout (the frame is printed anyway); 2 when the gateway cannot be reached
at start or the command line is wrong."""


class TopError(MelticaError):
    """The gateway cannot be read (unreachable, not a Meltica gateway); `short` says why in
    a few words, for the view's bottom line."""

    reason = "top"

    def __init__(self, message: str, short: str = "") -> None:
        super().__init__(message)
        self.short = short or message


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400], got {text}")
    return value


def _rest_url(text: str) -> tuple[str, str]:
    """``URL`` (every market) or ``MARKET=URL``."""
    market, sep, url = text.partition("=")
    if sep and market in EXCHANGE_INFO_PATHS:
        return market, url
    if sep and "://" not in market:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected URL or MARKET=URL with MARKET one of "
            f"{', '.join(EXCHANGE_INFO_PATHS)}"
        )
    return "*", text


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``top`` through the CLI's subcommand factory."""
    p = command(
        "top",
        help="the live view of a running gateway, from its /metrics and /tail",
        description="Show the demo's live view for a running gateway: prices at tick and "
        "step decimals, spread and mid, last trade, book ages and states, trades/s, "
        "frames/s and events/s over the last seconds, connections, REST weight and bus "
        "lag.  Reads URL/metrics every --interval seconds and streams URL/tail.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"the gateway's HTTP server (default {DEFAULT_URL})",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        help="seconds between /metrics scrapes (default 1)",
    )
    p.add_argument(
        "--window",
        type=_seconds,
        default=5.0,
        help="seconds the rates are measured over, sliding (default 5)",
    )
    p.add_argument(
        "--rest-url",
        type=_rest_url,
        action="append",
        default=[],
        metavar="[MARKET=]URL",
        help="exchange REST base whose exchangeInfo gives exact tick and step sizes, for "
        "every market or one (repeatable; default: none, decimals are learnt from the "
        "prices and sizes received)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one frame as soon as every instrument has a price and two scrapes "
        "gave rates (or --timeout passed), then exit",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=15.0,
        help="with --once: the longest wait for prices, seconds (default 15)",
    )
    p.add_argument(
        "--duration",
        type=_seconds,
        help="stop after this many seconds (default: until Ctrl-C); the last frame is "
        "printed when the output is not a terminal",
    )
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        help="also write the last frame at 80x24: SVG (.svg), HTML (.html), ANSI (.ans), else "
        "text (default: none)",
    )
    p.add_argument(
        "--no-color", dest="color", action="store_false", help="no colours (default: colours)"
    )
    p.set_defaults(func=_cmd_top)
    return p


def _cmd_top(args: argparse.Namespace) -> int:
    from meltica.cli import _run_async, view_extra_missing

    if (code := view_extra_missing("top")) is not None:
        return code

    return _run_async(run_top(args))


def check_url(url: str) -> str:
    """The base URL without a trailing slash; TopError unless it is http(s)://host[:port]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TopError(f"{url!r} is not an http:// or https:// URL of a gateway")
    try:
        _ = parts.port
    except ValueError:
        raise TopError(f"{url!r}: bad port") from None
    return url.rstrip("/")


async def scrape(session: Any, base: str) -> list[Any]:
    """``base/metrics`` as prometheus-client metric families; TopError when unreadable."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    url = f"{base}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as r:
            if r.status != 200:
                raise TopError(f"{url} answered HTTP {r.status}", f"HTTP {r.status}")
            text = await r.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TopError(f"cannot reach {url}: {exc or type(exc).__name__}", _short(exc)) from exc
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise TopError(f"{url} is not Prometheus text: {exc}", "not Prometheus text") from exc
    if not any(f.name.startswith("meltica_") for f in families):
        raise TopError(
            f"{url} has no meltica_* metrics: not a Meltica gateway", "no meltica_* metrics"
        )
    return families


async def load_instruments(
    session: Any, view: LiveView, rest_urls: list[tuple[str, str]], markets: list[str]
) -> str:
    """Exact decimals from exchangeInfo; returns a note for the view's bottom line."""
    import aiohttp

    from meltica.adapters.binance.instruments import InstrumentError, parse_exchange_info

    by_market = dict(rest_urls)
    loaded, failed = [], []
    for market in markets:
        base = by_market.get(market, by_market.get("*"))
        path = EXCHANGE_INFO_PATHS.get(market)
        if base is None or path is None:
            continue
        url = base.rstrip("/") + path
        try:
            timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
            async with session.get(url, timeout=timeout) as r:
                if r.status != 200:
                    raise TopError(f"HTTP {r.status}")
                body = await r.json(content_type=None)
            if not isinstance(body, dict):
                raise TopError("not a JSON object")
            instruments, _ = parse_exchange_info(market, body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, TopError) as exc:
            failed.append(f"{market} ({exc or type(exc).__name__})")
            continue
        except InstrumentError as exc:
            failed.append(f"{market} ({exc})")
            continue
        for symbol, inst in instruments.items():
            view.set_instrument(market, symbol, inst.tick_size, inst.step_size)
        loaded.append(market)
    note = f"ticks: exchangeInfo {','.join(loaded)}" if loaded else "ticks: learnt"
    if failed:
        note += f"; exchangeInfo failed: {', '.join(failed)}"
    return note


async def follow_tail(session: Any, base: str, view: LiveView) -> None:
    """Stream ``base/tail`` into the view until cancelled, reconnecting when it ends."""
    import aiohttp

    from meltica.errors import WireError
    from meltica.view import VIEW_KINDS
    from meltica.wire import decode, decode_lines

    params = [("kind", k) for k in VIEW_KINDS]
    url = f"{base}/tail"
    bad = 0
    while True:
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_TIMEOUT_S)
            async with session.get(url, params=params, timeout=timeout) as r:
                if r.status != 200:
                    raise TopError(f"{url} answered HTTP {r.status}", f"HTTP {r.status}")
                view.feeds["tail"] = "streaming"
                buf = b""
                async for chunk in r.content.iter_any():
                    buf += chunk
                    end = buf.rfind(b"\n")
                    if end < 0:
                        if len(buf) > MAX_LINE:
                            buf, bad = b"", bad + 1
                        continue
                    lines, buf = buf[: end + 1], buf[end + 1 :]
                    now = time.monotonic()
                    try:
                        view.observe(decode_lines(lines), now)
                    except WireError:
                        for line in lines.splitlines():
                            if line.strip():
                                try:
                                    view.observe((decode(line),), now)
                                except WireError:
                                    bad += 1
                    if bad:
                        view.feeds["tail"] = f"streaming, {bad} undecodable line(s) skipped"
            view.feeds["tail"] = "ended, reconnecting"
        except TopError as exc:
            view.feeds["tail"] = f"reconnecting ({exc.short})"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            view.feeds["tail"] = f"reconnecting ({_short(exc)})"
        await asyncio.sleep(TAIL_RETRY_S)


def _short(exc: BaseException) -> str:
    """A few words on why a request failed."""
    import aiohttp

    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return "unreachable"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "disconnected"
    return type(exc).__name__


async def poll_metrics(session: Any, base: str, view: LiveView, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            families = await scrape(session, base)
        except TopError as exc:
            view.feeds["metrics"] = f"failing ({exc.short})"
            continue
        view.update_metrics(families, time.monotonic())
        view.feeds["metrics"] = "ok"


async def run_top(args: argparse.Namespace) -> int:
    import aiohttp
    from rich.console import Console
    from rich.live import Live

    from meltica.view import LiveView, write_snapshot

    try:
        base = check_url(args.url)
    except TopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console = Console(
        no_color=not args.color,
        color_system="auto" if args.color else None,
        highlight=False,
    )
    interactive = console.is_terminal and not args.once
    if not console.is_terminal:
        console = Console(width=80, no_color=not args.color, highlight=False)
    host = urllib.parse.urlsplit(base).netloc
    # the gateway's uptime needs process_start_time_seconds; without it, how long top has watched
    view = LiveView(f"Meltica top {host}", window_s=args.window, since_label="watched")
    async with aiohttp.ClientSession() as session:
        try:
            families = await scrape(session, base)
        except TopError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        view.update_metrics(families, time.monotonic())
        view.feeds["metrics"] = "ok"
        view.feeds["tail"] = "connecting"
        if args.rest_url:
            view.note = await load_instruments(session, view, args.rest_url, sorted(view.markets))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        tasks = [
            loop.create_task(follow_tail(session, base, view)),
            loop.create_task(poll_metrics(session, base, view, args.interval)),
        ]
        started = time.monotonic()
        limit = args.timeout if args.once else args.duration
        deadline = None if limit is None else started + limit
        code = 0
        try:
            with (
                Live(console=console, auto_refresh=False, transient=False)
                if interactive
                else contextlib.nullcontext() as live
            ):
                while not stop.is_set():
                    now = time.monotonic()
                    view.tick(now)
                    if live is not None:
                        live.update(view.render(now, height=console.height), refresh=True)
                    if args.once and view.scrapes >= 2 and view.priced():
                        break
                    if deadline is not None and now >= deadline:
                        if args.once:
                            print(
                                f"top: not every instrument had a price within {args.timeout:g} s",
                                file=sys.stderr,
                            )
                            code = 1
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        now = time.monotonic()
        view.tick(now)
        if not interactive:
            console.print(view.render(now))
        if args.snapshot:
            write_snapshot(view, now, args.snapshot)
    return code
