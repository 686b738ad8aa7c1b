"""The Redis SnapshotStore (``snapshot.backend: redis``); docs/snapshot.md has the key scheme.

Every book state is two keys written together by one Lua script (`CAS_SCRIPT`,
run with ``EVALSHA``): ``<key>`` holds the v1 wire JSON of the
``book_snapshot`` and ``<key>:version`` its version (the book's update id, a
decimal string).  The script compares versions and sets both keys with the
same ``PX`` TTL, so it is atomic: an older version never overwrites a newer
one, whichever process writes first.

`RedisSnapshotWriter` keeps Redis off the hot path: the Conductor hands it
the books it fused in a batch (`offer`, no I/O), it keeps the latest state
per key in a bounded dict, and its task writes whatever is pending in one
pipeline (one ``EVALSHA`` per key, one round-trip).  A failed pipeline puts
its states back (a newer state of the same key wins) and the task retries
with a capped backoff, so writes resume when Redis returns and every key gets
its latest state in the first pipeline after that.  Nothing here ever blocks
or raises into the event flow.

`RedisSnapshotStore` is the same script behind the `AsyncSnapshotStore`
protocol (``get``/``compare_and_set``/``delete``), for readers and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from meltica import wire

__all__ = [
    "CAS_SCRIPT",
    "NO_OP",
    "REFUSED",
    "WRITTEN",
    "RedisSnapshotStore",
    "RedisSnapshotWriter",
    "redis_client",
    "redis_key",
]

log = logging.getLogger("meltica.snapshot.redis")

# CAS_SCRIPT results
REFUSED, WRITTEN, NO_OP = 0, 1, 2

# KEYS[1]: the data key, KEYS[2]: its version key.
# ARGV[1]: the new version (decimal, >= 0, no leading zeros); ARGV[2]: the value;
# ARGV[3]: the TTL in ms; ARGV[4]: the expected version: "*" any (the stored one
# must be older: equal is a no-op), "-" none (absent or expired), else that exact
# version (the new one must not be older).  Versions compare as decimal strings
# (length, then bytes), exact for any size (Lua numbers are doubles).
CAS_SCRIPT = """
local cur = redis.call('GET', KEYS[2])
local v, exp = ARGV[1], ARGV[4]
if exp == '-' then
  if cur then return 0 end
elseif exp ~= '*' then
  if cur ~= exp then return 0 end
end
if cur then
  if #cur > #v or (#cur == #v and cur > v) then return 0 end
  if exp == '*' and cur == v then return 2 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], v, 'PX', ARGV[3])
return 1
"""


def redis_key(prefix: str, store_key: str) -> str:
    """The Redis key of a store key (``venue:market:SYMBOL:book``)."""
    return f"{prefix}:{store_key}"


def redis_client(url: str, timeout_s: float) -> aioredis.Redis:
    """An asyncio client (hiredis parser when installed) that never retries by
    itself: the writer owns retries, and a command fails within `timeout_s`."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    return max(1, int(ttl_s * 1000))


def _version(version: int) -> str:
    if version < 0:
        raise ValueError(f"versions must be >= 0, got {version}")
    return str(int(version))


class RedisSnapshotStore:
    """`AsyncSnapshotStore` on Redis: values are events (stored as v1 wire
    JSON) or bytes; ``get`` returns ``(version, event)``."""

    def __init__(self, client: aioredis.Redis, *, key_prefix: str, ttl_s: float) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.ttl_ms = _ttl_ms(ttl_s)
        self._script = client.register_script(CAS_SCRIPT)

    def key(self, store_key: str) -> str:
        return redis_key(self.key_prefix, store_key)

    async def get(self, key: str) -> tuple[int, object] | None:
        k = self.key(key)
        data, version = await self.client.mget(k, k + ":version")
        if data is None or version is None:
            return None
        return int(version), wire.decode(data)

    async def compare_and_set(
        self,
        key: str,
        expected_version: int | None,
        version: int,
        value: object,
        ttl_s: float | None = None,
    ) -> bool:
        k = self.key(key)
        data = value if isinstance(value, bytes) else wire.encode(value)  # type: ignore[arg-type]
        ttl = self.ttl_ms if ttl_s is None else _ttl_ms(ttl_s)
        exp = "-" if expected_version is None else _version(expected_version)
        res = await self._script(keys=[k, k + ":version"], args=[_version(version), data, ttl, exp])
        return int(res) == WRITTEN

    async def write_newer(self, key: str, version: int, value: object) -> int:
        """The writer's compare-and-set: `WRITTEN`, `REFUSED` (stored version
        newer) or `NO_OP` (same version stored)."""
        k = self.key(key)
        data = value if isinstance(value, bytes) else wire.encode(value)  # type: ignore[arg-type]
        res = await self._script(
            keys=[k, k + ":version"], args=[_version(version), data, self.ttl_ms, "*"]
        )
        return int(res)

    async def delete(self, key: str) -> bool:
        k = self.key(key)
        return bool(await self.client.delete(k, k + ":version"))


