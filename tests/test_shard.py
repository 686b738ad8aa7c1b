"""The shard hash (fixed vectors: it must never change), ``gateway.shard`` validation,
the out-of-shard refusal of `GatewayControl`, and the ``book`` request's fields."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import uvloop

from meltica.config import load_config
from meltica.control import ControlError, ControlReply, ControlRequest
from meltica.errors import ConfigError
from meltica.gateway import BookQuery, GatewayControl
from meltica.shard import Shard, parse_shard, shard_of

# (market, symbol, first 8 bytes of sha256("market:SYMBOL") as a big-endian integer,
# shard of 2, shard of 3): the worked examples of docs/deployment.md
VECTORS = [
    ("usdm", "BTCUSDT", 0xE054C1BBD688CBA0, 0, 0),
    ("usdm", "ETHUSDT", 0xFCA375E26C6906BF, 1, 1),
    ("spot", "BTCUSDT", 0x4497565DC97B5215, 1, 0),
]


@pytest.mark.parametrize(("market", "symbol", "h", "of2", "of3"), VECTORS)
def test_fixed_vectors(market: str, symbol: str, h: int, of2: int, of3: int) -> None:
    digest = hashlib.sha256(f"{market}:{symbol}".encode()).digest()
    assert int.from_bytes(digest[:8], "big") == h
    assert (h % 2, h % 3) == (of2, of3)
    assert shard_of(market, symbol, 2) == of2
    assert shard_of(market, symbol, 3) == of3
    assert shard_of(market, symbol.lower(), 3) == of3  # the symbol is hashed upper case
    assert shard_of(market, symbol, 1) == 0


def test_every_symbol_has_exactly_one_owner_and_shards_are_balanced() -> None:
    symbols = [f"SYM{i}USDT" for i in range(3000)]
    for n in (2, 3, 5):
        shards = [Shard(i, n) for i in range(n)]
        counts = [0] * n
        for s in symbols:
            owners = [sh for sh in shards if sh.owns("usdm", s)]
            assert len(owners) == 1
            assert owners[0] == shards[0].owner("usdm", s)
            counts[owners[0].index] += 1
        # a uniform hash: every shard within 20% of an even split
        assert all(abs(c - len(symbols) / n) < 0.2 * len(symbols) / n for c in counts), counts


def test_parse_shard() -> None:
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard(" 2/3 ") == Shard(2, 3)
    assert str(parse_shard("1/2")) == "1/2"
    for bad in ("", "1", "1/", "-1/2", "2/2", "3/2", "0/0", "a/b", "1/2/3", "1.0/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.parametrize("bad", ["2/2", "1/0", "one/two", "5"])
def test_bad_shard_fails_at_load_naming_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^gateway\.shard: "):
        load_config(None, env={}, overrides=[f"gateway.shard={bad}"])
    assert load_config(None, env={}, overrides=["gateway.shard=1/2"]).gateway.shard == "1/2"
    assert load_config(None, env={}).gateway.shard == "0/1"


def test_book_request_depth_round_trip_and_validation() -> None:
    req = ControlRequest("book", market="usdm", symbols=("BTCUSDT",), depth=5)
    assert ControlRequest.from_dict(req.to_dict()) == req
    assert "depth" not in ControlRequest("list").to_dict()
    for bad in (0, -1, "5", True, 2.5):
        with pytest.raises(ControlError, match="depth"):
            ControlRequest.from_dict({"op": "book", "depth": bad})


class _Dispatcher:
    """Records what reaches the Dispatcher behind GatewayControl."""

    def __init__(self) -> None:
        self.seen: list[ControlRequest] = []

    async def handle(self, req: ControlRequest) -> ControlReply:
        self.seen.append(req)
        return ControlReply(req.request_id, True, None, {"table": {}})

    def subscriptions(self) -> dict[tuple[str, str], frozenset[str]]:
        return {("usdm", "BTCUSDT"): frozenset({"trade"})}


class _Conductor:
    def instrument(self, market: str, symbol: str) -> Any:
        return None


def _control(shard: Shard) -> tuple[GatewayControl, _Dispatcher]:
    d = _Dispatcher()
    books = BookQuery(_Conductor(), None, ("usdm",), shard, gateway="g")  # type: ignore[arg-type]
    return GatewayControl(d, books, shard, health=lambda: ["usdm:BTCUSDT: syncing"]), d


def test_out_of_shard_requests_are_answered_with_the_owner() -> None:
    async def main() -> None:
        # BTCUSDT is usdm shard 0/2, ETHUSDT 1/2 (VECTORS)
        ctl, d = _control(Shard(0, 2))
        reply = await ctl.handle(
            ControlRequest("subscribe", market="usdm", symbols=("ethusdt",), channels=("trade",))
        )
        assert not reply.ok and d.seen == []
        assert reply.result == {"shard": "0/2", "owners": {"ETHUSDT": "1/2"}, "owner_shard": "1/2"}
        assert reply.error is not None and "usdm:ETHUSDT -> shard 1/2" in reply.error
        for op in ("unsubscribe", "resync", "book"):
            r = await ctl.handle(ControlRequest(op, market="usdm", symbols=("ETHUSDT",)))
            assert not r.ok and r.result["owner_shard"] == "1/2", (op, r)
        ok = await ctl.handle(
            ControlRequest("subscribe", market="usdm", symbols=("BTCUSDT",), channels=("trade",))
        )
        assert ok.ok and len(d.seen) == 1
        # with three shards the two symbols can have different owners: each is named
        ctl3, _ = _control(Shard(2, 3))
        r = await ctl3.handle(
            ControlRequest("resync", market="usdm", symbols=("BTCUSDT", "ETHUSDT"))
        )
        assert r.result["owners"] == {"BTCUSDT": "0/3", "ETHUSDT": "1/3"}
        assert r.result["owner_shard"] is None
        # status: the shard, the subscribed symbols and the health
        st = await ctl.handle(ControlRequest("status"))
        assert st.ok and st.result["shard"] == "0/2"
        assert st.result["symbols"] == {"usdm": ["BTCUSDT"]}
        assert st.result["health"] == {"ready": False, "not_ready": ["usdm:BTCUSDT: syncing"]}
        # book: one symbol, a known market, a tracked book
        r = await ctl.handle(ControlRequest("book", market="usdm", symbols=("BTCUSDT",)))
        assert not r.ok and r.error is not None and "no book for usdm:BTCUSDT" in r.error
        r = await ctl.handle(ControlRequest("book", market="spot", symbols=("BTCUSDT",)))
        assert not r.ok and r.error is not None and "unknown market 'spot'" in r.error
        r = await ctl.handle(ControlRequest("book", market="usdm", symbols=()))
        assert not r.ok and r.error == "book needs exactly one symbol"

    uvloop.run(main())
