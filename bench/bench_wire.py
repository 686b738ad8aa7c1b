"""Events -> v1 wire JSON and back: the compiled codec next to msgspec and the old stdlib path.

Encoding: one operation = one canonical event written as its wire JSON line.
- ``meltica encode_lines``: the compiled batch encoder, one call per batch
  (``meltica.wire.encode_lines``, what ``/tail``, ``replay -o`` and
  ``normalize`` call).
- ``meltica encode_each``: the compiled per-message form (one buffer and the
  end offset of each event, for a broker publisher).
- ``msgspec encode_lines``: ``msgspec.json.Encoder().encode_lines`` of
  equivalent ``msgspec.Struct`` objects (same fields and order, decimals as
  str, built untimed), one call per batch; ``msgspec encode (per event)``: a
  reused Encoder's ``encode`` once per Struct.  The Structs give the same bytes
  (checked before timing).
- ``stdlib (old encode_lines)``: the pre-compiled implementation, copied here:
  ``json.JSONEncoder(...).encode(ev.to_wire())`` per event.

Decoding: one operation = one wire line turned back into a typed object.
- ``meltica decode_lines``: ``meltica.wire.decode_lines`` on the batch (builds
  the canonical events: decimals parsed to scaled int64, every field checked).
- ``msgspec decode_lines``: a ``msgspec.json.Decoder`` of the kind's Struct (a
  tagged union for the mix) on the same bytes: typed, decimals stay str.

Events come from the real captures in ../shared/captures (normalized with
``meltica.normalize.iter_events``; ``MELTICA_CAPTURES`` overrides the path), or
from the synthetic market (meltica/replay/synthetic.py) when they are absent.

Run:  python bench/bench_wire.py [--rounds 15] [--per-kind 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from meltica import Event, FrameParser
from meltica._core import wire as cwire
from meltica.normalize import iter_events
from meltica.wire import decode_lines, encode_each, encode_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure

CAPTURES = Path(
    os.environ.get(
        "MELTICA_CAPTURES",
        Path(__file__).resolve().parents[2] / "shared" / "captures" / "binance",
    )
)
# (file under CAPTURES, market) read in order until each kind has enough events
SOURCES = [
    ("hftbacktest/examples/spot/btcusdt_20240808.gz", "spot"),
    ("hftbacktest/examples/usdm/btcusdt_20240808.gz", "usdm"),
    ("cryptofeed/sample_data/BINANCE.ws.1.0", "spot"),
    ("cryptofeed/sample_data/BINANCE_FUTURES.ws.1.0", "usdm"),
]


# ---------------------------------------------------------------- the old stdlib path

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def old_encode_lines(events: list[Event]) -> bytes:
    """meltica.wire.encode_lines before it was compiled (the 11 µs/event path)."""
    return b"".join(_dumps(ev.to_wire()).encode() + b"\n" for ev in events)


# ---------------------------------------------------------------- msgspec equivalents

Dec = str | None
Int = int | None
COMMON: list[tuple[str, Any]] = [
    ("v", int),
    ("venue", str),
    ("market", str),
    ("symbol", str),
    ("kind", str),
    ("key", str),
    ("seq", Int),
    ("ts_event", Int),
    ("ts_transaction", Int),
    ("ts_recv", int),
    ("trace", str | None),
]


def struct_for(kind: str, wire: dict[str, Any]) -> type[msgspec.Struct]:
    """A Struct with the wire's fields in the wire's order (types from a sample)."""
    fields = []
    for name, value in wire.items():
        if name in dict(COMMON):
            fields.append((name, dict(COMMON)[name]))
        elif name in ("bids", "asks"):
            fields.append((name, list[tuple[str, str]]))
        elif name == "values":
            fields.append((name, dict[str, str]))
        elif isinstance(value, bool):
            fields.append((name, bool))
        elif isinstance(value, int) or (value is None and ("id" in name or "time" in name)):
            fields.append((name, Int))
        else:
            fields.append((name, Dec))
    return msgspec.defstruct(kind.title().replace("_", ""), fields)


def tagged(kind: str, plain: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """The same Struct for decoding a mix: "kind" becomes the union's tag."""
    fields = [(f, t) for f, t in plain.__annotations__.items() if f != "kind"]
    return msgspec.defstruct(
        "T" + plain.__name__, fields, tag_field="kind", tag=kind, forbid_unknown_fields=False
    )


