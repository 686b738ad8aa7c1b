"""Trade backfill as an operator runs it: ``fake-exchange`` and ``run`` as processes.

The fake exchange (a synthetic spot market) drops 20 trade frames; the gateway, started
with ``meltica-engine run`` against it, fills them from the fake's REST by id.  Its
``/tail`` stream carries every trade id once, contiguous from the first to the last
(Binance's, and the synthetic market's, trade ids have no holes), the 20 from REST
between a ``gap`` and a ``gap_filled`` naming them, and ``/metrics`` counts them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from brokers import free_port
from fakeproc import fake_exchange

from meltica.commands.common import local_overrides

pytestmark = pytest.mark.timeout(180)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_run_fills_dropped_trades_from_rest(tmp_path: Path) -> None:
    fault = "drop:symbol=BTCUSDT,at_s=3,count=20,stream=trade"
    with fake_exchange(
        *("--markets", "spot", "--symbols", "1", "--speed", "5", "--fault", fault)
    ) as (ws, rest):
        port = free_port()
        overrides = [
            *local_overrides(
                {"spot": ws["spot"]},
                rest,
                symbols={"spot": ["btcusdt"]},
                streams={"spot": ["trade"]},
            ),
            f"telemetry.metrics_port={port}",
        ]
        cmd = [sys.executable, "-m", "meltica", "--log-level", "INFO", "run"]
        for o in overrides:
            cmd += ["--set", o]
        log_path = tmp_path / "gateway.log"
        lines: list[dict[str, Any]] = []
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 60
            while "metrics http://" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/tail?kind=trade&kind=gap&kind=gap_filled"
            resp = urllib.request.urlopen(url, timeout=60)

            def read() -> None:
                for raw in resp:
                    lines.append(json.loads(raw))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            deadline = time.monotonic() + 90
            while metric(port, "meltica_backfill_ids_filled_total") < 20:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(2)  # live trades after the fill arrive as well
            assert metric(port, "meltica_backfill_holes_total") == 1
            assert metric(port, "meltica_backfill_ids_lost_total") == 0
        finally:
            proc.terminate()
            proc.wait(60)
        reader.join(10)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    slow = [e for e in lines if e["kind"] == "gap" and e["reason"] == "slow_consumer"]
    assert slow == [], "the /tail reader fell behind: the check below would prove nothing"
    trades = [e for e in lines if e["kind"] == "trade"]
    ids = Counter(e["trade_id"] for e in trades)
    assert [i for i, n in ids.items() if n > 1] == []
    first, last = min(ids), max(ids)
    assert sorted(ids) == list(range(first, last + 1)), "a trade id is missing"
    rest_ids = [e["trade_id"] for e in trades if e.get("source") == "rest"]
    assert len(rest_ids) == 20 and rest_ids == list(range(rest_ids[0], rest_ids[0] + 20))
    gap = [e for e in lines if e["kind"] == "gap"]
    done = [e for e in lines if e["kind"] == "gap_filled"]
    assert [(e["from_seq"], e["to_seq"], e["state"]) for e in gap] == [
        (rest_ids[0], rest_ids[-1], "backfill")
    ]
    assert [(e["from_seq"], e["to_seq"], e["state"]) for e in done] == [
        (rest_ids[0], rest_ids[-1], "filled")
    ]
    pos = {id(e): i for i, e in enumerate(lines)}
    first_rest = next(e for e in trades if e.get("source") == "rest")
    last_rest = [e for e in trades if e.get("source") == "rest"][-1]
    assert pos[id(gap[0])] < pos[id(first_rest)] and pos[id(last_rest)] < pos[id(done[0])]
