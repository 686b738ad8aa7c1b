"""The micro-benchmark pairs: each one of Meltica's hot operations next to its baseline.

A pair is two zero-argument callables that do the same number of operations on the same
inputs: ``ours`` (Meltica) and ``baseline`` (msgspec, ``list.extend``, a dict, the stdlib).
``test_micro.py`` times both under pytest-benchmark; ``compare.py`` turns the two medians
into a ratio, ours ÷ baseline (lower is better).

Inputs come from the builders of the scripts next door (``bench_parse.py``, ``bench_book.py``,
``bench_bus.py``, ``bench_wire.py``): the real captures when they are there (source
``captures``), and Meltica's synthetic market (source ``synthetic``), so every pair has a
form that runs anywhere.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_book  # noqa: E402
import bench_bus  # noqa: E402
import bench_parse  # noqa: E402
import bench_wire  # noqa: E402

from meltica._core.book import BookSet, OrderBook  # noqa: E402
from meltica._core.parser import FrameParser  # noqa: E402
from meltica.replay.source import combined_frame  # noqa: E402
from meltica.replay.synthetic import SyntheticMarket  # noqa: E402

Fn = Callable[[], object]
PARSE_KINDS = ("bookTicker", "trade", "depth")
SYNTH_FRAMES = 2000  # frames (events) per kind from the synthetic market
BUS_EVENTS = 8192
BUS_BATCH = 64
CAS_OPS = 10_000


@dataclass(frozen=True)
class Pair:
    """One comparison: ``name`` (the benchmark group) and where its inputs come from."""

    op: str  # parse, book, bus, cas, wire-encode, wire-decode
    detail: str  # kind, consumers, or baseline name
    source: str  # "synthetic" or "captures"

    @property
    def name(self) -> str:
        return f"{self.op}[{self.detail}]-{self.source}"


PAIRS: list[Pair] = [
    *(Pair("parse", k, s) for s in ("synthetic", "captures") for k in PARSE_KINDS),
    Pair("book-apply", "depth", "synthetic"),
    Pair("book-apply", "depth", "captures"),
    Pair("bus-handoff", "1c", "synthetic"),
    Pair("bus-handoff", "4c", "synthetic"),
    Pair("snapshot-cas", "dict", "synthetic"),
    *(
        Pair(op, d, s)
        for s in ("synthetic", "captures")
        for op, d in (
            ("wire-encode", "msgspec"),
            ("wire-encode", "json"),
            ("wire-decode", "msgspec"),
        )
    ),
]


def captures_present() -> bool:
    return bench_parse.CAPTURES.is_dir()


# ---------------------------------------------------------------- inputs


def synthetic_market(**kw: Any) -> SyntheticMarket:
    return SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=1, **kw)


def synthetic_parse_frames() -> dict[str, list[bytes]]:
    """Combined-stream spot frames per kind, as the WebSocket carries them."""
    out: dict[str, list[bytes]] = {k: [] for k in PARSE_KINDS}
    # a busier depth stream than the default, so diff frames carry a dozen levels or so
    market = synthetic_market(rates={"depth": 150.0})
    for fr in market.frames():
        kind = fr.stream.split("@")[1]
        if kind in out and len(out[kind]) < SYNTH_FRAMES:
            out[kind].append(combined_frame(fr))
        if all(len(v) >= SYNTH_FRAMES for v in out.values()):
            break
    return out


def capture_parse_frames() -> dict[str, list[bytes]]:
    frames, _ = bench_parse.load_frames()
    return {
        "bookTicker": frames["bookTicker"],
        "trade": frames["trade"],
        "depth": frames["depth10"],
    }


def synthetic_depth() -> tuple[list[bytes], bytes]:
    """A REST snapshot body of spot BTCUSDT and the diff frames that follow it."""
    market = synthetic_market(rates={"depth": 150.0}, depth_levels=1000)
    frames: list[bytes] = []
    body = None
    for fr in market.frames():
        if not fr.stream.startswith("btcusdt@depth"):
            continue
        if body is None:
            body = market.depth_snapshot("spot", "BTCUSDT", 1000)
            continue
        frames.append(combined_frame(fr))
        if len(frames) > SYNTH_FRAMES:
            break
    assert body is not None
    return frames, body


@contextmanager
def wire_source(source: str):
    """bench_wire's events from the captures, or (path pointed nowhere) its synthetic market."""
    saved = bench_wire.CAPTURES
    if source == "synthetic":
        bench_wire.CAPTURES = Path("/nonexistent-captures")
    try:
        yield
    finally:
        bench_wire.CAPTURES = saved


