"""Running a test's coroutine on a fresh event loop, the way the gateway runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 300, *, loop: str = "uvloop") -> T:
    """Run on a fresh ``loop`` ("uvloop" or "asyncio") within ``timeout`` s; an exception
    reaching the loop's handler (a task that died unobserved, a failing callback) fails
    the test."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    errors: list[dict[str, Any]] = []

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        return await asyncio.wait_for(coro_fn(), timeout)

    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(main())
    assert not errors, f"loop exception handler fired: {errors}"
    return result
