"""Frame -> canonical event: Meltica's parser next to msgspec, same frames, same run.

One operation = one Binance combined-stream frame turned into a Meltica event
(symbol interned, prices/quantities as exact scaled int64, depth levels in the
event's C buffer).  The baseline is msgspec decoding the same frame into typed
Structs with string prices (decode only, no conversion), the fastest Python
decoder we measured.  Frames come from the real captures in
../shared/captures (hftbacktest spot/usdm sessions for trade, bookTicker and
depth; cryptofeed sessions for aggTrade and kline).  Depth frames with exactly
10 or 50 levels per side are real frames with at least that many levels,
truncated to that many.

The parser's simdjson-only path (``FrameParser(fast_path=False)``: no
frame_scan.hpp fast path) is timed beside it, on the same frames.

Run:  python bench/bench_parse.py [--rounds 7] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
from pathlib import Path

import msgspec

from meltica import FrameParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure

CAPTURES = Path(
    os.environ.get(
        "MELTICA_CAPTURES",
        Path(__file__).resolve().parents[2] / "shared" / "captures" / "binance",
    )
)
PER_KIND = 2000  # distinct frames per kind (fewer when the captures hold fewer)


# ---------------------------------------------------------------- msgspec baseline


class Trade(msgspec.Struct):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class AggTrade(msgspec.Struct):
    e: str
    E: int
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool


class BookTicker(msgspec.Struct):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str


class Depth(msgspec.Struct):
    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]


class KData(msgspec.Struct):
    t: int
    T: int
    s: str
    i: str
    f: int
    L: int
    o: str
    c: str
    h: str
    l: str  # noqa: E741 - Binance's field name
    v: str
    n: int
    x: bool
    q: str
    V: str
    Q: str


class Kline(msgspec.Struct):
    e: str
    E: int
    s: str
    k: KData


def envelope(payload: type) -> type:
    return msgspec.defstruct(f"Env{payload.__name__}", [("stream", str), ("data", payload)])


BASELINE_TYPES = {
    "trade": Trade,
    "aggTrade": AggTrade,
    "bookTicker": BookTicker,
    "depth10": Depth,
    "depth50": Depth,
    "kline": Kline,
}


# ---------------------------------------------------------------- frames


def _hft_lines(path: Path):
    with gzip.open(path, "rt") as fh:
        for line in fh:
            _, _, js = line.partition(" ")
            if js.startswith('{"stream"'):
                yield js.rstrip("\n")


def _cryptofeed_lines(path: Path):
    with open(path) as fh:
        next(fh)
        for line in fh:
            _, _, js = line.partition(": ")
            yield js.rstrip("\n")


def _truncated_depth(js: str, levels: int) -> bytes | None:
    obj = json.loads(js)
    data = obj["data"]
    if len(data["b"]) < levels or len(data["a"]) < levels:
        return None
    data["b"], data["a"] = data["b"][:levels], data["a"][:levels]
    return json.dumps(obj, separators=(",", ":")).encode()


def load_frames() -> tuple[dict[str, list[bytes]], dict[str, str]]:
    """Frames per kind, and the market each kind's frames come from."""
    if not CAPTURES.is_dir():
        raise SystemExit(f"captures not found at {CAPTURES} (set MELTICA_CAPTURES)")
    hft = CAPTURES / "hftbacktest" / "examples"
    frames: dict[str, list[bytes]] = {k: [] for k in BASELINE_TYPES}
    market = {
        "trade": "spot",
        "bookTicker": "spot",
        "depth10": "spot",
        "depth50": "usdm",
        "aggTrade": "usdm",
        "kline": "usdm",
    }
    for js in _hft_lines(hft / "spot" / "btcusdt_20240808.gz"):
        if "@trade" in js[:40] and len(frames["trade"]) < PER_KIND:
            frames["trade"].append(js.encode())
        elif "@bookTicker" in js[:40] and len(frames["bookTicker"]) < PER_KIND:
            frames["bookTicker"].append(js.encode())
        elif "@depth" in js[:40] and len(frames["depth10"]) < PER_KIND:
            f = _truncated_depth(js, 10)
            if f:
                frames["depth10"].append(f)
    for name in ("btcusdt_20240808.gz", "btcusdt_20230405.dat.gz"):
        for js in _hft_lines(hft / "usdm" / name):
            if "@depth" in js[:40] and len(frames["depth50"]) < PER_KIND:
                f = _truncated_depth(js, 50)
                if f:
                    frames["depth50"].append(f)
    # aggTrade and kline only exist in the cryptofeed sessions; they are few
    for name in ("BINANCE_FUTURES.ws.1.0", "BINANCE_DELIVERY.ws.1.0", "BINANCE.ws.1.0"):
        for js in _cryptofeed_lines(CAPTURES / "cryptofeed" / "sample_data" / name):
            if "@aggTrade" in js[:50]:
                frames["aggTrade"].append(js.encode())
            elif "@kline" in js[:50]:
                frames["kline"].append(js.encode())
    # the baseline structs are spot/usdm shapes; keep the frames they decode
    for kind, typ in BASELINE_TYPES.items():
        dec = msgspec.json.Decoder(envelope(typ))
        ok = []
        for f in frames[kind]:
            try:
                dec.decode(f)
                ok.append(f)
            except msgspec.ValidationError:
                pass
        frames[kind] = ok
    return frames, market