class RedisSnapshotWriter:
    """The Conductor's book states, written to Redis off the hot path.

    `offer` (the Conductor, per batch) keeps the latest fused snapshot per key
    in ``pending`` (at most `queue_max` keys: a state of a new key beyond that
    is dropped and counted; a newer state of a pending key replaces it).  The
    task started by `start` writes everything pending in one pipeline, then
    waits for more.  While Redis fails, pending states are kept (latest wins)
    and retried after `retry_s`, doubling up to `retry_max_s`; while idle it
    pings Redis every `probe_s` so `connected` stays true to the facts.

    `lag_ns`: when a list, each written state appends ``ack - ts_recv`` (ns;
    the bench reads it).
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        ttl_s: float,
        queue_max: int,
        timeout_s: float = 1.0,
        retry_s: float = 0.05,
        retry_max_s: float = 1.0,
        probe_s: float = 1.0,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {queue_max}")
        self.url = url
        self.key_prefix = key_prefix
        self.ttl_ms = _ttl_ms(ttl_s)
        self.queue_max = queue_max
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.probe_s = probe_s
        self.client = redis_client(url, timeout_s)
        self.sha: str | None = None
        self.pending: dict[str, Any] = {}
        self.connected = False
        self.last_error: str | None = "not connected yet"
        self.lag_ns: list[int] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("writes", "refused", "no_ops", "errors", "dropped", "pipelines", "reconnects"), 0
        )

    # ------------------------------------------------------------ hot path side

    def offer(self, books: Iterable[Any]) -> None:
        """Take the latest fused snapshot of each book (no I/O, never raises)."""
        pending = self.pending
        for book in books:
            ev = book.last_fused
            if ev is None or ev.update_id < 0:
                continue
            key = book.store_key
            if key in pending or len(pending) < self.queue_max:
                pending[key] = ev
            else:
                self.counters["dropped"] += 1
        if pending and not self._wake.is_set():
            self._wake.set()

    # ------------------------------------------------------------ task

    async def start(self) -> None:
        """Start the writer task.  An unreachable Redis does not fail this: the
        writer reports not connected (``not_ready``) and keeps trying."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="snapshot-redis")

    async def stop(self) -> None:
        """Write what is pending once more (bounded by the timeout), then close."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.pending and self.connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._flush(), self.timeout_s * 2)
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def not_ready(self) -> list[str]:
        if self.connected:
            return []
        return [f"snapshot store: redis {self._where()} unreachable ({self.last_error})"]

    def stats(self) -> dict[str, int]:
        return {
            **self.counters,
            "pending": len(self.pending),
            "queue_max": self.queue_max,
            "connected": int(self.connected),
        }

    def _where(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        if "path" in kw:
            return str(kw["path"])
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    async def _run(self) -> None:
        backoff = self.retry_s
        while True:
            probe = False
            if not self.pending:
                # only an offer sets the event, and it leaves a state pending
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.probe_s)
                except TimeoutError:
                    probe = True
            try:
                if self.pending:
                    await self._flush()
                elif not probe:
                    continue
                elif not self.connected or self.sha is None:
                    await self._connect()
                else:
                    await self.client.ping()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
                continue
            backoff = self.retry_s

    async def _connect(self) -> None:
        self.sha = await self.client.script_load(CAS_SCRIPT)
        self._up()

    def _up(self) -> None:
        if not self.connected:
            if self.last_error != "not connected yet":
                self.counters["reconnects"] += 1
                log.warning("snapshot store: redis %s reachable again", self._where())
            self.connected = True
            self.last_error = None

    def _failed(self, exc: BaseException) -> None:
        self.counters["errors"] += 1
        first = self.connected or self.last_error == "not connected yet"
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if first:
            log.error(
                "snapshot store: redis %s failed (%s); book states stay queued "
                "(latest per key, at most %d keys) and are retried",
                self._where(),
                self.last_error,
                self.queue_max,
            )

    async def _flush(self) -> None:
        """One pipeline of everything pending; on failure the states go back
        (a newer state that arrived meanwhile wins) and the error propagates."""
        batch, self.pending = self.pending, {}
        try:
            if self.sha is None:
                await self._connect()
            results = await self._pipeline(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # a restarted Redis lost its script cache: load and send those again
                await self._connect()
                again = {
                    k: ev
                    for (k, ev), r in zip(batch.items(), results, strict=True)
                    if isinstance(r, NoScriptError)
                }
                redo = iter(await self._pipeline(again))
                results = [next(redo) if isinstance(r, NoScriptError) else r for r in results]
        except BaseException:
            self._requeue(batch)
            raise
        self._up()
        now = time.time_ns()
        lag = self.lag_ns
        c = self.counters
        c["pipelines"] += 1
        for ev, r in zip(batch.values(), results, strict=True):
            if isinstance(r, Exception):
                c["errors"] += 1
                if c["errors"] == 1:
                    log.error("snapshot store: redis refused a write: %s", r)
            elif r == WRITTEN:
                c["writes"] += 1
                if lag is not None:
                    lag.append(now - ev.ts_recv)
            elif r == NO_OP:
                c["no_ops"] += 1
            else:
                c["refused"] += 1

    async def _pipeline(self, batch: dict[str, Any]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        prefix, ttl, sha = self.key_prefix, self.ttl_ms, self.sha
        assert sha is not None
        encode = wire.encode
        for key, ev in batch.items():
            k = f"{prefix}:{key}"
            pipe.evalsha(sha, 2, k, k + ":version", str(ev.update_id), encode(ev), ttl, "*")
        return list(await pipe.execute(raise_on_error=False))

    def _requeue(self, batch: dict[str, Any]) -> None:
        pending = self.pending
        for key, ev in batch.items():
            if key in pending:
                continue  # a newer state arrived while the pipeline was out
            if len(pending) < self.queue_max:
                pending[key] = ev
            else:
                self.counters["dropped"] += 1
