"""Data Bus ring and SnapshotStore CAS: ns per operation, medians over rounds.

Bus: one operation = one event published into the ring and handed to every
consumer (``publish_batch`` of a batch, then each consumer's ``poll``), with
1 and 4 consumers.  The baseline is the least a Python fan-out can do:
``list.extend`` of the batch into one list per consumer, then clearing it.
Store: one operation = one ``compare_and_set`` that succeeds (version + 1 on
one of 1000 keys, through the Python wrapper with its clock); the baseline is
a plain dict read-compare-write of (version, value).

Run:  python bench/bench_bus.py [--rounds 5] [--events 65536] [--batch 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from meltica import Event, FrameParser
from meltica.bus import InMemoryDataBus
from meltica.snapshot import MemorySnapshotStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure


def trades(n: int) -> list[Event]:
    parser = FrameParser()
    out: list[Event] = []
    for t in range(n):
        frame = f'{{"e":"trade","E":1,"s":"BTCUSDT","t":{t},"p":"1.5","q":"2","T":1,"m":true}}'
        (ev,) = parser.parse(frame.encode(), 1)
        assert isinstance(ev, Event)
        out.append(ev)
    return out


def bus_candidates(
    events: list[Event], batch: int, n_consumers: int
) -> dict[str, Callable[[], object]]:
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    bus = InMemoryDataBus(1 << 16, batch_size=batch)
    consumers = [bus.subscribe(f"c{i}", policy="drop_oldest") for i in range(n_consumers)]
    sinks: list[list[Event]] = [[] for _ in range(n_consumers)]

    def ring() -> None:
        publish = bus.publish_batch
        for b in batches:
            publish(b)
            for c in consumers:
                c.poll(batch)

    def baseline() -> None:
        for b in batches:
            for s in sinks:
                s.extend(b)
                s.clear()

    return {f"ring {n_consumers}c": ring, f"list.extend {n_consumers}c": baseline}


def cas_candidates(n_ops: int) -> dict[str, Callable[[], object]]:
    keys = [f"binance:spot:SYM{i}USDT" for i in range(1000)]
    store = MemorySnapshotStore(10_000, default_ttl_s=60.0)
    plain: dict[str, tuple[int, object]] = {}
    state = {"v": 0}

    def cas() -> None:
        v = state["v"]
        expected = None if v == 0 else v
        cas_ = store.compare_and_set
        for i in range(n_ops):
            if not cas_(keys[i % 1000], expected, v + 1, i, None):
                raise AssertionError("CAS failed")
            if i % 1000 == 999:
                v += 1
                expected = v
        state["v"] = v

    pstate = {"v": 0}

    def dict_cas() -> None:
        v = pstate["v"]
        for i in range(n_ops):
            k = keys[i % 1000]
            cur = plain.get(k)
            if (cur[0] if cur is not None else 0) != v:
                raise AssertionError("dict CAS failed")
            plain[k] = (v + 1, i)
            if i % 1000 == 999:
                v += 1
        pstate["v"] = v

    return {"store CAS": cas, "dict CAS": dict_cas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--events", type=int, default=65536, help="events per round")
    ap.add_argument("--batch", type=int, default=64, help="events per published batch")
    ap.add_argument("--json", help="also write the medians to this JSON file")
    args = ap.parse_args()
    events = trades(args.events)
    result: dict[str, object] = {"events": args.events, "batch": args.batch, "rounds": args.rounds}
    print(f"{args.events} events per round, batches of {args.batch}, {args.rounds} rounds")
    for n in (1, 4):
        med = measure(bus_candidates(events, args.batch, n), len(events), args.rounds)
        ring, base = med[f"ring {n}c"], med[f"list.extend {n}c"]
        result[f"bus_{n}c"] = {"ring_ns": ring, "list_extend_ns": base, "ratio": ring / base}
        print(
            f"  {n} consumer(s): ring publish+poll {ring:6.1f} ns/event"
            f"   list.extend fan-out {base:6.1f} ns/event   ratio {ring / base:4.2f}"
        )
    n_ops = 100_000
    med = measure(cas_candidates(n_ops), n_ops, args.rounds)
    cas, plain = med["store CAS"], med["dict CAS"]
    result["cas"] = {"store_ns": cas, "dict_ns": plain, "ratio": cas / plain}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"  SnapshotStore CAS {cas:6.1f} ns/call   dict CAS {plain:6.1f} ns/call"
        f"   ratio {cas / plain:4.2f}"
    )


if __name__ == "__main__":
    main()
