"""cryptofeed's Binance feed handler on given frames, driven offline: ns per frame.

Two halves in one file:

- the peer script, run with the side venv's Python (``bench/peer_venv.sh``); it never imports
  meltica::

    .venv-peer/bin/python bench/peer_cryptofeed.py KIND FRAMES [--snapshot FILE] [--symbol SYM]
                                                   [--rounds 5] [--min-frames N]

  KIND is ``trade``, ``bookTicker`` or ``depth``.  FRAMES is a file of combined-stream frames, one
  per line, or a JSON list of strings.  Every frame, as the text a websocket delivers, goes through
  ``Binance.message_handler(text, conn, ts)``, the coroutine cryptofeed's connection awaits per
  frame, with a counting async callback: JSON decode with Decimal floats, stream split, symbol
  mapping, Decimal price/qty, the Trade/Ticker object, and for depth the update-id check, the
  Decimal-keyed order_book update, the delta lists and the crossed-book check.  No network: the
  symbol table is seeded through ``Symbols.set``, and cryptofeed's own ``_snapshot`` reads its REST
  body from ``--snapshot`` (or an empty book just before the first frame) before every pass,
  untimed.  cryptofeed's Binance feed takes trades from ``@aggTrade`` only and ignores ``@trade``,
  so ``@trade`` frames are rewritten to the aggTrade shape (same values) before timing.  Prints one
  JSON object; exits 2 when any frame fails to reach the callback.

- ``run_peer()``, imported by Meltica's bench scripts in the main venv, which runs the script
  above in the side venv and returns its JSON, or None with a printed reason.

``python bench/peer_cryptofeed.py --captures`` (main venv) runs the peer on real capture frames:
bench_parse's trade and depth10 frames, the latter renumbered into one chain after the session's
REST snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("trade", "bookTicker", "depth")
DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venv-peer"
NOT_INSTALLED = "cryptofeed: not installed (run bench/peer_venv.sh)"
# frames timed per round when --min-frames is not given: about 0.1-0.2 s of cryptofeed per round
DEFAULT_MIN_FRAMES = {"trade": 20_000, "bookTicker": 20_000, "depth": 2_000}
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")


# ---------------------------------------------------------------- frames (stdlib only)


def read_frames(path: Path) -> list[bytes]:
    """Frames from a file: a JSON list of strings, or one raw frame per line."""
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":
        items = json.loads(raw)
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError(f"{path}: a JSON frame list must hold strings")
        return [s.encode() for s in items]
    return [line for line in raw.splitlines() if line.strip()]


def write_frames(path: Path, frames: list[bytes]) -> None:
    """Write frames one per line, or as a JSON list when a frame holds a newline."""
    if any(b"\n" in f or b"\r" in f for f in frames):
        path.write_text(json.dumps([f.decode() for f in frames]))
    else:
        path.write_bytes(b"\n".join(frames) + b"\n")


def contiguous_depth(frames: list[bytes], after: int) -> list[bytes]:
    """Depth frames with U/u renumbered into one gap-free chain starting at ``after + 1``.

    Each frame keeps its id span (u - U) and its levels; use it when frames were picked out of a
    session (e.g. only those with >= 10 levels per side) so any book keeper applies all of them.
    """
    out = []
    nxt = after + 1
    for f in frames:
        obj = json.loads(f)
        data = obj.get("data", obj)
        span = data["u"] - data["U"]
        data["U"], data["u"] = nxt, nxt + span
        nxt += span + 1
        out.append(json.dumps(obj, separators=(",", ":")).encode())
    return out


def _std_symbol(exchange_symbol: str) -> str:
    for q in _QUOTES:
        if exchange_symbol.endswith(q) and len(exchange_symbol) > len(q):
            return f"{exchange_symbol[: -len(q)]}-{q}"
    return exchange_symbol


def _prepare(kind: str, frames: list[bytes]) -> tuple[list[str], list[str], int]:
    """Frames as websocket text, their exchange symbols, and how many were rewritten.

    Bare payloads are wrapped in the combined-stream envelope cryptofeed's handler expects, and
    ``@trade`` frames are rewritten to the ``@aggTrade`` shape it subscribes to.
    """
    texts: list[str] = []
    symbols: list[str] = []
    rewritten = 0
    for i, f in enumerate(frames):
        obj = json.loads(f)
        changed = False
        if "stream" not in obj:
            sym = obj["s"]
            suffix = {"trade": obj.get("e", "trade"), "bookTicker": "bookTicker"}.get(kind, "depth")
            obj = {"stream": f"{sym.lower()}@{suffix}", "data": obj}
            changed = True
        data = obj["data"]
        event = data.get("e")
        if kind == "trade":
            if event == "trade":
                data = {
                    "e": "aggTrade",
                    "E": data["E"],
                    "s": data["s"],
                    "a": data["t"],
                    "p": data["p"],
                    "q": data["q"],
                    "f": data["t"],
                    "l": data["t"],
                    "T": data["T"],
                    "m": data["m"],
                    "M": data.get("M", True),
                }
                obj = {"stream": obj["stream"].replace("@trade", "@aggTrade"), "data": data}
                changed = True
            elif event != "aggTrade":
                raise ValueError(f"frame {i}: not a trade or aggTrade frame")
        elif kind == "bookTicker":
            if event not in (None, "bookTicker") or "A" not in data:
                raise ValueError(f"frame {i}: not a bookTicker frame")
        elif event != "depthUpdate":
            raise ValueError(f"frame {i}: not a depthUpdate frame")
        if data["s"] not in symbols:
            symbols.append(data["s"])
        if changed:
            rewritten += 1
            texts.append(json.dumps(obj, separators=(",", ":")))
        else:
            texts.append(f.decode())
    return texts, symbols, rewritten


# ---------------------------------------------------------------- the peer (side venv)


def drive(
    kind: str,
    frames: list[bytes],
    *,
    snapshot: bytes | None = None,
    symbol: str | None = None,
    rounds: int = 5,
    min_frames: int | None = None,
) -> dict[str, Any]:
    """Time cryptofeed's Binance.message_handler on the frames; the result as a dict."""
    import importlib.metadata
    from decimal import Decimal

    from cryptofeed.defines import BINANCE, L2_BOOK, SPOT, TICKER, TRADES
    from cryptofeed.symbols import Symbols

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not frames:
        raise ValueError("no frames")
    texts, symbols, rewritten = _prepare(kind, frames)
    if symbol is not None and symbol.upper() not in symbols:
        raise ValueError(f"--symbol {symbol} does not match the frames' symbols {symbols}")
    std = {s: _std_symbol(s) for s in symbols}
    Symbols.set(
        BINANCE,
        {v: k for k, v in std.items()},
        {
            "tick_size": dict.fromkeys(std.values(), "0.01"),
            "instrument_type": dict.fromkeys(std.values(), SPOT),
        },
    )
    import cryptofeed.exchanges.binance as binance_mod
    from cryptofeed.exchanges import Binance

    channel = {"trade": TRADES, "bookTicker": TICKER, "depth": L2_BOOK}[kind]
    got = [0]

    async def cb(obj: object, receipt_ts: float) -> None:
        got[0] += 1

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    feed = Binance(symbols=list(std.values()), channels=[channel], callbacks={channel: cb})
    handler = feed.message_handler
    snap_info: dict[str, Any] | None = None

    rest_reads = [0]  # snapshot requests: one per pass, from setup(); more means a reset

    if kind == "depth":
        if len(symbols) != 1:
            raise ValueError(f"depth frames must be of one symbol, got {symbols}")
        ex_sym = symbols[0]
        if snapshot is None:
            first_u = json.loads(texts[0])["data"]["U"]
            body = json.dumps({"lastUpdateId": first_u - 1, "bids": [], "asks": []})
        else:
            body = snapshot.decode()
        snap = json.loads(body)
        snap_info = {
            "symbol": ex_sym,
            "last_update_id": snap["lastUpdateId"],
            "bids": len(snap["bids"]),
            "asks": len(snap["asks"]),
            "synthetic": snapshot is None,
        }

        class _Rest:
            """Answers cryptofeed's REST depth request with the snapshot body."""

            async def read(self, address: str, *_a: object, **_kw: object) -> str:
                rest_reads[0] += 1
                return body

            async def close(self) -> None:
                return None

        feed.http_conn = _Rest()

    async def setup() -> None:
        if kind == "depth":  # a fresh book from the REST snapshot, through cryptofeed's code
            feed._l2_book.pop(std[ex_sym], None)
            feed.last_update_id.pop(std[ex_sym], None)
            await feed._snapshot(ex_sym)

    async def one_pass() -> int:
        got[0] = 0
        reads = rest_reads[0]
        ts = 1.0
        t0 = time.perf_counter_ns()
        for m in texts:
            await handler(m, None, ts)
        elapsed = time.perf_counter_ns() - t0
        resets = rest_reads[0] - reads  # each re-snapshot also calls back once
        if got[0] - resets != len(texts) or resets:
            raise _Undelivered(got[0] - resets, len(texts))
        return elapsed

    decode = binance_mod.json.loads

    def decode_pass() -> int:
        t0 = time.perf_counter_ns()
        for m in texts:
            decode(m, parse_float=Decimal)
        return time.perf_counter_ns() - t0

    n = len(texts)
    reps = max(1, -(-(min_frames or DEFAULT_MIN_FRAMES[kind]) // n))
    handler_ns: list[float] = []
    decode_ns: list[float] = []
    for r in range(rounds + 1):  # round 0 warms up
        total = 0
        for _ in range(reps):
            loop.run_until_complete(setup())
            gc.collect()
            gc.disable()
            try:
                total += loop.run_until_complete(one_pass())
            finally:
                gc.enable()
        gc.collect()
        gc.disable()
        dec_total = sum(decode_pass() for _ in range(reps))
        gc.enable()
        if r:
            handler_ns.append(total / (n * reps))
            decode_ns.append(dec_total / (n * reps))
    book_end = None
    if kind == "depth":
        book = feed._l2_book[std[ex_sym]].book
        book_end = {"bids": len(book.bids), "asks": len(book.asks)}
    loop.close()
    med = statistics.median(handler_ns)
    levels = None
    if kind == "depth":
        lv = [json.loads(t)["data"] for t in texts]
        levels = {
            "bids": sum(len(d["b"]) for d in lv) / n,
            "asks": sum(len(d["a"]) for d in lv) / n,
        }
    return {
        "peer": "cryptofeed",
        "handler": "cryptofeed.exchanges.Binance.message_handler",
        "cryptofeed_version": importlib.metadata.version("cryptofeed"),
        "python": platform.python_version(),
        "kind": kind,
        "frames": n,
        "avg_bytes": sum(map(len, frames)) / n,
        "rewritten_frames": rewritten,
        "reps_per_round": reps,
        "rounds": rounds,
        "ns_per_frame": med,
        "ns_per_frame_rounds": handler_ns,
        "frames_per_s": 1e9 / med,
        "decode_only_ns_per_frame": statistics.median(decode_ns),
        "levels_per_frame": levels,
        "snapshot": snap_info,
        "book_levels_end": book_end,
    }


class _Undelivered(Exception):
    def __init__(self, got: int, want: int) -> None:
        super().__init__(
            f"only {got} of {want} frames reached cryptofeed's callback: for depth, the frames "
            "must continue the snapshot's lastUpdateId without gaps (see contiguous_depth())"
        )


def _peer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("frames", type=Path, help="frames, one per line, or a JSON list of strings")
    ap.add_argument("--snapshot", type=Path, help="REST /api/v3/depth body (depth only)")
    ap.add_argument("--symbol", help="exchange symbol of the snapshot, e.g. BTCUSDT")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-frames", type=int, help="frames timed per round (frames x reps)")
    args = ap.parse_args(argv)
    try:
        result = drive(
            args.kind,
            read_frames(args.frames),
            snapshot=args.snapshot.read_bytes() if args.snapshot else None,
            symbol=args.symbol,
            rounds=args.rounds,
            min_frames=args.min_frames,
        )
    except (ValueError, KeyError, OSError, _Undelivered) as e:
        print(f"peer_cryptofeed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------- helper (Meltica's venv)


def run_peer(
    kind: str,
    frames: list[bytes],
    *,
    snapshot: bytes | None = None,
    symbol: str | None = None,
    rounds: int = 5,
    venv: Path = DEFAULT_VENV,
    min_frames: int | None = None,
    timeout: float = 900.0,
) -> dict[str, Any] | None:
    """Run the peer script in the side venv on these frames; its JSON, or None (reason printed)."""
    py = Path(venv).absolute() / "bin" / "python"  # not resolve(): keep the venv link
    if not py.exists():
        print(f"{NOT_INSTALLED}: no {py}")
        return None
    with tempfile.TemporaryDirectory(prefix="meltica-peer-") as tmp:
        fpath = Path(tmp) / "frames.txt"
        write_frames(fpath, frames)
        cmd = [str(py), str(Path(__file__).resolve()), kind, str(fpath), "--rounds", str(rounds)]
        if snapshot is not None:
            spath = Path(tmp) / "snapshot.json"
            spath.write_bytes(snapshot)
            cmd += ["--snapshot", str(spath)]
        if symbol is not None:
            cmd += ["--symbol", symbol]
        if min_frames is not None:
            cmd += ["--min-frames", str(min_frames)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env
            )
        except subprocess.TimeoutExpired:
            print(f"cryptofeed: peer run timed out after {timeout:.0f} s")
            return None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "ModuleNotFoundError" in proc.stderr and "cryptofeed" in proc.stderr:
            print(f"{NOT_INSTALLED}: {tail}")
        else:
            print(f"cryptofeed: peer run failed (exit {proc.returncode}): {tail}")
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peer_summary(result: dict[str, Any] | None) -> str:
    """One line for a bench report."""
    if result is None:
        return NOT_INSTALLED
    return (
        f"cryptofeed {result['cryptofeed_version']} (Python {result['python']}) "
        f"Binance handler, {result['kind']}: {result['ns_per_frame']:,.0f} ns/frame "
        f"({result['frames_per_s'] / 1e3:,.1f}k frames/s)"
    )


def _session_snapshot(session: Path) -> bytes:
    import gzip

    with gzip.open(session, "rt") as fh:
        for line in fh:
            _, _, js = line.partition(" ")
            if js.startswith('{"lastUpdateId"'):
                return js.strip().encode()
    raise SystemExit(f"no REST snapshot in {session}")


def _captures_main(rounds: int, venv: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_parse  # main venv only: it imports meltica

    frames, _ = bench_parse.load_frames()
    session = bench_parse.CAPTURES / "hftbacktest" / "examples" / "spot" / "btcusdt_20240808.gz"
    snap = _session_snapshot(session)
    depth = contiguous_depth(frames["depth10"], json.loads(snap)["lastUpdateId"])
    from harness import measure

    out: dict[str, Any] = {}
    cases: list[tuple[str, str, list[bytes], bytes | None, str | None]] = [
        ("trade", "trade", frames["trade"], None, None),
        ("depth", "depth10", depth, snap, "BTCUSDT"),
    ]
    for kind, pkind, fs, snapshot, symbol in cases:
        # Meltica's parser on the very same frames first (frame -> event, C loop), for the ratio
        reps = max(1, 100_000 // len(fs))
        cands = bench_parse.candidates(pkind, fs, "spot", reps)
        mel = measure({"meltica": cands["meltica (C loop)"]}, len(fs) * reps, rounds)["meltica"]
        res = run_peer(kind, fs, snapshot=snapshot, symbol=symbol, rounds=rounds, venv=venv)
        line = f"{peer_summary(res)}; meltica parse (frame -> event) {mel:,.0f} ns/frame"
        if res is not None:
            line += f"; cryptofeed / meltica parse = {res['ns_per_frame'] / mel:,.1f}x"
        print(line, flush=True)
        out[kind] = {"cryptofeed": res, "meltica_parse_ns_per_frame": mel}
    print(json.dumps(out, indent=1))
    return 0 if all(v["cryptofeed"] for v in out.values()) else 1


def main(argv: list[str]) -> int:
    if "--captures" in argv:
        ap = argparse.ArgumentParser(description="cryptofeed peer on real capture frames")
        ap.add_argument("--captures", action="store_true")
        ap.add_argument("--rounds", type=int, default=5)
        ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
        args = ap.parse_args(argv)
        return _captures_main(args.rounds, args.venv)
    return _peer_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
