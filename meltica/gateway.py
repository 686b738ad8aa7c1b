"""What one gateway adds to the Dispatcher's control plane: shards and the book query.

`GatewayControl` is the handler behind the gateway's Control Bus.  It answers
a request for a symbol outside this gateway's shard (``gateway.shard``) with an
error reply naming the owning shard (``result.owner_shard``, and per symbol in
``result.owners``), serves the ``book`` op, adds the shard, the subscribed
symbols and the health to ``status``, and hands everything else to the
Dispatcher.

`BookQuery` reads the latest fused book snapshot of one instrument from the
SnapshotStore (the Conductor's ``last_fused`` when the store holds none, e.g.
after its TTL) and the instrument's sync state from the Conductor; it serves
``GET /book/<market>/<SYMBOL>?depth=N`` on the gateway's HTTP server and the
``book`` control op with the same JSON (docs/control-plane.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from meltica.adapters.binance.streams import symbol_key
from meltica.conductor import Conductor
from meltica.control import ControlReply, ControlRequest
from meltica.errors import MelticaError
from meltica.shard import Shard

__all__ = ["BookNotFound", "BookQuery", "GatewayControl"]

# the Conductor's instrument states as the book query names them
_STATES = {"syncing": "syncing", "live": "live", "resyncing": "stale"}
# ops that name symbols: refused with the owner for symbols of another shard
_SHARDED_OPS = frozenset(("subscribe", "unsubscribe", "resync", "book"))


class BookNotFound(MelticaError, LookupError):
    """No book for the market/symbol asked (unknown market, another shard, not tracked)."""

    reason = "book_not_found"

    def __init__(self, message: str, owner_shard: str | None = None) -> None:
        super().__init__(message)
        self.owner_shard = owner_shard


class _Store(Protocol):
    def get(self, key: str) -> tuple[int, object] | None: ...


class BookQuery:
    """The latest book of an instrument, as JSON (`read`) and on ``GET /book``."""

    def __init__(
        self,
        conductor: Conductor,
        store: _Store | None,
        markets: Iterable[str],
        shard: Shard,
        *,
        gateway: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._conductor = conductor
        self._store = store
        self.markets = tuple(markets)
        self.shard = shard
        self.gateway = gateway
        self.clock = clock

    def read(self, market: str | None, symbol: str, depth: int | None = None) -> dict[str, Any]:
        """The answer for one book; BookNotFound when there is none to give.

        ``snapshot``: the v1 wire JSON of the latest fused ``book_snapshot``, its
        ``bids``/``asks`` cut to ``depth`` levels (None: every level it holds), or
        None while the book has not synced yet.  ``age_s``: seconds since the
        gateway received the newest update in it.  ``state``: ``live``, ``stale``
        (was live, resyncing: the snapshot is the last good one) or ``syncing``.
        """
        if market not in self.markets:
            raise BookNotFound(
                f"unknown market {market!r} (this gateway has: {', '.join(self.markets)})"
            )
        try:
            sym = symbol_key(symbol)
        except ValueError as exc:
            raise BookNotFound(f"not a symbol: {symbol!r} ({exc})") from None
        if not self.shard.owns(market, sym):
            owner = str(self.shard.owner(market, sym))
            raise BookNotFound(
                f"{market}:{sym} belongs to shard {owner}; this gateway is shard {self.shard}",
                owner,
            )
        inst = self._conductor.instrument(market, sym)
        if inst is None:
            raise BookNotFound(
                f"no book for {market}:{sym} on this gateway (its depth is not subscribed)"
            )
        book = inst.book
        ev: Any = None
        if self._store is not None:
            entry = self._store.get(book.store_key)
            if entry is not None:
                ev = entry[1]
        if ev is None:
            ev = book.last_fused
        snapshot: dict[str, Any] | None = None
        age_s: float | None = None
        update_id: int | None = None
        if ev is not None:
            snapshot = ev.to_wire()
            if depth is not None:
                snapshot["bids"] = snapshot["bids"][:depth]
                snapshot["asks"] = snapshot["asks"][:depth]
            update_id = ev.update_id
            if ev.ts_recv > 0:
                age_s = max(0, self.clock() - ev.ts_recv) / 1e9
        return {
            "market": market,
            "symbol": sym,
            "key": book.store_key,
            "state": _STATES.get(inst.state.value, inst.state.value),
            "update_id": update_id,
            "age_s": age_s,
            "depth": depth,
            "shard": str(self.shard),
            "gateway": self.gateway,
            "snapshot": snapshot,
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/book/{market}/{symbol}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /book/<market>/<SYMBOL>?depth=N``: 200 with `read`'s JSON, 400 for a
        depth that is not an integer >= 1, 404 (with ``owner_shard`` when another
        shard owns the symbol) when there is no such book here."""
        raw = request.query.get("depth")
        depth: int | None = None
        if raw is not None:
            try:
                depth = int(raw)
            except ValueError:
                depth = 0
            if depth < 1:
                return _json(400, {"error": f"depth must be an integer >= 1, got {raw!r}"})
        try:
            body = self.read(request.match_info["market"], request.match_info["symbol"], depth)
        except BookNotFound as exc:
            err: dict[str, Any] = {"error": str(exc), "gateway": self.gateway}
            if exc.owner_shard is not None:
                err["owner_shard"] = exc.owner_shard
                err["shard"] = str(self.shard)
            return _json(404, err)
        return _json(200, body)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class _Handler(Protocol):
    async def handle(self, req: ControlRequest) -> ControlReply: ...

    def subscriptions(self) -> dict[tuple[str, str], frozenset[str]]: ...


