"""Frame -> event -> book apply for real depth updates with 10 levels per side.

One operation = one spot BTCUSDT ``depthUpdate`` combined frame (a real frame of the
hftbacktest 2024-08-08 session, cut to its first 10 bids and 10 asks) parsed into a
BookDepth and applied to a live C order book by ``BookSet.apply_batch`` (sequence checks,
exact int64 levels, crossed check).  Next to it, in the same run: parse only, apply only
(the events pre-parsed), and apply plus a fused top-20 snapshot + BBO per update.  The
ids are rewritten into one contiguous chain so every frame applies; each round reloads
the snapshot.  Skips with a message when the captures are absent.

Run:  python bench/bench_book.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

from meltica._core.book import BookSet, OrderBook
from meltica._core.parser import FrameParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure

CAPTURES = Path(
    os.environ.get(
        "MELTICA_CAPTURES",
        Path(__file__).resolve().parents[2] / "shared" / "captures" / "binance",
    )
)
SESSION = CAPTURES / "hftbacktest" / "examples" / "spot" / "btcusdt_20240808.gz"
N_FRAMES = 2000


def load() -> tuple[list[bytes], bytes]:
    """The REST snapshot body and the real depth frames that follow it, in order."""
    frames: list[bytes] = []
    snapshot = None
    last = 0
    early: list[bytes] = []
    with gzip.open(SESSION, "rt") as fh:
        for line in fh:
            _, _, js = line.partition(" ")
            if js.startswith('{"lastUpdateId"') and snapshot is None:
                snapshot = js.strip().encode()
                last = json.loads(snapshot)["lastUpdateId"]
                # diffs recorded before the snapshot may already bridge it
                frames = [f for f in early if json.loads(f)["data"]["u"] > last]
            elif snapshot is None and "@depth" in js[:40]:
                early = [*early[-50:], js.strip().encode()]
            elif (
                snapshot is not None
                and "@depth" in js[:40]
                and len(frames) < N_FRAMES
                and json.loads(js)["data"]["u"] > last
            ):
                frames.append(js.strip().encode())
    if snapshot is None:
        raise SystemExit("no REST snapshot in the session")
    return frames, snapshot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if not SESSION.is_file():
        print(f"SKIP: captures not found at {CAPTURES} (set MELTICA_CAPTURES)")
        return 0
    frames, body = load()
    parser = FrameParser(market="spot")
    snap = parser.parse_rest_depth(body, "BTCUSDT")
    bridge = parser.parse(frames.pop(0))[0]
    levels = [0, 0]
    for f in frames:
        d = json.loads(f)["data"]
        levels[0] += len(d["b"])
        levels[1] += len(d["a"])
    reps = max(1, 100_000 // len(frames))

    def fresh(emit: int = 0) -> tuple[BookSet, OrderBook]:
        books = BookSet(emit)
        book = OrderBook("spot", "BTCUSDT", max_levels=10_000)
        books.add(book)
        book.load_snapshot(snap)
        st = book.apply(bridge)  # past the first event: every frame is a plain update
        assert st == 1, st
        book.live = True
        return books, book

    pre: list = []
    parser.parse_batch(frames, 1, pre)
    # sanity: every frame applies, none is stale, gapped or crossed
    books, book = fresh()
    assert books.apply_batch(pre, 0, []) == len(pre), books.last_status
    assert book.applied == len(pre) + 1 and book.stale == 0
    out: list = []

    def parse_only() -> None:
        for _ in range(reps):
            parser.parse_batch(frames, 1, out)
            out.clear()

    def parse_apply() -> None:
        for _ in range(reps):
            books, _ = fresh()
            parser.parse_batch(frames, 1, out)
            books.apply_batch(out, 0, out)
            out.clear()

    def apply_only() -> None:
        for _ in range(reps):
            books, _ = fresh()
            books.apply_batch(pre, 0, out)

    def apply_fused() -> None:
        fused: list = []
        for _ in range(reps):
            books, _ = fresh(20)
            books.apply_batch(pre, 0, fused)
            fused.clear()

    def reload_only() -> None:  # subtracted from the apply timings
        for _ in range(reps):
            fresh()

    ops = len(frames) * reps
    med = measure(
        {
            "parse only": parse_only,
            "parse + apply": parse_apply,
            "apply only": apply_only,
            "apply + fused top-20/BBO": apply_fused,
            "snapshot reload (overhead)": reload_only,
        },
        ops,
        args.rounds,
    )
    reload = med.pop("snapshot reload (overhead)")
    print(
        f"# real depth updates ({levels[0] / len(frames):.1f} bids + "
        f"{levels[1] / len(frames):.1f} asks per frame on average), "
        f"{len(frames)} frames x {reps} reps; "
        f"ns/frame, median of {args.rounds} rounds (snapshot reload {reload:.0f} ns/frame "
        "subtracted from apply rows)"
    )
    print("| stage | ns/frame |\n|---|---:|")
    for name, ns in med.items():
        adj = ns - reload if name != "parse only" else ns
        print(f"| {name} | {adj:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
