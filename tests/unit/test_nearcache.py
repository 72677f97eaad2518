"""The near cache's store (reader/nearcache.py): what it keeps, given the marks and the invalidations."""

from __future__ import annotations

import pytest

from cdc_sync.reader import nearcache
from cdc_sync.reader.nearcache import NearCache, tracking_prefixes


def _live(size: int = 3) -> NearCache:
    near = NearCache(size)
    near.clear(live=True)
    return near


def test_nothing_is_kept_without_a_tracking_connection() -> None:
    near = NearCache(3)
    assert not near.put("k", b"1", near.mark())
    near.clear(live=True)
    assert near.put("k", b"1", near.mark()) and near.get("k") == b"1"
    near.clear(live=False)
    assert near.get("k") is None and not near.put("k", b"1", near.mark())


def test_a_value_read_before_its_invalidation_was_processed_is_refused() -> None:
    near = _live()
    mark = near.mark()
    near.invalidate(["k"])  # (the key changed after the read)
    assert not near.put("k", b"old", mark)
    assert near.put("other", b"x", mark), "other keys are not affected"
    assert near.put("k", b"new", near.mark())
    near.invalidate(["k"])
    assert near.get("k") is None


def test_a_clear_refuses_every_read_before_it() -> None:
    near = _live()
    mark = near.mark()
    near.clear()
    assert not near.put("k", b"1", mark) and near.put("k", b"1", near.mark())


def test_least_recently_used_goes_first() -> None:
    near = _live(2)
    for k in ("a", "b"):
        near.put(k, k.encode(), near.mark())
    near.get("a")
    near.put("c", b"c", near.mark())
    assert (near.get("a"), near.get("b"), near.get("c")) == (b"a", None, b"c") and len(near) == 2


def test_forgotten_invalidations_raise_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nearcache, "_RECENT", 2)
    near = _live()
    mark = near.mark()
    near.invalidate(["x", "y", "z"])  # (x is forgotten: any read before it may not be kept)
    assert not near.put("q", b"1", mark)
    assert near.put("q", b"1", near.mark())


def test_tracking_prefixes_drop_those_another_covers() -> None:
    assert tracking_prefixes(["user:", "user:email:", "cdc:flushing", "cdc:rules", "user:"]) == [
        "cdc:flushing",
        "cdc:rules",
        "user:",
    ]
    assert tracking_prefixes(["", "user:"]) == [""]