class GatewayControl:
    """The Control Bus handler of one gateway (see the module docstring)."""

    def __init__(
        self,
        dispatcher: _Handler,
        books: BookQuery,
        shard: Shard,
        *,
        health: Callable[[], list[str]],
    ) -> None:
        self._dispatcher = dispatcher
        self.books = books
        self.shard = shard
        self._health = health

    async def handle(self, req: ControlRequest) -> ControlReply:
        if req.op in _SHARDED_OPS and req.market in self.books.markets:
            refused = self._foreign(req)
            if refused is not None:
                return refused
        if req.op == "book":
            return self._book(req)
        reply = await self._dispatcher.handle(req)
        if req.op == "status" and reply.ok:
            not_ready = self._health()
            symbols: dict[str, list[str]] = {}
            for market, sym in sorted(self._dispatcher.subscriptions()):
                symbols.setdefault(market, []).append(sym)
            extra = {
                "shard": str(self.shard),
                "symbols": symbols,
                "health": {"ready": not not_ready, "not_ready": not_ready},
            }
            reply = ControlReply(
                reply.request_id,
                True,
                None,
                {**reply.result, **extra},
                reply.propagation_ns,
            )
        return reply

    def _foreign(self, req: ControlRequest) -> ControlReply | None:
        """The error reply for symbols of ``req`` owned by another shard, or None."""
        if self.shard.count == 1:
            return None
        market = req.market
        assert market is not None
        owners: dict[str, str] = {}
        for s in req.symbols:
            try:
                sym = symbol_key(s)
            except ValueError:
                continue  # the Dispatcher names bad symbols
            if not self.shard.owns(market, sym):
                owners[sym] = str(self.shard.owner(market, sym))
        if not owners:
            return None
        shards = sorted(set(owners.values()))
        where = ", ".join(f"{market}:{s} -> shard {o}" for s, o in owners.items())
        result: dict[str, Any] = {
            "shard": str(self.shard),
            "owners": owners,
            # the one shard to resend to, when all the foreign symbols share it
            "owner_shard": shards[0] if len(shards) == 1 else None,
        }
        return ControlReply(
            req.request_id,
            False,
            f"not this gateway's shard ({self.shard}): {where}",
            result,
        )

    def _book(self, req: ControlRequest) -> ControlReply:
        if len(req.symbols) != 1:
            return ControlReply.failure(req, "book needs exactly one symbol")
        try:
            result = self.books.read(req.market, req.symbols[0], req.depth)
        except BookNotFound as exc:
            return ControlReply.failure(req, str(exc))
        return ControlReply(req.request_id, True, None, result)
