"""Order book apply and frame -> event -> apply, on real spot BTCUSDT depth frames.

Data: the hftbacktest 2024-08-08 spot BTCUSDT session: its REST snapshot (1000 levels a
side) and the 2000 ``depthUpdate`` combined frames that follow it, as recorded (about 14
bids + 14 asks each; real diffs land anywhere from the top to 1000+ levels deep).

Rows, ns per frame, median over interleaved rounds (bench/harness.py):

- ``parse only``: ``FrameParser.parse_batch`` of the frames.
- ``parse + apply``: parse, then ``BookSet.apply_batch`` on a live book.
- ``apply only``: ``apply_batch`` of the pre-parsed events (sequence checks, exact int64
  levels, crossed check).
- ``apply + fused top-20/BBO``: as above, building a top-20 snapshot (+ BBO when the top
  changed) after every update.

Each repetition starts from a fresh book loaded with the snapshot; the cost of that
reload, measured alone, is subtracted from the apply rows.

The ``10 + 10 levels`` rows measure the shape our book-apply budget is stated for: an update
with exactly 10 bids and 10 asks.  Real frames cannot simply be cut to 10 levels a side:
the dropped levels are real changes, so the book drifts from the market and crosses
within a few frames.  Instead every cut frame is applied to the REAL book it belongs
to: the stream becomes ``F0, C1, U1, F1, C2, U2, F2, ...`` where ``Fi`` is the real
frame, ``Ci`` the first 10 bids and 10 asks of ``Fi`` (Binance lists levels best
first) applied to the book as it stands after ``F(i-1)``, and ``Ui`` a 10 + 10 update
restoring those same prices to their quantities before ``Ci``, so ``Fi`` then meets
exactly the book it met in the recording (the bench asserts the final books agree).
Only frames with >= 10 levels on both sides get a pair; a pair whose cut would cross
the book (a real crossing-free frame need not stay so when cut) is left out.  The row
is (time of the mixed stream - time of the plain ``F`` stream) / number of ``C`` and
``U`` events: the cost of one 10 + 10 update on a real book, cut and restore
averaged.  Ids are renumbered into one contiguous chain in both streams, and both are
re-serialised the same way, so the parse rows compare like with like.

Run:  python bench/bench_book.py [--rounds 7] [--json OUT]   (skips with a message without captures)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

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
CUT = 10


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


def renumber(msgs: list[dict[str, Any]], first: int) -> list[bytes]:
    """The frames re-serialised with ids ``first, first + 1, ...`` (one id each)."""
    out = []
    for k, m in enumerate(msgs):
        m["data"]["U"] = m["data"]["u"] = first + k
        out.append(json.dumps(m, separators=(",", ":")).encode())
    return out


def cut_streams(
    frames: list[bytes], snap_body: bytes, skip: set[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """The plain stream ``F0..`` and the mixed ``F0, C1, U1, F1, ...`` (see the docstring).

    ``skip``: frame indices that get no cut/restore pair.  Returns both streams and, per
    event of the mixed one, the index of the frame it comes from, or -1 for a real frame.
    """
    snap = json.loads(snap_body)
    ref: list[dict[Decimal, str]] = [
        {Decimal(p): q for p, q in snap["bids"]},
        {Decimal(p): q for p, q in snap["asks"]},
    ]
    plain: list[dict[str, Any]] = []
    mixed: list[dict[str, Any]] = []
    owner: list[int] = []
    for i, raw in enumerate(frames):
        msg = json.loads(raw)
        d = msg["data"]
        if i and i not in skip and len(d["b"]) >= CUT and len(d["a"]) >= CUT:
            cut = [d["b"][:CUT], d["a"][:CUT]]
            undo = [[[p, ref[s].get(Decimal(p), "0.00000000")] for p, _ in cut[s]] for s in (0, 1)]
            for b, a in (cut, undo):
                mixed.append({**msg, "data": {**d, "b": b, "a": a}})
            owner += [i, i]
        for s, key in ((0, "b"), (1, "a")):
            for p, q in d[key]:
                if Decimal(q) == 0:
                    ref[s].pop(Decimal(p), None)
                else:
                    ref[s][Decimal(p)] = q
        if i:  # frame 0 is the bridge, applied by fresh()
            plain.append(msg)
            mixed.append(json.loads(raw))
            owner.append(-1)
    return plain, mixed, owner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="also write the rows (ns/frame) to this JSON file")
    args = ap.parse_args()
    if not SESSION.is_file():
        print(f"SKIP: captures not found at {CAPTURES} (set MELTICA_CAPTURES)")
        return 0
    frames, body = load()
    parser = FrameParser(market="spot")
    snap = parser.parse_rest_depth(body, "BTCUSDT")
    bridge = parser.parse(frames[0])[0]
    real = frames[1:]
    levels = [0, 0]
    for f in real:
        d = json.loads(f)["data"]
        levels[0] += len(d["b"])
        levels[1] += len(d["a"])

    def fresh(emit: int = 0) -> tuple[BookSet, OrderBook]:
        books = BookSet(emit)
        book = OrderBook("spot", "BTCUSDT", max_levels=10_000)
        books.add(book)
        book.load_snapshot(snap)
        st = book.apply(bridge)  # past the first event: every frame is a plain update
        assert st == 1, st
        book.live = True
        return books, book

    pre: list[Any] = []
    parser.parse_batch(real, 1, pre)
    # sanity: every frame applies, none is stale, gapped or crossed
    books, book = fresh()
    assert books.apply_batch(pre, 0, []) == len(pre), books.last_status
    assert book.applied == len(pre) + 1 and book.stale == 0
    real_final = book.raw()

    # the 10 + 10 streams; leave out the pairs whose cut crosses the book
    first_id = json.loads(frames[0])["data"]["u"] + 1
    skip: set[int] = set()
    while True:
        plain_msgs, mixed_msgs, owner = cut_streams(frames, body, skip)
        plain = renumber(plain_msgs, first_id)
        mixed = renumber(mixed_msgs, first_id)
        pre_plain: list[Any] = []
        pre_mixed: list[Any] = []
        parser.parse_batch(plain, 1, pre_plain)
        parser.parse_batch(mixed, 1, pre_mixed)
        books, book = fresh()
        stop = books.apply_batch(pre_mixed, 0, [])
        if stop == len(pre_mixed):
            break
        assert owner[stop] >= 0, (stop, books.last_status, owner[stop - 3 : stop + 1])
        skip.add(owner[stop])
    n_cut = len(mixed) - len(plain)
    assert book.raw() == real_final, "the cut/restore stream must end on the real book"
    books, book = fresh()
    assert books.apply_batch(pre_plain, 0, []) == len(pre_plain) and book.raw() == real_final

    reps = max(1, 40_000 // len(real))
    out: list[Any] = []

    def parse_only() -> None:
        for _ in range(reps):
            parser.parse_batch(real, 1, out)
            out.clear()

    def parse_apply() -> None:
        for _ in range(reps):
            books, _ = fresh()
            parser.parse_batch(real, 1, out)
            books.apply_batch(out, 0, out)
            out.clear()

    def apply_only() -> None:
        for _ in range(reps):
            books, _ = fresh()
            books.apply_batch(pre, 0, out)

    def apply_fused() -> None:
        fused: list[Any] = []
        for _ in range(reps):
            books, _ = fresh(20)
            books.apply_batch(pre, 0, fused)
            fused.clear()

    def reload_only() -> None:
        for _ in range(reps):
            fresh()

    def stream(frames_: list[bytes], events: list[Any], parse: bool) -> Any:
        def run() -> None:
            for _ in range(reps):
                books, _ = fresh()
                if parse:
                    parser.parse_batch(frames_, 1, out)
                    books.apply_batch(out, 0, out)
                    out.clear()
                else:
                    books.apply_batch(events, 0, out)

        return run

    med = measure(
        {
            "parse only": parse_only,
            "parse + apply": parse_apply,
            "apply only": apply_only,
            "apply + fused top-20/BBO": apply_fused,
            "reload": reload_only,
            "plain apply": stream(plain, pre_plain, False),
            "mixed apply": stream(mixed, pre_mixed, False),
            "plain parse + apply": stream(plain, pre_plain, True),
            "mixed parse + apply": stream(mixed, pre_mixed, True),
        },
        1,
        args.rounds,
    )
    per = len(real) * reps
    reload = med["reload"] / per
    print(
        f"# real spot BTCUSDT depth updates ({levels[0] / len(real):.1f} bids + "
        f"{levels[1] / len(real):.1f} asks per frame on average), book of "
        f"{len(real_final[2])} bids x {len(real_final[3])} asks, {len(real)} frames x "
        f"{reps} reps; ns/frame, median of {args.rounds} rounds (snapshot reload "
        f"{reload:.0f} ns/frame subtracted from apply rows)"
    )
    print("| stage | ns/frame |\n|---|---:|")
    rows: dict[str, float] = {}
    for name in ("parse only", "parse + apply", "apply only", "apply + fused top-20/BBO"):
        ns = med[name] / per - (0 if name == "parse only" else reload)
        rows[name] = ns
        print(f"| {name} | {ns:,.0f} |")
    k = n_cut * reps
    rows[f"apply only, {CUT} + {CUT} levels"] = (med["mixed apply"] - med["plain apply"]) / k
    rows[f"parse + apply, {CUT} + {CUT} levels"] = (
        med["mixed parse + apply"] - med["plain parse + apply"]
    ) / k
    print(
        f"| apply only, {CUT} + {CUT} levels (cut/restore on the real book, "
        f"{n_cut} events) | {rows[f'apply only, {CUT} + {CUT} levels']:,.0f} |"
    )
    both = rows[f"parse + apply, {CUT} + {CUT} levels"]
    print(f"| parse + apply, {CUT} + {CUT} levels | {both:,.0f} |")
    if args.json:
        result = {
            "frames": len(real),
            "reps": reps,
            "rounds": args.rounds,
            "bids_per_frame": levels[0] / len(real),
            "asks_per_frame": levels[1] / len(real),
            "cut_events": n_cut,
            "reload_ns_per_frame": reload,
            "ns_per_frame": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if skip:
        print(f"# {len(skip)} cut/restore pairs left out: their cut crosses the book")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
