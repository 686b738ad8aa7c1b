"""``meltica-engine ctl``: the operator's control-plane tool.

Sends one ``ControlRequest`` to a running gateway, over NATS request/reply
(``--nats URL``, to ``meltica.control.<id>`` with ``--gateway ID``) or over
its HTTP server (``--url``, ``POST /control``), and prints the reply as JSON.
Exit status: 0 when the reply is ok, 1 on an error reply, 2 when no gateway
could be reached or the command line (or the config) is wrong (one ``error:``
line on stderr).

ctl reads the config as ``run`` does (``--config FILE``, ``MELTICA_*``
variables, ``--set KEY=VALUE``): over NATS it connects with the ``nats``
section (credentials, TLS), ``--nats URL`` replacing ``nats.url`` and
``--nats`` without a URL keeping it; over HTTP ``--token`` defaults to
``telemetry.control_token``.  NATS is used only when ``--nats`` is given.

Over NATS without ``--gateway``: ``list`` and ``status`` go to
``meltica.control``, where every gateway answers; the replies gathered within
``--wait`` seconds are printed as a JSON list (each names its gateway in
``result.gateway``).  The other ops change one gateway: ctl asks
``meltica.control`` for ``status`` first and sends the request to the one
gateway that answers; when several answer, it names them and exits 2 (choose
one with ``--gateway``), unless the gateways are shards (``gateway.shard``):
then the request goes to the shard owning its symbols.  A reply refused with
``result.owner_shard`` (the request reached another shard) is resent to the
gateway whose ``status`` names that shard.  ``book`` reads one book
(``--symbol``, ``--depth``).

Over HTTP ``--url`` is repeatable.  With one URL the request goes there.  With
several, ``list`` and ``status`` go to every URL and the replies are printed
as a JSON list; the other ops first ask every URL for ``status`` and go to the
one gateway that answers, or, when the gateways are shards, to the URL whose
``status`` names the shard owning the request's symbols.  A reply refused
with ``result.owner_shard`` is resent to the URL whose ``status`` names that
shard; when no given URL does, ctl stops with one ``error:`` line (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp
import nats.errors
from nats.aio.client import Client

from meltica.adapters.binance import streams
from meltica.broker import BrokerError, connect, control_subject
from meltica.config import Config, NatsConfig, config_to_dict, load_config
from meltica.control import ControlError, ControlReply, ControlRequest, Op
from meltica.errors import ConfigError, MelticaError
from meltica.shard import Shard, shard_of

__all__ = ["DEFAULT_URL", "CtlError", "build_request", "run_ctl"]

DEFAULT_URL = "http://127.0.0.1:9464"

EXIT_OK, EXIT_ERROR_REPLY, EXIT_UNREACHABLE = 0, 1, 2
_NEEDS: dict[str, tuple[str, ...]] = {
    "subscribe": ("market", "symbols", "channels"),
    "unsubscribe": ("market", "symbols", "channels"),
    "resync": ("market", "symbols"),
    "list": (),
    "status": (),
    "book": ("market", "symbols"),
}
# ops that name symbols: a gateway of another shard answers with the owning shard
_SHARDED = ("subscribe", "unsubscribe", "resync", "book")


class CtlError(MelticaError, ConnectionError):
    """ctl could not get a reply (unreachable gateway, bad usage): exit 2."""

    reason = "ctl"


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def build_request(args: argparse.Namespace) -> ControlRequest:
    """The request the command line asks for (CtlError naming the option when wrong)."""
    op: Op = args.op
    symbols, channels = _split(args.symbols), _split(args.channels)
    symbol = getattr(args, "symbol", None)
    if symbol is not None:
        if symbols:
            raise CtlError("give --symbol or --symbols, not both")
        symbols = _split(symbol)
    depth = getattr(args, "depth", None)
    if depth is not None and op != "book":
        raise CtlError("--depth goes with book")
    if op == "book" and len(symbols) > 1:
        raise CtlError("book reads one book: give one --symbol")
    given = {"market": args.market, "symbols": symbols, "channels": channels}
    missing = [f"--{name}" for name in _NEEDS[op] if not given[name]]
    if missing:
        raise CtlError(f"{op} needs {', '.join(missing)}")
    if op == "resync" and channels:
        raise CtlError("resync takes no --channels (it resyncs the books of --symbols)")
    bad = [s for s in symbols if not streams.is_symbol(s)]
    if bad:
        raise CtlError(f"--symbols: {', '.join(bad)}: {streams.SYMBOL_RULE}")
    if channels:
        if args.market is None:
            raise CtlError("--channels needs --market")
        wrong = [c for c in channels if not streams.is_channel(args.market, c)]
        if wrong:
            raise CtlError(
                f"--channels: unknown {args.market} channel(s) {', '.join(wrong)} "
                f"(known: {streams.channel_list(args.market)})"
            )
    if op == "book" and channels:
        raise CtlError("book takes no --channels")
    return ControlRequest(op, market=args.market, symbols=symbols, channels=channels, depth=depth)


def _reply(data: bytes, source: str) -> dict[str, Any]:
    try:
        reply = ControlReply.from_dict(json.loads(data)).to_dict()
    except (ValueError, ControlError):
        raise CtlError(f"{source} did not answer with a control reply") from None
    return reply


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


async def _post(
    session: aiohttp.ClientSession, base: str, req: ControlRequest, token: str | None
) -> dict[str, Any]:
    """``req`` to ``POST <base>/control``; the reply (CtlError when unreachable)."""
    url = base.rstrip("/") + "/control"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.post(url, json=req.to_dict(), headers=headers) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise CtlError(f"cannot reach {url}: {detail}") from None
    try:
        return _reply(body, url)
    except CtlError:
        raise CtlError(f"{url} answered {resp.status}, not a control reply") from None


def _shard_of_reply(reply: dict[str, Any]) -> str:
    return str(reply["result"].get("shard", "?"))


def _described(urls: list[str], found: dict[str, dict[str, Any] | str]) -> str:
    """``URL (gateway ID, shard i/n)`` or ``URL (unreachable)`` for each URL."""
    parts = []
    for url in urls:
        got = found[url]
        if isinstance(got, str):
            parts.append(f"{url} (unreachable)")
        elif not got["ok"]:
            parts.append(f"{url} (status refused: {got['error']})")
        else:
            parts.append(
                f"{url} (gateway {got['result'].get('gateway')}, shard {_shard_of_reply(got)})"
            )
    return ", ".join(parts)


async def _over_http(args: argparse.Namespace, config: Config, req: ControlRequest) -> Any:
    urls = list(dict.fromkeys(args.url or [DEFAULT_URL]))
    token = args.token or config.telemetry.control_token
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if len(urls) == 1:
            reply = await _post(session, urls[0], req, token)
            _resend_to(reply, urls[0], {urls[0]: reply}, urls)  # raises when refused
            return reply
        if req.op in ("list", "status"):
            replies = await asyncio.gather(*(_post(session, u, req, token) for u in urls))
            return sorted(replies, key=lambda r: str(r["result"].get("gateway", "")))
        found = await _http_status(session, urls, token)
        answered = {u: r for u, r in found.items() if not isinstance(r, str) and r["ok"]}
        if not answered:
            raise CtlError(f"no gateway answers status: {_described(urls, found)}")
        targets = list(answered)
        owner = _owner_of(req, list(answered.values()))
        if owner is not None:
            # the gateways are shards: the URL of the one owning the symbols takes it
            targets = [u for u, r in answered.items() if r["result"].get("shard") == owner]
            if not targets:
                raise CtlError(
                    f"no --url is a gateway of shard {owner}, which owns "
                    f"{req.market}:{','.join(req.symbols)} (asked: {_described(urls, found)})"
                )
        if len(targets) > 1:
            raise CtlError(
                f"{len(targets)} gateways answer ({_described(targets, found)}): "
                "give one --url (or the owning shard's)"
            )
        reply = await _post(session, targets[0], req, token)
        owner_url = _resend_to(reply, targets[0], found, urls)
        if owner_url is None:
            return reply
        gw = found[owner_url]
        assert not isinstance(gw, str)
        print(
            f"routed to {owner_url} (gateway {gw['result'].get('gateway')}, "
            f"shard {_shard_of_reply(gw)})",
            file=sys.stderr,
        )
        reply = await _post(session, owner_url, req, token)
        _resend_to(reply, owner_url, {owner_url: reply}, [owner_url])  # once: never a loop
        return reply


async def _http_status(
    session: aiohttp.ClientSession, urls: list[str], token: str | None
) -> dict[str, dict[str, Any] | str]:
    """Each URL's ``status`` reply, or why it could not be had (a string)."""

    async def one(url: str) -> dict[str, Any] | str:
        try:
            return await _post(session, url, ControlRequest("status"), token)
        except CtlError as exc:
            return str(exc)

    return dict(zip(urls, await asyncio.gather(*(one(u) for u in urls)), strict=True))


