"""Connecting goes wrong: a certificate nobody vouches for, a host name that does not
resolve, a socket that accepts and never answers.

The gateway must refuse the untrusted TLS server (and connect once the certificate is
trusted: the refusal is about trust), count every failed attempt, say why it is not ready,
keep trying, and, for a time-out at runtime, come back and keep flowing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aio import run
from fault_harness import Outcome, Scenario, engine_overrides, run_fault, scrape
from netfaults import Proxy, self_signed

from meltica.config import load_config
from meltica.control import ControlRequest
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange


async def _connect_failures(ws_url: str, attempts: int = 2) -> tuple[Outcome, dict[str, int]]:
    """A gateway whose spot WebSocket URL is ``ws_url``: subscribe, wait for ``attempts``
    failed connects, then read /readyz and /metrics.  Also returns the fake's counters."""
    sc = Scenario()
    source = sc.source()
    fake = FakeExchange(source, speed=sc.speed, start="manual")
    await fake.start()
    overrides = [*engine_overrides(fake, source, sc, ws_urls={"spot": ws_url})]
    overrides.append("binance.ack_timeout_s=0.5")  # the WebSocket handshake's time-out too
    engine = Engine(load_config(None, env={}, overrides=overrides), subscribe_on_start=False)
    out = Outcome(scenario=sc, reference=None)  # type: ignore[arg-type]
    try:
        await engine.start()
        sub = asyncio.get_running_loop().create_task(
            engine.request(
                ControlRequest(
                    "subscribe", market="spot", symbols=("BTCUSDT",), channels=("trade",)
                )
            )
        )
        mgr = engine.managers["spot"]
        for _ in range(400):
            if mgr.stats()["connect_failures"] >= attempts:
                break
            await asyncio.sleep(0.05)
        out.not_ready = engine.not_ready()
        await scrape(engine, out)
        out.manager_stats = {"spot": mgr.stats()}
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
    finally:
        await engine.stop()
        await fake.stop()
    return out, {"connections": fake.ws["spot"].counters.connections_opened}


def _assert_refused(out: Outcome, fake: dict[str, int]) -> None:
    st = out.manager_stats["spot"]
    assert st["connect_failures"] >= 2 and st["connections"] == 0
    assert out.metric("meltica_ws_connect_failures_total", market="spot") >= 2
    assert out.metric("meltica_ws_connections", market="spot") == 0
    status, body = out.readyz
    assert status == 503 and "spot: no connection" in body
    assert fake["connections"] == 0  # nothing reached the exchange


def test_a_self_signed_wss_server_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def scenario(trusted: bool) -> tuple[Outcome | None, dict[str, int], Proxy]:
        sc = Scenario(duration_s=3.0)
        source = sc.source()
        fake = FakeExchange(source, speed=sc.speed, start="manual")
        await fake.start()
        target = urlsplit(fake.ws_url("spot"))
        proxy = Proxy((target.hostname or "127.0.0.1", target.port or 0), tls=tls)
        await proxy.start()
        url = f"wss://127.0.0.1:{proxy.port}{target.path}"
        try:
            if not trusted:
                out, counters = await _connect_failures(url)
                return out, counters, proxy
            # the control: the same server, its certificate trusted, serves the gateway
            overrides = engine_overrides(fake, source, sc, ws_urls={"spot": url})
            engine = Engine(load_config(None, env={}, overrides=overrides))
            try:
                await engine.start()
                assert engine.managers["spot"].stats()["connections"] == 1
            finally:
                await engine.stop()
            return None, {"connections": fake.ws["spot"].counters.connections_opened}, proxy
        finally:
            await proxy.stop()
            await fake.stop()

    out, counters, proxy = run(lambda: scenario(False), timeout=60)
    assert out is not None
    _assert_refused(out, counters)
    # the gateway broke off every TLS handshake: none completed, nothing was forwarded
    assert proxy.accepted == 0 and proxy.piped == 0
    # trusted (SSL_CERT_FILE is read when the default context is made): it connects
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    _, counters, proxy = run(lambda: scenario(True), timeout=60)
    assert counters["connections"] == 1 and proxy.piped == 1


def test_an_unresolvable_host_is_retried_and_reported() -> None:
    out, counters = run(lambda: _connect_failures("wss://nonexistent.invalid:9443/"), timeout=60)
    _assert_refused(out, counters)


def test_a_handshake_that_never_completes_times_out_and_is_retried() -> None:
    async def scenario() -> tuple[Outcome, dict[str, int], Proxy]:
        proxy = Proxy(("127.0.0.1", 9))  # never piped: blackhole
        proxy.mode = "blackhole"
        await proxy.start()
        try:
            out, counters = await _connect_failures(f"ws://127.0.0.1:{proxy.port}/")
        finally:
            await proxy.stop()
        return out, counters, proxy

    out, counters, proxy = run(scenario, timeout=60)
    _assert_refused(out, counters)
    assert proxy.swallowed >= 2


def test_connect_time_outs_at_runtime_then_the_gateway_comes_back() -> None:
    """Mid-run the link is cut and, until two handshakes have timed out, every new
    connection is swallowed (accepted, never answered); the gateway says it is not
    ready meanwhile, and once connections complete again it flows and heals."""
    seen: dict[str, tuple[int, str]] = {}
    proxies: list[Proxy] = []

    async def route(fake: FakeExchange) -> tuple[dict[str, str], Callable[[], Awaitable[None]]]:
        target = urlsplit(fake.ws_url("spot"))
        proxy = Proxy((target.hostname or "127.0.0.1", target.port or 0))
        await proxy.start()
        proxies.append(proxy)
        return {"spot": f"ws://127.0.0.1:{proxy.port}{target.path}"}, proxy.stop

    async def during(engine: Engine, out: Outcome) -> None:
        (proxy,) = proxies
        await asyncio.sleep(1.0)
        proxy.mode = "blackhole"
        proxy.cut()
        mgr = engine.managers["spot"]
        for _ in range(200):
            if mgr.stats()["connect_failures"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert engine.metrics is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{engine.metrics.url}/readyz") as resp,
        ):
            seen["readyz"] = (resp.status, await resp.text())
        proxy.mode = "pipe"

    out = run_fault(
        Scenario(
            route=route, during=during, duration_s=8.0, overrides=["binance.ack_timeout_s=0.5"]
        )
    )
    status, body = seen["readyz"]
    assert status == 503 and "spot: no connection" in body
    assert out.metric("meltica_ws_connect_failures_total", market="spot") >= 2
    assert proxies[0].swallowed >= 2
    out.assert_recovered_properties()
