"""``ctl`` and ``tail --nats`` take the NATS credentials and the HTTP bearer token
from the config (``--config FILE``, ``MELTICA_*`` variables), as ``run`` does.

A ``nats-server -js`` with user/password authentication; a gateway (`Engine`
in this process, against an in-process fake exchange) on ``bus.backend=nats``
with the same credentials; ``ctl`` and ``tail`` run as subprocesses with a
clean environment (no ``MELTICA_*`` variable but the ones a test sets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import nats
from aio import run
from brokers import NatsServer

from meltica import Event, FrameParser
from meltica.broker import subject_of
from meltica.commands.common import local_overrides
from meltica.config import load_config
from meltica.engine import Engine
from meltica.replay.exchange import FakeExchange
from meltica.replay.source import combined_frame
from meltica.replay.synthetic import SyntheticMarket
from meltica.wire import encode

SOURCE = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=3)
SYM_A, _ = SOURCE.symbols("spot")
USER, PASSWORD, TOKEN = "op", "pa55word", "s3cret"
HANG_GUARD_S = 120


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MELTICA_")}
    return {**env, **extra}


async def meltica(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meltica", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_ctl_takes_nats_credentials_and_token_from_the_config(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, user=USER, password=PASSWORD)
    server.start()
    full = write(
        tmp_path / "ops.yaml",
        f"nats:\n  url: {server.url}\n  user: {USER}\n  password: {PASSWORD}\n"
        f"telemetry:\n  control_token: {TOKEN}\n",
    )
    creds_only = write(tmp_path / "creds.yaml", f"nats:\n  user: {USER}\n  password: {PASSWORD}\n")
    wrong = write(
        tmp_path / "wrong.yaml",
        f"nats:\n  url: {server.url}\n  user: {USER}\n  password: not-{PASSWORD}\n",
    )

    async def scenario() -> None:
        fake = FakeExchange(SOURCE, speed=2.0)
        await fake.start()
        overrides = [
            *local_overrides(
                {"spot": fake.ws_url("spot")},
                fake.rest_url,
                symbols={"spot": [SYM_A]},
                streams={"spot": ["trade"]},
            ),
            "telemetry.metrics_port=0",
            f"telemetry.control_token={TOKEN}",
            "bus.backend=nats",
            f"nats.url={server.url}",
            f"nats.user={USER}",
            f"nats.password={PASSWORD}",
            "gateway.id=gw1",
        ]
        engine = Engine(load_config(None, env={}, overrides=overrides))
        try:
            await engine.start()
            # --nats without a URL: nats.url and the credentials of --config
            code, out, err = await meltica("ctl", "list", "--nats", "--config", full)
            assert code == 0, err
            assert [r["result"]["gateway"] for r in json.loads(out)] == ["gw1"]
            # --nats URL over the config's nats.url (the default, where no server runs)
            code, out, err = await meltica(
                "ctl", "status", "--config", creds_only, "--nats", server.url, "--gateway", "gw1"
            )
            assert code == 0, err
            assert json.loads(out)["result"]["gateway"] == "gw1"
            # --set over the file, as for run
            code, out, err = await meltica(
                "ctl", "list", "--nats", "--config", wrong, "--set", f"nats.password={PASSWORD}"
            )
            assert code == 0, err

            code, out, err = await meltica("ctl", "list", "--nats", "--config", wrong)
            assert code == 2 and out == ""
            assert "nats.user/nats.password" in one_error_line(err)
            assert PASSWORD not in err

            env = clean_env(MELTICA_NATS__USER=USER, MELTICA_NATS__PASSWORD=PASSWORD)
            code, out, err = await meltica("ctl", "list", "--nats", server.url, env=env)
            assert code == 0, err
            assert [r["result"]["gateway"] for r in json.loads(out)] == ["gw1"]
            env["MELTICA_NATS__PASSWORD"] = "nope"
            code, out, err = await meltica("ctl", "list", "--nats", server.url, env=env)
            assert code == 2 and "nats.user/nats.password" in one_error_line(err)

            # a bad config is one line naming the key, before anything is sent
            code, out, err = await meltica(
                "ctl", "list", "--nats", "--set", "nats.connect_timeout_s=0"
            )
            assert code == 2 and "nats.connect_timeout_s" in one_error_line(err)

            # over HTTP the bearer token defaults to telemetry.control_token
            assert engine.metrics is not None
            base = f"http://127.0.0.1:{engine.metrics.port}"
            code, out, err = await meltica("ctl", "status", "--url", base, "--config", full)
            assert code == 0, err
            assert json.loads(out)["ok"]
            code, out, err = await meltica("ctl", "status", "--url", base)
            assert code == 1  # refused: no token
            assert "Bearer" in json.loads(out)["error"]
        finally:
            with contextlib.suppress(Exception):
                await engine.stop()
            await fake.stop()

    try:
        run(scenario, timeout=300)
    finally:
        server.stop()


def spot_events(n: int) -> list[Event]:
    market = SyntheticMarket(markets=("spot",), symbols_per_market=2, seed=5)
    parser = FrameParser(market="spot")
    out: list[Event] = []
    for frame in market.frames():
        out += [e for e in parser.parse(combined_frame(frame), frame.ts_ns) if isinstance(e, Event)]
        if len(out) >= n:
            return out[:n]
    raise AssertionError("the synthetic market ended")


def test_tail_nats_takes_credentials_from_the_config(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, user=USER, password=PASSWORD)
    server.start()
    events = spot_events(20)
    config = write(
        tmp_path / "tail.yaml",
        f"nats:\n  url: {server.url}\n  user: {USER}\n  password: {PASSWORD}\n",
    )

    async def scenario() -> None:
        nc = await nats.connect(server.url, user=USER, password=PASSWORD)
        try:
            js = nc.jetstream()
            await js.add_stream(name="MELTICA", subjects=["meltica.binance.>"])
            for ev in events:
                subject = subject_of(ev.venue, ev.market, ev.kind, ev.symbol)
                await js.publish(subject, encode(ev), headers={"Nats-Msg-Id": ev.key})
        finally:
            await nc.close()
        want = "".join(encode(ev).decode() + "\n" for ev in events)
        tail = ("tail", "--start", "all", "--count", str(len(events)))
        code, out, err = await meltica(*tail, "--nats", "--config", config)
        assert code == 0, err
        assert out == want
        env = clean_env(MELTICA_NATS__USER=USER, MELTICA_NATS__PASSWORD=PASSWORD)
        code, out, err = await meltica(*tail, "--nats", server.url, env=env)
        assert code == 0, err
        assert out == want
        code, out, err = await meltica(*tail, "--nats", server.url)
        assert code == 2 and out == ""
        assert "refused the credentials" in one_error_line(err)  # none given

    try:
        run(scenario, timeout=HANG_GUARD_S)
    finally:
        server.stop()