# ---------------------------------------------------------------- candidates


def candidates(kind: str, frames: list[bytes], market: str, reps: int):
    parser = FrameParser(market=market)
    # the same parser without its fast path: simdjson On-Demand for every frame
    simd_only = FrameParser(market=market, fast_path=False)
    out: list = []
    dec = msgspec.json.Decoder(envelope(BASELINE_TYPES[kind])).decode
    parse_into = parser.parse_into
    parse_batch = parser.parse_batch

    def meltica_c_loop():
        # the live path: the WebSocket listener calls the parser from C
        for _ in range(reps):
            parse_batch(frames, 1, out)
            out.clear()

    def meltica_simdjson_only():
        for _ in range(reps):
            simd_only.parse_batch(frames, 1, out)
            out.clear()

    def meltica_py_call():
        # one Python-level call per frame (adds interpreter call overhead)
        for _ in range(reps):
            for f in frames:
                parse_into(f, 1, out)
            out.clear()

    def msgspec_typed():
        for _ in range(reps):
            for f in frames:
                dec(f)

    # sanity: every frame gives exactly one event, the same on both paths, and the
    # fast path takes the frames
    parser.parse_batch(frames, 1, out)
    assert len(out) == len(frames), (kind, len(out), len(frames))
    wire = [ev.to_wire() for ev in out]
    out.clear()
    simd_only.parse_batch(frames, 1, out)
    assert [ev.to_wire() for ev in out] == wire, kind
    out.clear()
    assert parser.fast_frames == len(frames), (kind, parser.fast_frames, len(frames))
    return {
        "meltica (C loop)": meltica_c_loop,
        "meltica simdjson only (C loop)": meltica_simdjson_only,
        "meltica (Python call per frame)": meltica_py_call,
        "msgspec typed decode (baseline)": msgspec_typed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write results to this JSON file")
    args = ap.parse_args()
    frames, market = load_frames()
    impl = FrameParser().implementation
    print(f"# frame -> event, ns/frame (median of {args.rounds} interleaved rounds)")
    print(f"python {platform.python_version()}, simdjson kernel {impl}, {os.cpu_count()} cpus\n")
    print(
        "| kind | frames | avg bytes | meltica C loop | simdjson-only path | meltica Py call "
        "| msgspec typed | msgspec ÷ meltica (C loop) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for kind, fs in frames.items():
        if not fs:
            print(f"| {kind} | 0 | - | - | - | - | - | - |")
            continue
        reps = max(1, 200_000 // len(fs)) if "depth50" not in kind else max(1, 40_000 // len(fs))
        med = measure(candidates(kind, fs, market[kind], reps), len(fs) * reps, args.rounds)
        c_loop = med["meltica (C loop)"]
        py = med["meltica (Python call per frame)"]
        simd = med["meltica simdjson only (C loop)"]
        base = med["msgspec typed decode (baseline)"]
        avg = sum(map(len, fs)) / len(fs)
        results[kind] = {
            "frames": len(fs),
            "avg_bytes": avg,
            "meltica_c_loop_ns": c_loop,
            "meltica_py_call_ns": py,
            "meltica_simdjson_only_ns": simd,
            "msgspec_typed_ns": base,
            "speedup_vs_msgspec": base / c_loop,
        }
        print(
            f"| {kind} | {len(fs)} | {avg:.0f} | {c_loop:,.0f} | {simd:,.0f} | {py:,.0f} "
            f"| {base:,.0f} "
            f"| {base / c_loop:.2f}× |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
