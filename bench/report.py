"""Regenerate the published benchmark report: run the benches, keep their JSON, rewrite the tables.

Every bench script below writes its medians with ``--json`` to ``bench/results/<name>.json``
(stdout beside it as ``<name>.txt``); this script then rewrites each table of
``docs/benchmarks.md`` between its ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``
markers from those files, plus the machine section and the PNG charts (when matplotlib, the
``plot`` extra, is installed).  The options below are the reduced run lengths the committed
results were measured with; each table's command is printed in the report.

    python bench/report.py                       # run every bench, then rewrite the report
    python bench/report.py --only parse,bus      # run some, rewrite all from the JSON present
    python bench/report.py --no-run              # rewrite from the committed JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

# name -> the command (from the repository root) that writes bench/results/<name>.json
BENCHES: dict[str, list[str]] = {
    "parse": ["bench/bench_parse.py", "--rounds", "7", "--json", "bench/results/parse.json"],
    "book": ["bench/bench_book.py", "--rounds", "5", "--json", "bench/results/book.json"],
    "bus": ["bench/bench_bus.py", "--rounds", "5", "--json", "bench/results/bus.json"],
    "control_plane": [
        "bench/bench_control_plane.py",
        "--cycles",
        "100",
        "--no-progress",
        "--json",
        "bench/results/control_plane.json",
    ],
    "e2e": [
        "bench/bench_e2e.py",
        "--quick",
        "--json",
        "bench/results/e2e.json",
        "--png",
        "bench/results/e2e-latency.png",
    ],
    "nats": [
        "bench/bench_nats.py",
        "--events",
        "100000",
        "--rounds",
        "3",
        "--seconds",
        "3",
        "--json",
        "bench/results/nats.json",
    ],
    "redis": [
        "bench/bench_redis.py",
        "--rounds",
        "3",
        "--seconds",
        "2",
        "--json",
        "bench/results/redis.json",
    ],
    # the whole market on one process, about 20 minutes (docs/benchmarks.md, "Full market");
    # the per-kind curve (another 13) is run on its own: --no-whole-feed --speeds ''
    "full_market": [
        "bench/bench_full_market.py",
        "--kinds=",
        "--speeds",
        "8,16,20,24",
        "--json",
        "bench/results/full_market.json",
        "--png",
        "bench/results/full_market.png",
    ],
    # instructions, not time: needs valgrind and a C compiler
    "parse_ir": [
        "bench/micro/parse_ir.py",
        "--frames",
        "2000",
        "--json",
        "bench/results/parse_ir.json",
    ],
}


def command(name: str) -> str:
    return "PYTHONPATH=. python " + " ".join(BENCHES[name])


def run(name: str) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    t0 = time.monotonic()
    print(f"== {name}: {command(name)}", flush=True)
    with open(RESULTS / f"{name}.txt", "w") as out:
        proc = subprocess.run(
            [sys.executable, *BENCHES[name]], cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    if proc.returncode != 0:
        # a bench exits non-zero when a budget it checks is missed; its JSON still stands
        print(f"   {name} exited {proc.returncode}:\n{proc.stderr[-2000:]}", flush=True)
    return time.monotonic() - t0


# ---------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- tables


def load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def md(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def n0(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def n2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def t_machine(m: dict[str, Any]) -> str:
    spec = md(
        ["CPU of the latest run (/proc/cpuinfo)", "cores", "kernel", "Python"],
        [[m["cpu_model"], str(m["cores"]), m["kernel"], m["python"]]],
    )
    runs = md(
        ["bench", "run at (UTC)", "seconds", "load average 1/5/15 min after it", "CPU", "kernel"],
        [
            [
                n,
                r["date_utc"],
                n0(r["seconds"]),
                " / ".join(f"{x:.2f}" for x in r["load_after"]),
                r.get("cpu_model", "not recorded"),
                r.get("kernel", "not recorded"),
            ]
            for n, r in m.get("runs", {}).items()
        ],
    )
    return f"{spec}\n\n{runs}"


def t_parse(r: dict[str, Any]) -> str:
    rows = [
        [
            k,
            str(v["frames"]),
            n0(v["avg_bytes"]),
            n0(v["meltica_c_loop_ns"]),
            n0(v["meltica_simdjson_only_ns"]),
            n0(v["msgspec_typed_ns"]),
            n2(v["speedup_vs_msgspec"]) + "×",
        ]
        for k, v in r.items()
    ]
    header = ["kind", "frames", "avg bytes", "meltica ns/frame", "simdjson-only path ns/frame"]
    return md([*header, "msgspec typed ns/frame", "msgspec ÷ meltica"], rows)


def t_book(r: dict[str, Any]) -> str:
    rows = [[k, n0(v)] for k, v in r["ns_per_frame"].items()]
    return md(["stage", "ns/frame"], rows)


def t_bus(r: dict[str, Any]) -> str:
    rows = []
    for n in (1, 4):
        b = r[f"bus_{n}c"]
        rows.append(
            [f"ring publish + poll, {n} consumer(s)", n2(b["ring_ns"]),
             f"list.extend fan-out: {n2(b['list_extend_ns'])}", n2(b["ratio"])]
        )  # fmt: skip
    c = r["cas"]
    rows.append(
        ["SnapshotStore compare-and-set", n2(c["store_ns"]), f"dict: {n2(c['dict_ns'])}",
         n2(c["ratio"])]
    )  # fmt: skip
    return md(["operation", "ns/op", "baseline ns/op", "ratio"], rows)


def t_control_plane(r: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("subscribe_reply", "subscribe -> reply"),
        ("subscribe_first_event", "subscribe -> first event at a bus consumer"),
        ("unsubscribe_reply", "unsubscribe -> reply"),
        ("delivery_gap", "live stream: gap between deliveries"),
    ):
        d = r[key]
        rows.append([label, str(d["n"]), n2(d["p50_ms"]), n2(d["p99_ms"]), n2(d["max_ms"])])
    table = md(["measure", "n", "p50 ms", "p99 ms", "max ms"], rows)
    return (
        f"{table}\n\n{r['transport']} transport, {r['symbols']} synthetic spot symbols, "
        f"{r['lanes']} lanes, {r['cycles']} cycles; events received after an unsubscribe reply: "
        f"{r['violations']}; budget p99 subscribe -> first event ≤ {r['budget_ms']:g} ms: "
        f"{'met' if r['budget_ok'] else 'MISSED'}; CPU: fake exchange "
        f"{r['fake_cpu_pct']:.0f} %, gateway {r['gateway_cpu_pct']:.0f} % of a core."
    )


def t_e2e(r: dict[str, Any]) -> str:
    # bench_e2e.py renders its own table; keep it from its header row on
    lines = r["table"].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    return "\n".join(lines[start:])


def t_nats(r: dict[str, Any]) -> str:
    p = r["publish_rate"]
    who = list(p["events_per_s"])
    rows = [
        [w, n0(p["events_per_s"][w]), n2(p["client_cpu_us_per_event"][w]),
         n2(p["server_cpu_us_per_event"][w])]
        for w in who
    ]  # fmt: skip
    rate = md(
        ["publisher", "events/s (median)", "client µs CPU/event", "server µs CPU/event"], rows
    )
    lat = md(
        ["target events/s", "achieved", "received", "p50 µs", "p99 µs"],
        [
            [n0(x["target_events_per_s"]), n0(x["achieved_events_per_s"]), n0(x["received"]),
             n0(x["p50_us"]), n0(x["p99_us"])]
            for x in r.get("latency", [])
        ],
    )  # fmt: skip
    return (
        f"Publish rate, {p['events']:,} events a round, {p['rounds']} rounds: gateway ÷ nats-py "
        f"{n2(p['ratio_gateway_vs_natspy'])}, server floor ÷ nats-py "
        f"{n2(p['ratio_floor_vs_natspy'])}.\n\n{rate}\n\nLatency, gateway publisher to a core "
        f"NATS subscriber:\n\n{lat}"
    )


def t_redis(r: dict[str, Any]) -> str:
    lag = md(
        ["candidate", "states", "written", "write lag p50 µs", "write lag p99 µs"],
        [
            [n, n0(v["states"]), n0(v["written"]), n0(v["p50_us"]), n0(v["p99_us"])]
            for n, v in r["default_load"].items()
        ],
    )
    base = r["capacity"]["bare"]["states_per_s"]
    cap = md(
        ["candidate", "book states/s", "Redis writes/s", "states/s ÷ bare"],
        [
            [n, n0(v["states_per_s"]), n0(v["redis_writes_per_s"]), n2(v["states_per_s"] / base)]
            for n, v in r["capacity"].items()
        ],
    )
    hot = r["hot_path_ns"]
    return (
        f"Default load ({r['books']} books, {r['rounds']} rounds of {r['seconds']:g} s):\n\n"
        f"{lag}\n\nCapacity ({r['batches']:,} batches as fast as possible):\n\n{cap}\n\n"
        f"Hot path per one-book batch: `writer.offer` {n0(hot['offer'])} ns, the in-memory "
        f"store's compare-and-set {n0(hot['memory_cas'])} ns."
    )


def t_parse_ir(r: dict[str, Any]) -> str:
    kinds = r["kinds"]
    cands = list(next(iter(kinds.values()))["ir_per_frame"])
    rows = [
        [k, n0(v["avg_bytes"]), *(n0(v["ir_per_frame"][c]) for c in cands),
         n2(v["msgspec_py_over_meltica"]) + "×"]
        for k, v in kinds.items()
    ]  # fmt: skip
    return md(["kind", "avg bytes", *cands, "msgspec ÷ meltica (Ir)"], rows)


def t_full_market(r: dict[str, Any]) -> str:
    """The benchmark's own tables (``table_md``), its headings one level under the doc's."""
    out = []
    for line in r["table_md"].splitlines():
        if line == "## Full market":
            continue
        out.append("#### " + line[3:] if line.startswith("## ") else line)
    return "\n".join(out).strip("\n") + "\n"


def t_micro(r: dict[str, Any]) -> str:
    rows = [[f"`{k}`", f"{v:.3f}"] for k, v in r["ratios"].items()]
    return md(["pair (op[detail]-inputs)", "ours ÷ baseline median"], rows)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def t_generic(r: Any) -> str:
    """Every numeric leaf of a result, by its dotted path (for results without a table here)."""
    rows = [
        [f"`{k}`", f"{v:,.3g}" if isinstance(v, float) else str(v)]
        for k, v in _flat(r).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return md(["result", "value"], rows)


TABLES: dict[str, Callable[[Any], str]] = {
    "parse": t_parse,
    "book": t_book,
    "bus": t_bus,
    "control_plane": t_control_plane,
    "e2e": t_e2e,
    "nats": t_nats,
    "redis": t_redis,
    "parse_ir": t_parse_ir,
    "full_market": t_full_market,
}


def render(name: str) -> str:
    r = load(name)
    if r is None:
        return "No results committed."
    try:
        table = TABLES.get(name, t_generic)(r)
    except (KeyError, TypeError) as exc:
        table = f"(results in an unexpected layout: {exc!r})"
    return f"`{command(name)}`\n\n{table}"


# ---------------------------------------------------------------- charts


def charts() -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    parse = load("parse")
    if parse:
        kinds = list(parse)
        xs = range(len(kinds))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        w = 0.4
        ax.bar([x - w / 2 for x in xs], [parse[k]["meltica_c_loop_ns"] for k in kinds], w,
               label="meltica")  # fmt: skip
        ax.bar([x + w / 2 for x in xs], [parse[k]["msgspec_typed_ns"] for k in kinds], w,
               label="msgspec typed decode")  # fmt: skip
        ax.set_xticks(list(xs), kinds)
        ax.set_ylabel("ns per frame (median)")
        ax.set_title("frame -> event, same frames, same run")
        ax.legend()
        fig.tight_layout()
        path = RESULTS / "parse.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------- the document


def rewrite(doc: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- report:{name} -->\n).*?(<!-- /report:{name} -->)", re.S)
    if not pat.search(doc):
        raise SystemExit(f"{DOC.name}: markers for {name!r} not found")
    return pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated benches to run (default: all)")
    ap.add_argument("--no-run", action="store_true", help="only rewrite from bench/results")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = list(BENCHES) if not args.only else args.only.split(",")
    for n in names:
        if n not in BENCHES:
            raise SystemExit(f"unknown bench {n!r} (one of {', '.join(BENCHES)})")
    if not args.no_run:
        m = machine()
        m["runs"] = (load("machine") or {}).get("runs", {})
        for n in names:
            date = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            took = run(n)
            load_after = [round(x, 2) for x in os.getloadavg()]
            m["runs"][n] = {
                "date_utc": date,
                "seconds": took,
                "load_after": load_after,
                "cpu_model": m["cpu_model"],
                "kernel": m["kernel"],
            }
            (RESULTS / "machine.json").write_text(json.dumps(m, indent=2) + "\n")
    doc = DOC.read_text()
    m = load("machine")
    if m:
        doc = rewrite(doc, "machine", t_machine(m))
    for n in BENCHES:
        doc = rewrite(doc, n, render(n))
    micro = ROOT / "bench" / "micro" / "baseline.json"
    if micro.is_file():
        body = json.loads(micro.read_text())
        doc = rewrite(doc, "micro", f"`{body['command']}`\n\n{t_micro(body)}")
    DOC.write_text(doc)
    for p in charts():
        print(f"wrote {p.relative_to(ROOT)}")
    print(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
