"""Instructions per frame of the parser, msgspec and the floor, counted by callgrind.

Wall-clock ratios on a shared 2-core machine move by 20 % and more between runs; callgrind's
instruction count (``Ir``) of the same work does not.  One process runs under
``valgrind --tool=callgrind --instr-atstart=no``; each candidate runs once uninstrumented (warm
caches, interned symbols), then once between callgrind client requests (start + zero, dump +
stop; the C shim of bench_tracing_ir.py), over the same frames:

- ``meltica parse_batch``: the live path (C loop over the frames).
- ``meltica simdjson only``: the parser without its fast path.
- ``msgspec typed (Python loop)``: bench_parse.py's baseline, one Python call per frame.
- ``msgspec typed (C loop)``: the same decoder mapped over the frames from C (``list(map)``),
  the baseline without the interpreter's per-frame loop.
- three floors in C (compiled at run time, one call over all frames, so no interpreter cost
  per frame): ``floor: one byte-at-a-time pass`` reads every byte and compares it (counts the
  quotes; not vectorised), the least a scalar tokenizer does; ``floor: malloc + memcpy`` one
  heap allocation of the frame's size, one (vectorised) copy of its bytes and the free;
  ``floor: malloc + byte pass + free`` both, the allocation and the scalar pass.

Ir per frame = the candidate's Ir ÷ frames.  Instructions are not time (a cache miss counts
as one), but they are what the parser's code decides.

Run:  python bench/micro/parse_ir.py [--frames 2000] [--annotate] [--json OUT]
      (needs valgrind and a C compiler; uses the captures, or synthetic frames without them)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

KINDS = ("bookTicker", "trade", "depth")
CANDIDATES = (
    "meltica parse_batch",
    "meltica simdjson only",
    "msgspec typed (Python loop)",
    "msgspec typed (C loop)",
    "floor: one byte-at-a-time pass",
    "floor: malloc + memcpy",
    "floor: malloc + byte pass + free",
)

_FLOORS_C = r"""
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

__attribute__((optimize("no-tree-vectorize")))
static size_t pass(const unsigned char *p, size_t n) {
    size_t acc = 0;
    for (size_t j = 0; j < n; ++j) acc += p[j] == '"';
    return acc;
}

size_t floor_pass(const char *const *f, const size_t *n, size_t k) {
    size_t acc = 0;
    for (size_t i = 0; i < k; ++i) acc += pass((const unsigned char *)f[i], n[i]);
    return acc;
}

size_t floor_copy(const char *const *f, const size_t *n, size_t k) {
    size_t acc = 0;
    for (size_t i = 0; i < k; ++i) {
        char *b = malloc(n[i]);
        memcpy(b, f[i], n[i]);
        acc += (unsigned char)b[n[i] - 1];
        free(b);
    }
    return acc;
}

size_t floor_alloc_pass(const char *const *f, const size_t *n, size_t k) {
    size_t acc = 0;
    for (size_t i = 0; i < k; ++i) {
        char *b = malloc(n[i]);
        acc += pass((const unsigned char *)f[i], n[i]) + (size_t)(b != NULL);
        free(b);
    }
    return acc;
}
"""


def build_floors(out_dir: Path) -> Path:
    src = out_dir / "floors.c"
    lib = out_dir / "floors.so"
    src.write_text(_FLOORS_C)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def frames_for(source: str, n: int) -> dict[str, list[bytes]]:
    import pairs

    frames = (
        pairs.capture_parse_frames() if source == "captures" else pairs.synthetic_parse_frames()
    )
    return {k: frames[k][:n] for k in KINDS}


def candidates(
    kind: str, fs: list[bytes], sink: list[Any], floors: Any
) -> dict[str, Callable[[], object]]:
    """The candidates of CANDIDATES on one kind's frames (events go to ``sink``)."""
    import msgspec
    from bench_parse import BASELINE_TYPES, envelope

    from meltica import FrameParser

    parser = FrameParser(market="spot")
    simd = FrameParser(market="spot", fast_path=False)
    dec = msgspec.json.Decoder(envelope(BASELINE_TYPES["depth10" if kind == "depth" else kind]))
    decode = dec.decode
    k = len(fs)
    ptrs = (ctypes.c_char_p * k)(*fs)
    lens = (ctypes.c_size_t * k)(*map(len, fs))

    def py_loop() -> None:
        for f in fs:
            decode(f)

    return {
        "meltica parse_batch": lambda: parser.parse_batch(fs, 1, sink),
        "meltica simdjson only": lambda: simd.parse_batch(fs, 1, sink),
        "msgspec typed (Python loop)": py_loop,
        "msgspec typed (C loop)": lambda: list(map(decode, fs)),
        "floor: one byte-at-a-time pass": lambda: floors.floor_pass(ptrs, lens, k),
        "floor: malloc + memcpy": lambda: floors.floor_copy(ptrs, lens, k),
        "floor: malloc + byte pass + free": lambda: floors.floor_alloc_pass(ptrs, lens, k),
    }