# ---------------------------------------------------------------- the pairs


def parse_pair(kind: str, frames: list[bytes]) -> tuple[Fn, Fn]:
    """FrameParser.parse_batch (the live path) next to msgspec typed decode of the frames."""
    base_kind = "depth10" if kind == "depth" else kind
    c = bench_parse.candidates(base_kind, frames, "spot", 1)
    return c["meltica (C loop)"], c["msgspec typed decode (baseline)"]


def book_pair(frames: list[bytes], body: bytes) -> tuple[Fn, Fn]:
    """BookSet.apply_batch of parsed diffs next to a dict-per-side apply of the same levels.

    Both start every call from the snapshot (a fresh OrderBook; a copy of two dicts).
    """
    parser = FrameParser(market="spot")
    snap = parser.parse_rest_depth(body, "BTCUSDT")
    bridge = parser.parse(frames[0])[0]
    events: list[Any] = []
    parser.parse_batch(frames[1:], 1, events)

    def fresh() -> BookSet:
        books = BookSet(0)
        book = OrderBook("spot", "BTCUSDT", max_levels=10_000)
        books.add(book)
        book.load_snapshot(snap)
        st = book.apply(bridge)
        assert st in (0, 1), st
        book.live = True
        return books

    books = fresh()
    assert books.apply_batch(events, 0, []) == len(events), books.last_status
    snap_js = json.loads(body)
    ref = ({p: q for p, q in snap_js["bids"]}, {p: q for p, q in snap_js["asks"]})
    updates = []
    for f in frames[1:]:
        d = json.loads(f)["data"]
        updates.append(([(p, q) for p, q in d["b"]], [(p, q) for p, q in d["a"]]))
    zeros = {q for b, a in updates for _, q in itertools.chain(b, a) if float(q) == 0.0}
    out: list[Any] = []

    def ours() -> None:
        fresh().apply_batch(events, 0, out)

    def dict_apply() -> None:
        bids, asks = dict(ref[0]), dict(ref[1])
        for b, a in updates:
            for side, levels in ((bids, b), (asks, a)):
                for p, q in levels:
                    if q in zeros:
                        side.pop(p, None)
                    else:
                        side[p] = q

    return ours, dict_apply


def bus_pair(consumers: int) -> tuple[Fn, Fn]:
    c = bench_bus.bus_candidates(bench_bus.trades(BUS_EVENTS), BUS_BATCH, consumers)
    return c[f"ring {consumers}c"], c[f"list.extend {consumers}c"]


def cas_pair() -> tuple[Fn, Fn]:
    c = bench_bus.cas_candidates(CAS_OPS)
    return c["store CAS"], c["dict CAS"]


def wire_pair(op: str, baseline: str, events: list[Any]) -> tuple[Fn, Fn]:
    if op == "wire-decode":
        c = bench_wire.decoders(events, 1)
        return c["meltica decode_lines"], c["msgspec decode_lines (typed)"]
    c = bench_wire.encoders(events, 1)
    base = "msgspec encode_lines" if baseline == "msgspec" else "stdlib (old encode_lines)"
    return c["meltica encode_lines"], c[base]


class Inputs:
    """Builds each pair once per session (inputs are shared between pairs of a source)."""

    def __init__(self) -> None:
        self._cache: dict[Any, Any] = {}

    def _once(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def pair(self, p: Pair) -> tuple[Fn, Fn]:
        return self._once(p, lambda: self._build(p))

    def _build(self, p: Pair) -> tuple[Fn, Fn]:
        cap = p.source == "captures"
        if p.op == "parse":
            frames = self._once(
                ("parse", p.source), capture_parse_frames if cap else synthetic_parse_frames
            )
            return parse_pair(p.detail, frames[p.detail])
        if p.op == "book-apply":
            if cap:
                frames, body = self._once("book-cap", bench_book.load)
            else:
                frames, body = self._once("book-syn", synthetic_depth)
            return book_pair(frames, body)
        if p.op == "bus-handoff":
            return bus_pair(int(p.detail.rstrip("c")))
        if p.op == "snapshot-cas":
            return cas_pair()
        if p.op.startswith("wire-"):

            def load() -> list[Any]:
                with wire_source(p.source):
                    groups, _ = bench_wire.load_events(SYNTH_FRAMES)
                return groups["mix"]

            return wire_pair(p.op, p.detail, self._once(("wire", p.source), load))
        raise ValueError(p)
