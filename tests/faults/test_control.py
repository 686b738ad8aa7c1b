"""Control-plane abuse over HTTP (``POST /control``): huge, malformed, unauthenticated
and floods of requests while the market runs.

Every request gets a ``ControlReply`` with the documented status, every refusal is
counted, the endpoint answers a good request afterwards, and the data plane does not
notice: the run meets every user-level check.  (The same over NATS: test_brokers.py.)
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from typing import Any

import aiohttp
from fault_harness import Outcome, Scenario, run_fault

from meltica.engine import Engine

TOKEN = "fault-suite-token"
FLOOD = 600


def _abuse(seen: dict[str, Any]) -> Any:
    async def during(engine: Engine, out: Outcome) -> None:
        assert engine.metrics is not None
        url = f"{engine.metrics.url}/control"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:

            async def post(
                body: bytes | str | io.BytesIO, headers: dict[str, str] | None = None
            ) -> Any:
                async with http.post(url, data=body, headers=headers) as resp:
                    return resp.status, json.loads(await resp.text())

            good = json.dumps({"op": "status"})
            seen["no_token"] = await post(good)
            seen["bad_token"] = await post(good, {"Authorization": "Bearer nope"})
            seen["huge"] = await post(io.BytesIO(b"{" + b" " * (2 << 20) + b"}"), auth)
            seen["not_json"] = await post(b"\xff\xfe{{{", auth)
            seen["unknown_op"] = await post(json.dumps({"op": "explode"}), auth)
            seen["bad_field"] = await post(json.dumps({"op": "book", "depth": -3}), auth)
            # a flood: many at once, a mix of reads, idempotent subscribes and bad symbols
            bodies = [
                {"op": "status"},
                {"op": "list"},
                {
                    "op": "subscribe",
                    "market": "spot",
                    "symbols": ["BTCUSDT"],
                    "channels": ["trade"],
                },
                {
                    "op": "subscribe",
                    "market": "spot",
                    "symbols": ["NOPEUSDT"],
                    "channels": ["trade"],
                },
            ]
            seen["flood"] = await asyncio.gather(
                *(post(json.dumps(bodies[i % len(bodies)]), auth) for i in range(FLOOD))
            )
            seen["after"] = await post(good, auth)

    return during


def test_control_plane_abuse_over_http_is_refused_counted_and_harmless() -> None:
    seen: dict[str, Any] = {}
    out = run_fault(Scenario(during=_abuse(seen), overrides=[f"telemetry.control_token={TOKEN}"]))
    statuses = {k: v[0] for k, v in seen.items() if k != "flood"}
    assert statuses == {
        "no_token": 401,
        "bad_token": 403,
        "huge": 413,
        "not_json": 400,
        "unknown_op": 400,
        "bad_field": 400,
        "after": 200,
    }
    for name in statuses:
        assert seen[name][1]["ok"] is (name == "after"), seen[name]
    flood = seen["flood"]
    assert len(flood) == FLOOD and all(status == 200 for status, _ in flood)
    outcomes = Counter(
        "ok" if r["ok"] else ("full" if "full" in r["error"] else "refused") for _, r in flood
    )
    # the unknown symbol is refused; a request beyond the bus's max_pending is turned away
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes
    assert out.metric("meltica_control_http_unauthorized_total") == 1
    assert out.metric("meltica_control_http_forbidden_total") == 1
    assert out.metric("meltica_control_http_oversized_total") == 1
    assert out.metric("meltica_control_http_malformed_total") == 3
    assert out.metric("meltica_control_full_total") == outcomes["full"]
    assert out.metric("meltica_control_crashes_total") == 0
    assert out.disconnects() == {}
    out.assert_user_properties()