# ---------------------------------------------------------------- events


def load_events(per_kind: int) -> tuple[dict[str, list[Event]], str]:
    groups: dict[str, list[Event]] = defaultdict(list)
    if CAPTURES.is_dir():
        for rel, market in SOURCES:
            path = CAPTURES / rel
            if not path.is_file():
                continue
            for ev in iter_events(path, market=market):
                if len(groups[ev.kind]) < per_kind:
                    groups[ev.kind].append(ev)
        origin = f"real captures ({CAPTURES})"
    else:
        from meltica.replay.synthetic import SyntheticMarket

        parsers = {m: FrameParser(market=m) for m in ("spot", "usdm")}
        for fr in SyntheticMarket(symbols_per_market=4, seed=1).frames():
            for ev in parsers[fr.market].parse(fr.payload, fr.ts_ns):
                if isinstance(ev, Event) and len(groups[ev.kind]) < per_kind:
                    groups[ev.kind].append(ev)
            if len(groups) >= 5 and all(len(v) >= per_kind for v in groups.values()):
                break
        origin = "synthetic market (captures not found)"
    kept = {k: v for k, v in sorted(groups.items()) if len(v) >= 100}
    # the mix: kinds interleaved in their capture proportions
    mix = [ev for evs in kept.values() for ev in evs]
    mix.sort(key=lambda ev: ev.ts_recv)
    kept["mix"] = mix
    return kept, origin


# ---------------------------------------------------------------- candidates


