"""The parser's simdjson kernel is chosen at import: both kernels, forced, parse alike.

One wheel carries simdjson's On-Demand walk twice (the portable "fallback" kernel in
the parser, the AVX2 "haswell" kernel in meltica._core._walk_haswell); the parser picks
one at import by the CPU's features, and ``MELTICA_SIMD`` forces one.  Each kernel runs
in its own interpreter (the choice is made once per process), parses the real capture
sessions with the fast path off (so that every frame goes through simdjson) plus damaged
copies of some of their frames, and prints a digest of every outcome (the events' wire
dicts, the replies, or the error's type and message); the digests must be equal.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Runs in the child: argv[1] = the captures directory.  Prints one JSON line.
CHILD = r"""
import hashlib, json, sys
from itertools import islice
from pathlib import Path

import meltica._core.parser as parser_mod
from meltica import FrameParser, Reply
from meltica.capture import capture_info, read_capture

MAX_FRAMES = 20_000
root = Path(sys.argv[1])
sessions = sorted((root / "hftbacktest" / "examples").rglob("*.gz"))
sessions += sorted((root / "cryptofeed" / "sample_data").glob("*.ws.*"))
digest = hashlib.sha256()
frames = errors = 0
for path in sessions:
    info = capture_info(path)
    p = FrameParser(venue=info.venue, market=info.market, fast_path=False)
    ws = (r.payload for r in read_capture(path) if r.kind == "ws")
    for i, frame in enumerate(islice(ws, MAX_FRAMES)):
        variants = [frame]
        if i % 97 == 0:  # damaged copies: truncated, one byte changed, trailing garbage
            variants += [frame[: len(frame) // 2], frame[:40] + b"?" + frame[41:], frame + b"]"]
        for data in variants:
            try:
                out = p.parse(data, 7)
                got = ["reply", [repr(x) if isinstance(x, Reply) else x.to_wire() for x in out]]
            except Exception as exc:
                got = ["error", type(exc).__name__, str(exc)]
                errors += 1
            digest.update(json.dumps(got, sort_keys=True, default=str).encode())
            frames += 1
print(json.dumps({
    "kernel": parser_mod.SIMD_KERNEL,
    "reason": parser_mod.SIMD_REASON,
    "implementation": FrameParser().implementation,
    "sessions": len(sessions),
    "frames": frames,
    "errors": errors,
    "digest": digest.hexdigest(),
}))
"""


def cpu_runs_haswell() -> bool:
    """What the haswell kernel needs, read from /proc/cpuinfo (independently of the parser)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            # LZCNT is reported as "abm" on both vendors' CPUs
            return {"avx2", "bmi1", "pclmulqdq", "abm", "popcnt"} <= flags
    return False


def run_child(kernel: str, *args: str) -> subprocess.CompletedProcess[str]:
    # the caller's environment (an installed package, or PYTHONPATH), plus the choice
    env = {**os.environ, "MELTICA_SIMD": kernel}
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=600
    )


def parse_with(kernel: str, captures: Path) -> dict[str, object]:
    proc = run_child(kernel, str(captures))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_both_kernels_parse_alike(captures_dir: Path) -> None:
    portable = parse_with("portable", captures_dir)
    assert portable["kernel"] == portable["implementation"] == "fallback"
    assert portable["reason"] == "MELTICA_SIMD=portable"
    assert portable["sessions"] and int(portable["frames"]) > 100_000 and portable["errors"]
    if not cpu_runs_haswell():
        unavailable("this CPU lacks AVX2, BMI1, PCLMULQDQ, LZCNT or POPCNT: no haswell kernel")
    haswell = parse_with("haswell", captures_dir)
    assert haswell["kernel"] == haswell["implementation"] == "haswell"
    assert haswell["reason"] == "MELTICA_SIMD=haswell"
    for key in ("sessions", "frames", "errors", "digest"):
        assert haswell[key] == portable[key], key


PROBE = (
    "import meltica._core.parser as p; from meltica import FrameParser; "
    "print(p.SIMD_KERNEL, FrameParser().implementation, p.SIMD_REASON, sep='|')"
)
# one frame through simdjson (the fast path off)
TRADE_PROBE = (
    'e = FrameParser(fast_path=False).parse(b\'{"stream":"btcusdt@trade","data":'
    '{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.5","q":"2",'
    '"T":1,"m":true,"M":true}}\', 5)[0]; '
    "print(e.kind, e.symbol, e.price, e.qty)"
)


@pytest.mark.parametrize("value", ["auto", ""])
def test_auto_follows_the_cpu(value: str) -> None:
    env = {**os.environ, "MELTICA_SIMD": value}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    kernel, implementation, reason = proc.stdout.strip().split("|")
    assert kernel == implementation
    if cpu_runs_haswell():
        assert (kernel, reason) == ("haswell", "auto: the CPU has AVX2")
    else:
        assert kernel == "fallback" and reason.startswith("auto: ")


def test_unknown_choice_fails_naming_the_variable() -> None:
    env = {**os.environ, "MELTICA_SIMD": "avx512"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "ImportError: MELTICA_SIMD must be auto, haswell or portable, not 'avx512'" in (
        proc.stderr
    )


# A CPU without AVX2, emulated: qemu-user (Debian package qemu-user) runs this very
# interpreter as a Westmere (SSE4.2, POPCNT, PCLMULQDQ; no AVX, BMI1 or LZCNT).
QEMU = shutil.which("qemu-x86_64")
OLD_CPU = "Westmere"


def unavailable(reason: str) -> None:
    """Skip on a workstation; fail when ``CI=true`` (CI must run every test)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


@pytest.mark.parametrize("value", ["auto", "haswell", "portable"])
def test_a_cpu_without_avx2(value: str) -> None:
    if platform.machine() != "x86_64":
        unavailable("the kernels are x86-64 ones")
    if QEMU is None:
        unavailable("qemu-x86_64 (Debian: qemu-user) is not installed")
    assert QEMU is not None
    env = {**os.environ, "MELTICA_SIMD": value}
    proc = subprocess.run(
        [QEMU, "-cpu", OLD_CPU, sys.executable, "-c", PROBE + "; " + TRADE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if value == "haswell":
        assert proc.returncode != 0
        assert "ImportError: MELTICA_SIMD=haswell, but this CPU lacks one of AVX2" in (proc.stderr)
        return
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    kernel, implementation, reason = first.split("|")
    assert kernel == implementation == "fallback"
    assert reason == (
        "MELTICA_SIMD=portable"
        if value == "portable"
        else ("auto: the CPU lacks one of AVX2, BMI1, PCLMULQDQ, LZCNT, POPCNT")
    )
    assert second == "trade BTCUSDT 1.5 2"


def test_version_names_the_kernel() -> None:
    env = {**os.environ, "MELTICA_SIMD": "portable"}
    proc = subprocess.run(
        [sys.executable, "-m", "meltica", "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("meltica-engine ")
    assert "(simdjson kernel fallback: MELTICA_SIMD=portable)" in proc.stdout