def _resend_to(
    reply: dict[str, Any], url: str, found: dict[str, dict[str, Any] | str], urls: list[str]
) -> str | None:
    """None when ``reply`` stands; for a reply refused with ``owner_shard``, the
    URL (of ``found``'s status replies) of that shard, CtlError when none is."""
    owner = reply["result"].get("owner_shard")
    if reply["ok"] or not isinstance(owner, str):
        return None
    for u, r in found.items():
        if u != url and not isinstance(r, str) and r["ok"] and r["result"].get("shard") == owner:
            return u
    others = [u for u in urls if u != url]
    asked = f"; asked {_described(others, found)}" if others else ""
    raise CtlError(
        f"{url}: {reply['error']}; no --url given is a gateway of shard {owner}{asked} "
        "(add the owner's URL with another --url)"
    )


async def _request(nc: Client, subject: str, req: ControlRequest, timeout: float) -> dict[str, Any]:
    try:
        msg = await nc.request(subject, json.dumps(req.to_dict()).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise CtlError(f"no gateway answers on {subject}") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise CtlError(f"no reply on {subject} within {timeout} s") from None
    return _reply(msg.data, subject)


async def _gather(nc: Client, req: ControlRequest, wait_s: float) -> list[dict[str, Any]]:
    """Every reply to ``req`` on ``meltica.control`` within ``wait_s``, by gateway."""
    subject = control_subject(None)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[dict[str, Any]] = []
    try:
        await nc.publish(subject, json.dumps(req.to_dict()).encode(), reply=inbox)
        await nc.flush()
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            with contextlib.suppress(CtlError):  # not a gateway: not a reply to count
                replies.append(_reply(msg.data, subject))
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if not replies:
        raise CtlError(f"no gateway answered on {subject} within {wait_s} s")
    return sorted(replies, key=lambda r: str(r["result"].get("gateway", "")))


def nats_config(args: argparse.Namespace, config: Config) -> NatsConfig:
    """The config's ``nats`` section with ``--nats URL`` (when given) as
    ``nats.url``, connecting within ``--timeout`` at most."""
    section = config_to_dict(config)["nats"]
    if args.nats:
        section["url"] = args.nats
    section["connect_timeout_s"] = max(0.1, min(config.nats.connect_timeout_s, args.timeout))
    try:
        return load_config(env={}, nats=section).nats
    except ConfigError as exc:
        raise CtlError(f"--nats: {exc}") from None


def _owner_of(req: ControlRequest, found: list[dict[str, Any]]) -> str | None:
    """The shard ("i/n") that owns every symbol of ``req``, when the gateways in
    ``found`` (status replies) are shards of one count n > 1; else None."""
    counts = {str(r["result"].get("shard", "0/1")).split("/")[-1] for r in found}
    if req.op not in _SHARDED or req.market is None or not req.symbols or len(counts) != 1:
        return None
    n = int(counts.pop()) if all(c.isdigit() for c in counts) else 1
    if n < 2:
        return None
    owners = {str(Shard(shard_of(req.market, s, n), n)) for s in req.symbols}
    if len(owners) > 1:
        raise CtlError(
            f"--symbols span shards {', '.join(sorted(owners))}: send one request per shard"
        )
    return owners.pop()


def _gateways_of(shard: str, found: list[dict[str, Any]]) -> list[str]:
    return [str(r["result"].get("gateway")) for r in found if r["result"].get("shard") == shard]


async def _route(nc: Client, args: argparse.Namespace, req: ControlRequest, reply: Any) -> Any:
    """``reply`` from a gateway of another shard: resend ``req`` to the gateway that
    answers ``status`` with the owning shard (one line on stderr says where)."""
    owner = reply["result"].get("owner_shard") if isinstance(reply, dict) else None
    if reply["ok"] or not isinstance(owner, str):
        return reply
    found = await _gather(nc, ControlRequest("status"), args.wait)
    ids = _gateways_of(owner, found)
    if not ids:
        raise CtlError(f"{reply['error']}; no gateway of shard {owner} answers")
    print(f"routed to gateway {ids[0]} (shard {owner})", file=sys.stderr)
    return await _request(nc, control_subject(ids[0]), req, args.timeout)


async def _over_nats(args: argparse.Namespace, config: Config, req: ControlRequest) -> Any:
    nc = await connect(nats_config(args, config), name="meltica-ctl")
    try:
        if args.gateway is not None:
            reply = await _request(nc, control_subject(args.gateway), req, args.timeout)
            return await _route(nc, args, req, reply)
        if req.op in ("list", "status"):
            return await _gather(nc, req, args.wait)
        found = await _gather(nc, ControlRequest("status"), args.wait)
        ids = [str(r["result"].get("gateway")) for r in found]
        owner = _owner_of(req, found)
        if owner is not None:
            # the gateways are shards: the one owning the symbols takes the request
            ids = _gateways_of(owner, found) or ids
        if len(ids) > 1:
            raise CtlError(
                f"{len(ids)} gateways answer ({', '.join(ids)}): choose one with --gateway"
            )
        reply = await _request(nc, control_subject(ids[0]), req, args.timeout)
        return await _route(nc, args, req, reply)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def run_ctl(args: argparse.Namespace) -> int:
    try:
        if args.gateway is not None and args.nats is None:
            raise CtlError("--gateway goes with --nats (over --url the gateway is the URL's)")
        req = build_request(args)
        config = load_config(args.config, overrides=args.set)
        if args.nats is not None:
            out = await _over_nats(args, config, req)
        else:
            out = await _over_http(args, config, req)
    except (CtlError, BrokerError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    _print(out)
    replies = out if isinstance(out, list) else [out]
    return EXIT_OK if all(r["ok"] for r in replies) else EXIT_ERROR_REPLY
