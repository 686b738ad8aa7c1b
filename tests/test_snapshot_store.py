"""SnapshotStore: compare-and-set, versions, TTL with an injected clock, bounds."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meltica.errors import MelticaError
from meltica.snapshot import (
    AsyncSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
    SnapshotStoreFull,
    as_async,
)

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def store(max_entries: int = 100, ttl: float | None = None) -> tuple[MemorySnapshotStore, Clock]:
    clock = Clock()
    return MemorySnapshotStore(max_entries, default_ttl_s=ttl, clock=clock), clock


def test_protocols() -> None:
    s, _ = store()
    assert isinstance(s, SnapshotStore)
    assert isinstance(as_async(s), AsyncSnapshotStore)


def test_cas_create_update_and_mismatch() -> None:
    s, _ = store()
    assert s.get("k") is None
    assert s.compare_and_set("k", None, 10, "v10")
    assert s.get("k") == (10, "v10")
    assert not s.compare_and_set("k", None, 11, "x")  # exists: None expects absent
    assert not s.compare_and_set("k", 9, 11, "x")  # wrong expected version
    assert s.compare_and_set("k", 10, 12, "v12")
    assert s.compare_and_set("k", 12, 12, "v12b")  # same version: allowed
    assert not s.compare_and_set("k", 12, 11, "old")  # older than current: refused
    assert s.get("k") == (12, "v12b")
    assert not s.compare_and_set("other", 5, 6, "x")  # absent but a version expected
    assert s.stats()["mismatches"] == 4 and s.stats()["sets"] == 3


def test_old_writer_never_overwrites_newer_state() -> None:
    """Two writers read the same version; the newer one wins whichever order they commit."""
    for new_first in (True, False):
        s, _ = store()
        s.compare_and_set("book", None, 100, "v100")
        seen = s.get("book")
        assert seen is not None
        expected = seen[0]
        writes = [("new", 120), ("old", 110)]
        if not new_first:
            writes.reverse()
        results = {who: s.compare_and_set("book", expected, v, who) for who, v in writes}
        if new_first:
            assert results == {"new": True, "old": False}
            assert s.get("book") == (120, "new")
        else:
            # the old writer committed first (it was current then); the new one retries
            assert results == {"old": True, "new": False}
            assert s.compare_and_set("book", 110, 120, "new")
            assert not s.compare_and_set("book", 110, 115, "old again")
            assert s.get("book") == (120, "new")


def test_ttl_expiry_with_injected_clock() -> None:
    s, clock = store(ttl=5.0)
    assert s.compare_and_set("k", None, 1, "a")
    assert s.compare_and_set("p", None, 1, "forever", ttl_s=None)  # default ttl: 5 s
    assert s.compare_and_set("long", None, 1, "b", ttl_s=60.0)
    clock.now += 5 * S - 1
    assert s.get("k") == (1, "a")
    clock.now += 1
    assert s.get("k") is None
    assert s.get("p") is None
    assert s.get("long") == (1, "b")
    # expired counts as absent: None succeeds, the old version does not
    assert not s.compare_and_set("k", 1, 2, "x")
    assert s.compare_and_set("k", None, 0, "fresh")
    assert s.get("k") == (0, "fresh")
    # a rewrite extends the life
    clock.now += 4 * S
    assert s.compare_and_set("k", 0, 1, "again")
    clock.now += 4 * S
    assert s.get("k") == (1, "again")


def test_no_ttl_never_expires_and_bad_ttl_raises() -> None:
    s, clock = store()
    assert s.compare_and_set("k", None, 1, "a")
    clock.now += 10**9 * S
    assert s.get("k") == (1, "a")
    with pytest.raises(ValueError, match="ttl_s"):
        s.compare_and_set("k", 1, 2, "b", ttl_s=0)
    with pytest.raises(ValueError, match="int64"):
        s.compare_and_set("k", 1, 2**63, "b")
    with pytest.raises(ValueError, match="ttl_s must be"):
        MemorySnapshotStore(default_ttl_s=-1)


def test_delete() -> None:
    s, clock = store(ttl=1.0)
    s.compare_and_set("k", None, 1, "a")
    assert s.delete("k")
    assert not s.delete("k")
    assert s.get("k") is None
    s.compare_and_set("k", None, 1, "a")
    clock.now += S
    assert not s.delete("k")  # expired: nothing live to delete


def test_bounded_size_sweeps_expired_then_refuses() -> None:
    s, clock = store(max_entries=3, ttl=1.0)
    for k in "abc":
        assert s.compare_and_set(k, None, 1, k)
    with pytest.raises(SnapshotStoreFull) as info:
        s.compare_and_set("d", None, 1, "d")
    assert isinstance(info.value, MelticaError) and isinstance(info.value, BufferError)
    assert s.stats()["refused"] == 1
    assert s.compare_and_set("a", 1, 2, "a2")  # existing keys still update when full
    clock.now += S  # b and c expire; a (rewritten later) too
    assert s.compare_and_set("d", None, 1, "d")  # room made by sweeping
    assert len(s) == 1 and s.stats()["expired"] == 3
    assert s.get("d") == (1, "d")


def test_async_adapter() -> None:
    async def main() -> None:
        s, _ = store()
        a = as_async(s)
        assert await a.compare_and_set("k", None, 1, "v")
        assert await a.get("k") == (1, "v")
        assert not await a.compare_and_set("k", 0, 2, "w")
        assert await a.delete("k")

    asyncio.run(main())


class Model:
    """The obviously-correct reference: a dict of (version, value, deadline)."""

    def __init__(self, ttl_ns: int) -> None:
        self.d: dict[str, tuple[int, object, int]] = {}
        self.ttl_ns = ttl_ns

    def live(self, key: str, now: int) -> tuple[int, object, int] | None:
        e = self.d.get(key)
        return e if e is not None and e[2] > now else None

    def get(self, key: str, now: int) -> tuple[int, object] | None:
        e = self.live(key, now)
        return None if e is None else (e[0], e[1])

    def cas(self, key: str, exp: int | None, ver: int, val: object, now: int) -> bool:
        e = self.live(key, now)
        if e is None and exp is not None:
            return False
        if e is not None and (exp != e[0] or ver < e[0]):
            return False
        self.d[key] = (ver, val, now + self.ttl_ns)
        return True

    def delete(self, key: str, now: int) -> bool:
        if self.live(key, now) is None:
            return False
        del self.d[key]
        return True


OPS = st.lists(
    st.tuples(
        st.sampled_from(["get", "cas", "delete", "tick"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(st.none(), st.integers(0, 6)),
        st.integers(0, 6),
        st.integers(0, 3),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_store_matches_dict_model(ops: list[tuple[str, str, int | None, int, int]]) -> None:
    s, clock = store(max_entries=1000, ttl=2.0)
    model = Model(2 * S)
    for op, key, exp, ver, dt in ops:
        now = clock.now
        if op == "get":
            assert s.get(key) == model.get(key, now)
        elif op == "cas":
            value = (key, ver, now)
            assert s.compare_and_set(key, exp, ver, value) == model.cas(key, exp, ver, value, now)
        elif op == "delete":
            assert s.delete(key) == model.delete(key, now)
        else:
            clock.now += dt * S // 2
    for key in "abcd":
        assert s.get(key) == model.get(key, clock.now)