def encoders(events: list[Event], reps: int) -> dict[str, Callable[[], object]]:
    wires = [ev.to_wire() for ev in events]
    types: dict[str, type[msgspec.Struct]] = {}
    for w in wires:
        types.setdefault(w["kind"], struct_for(w["kind"], w))
    structs = [msgspec.convert(w, types[w["kind"]]) for w in wires]
    enc = msgspec.json.Encoder()
    want = encode_lines(events)
    assert enc.encode_lines(structs) == want, "msgspec Structs do not give the same bytes"
    assert old_encode_lines(events) == want
    data, ends = encode_each(events)
    assert data == want.replace(b"\n", b"") and len(ends) == len(events)

    def meltica_lines() -> None:
        for _ in range(reps):
            encode_lines(events)

    def meltica_each() -> None:
        for _ in range(reps):
            encode_each(events)

    def msgspec_lines() -> None:
        f = enc.encode_lines
        for _ in range(reps):
            f(structs)

    def msgspec_each() -> None:
        f = enc.encode
        for _ in range(reps):
            for s in structs:
                f(s)

    def stdlib() -> None:
        for _ in range(max(1, reps // 20)):
            old_encode_lines(events)

    return {
        "meltica encode_lines": meltica_lines,
        "meltica encode_each": meltica_each,
        "msgspec encode_lines": msgspec_lines,
        "msgspec encode (per event)": msgspec_each,
        "stdlib (old encode_lines)": stdlib,
    }


def decoders(events: list[Event], reps: int) -> dict[str, Callable[[], object]]:
    data = encode_lines(events)
    kinds = sorted({ev.kind for ev in events})
    plain = {k: struct_for(k, next(ev for ev in events if ev.kind == k).to_wire()) for k in kinds}
    if len(kinds) == 1:
        dec = msgspec.json.Decoder(plain[kinds[0]])
    else:
        union = tuple(tagged(k, plain[k]) for k in kinds)
        dec = msgspec.json.Decoder(union[0] if len(union) == 1 else eval_union(union))
    assert len(dec.decode_lines(data)) == len(events)
    before = cwire.reference_decodes()
    assert [e.to_wire() for e in decode_lines(data)] == [e.to_wire() for e in events]
    assert cwire.reference_decodes() == before, "canonical lines took the reference path"

    def meltica() -> None:
        for _ in range(reps):
            decode_lines(data)

    def ms() -> None:
        f = dec.decode_lines
        for _ in range(reps):
            f(data)

    return {"meltica decode_lines": meltica, "msgspec decode_lines (typed)": ms}


def eval_union(types: tuple[type, ...]) -> Any:
    from typing import Union

    return Union[types]  # noqa: UP007  (a runtime tuple of types)


# ---------------------------------------------------------------- main


def timed(
    cands: dict[str, Callable[[], object]], ops: dict[str, int], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Medians (ns/event) and the spread of each: (max - min) / median over rounds."""
    runs = [measure(cands, 1, rounds=1, warmup=0 if i else 1) for i in range(rounds)]
    med, spread = {}, {}
    for name in cands:
        xs = [r[name] / ops[name] for r in runs]
        med[name] = statistics.median(xs)
        spread[name] = (max(xs) - min(xs)) / med[name]
    return med, spread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-kind", type=int, default=2000)
    ap.add_argument("--json", help="write results to this JSON file")
    args = ap.parse_args()
    groups, origin = load_events(args.per_kind)
    print(f"# wire JSON, ns/event (median of {args.rounds} interleaved rounds)")
    print(f"python {platform.python_version()}, msgspec {msgspec.__version__}, events: {origin}\n")
    print(
        "| events | n | avg bytes | meltica encode_lines | meltica encode_each "
        "| msgspec encode_lines | msgspec encode/event | old stdlib | msgspec ÷ meltica "
        "| stdlib ÷ meltica | meltica decode | msgspec typed decode | decode meltica ÷ msgspec |"
    )
    print("|---" + "|---:" * 12 + "|")
    results: dict[str, Any] = {}
    worst_spread = 0.0
    for name, events in groups.items():
        reps = max(1, 100_000 // len(events))
        enc = encoders(events, reps)
        ops = {k: len(events) * reps for k in enc}
        ops["stdlib (old encode_lines)"] = len(events) * max(1, reps // 20)
        dec = decoders(events, reps)
        ops.update({k: len(events) * reps for k in dec})
        med, spread = timed({**enc, **dec}, ops, args.rounds)
        worst_spread = max(worst_spread, *spread.values())
        m = med["meltica encode_lines"]
        avg = len(encode_lines(events)) / len(events)
        row = {
            **med,
            "spread": spread,
            "n": len(events),
            "avg_bytes": avg,
            "msgspec_lines_over_meltica": med["msgspec encode_lines"] / m,
            "stdlib_over_meltica": med["stdlib (old encode_lines)"] / m,
            "decode_meltica_over_msgspec": med["meltica decode_lines"]
            / med["msgspec decode_lines (typed)"],
        }
        results[name] = row
        print(
            f"| {name} | {len(events)} | {avg:.0f} | {m:,.0f} | {med['meltica encode_each']:,.0f} "
            f"| {med['msgspec encode_lines']:,.0f} | {med['msgspec encode (per event)']:,.0f} "
            f"| {med['stdlib (old encode_lines)']:,.0f} "
            f"| {row['msgspec_lines_over_meltica']:.2f}× | {row['stdlib_over_meltica']:.1f}× "
            f"| {med['meltica decode_lines']:,.0f} | {med['msgspec decode_lines (typed)']:,.0f} "
            f"| {row['decode_meltica_over_msgspec']:.2f}× |"
        )
    print(f"\nnoise: largest (max - min) / median of any candidate over rounds: {worst_spread:.0%}")
    mix = results["mix"]
    print(
        f"budgets (mix): encoder ≥ msgspec encode_lines: "
        f"{'met' if mix['msgspec_lines_over_meltica'] >= 1 else 'MISSED'}; "
        f"≥ 20× the old stdlib path: {'met' if mix['stdlib_over_meltica'] >= 20 else 'MISSED'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
