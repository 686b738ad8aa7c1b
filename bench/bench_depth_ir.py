"""Instructions per frame, by kind, through the gateway's per-frame path: what a depth diff costs.

One operation: one combined-stream frame of one kind (depth@100ms diff, bookTicker or trade)
parsed by ``FrameParser.parse`` and handed, as its own batch, to the Conductor's compiled
per-batch path (``Conductor.on_events``: book apply, fused top-20 snapshot and BBO, the
in-memory SnapshotStore write) and on into the in-memory Data Bus, as ``meltica-engine run``
wires them (no consumers, no WebSocket).  The market is ``SyntheticMarket.binance()`` with
``--symbols`` spot symbols (100-level snapshots); every book is live before the count starts.

Each kind runs in its own process under ``valgrind --tool=callgrind --instr-atstart=no``,
with the instrumentation on only around the measured frames (the set-up and the market's
generation are not counted), so the figure is the same on a loaded machine.  Reported:
instructions (Ir) per frame of each kind, the ratio of a diff to a bookTicker, and the
events each frame put on the bus; ``--annotate`` adds the top inclusive functions per kind
(callgrind_annotate); ``--cache-sim`` adds the simulated data reads, writes and
first-level and last-level cache misses per frame.  Needs valgrind and a C compiler.

Run (from the repository root):
    PYTHONPATH=. .venv/bin/python bench/bench_depth_ir.py [--frames 2000] [--symbols 40]
        [--annotate] [--cache-sim] [--warm N] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_tracing_ir import build_shim

KINDS = ("depth", "book_ticker", "trade")


def _kind(stream: str) -> str | None:
    if "@depth" in stream:
        return "depth"
    if stream.endswith("@bookTicker"):
        return "book_ticker"
    if stream.endswith("@trade"):
        return "trade"
    return None


def child(
    kind: str, frames: int, symbols: int, shim: str, warm_frames: int = 0, seconds: float = 20.0
) -> int:
    """Under valgrind: warm every book up to live, run ``warm_frames`` frames of ``kind`` with the
    instrumentation on (so the simulated caches hold what the path touches), then count
    ``frames`` frames of ``kind``."""
    from meltica._core.parser import FrameParser
    from meltica.bus.data import InMemoryDataBus
    from meltica.conductor import Conductor
    from meltica.replay.source import combined_frame
    from meltica.replay.synthetic import SyntheticMarket
    from meltica.snapshot import MemorySnapshotStore

    src = SyntheticMarket.binance(spot=symbols, usdm=0, seed=1, duration_s=seconds)
    gen = iter(src.frames())
    parser = FrameParser(venue="binance", market="spot")
    rest = FrameParser(venue="binance", market="spot")
    bus = InMemoryDataBus(1 << 16, policy="drop_oldest")
    store = MemorySnapshotStore(100_000, default_ttl_s=60.0)

    async def fetch(market: str, symbol: str) -> Any:
        return rest.parse_rest_depth(src.depth_snapshot(market, symbol, 100) or b"", symbol)

    async def warm() -> Conductor:
        cond = Conductor(bus.publish_batch, fetch, store=store, book_depth=20, snapshot_retry_s=0)
        for s in src.symbols("spot"):
            cond.track("spot", s)
        n = 0
        for f in gen:  # the snapshots are taken as the market is generated
            if _kind(f.stream) is None:
                continue
            cond.on_events(parser.parse(combined_frame(f), f.ts_ns))
            n += 1
            if n % 20 == 0:
                await asyncio.sleep(0)
            if n > 500 and all(b.live for b in cond.books):
                return cond
        raise SystemExit("the books did not go live")

    loop = asyncio.new_event_loop()
    cond = loop.run_until_complete(warm())
    raw, ts = [], []
    for f in gen:
        if _kind(f.stream) == kind:
            raw.append(combined_frame(f))
            ts.append(f.ts_ns)
            if len(raw) == warm_frames + frames:
                break
    if len(raw) < warm_frames + frames:
        raise SystemExit(f"only {len(raw)} {kind} frames in the generated market")
    on, parse = cond.on_events, parser.parse
    lib = ctypes.CDLL(shim)
    gc.collect()
    if warm_frames:
        lib.ir_start()
        for i in range(warm_frames):
            on(parse(raw[i], ts[i]))
    published0, batches0 = bus.published, cond.counters["batches"]
    lib.ir_start()  # (again) zeroes the counts
    for i in range(warm_frames, warm_frames + frames):
        on(parse(raw[i], ts[i]))
    lib.ir_stop(kind.encode())
    print(
        json.dumps(
            {
                "kind": kind,
                "frames": frames,
                "bus_events": bus.published - published0,
                "batches": cond.counters["batches"] - batches0,
                "live": sum(1 for b in cond.books if b.live),
            }
        ),
        flush=True,
    )
    loop.close()
    return 0


def _totals(path: Path) -> dict[str, int]:
    """The dump's event totals by name (Ir; with the cache simulation also Dr, D1mr, DLmr ...)."""
    names: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        if line.startswith(("totals:", "summary:")):
            return dict(zip(names, map(int, line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=2000, help="frames counted per kind")
    p.add_argument("--symbols", type=int, default=40, help="spot symbols in the market")
    p.add_argument("--annotate", action="store_true", help="top inclusive functions per kind")
    p.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the caches (callgrind --cache-sim=yes): data reads, misses per frame",
    )
    p.add_argument(
        "--d1",
        default="32768,8,64",
        help="simulated first-level data cache: size,associativity,line (valgrind --D1)",
    )
    p.add_argument(
        "--ll",
        default="33554432,16,64",
        help="simulated last-level cache: size,associativity,line (valgrind --LL; the default is"
        " a 32 MiB L3; callgrind models two levels, so give an L2's size to see L2 misses)",
    )
    p.add_argument(
        "--market-s",
        type=float,
        default=20.0,
        help="seconds of market generated (a small market needs more for many frames of a kind)",
    )
    p.add_argument(
        "--warm",
        type=int,
        default=0,
        help="frames of the kind run (instrumented, not counted) before the counted ones,"
        " so the simulated caches start warm",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs=2, metavar=("KIND", "SHIM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(
            args.child[0], args.frames, args.symbols, args.child[1], args.warm, args.market_s
        )
    out: dict[str, Any] = {"frames": args.frames, "symbols": args.symbols, "warm": args.warm}
    out["kinds"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shim = build_shim(Path(tmp))
        for kind in KINDS:
            cg = Path(tmp) / f"cg.{kind}"
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            if args.cache_sim:
                argv += ["--cache-sim=yes", f"--D1={args.d1}", f"--LL={args.ll}"]
            argv += [f"--callgrind-out-file={cg}", sys.executable, __file__]
            argv += ["--frames", str(args.frames), "--symbols", str(args.symbols)]
            argv += ["--warm", str(args.warm), "--market-s", str(args.market_s)]
            argv += ["--child", kind, str(shim)]
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            res = subprocess.run(argv, capture_output=True, text=True, env=env)
            if res.returncode:
                raise SystemExit(f"{kind}: exit {res.returncode}\n{res.stderr[-2000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            dump = Path(f"{cg}.1")  # the dump at ir_stop
            totals = _totals(dump)
            row["ir_per_frame"] = round(totals["Ir"] / args.frames)
            if args.cache_sim:
                for ev in ("Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw", "I1mr", "ILmr"):
                    row[f"{ev}_per_frame"] = round(totals[ev] / args.frames, 1)
            if args.annotate:
                ann = subprocess.run(
                    ["callgrind_annotate", "--inclusive=yes", str(dump)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                row["top"] = [ln for ln in ann.splitlines() if "(" in ln and "%)" in ln][:25]
            out["kinds"][kind] = row
    kinds = out["kinds"]
    out["depth_over_book_ticker"] = round(
        kinds["depth"]["ir_per_frame"] / kinds["book_ticker"]["ir_per_frame"], 2
    )
    print("| kind | Ir per frame | bus events per frame |")
    print("|---|---:|---:|")
    for kind, row in kinds.items():
        print(f"| {kind} | {row['ir_per_frame']:,} | {row['bus_events'] / row['frames']:.2f} |")
    if args.cache_sim:
        evs = ("Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw", "I1mr", "ILmr")
        print("\n| kind | " + " | ".join(f"{ev} per frame" for ev in evs) + " |")
        print("|---|" + "---:|" * len(evs))
        for kind, row in kinds.items():
            cells = " | ".join(f"{row[f'{ev}_per_frame']:,}" for ev in evs)
            print(f"| {kind} | {cells} |")
    print(f"\ndepth diff / bookTicker: {out['depth_over_book_ticker']}x")
    if args.annotate:
        for kind, row in kinds.items():
            print(f"\n{kind}:")
            print("\n".join(row["top"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
