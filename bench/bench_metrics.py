"""What the per-stage latency histograms cost on the per-batch paths.

Three paths, each timed with its histograms off and on in the same run
(interleaved rounds, GC off while timing, medians; ``harness.py``), one
operation = one batch:

- the Dispatcher's compiled Gate (``on_events``) with and without
  ``event_latency`` (exchange event time -> receive, once per batch);
- Data Bus publish + one consumer's ``poll`` with no latency observer, with
  the publish latency (``bus.latency``: a clock read per batch, the ring's
  publish stamp per slot), and with the consumer's delivery latency too
  (``bus.delivery_latency``: a clock read and an observation per read).

Run:  python bench/bench_metrics.py [--rounds 9] [--batches 4096] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from meltica import Event, FrameParser
from meltica._core.dispatch import DispatchTable
from meltica.bus import InMemoryDataBus
from meltica.dispatcher._gate import Gate
from meltica.telemetry.catalog import histogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure


def trades(n: int) -> list[Event]:
    parser = FrameParser()
    out: list[Event] = []
    for t in range(n):
        frame = f'{{"e":"trade","E":1,"s":"BTCUSDT","t":{t},"p":"1.5","q":"2","T":1,"m":true}}'
        (ev,) = parser.parse(frame.encode(), 2)
        assert isinstance(ev, Event)
        out.append(ev)
    return out


def gate_candidates(batches: list[list[Event]]) -> dict[str, Callable[[], object]]:
    def make(observe: bool) -> Callable[[], object]:
        gate = Gate(DispatchTable(), lambda batch: None)
        if observe:
            gate.event_latency = {"spot": histogram("exchange_latency_seconds", market="spot")}

        def run() -> None:
            on_events = gate.on_events
            for b in batches:
                on_events(b[:])  # the table filters in place: a fresh list each time

        return run

    return {"gate off": make(False), "gate on": make(True)}


def bus_candidates(batches: list[list[Event]], batch: int) -> dict[str, Callable[[], object]]:
    def make(publish_latency: bool, delivery: bool) -> Callable[[], object]:
        bus = InMemoryDataBus(1 << 16, batch_size=batch)
        if publish_latency:
            bus.latency = histogram("pipeline_latency_seconds")
        if delivery:
            bus.delivery_latency = lambda g: histogram("bus_delivery_latency_seconds", consumer=g)
        consumer = bus.subscribe("c", policy="drop_oldest")

        def run() -> None:
            publish, poll = bus.publish_batch, consumer.poll
            for b in batches:
                publish(b)
                poll(batch)

        return run

    return {
        "bus off": make(False, False),
        "bus publish latency": make(True, False),
        "bus publish+delivery latency": make(True, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batches", type=int, default=4096, help="batches per round")
    ap.add_argument("--batch", type=int, default=64, help="events per batch")
    args = ap.parse_args()
    events = trades(args.batch)
    batches = [events] * args.batches
    print(f"{args.batches} batches of {args.batch} events per round, {args.rounds} rounds")
    print("| path | ns/batch | ratio to off |")
    print("|---|---|---|")
    med = measure(gate_candidates(batches), args.batches, args.rounds)
    for name in med:
        print(f"| {name} | {med[name]:.0f} | {med[name] / med['gate off']:.3f} |")
    med = measure(bus_candidates(batches, args.batch), args.batches, args.rounds)
    for name in med:
        print(f"| {name} | {med[name]:.0f} | {med[name] / med['bus off']:.3f} |")


if __name__ == "__main__":
    main()
