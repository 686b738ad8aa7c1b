"""Pieces the gateway commands share: the log level from the config, pointing a
config at a local fake exchange, and running a fake exchange in its own process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO, cast

from meltica import log
from meltica.config import Config
from meltica.errors import MelticaError


class FakeExchangeError(MelticaError, RuntimeError):
    """The local fake exchange did not start."""

    reason = "fake_exchange"


def open_output(stack: ExitStack, path: str | None) -> BinaryIO | None:
    """Where a command writes its events: stdout for None or ``-``, else ``path``
    opened for writing (closed with ``stack``); None after printing the one-line
    error of a path that cannot be written (the caller exits 2)."""
    if path in (None, "-"):
        return cast(BinaryIO, sys.stdout.buffer)
    try:
        return cast(BinaryIO, stack.enter_context(open(path, "wb")))
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return None


def apply_log_level(args: argparse.Namespace, config: Config) -> None:
    """Log at the config's ``log.level`` and in its ``log.format`` unless
    ``--log-level`` / ``--log-format`` was given (the CLI configured logging from
    the flags or the environment already)."""
    flag_level = getattr(args, "log_level", None)
    flag_format = getattr(args, "log_format", None)
    log.configure(
        flag_level or config.log.level, None if flag_format is not None else config.log.format
    )


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(items) + "]"


def local_overrides(
    ws_urls: Mapping[str, str],
    rest_url: str,
    *,
    symbols: Mapping[str, Sequence[str]] | None = None,
    streams: Mapping[str, Sequence[str]] | None = None,
    recorded_snapshots: bool = False,
) -> list[str]:
    """Config overrides that point the gateway at a fake exchange on loopback.

    Only the markets in ``ws_urls`` are enabled.  USD-M uses the routed
    ``/public`` and ``/market`` paths under its URL, as Binance does.
    ``recorded_snapshots``: the fake replays a capture, whose REST snapshots are
    recordings that can be older than the diffs received before the request, so
    every diff is kept while a snapshot waits (``conductor.snapshot_wait_tail=0``).
    """
    out = [f"binance.markets={_yaml_list(sorted(ws_urls))}"]
    if recorded_snapshots:
        out.append("conductor.snapshot_wait_tail=0")
    for market, url in ws_urls.items():
        out.append(f"binance.{market}.ws_url={url}")
        out.append(f"binance.{market}.rest_url={rest_url}")
        if market == "spot":
            out.append("binance.spot.market_data_only=false")
        if symbols and symbols.get(market):
            out.append(
                f"binance.{market}.symbols={_yaml_list([s.lower() for s in symbols[market]])}"
            )
        if streams and streams.get(market):
            out.append(f"binance.{market}.streams={_yaml_list(list(streams[market]))}")
    return out


@dataclass
class FakeProcess:
    """A ``meltica-engine fake-exchange`` child process and the URLs it printed."""

    proc: asyncio.subprocess.Process
    ws_urls: dict[str, str]
    rest_url: str

    @classmethod
    async def start(cls, args: Sequence[str], *, timeout_s: float = 30.0) -> FakeProcess:
        """Start ``python -m meltica fake-exchange ARGS`` and wait for its URLs.

        ``-P``: the child imports the same Meltica as this process, never a source
        tree that happens to be the working directory.  Its stderr goes to a
        temporary file, quoted in the error when it does not come up.
        """
        with tempfile.TemporaryFile() as errors:  # the child keeps its own handle
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "meltica",
                "--log-level",
                "WARNING",
                "fake-exchange",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
            ws: dict[str, str] = {}
            rest = ""
            try:
                async with asyncio.timeout(timeout_s):
                    assert proc.stdout is not None
                    while not rest:
                        line = (await proc.stdout.readline()).decode()
                        if not line:
                            await proc.wait()
                            errors.seek(0)
                            tail = errors.read()[-2000:].decode(errors="replace").strip()
                            raise FakeExchangeError(
                                f"the fake exchange exited ({proc.returncode}) before it was "
                                "ready" + (f": {tail}" if tail else "")
                            )
                        head, _, url = line.strip().partition(": ")
                        if head.startswith("ws "):
                            ws[head[3:]] = url
                        elif head == "rest":
                            rest = url
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        return cls(proc, ws, rest)

    async def stop(self) -> None:
        """Terminate the child (idempotent)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
