"""Authorization Cache (§3.5.1): bounded, least-recently-used eviction, expiry, persistence."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.auth import AuthCache, AuthDataError, IdTagInfo

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def t(seconds: int) -> datetime:
    return NOW + timedelta(seconds=seconds)


def test_update_and_lookup_case_insensitive() -> None:
    cache = AuthCache(3)
    cache.update("abc1", IdTagInfo("Accepted", None, "G"), NOW)
    assert cache.lookup("ABC1", t(1)) == IdTagInfo("Accepted", None, "G")
    assert "Abc1" in cache and len(cache) == 1
    assert cache.lookup("other", t(1)) is None


def test_update_replaces_entry() -> None:
    cache = AuthCache(3)
    cache.update("A", IdTagInfo("Accepted"), NOW)
    cache.update("A", IdTagInfo("Blocked"), t(1))
    assert cache.lookup("A", t(2)) == IdTagInfo("Blocked")
    assert len(cache) == 1


def test_stores_not_valid_entries_too() -> None:
    cache = AuthCache(3)
    for status in ("Blocked", "Invalid", "ConcurrentTx"):
        cache.update(status, IdTagInfo(status), NOW)  # type: ignore[arg-type]
    assert [cache.lookup(s, t(1)).status for s in ("Blocked", "Invalid", "ConcurrentTx")] == [  # type: ignore[union-attr]
        "Blocked",
        "Invalid",
        "ConcurrentTx",
    ]


def test_evicts_least_recently_used() -> None:
    cache = AuthCache(2)
    cache.update("A", IdTagInfo("Accepted"), t(0))
    cache.update("B", IdTagInfo("Accepted"), t(1))
    assert cache.lookup("A", t(2)) is not None  # A is now the most recently used
    evicted = cache.update("C", IdTagInfo("Accepted"), t(3))
    assert evicted == ["B"]
    assert "B" not in cache and "A" in cache and "C" in cache
    assert cache.keys_lru_first() == ["A", "C"]


def test_lookup_miss_does_not_change_order_and_peek_does_not_touch() -> None:
    cache = AuthCache(2)
    cache.update("A", IdTagInfo("Accepted"), t(0))
    cache.update("B", IdTagInfo("Accepted"), t(1))
    cache.lookup("Z", t(2))
    assert cache.peek("A") == IdTagInfo("Accepted")
    assert cache.keys_lru_first() == ["A", "B"]


def test_expired_entry_is_changed_to_expired_in_cache() -> None:
    cache = AuthCache(2)
    cache.update("A", IdTagInfo("Accepted", t(60), "G"), NOW)
    assert cache.lookup("A", t(59)) == IdTagInfo("Accepted", t(60), "G")
    assert cache.lookup("A", t(60)) == IdTagInfo("Expired", t(60), "G")
    assert cache.peek("A") == IdTagInfo("Expired", t(60), "G")  # stored as Expired (§3.5.1)


def test_update_with_already_expired_info_stores_expired() -> None:
    cache = AuthCache(2)
    cache.update("A", IdTagInfo("Accepted", t(-1)), NOW)
    assert cache.peek("A") is not None and cache.peek("A").status == "Expired"  # type: ignore[union-attr]


def test_clear_and_remove() -> None:
    cache = AuthCache(3)
    cache.update("A", IdTagInfo("Accepted"), NOW)
    cache.update("B", IdTagInfo("Accepted"), NOW)
    assert cache.remove("a") is True and cache.remove("a") is False
    cache.clear()
    assert len(cache) == 0 and cache.lookup("B", NOW) is None


def test_invalid_idtag_is_ignored() -> None:
    cache = AuthCache(3)
    assert cache.update("X" * 21, IdTagInfo("Accepted"), NOW) == []
    assert len(cache) == 0
    assert cache.lookup("X" * 21, NOW) is None


@pytest.mark.parametrize("bound", [0, -1, True, 2.5])
def test_bad_bound_is_refused(bound: object) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        AuthCache(bound)  # type: ignore[arg-type]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AuthCache(1).update("A", IdTagInfo("Accepted"), datetime(2024, 1, 1))


def test_rows_roundtrip_keeps_lru_order() -> None:
    cache = AuthCache(3)
    cache.update("A", IdTagInfo("Accepted", t(3600), "G"), t(0))
    cache.update("B", IdTagInfo("Blocked"), t(1))
    cache.lookup("A", t(2))
    rows = cache.to_rows()
    assert rows == [
        ("B", "Blocked", None, None, "2024-05-01T12:00:01Z"),
        ("A", "Accepted", "2024-05-01T13:00:00Z", "G", "2024-05-01T12:00:02Z"),
    ]
    again = AuthCache.from_rows(list(reversed(rows)), 3)  # order of rows does not matter
    assert again.keys_lru_first() == ["B", "A"]
    assert again.peek("A") == IdTagInfo("Accepted", t(3600), "G")
    # the restored cache evicts the right one
    again.update("C", IdTagInfo("Accepted"), t(3))
    again.update("D", IdTagInfo("Accepted"), t(4))
    assert again.keys_lru_first() == ["A", "C", "D"]


def test_from_rows_with_smaller_bound_keeps_most_recent() -> None:
    rows = [(f"T{i}", "Accepted", None, None, t(i).isoformat()) for i in range(5)]
    cache = AuthCache.from_rows(rows, 2)
    assert cache.keys_lru_first() == ["T3", "T4"]


@pytest.mark.parametrize(
    "row",
    [
        ("A", "Accepted", None, None),
        ("A", "Nope", None, None, NOW.isoformat()),
        ("A", "Accepted", None, None, "x"),
    ],
)
def test_from_rows_rejects_corrupt_rows(row: tuple) -> None:
    with pytest.raises(AuthDataError):
        AuthCache.from_rows([row], 3)


# ---------------------------------------------------------------------------------------------- property

_TAGS = st.sampled_from([f"TAG{i}" for i in range(12)])
_OPS = st.lists(st.tuples(st.sampled_from(["update", "lookup"]), _TAGS), max_size=80)


@settings(max_examples=200, deadline=None)
@given(bound=st.integers(min_value=1, max_value=6), ops=_OPS)
def test_lru_never_exceeds_bound_and_keeps_most_recently_used(bound: int, ops: list[tuple[str, str]]) -> None:
    cache = AuthCache(bound)
    model: OrderedDict[str, None] = OrderedDict()  # reference LRU, least recent first
    for i, (op, tag) in enumerate(ops):
        now = t(i)
        if op == "update":
            cache.update(tag, IdTagInfo("Accepted"), now)
            model[tag] = None
            model.move_to_end(tag)
            while len(model) > bound:
                model.popitem(last=False)
        else:
            hit = cache.lookup(tag, now)
            assert (hit is not None) == (tag in model)
            if tag in model:
                model.move_to_end(tag)
        assert len(cache) <= bound
        assert cache.keys_lru_first() == list(model)