def child(shim_path: str, floors_path: str, source: str, n: int) -> int:
    """Runs under valgrind: every candidate once warm, then once counted."""
    shim = ctypes.CDLL(shim_path)
    shim.ir_stop.argtypes = [ctypes.c_char_p]
    floors = ctypes.CDLL(floors_path)
    for fn in (floors.floor_pass, floors.floor_copy, floors.floor_alloc_pass):
        fn.restype = ctypes.c_size_t
    frames = frames_for(source, n)
    out: dict[str, Any] = {"frames": {}, "bytes": {}}
    for kind in KINDS:
        fs = frames[kind]
        out["frames"][kind] = len(fs)
        out["bytes"][kind] = sum(map(len, fs)) / len(fs)
        sink: list[Any] = []
        for name, fn in candidates(kind, fs, sink, floors).items():
            fn()
            sink.clear()
            shim.ir_start()
            fn()
            shim.ir_stop(f"{kind}|{name}".encode())
            sink.clear()
    print(json.dumps(out), flush=True)
    return 0


def annotate(cg_file: Path, top: int = 25) -> str:
    proc = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", str(cg_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if "file:function" in ln), 0)
    return "\n".join(lines[start : start + top + 2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames per kind")
    ap.add_argument("--source", choices=("captures", "synthetic", "auto"), default="auto")
    ap.add_argument("--annotate", action="store_true", help="top functions of meltica's parse")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import pairs

    source = args.source
    if source == "auto":
        source = "captures" if pairs.captures_present() else "synthetic"
    if args.child:
        shim_path, floors_path = args.child.split(os.pathsep)
        return child(shim_path, floors_path, source, args.frames)
    from bench_tracing_ir import build_shim, read_dumps

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        shim = build_shim(out_dir)
        floors = build_floors(out_dir)
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
            f"--callgrind-out-file={out_dir}/cg.out", sys.executable, str(Path(__file__).resolve()),
            "--child", f"{shim}{os.pathsep}{floors}",
            "--source", source, "--frames", str(args.frames),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        ir = read_dumps(out_dir)
        notes = ""
        if args.annotate:
            for f in sorted(out_dir.iterdir()):
                if (
                    f.name.startswith("cg.out")
                    and "meltica parse_batch" in f.read_text(errors="replace")[:2000]
                ):
                    notes += f"\n## {f.name}\n" + annotate(f) + "\n"
    result: dict[str, Any] = {"source": source, "kinds": {}}
    print(f"# Ir per frame (callgrind), {source} frames\n")
    header = (
        "| kind | frames | avg bytes | "
        + " | ".join(CANDIDATES)
        + " | msgspec (Py loop) ÷ meltica |"
    )
    print(header)
    print("|---|---:|---:|" + "---:|" * (len(CANDIDATES) + 1))
    for kind in KINDS:
        n = info["frames"][kind]
        per = {c: ir.get(f"{kind}|{c}", 0) / n for c in CANDIDATES}
        ratio = per["msgspec typed (Python loop)"] / per["meltica parse_batch"]
        result["kinds"][kind] = {
            "frames": n,
            "avg_bytes": info["bytes"][kind],
            "ir_per_frame": per,
            "msgspec_py_over_meltica": ratio,
        }
        cells = " | ".join(f"{per[c]:,.0f}" for c in CANDIDATES)
        print(f"| {kind} | {n} | {info['bytes'][kind]:.0f} | {cells} | {ratio:.2f}× |")
    if notes:
        print(notes)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
