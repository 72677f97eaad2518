"""The near cache's store, without I/O: hot values in the reader's memory, LRU, emptied or trimmed by the
invalidations Redis pushes (reader/tracking.py reads them).

A value read from Redis at a moment may be kept only if no invalidation of its key was processed after that
moment: ``mark()`` before the read, ``put(key, value, mark)`` after. An invalidation processed later deletes it;
one still in flight is drained before any local hit (tracking.Tracker.ready), and a local hit is only served while
a plain GET would be (the freshness window: reader/flow.py), so a near hit is never older than a plain read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

_RECENT = 100_000  # invalidated keys remembered (their sequence numbers); older ones raise the floor


class NearCache:
    """At most ``size`` values by key (``bytes`` of a JSON value, or a decoded hash), least recently used first out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[object, float]] = OrderedDict()  # key → (value, read_at)
        self._seq = 0  # invalidations processed so far
        self._recent: OrderedDict[str, int] = OrderedDict()  # key → the sequence number of its last invalidation
        self._floor = 0  # every key counts as invalidated at this sequence number (a clear, a forgotten recent one)
        self._live = False  # a tracking connection hears every change: only then is anything kept

    def mark(self) -> int:
        """Before a read from Redis: what ``put`` compares with."""
        return self._seq

    def get(self, key: str) -> object | None:
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: str) -> tuple[object, float] | None:
        """(value, when its read was sent: the reader's monotonic clock), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, value: object, mark: int, read_at: float = 0.0) -> bool:
        """Keep ``value``, read from Redis after ``mark()`` gave ``mark`` (the read sent at monotonic ``read_at``),
        unless its key (or every key) was invalidated since."""
        with self._lock:
            if not self._live or self._floor > mark or self._recent.get(key, 0) > mark:
                return False
            self._entries[key] = (value, read_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return True

    def invalidate(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._seq += 1
            for key in keys:
                self._entries.pop(key, None)
                self._recent[key] = self._seq
                self._recent.move_to_end(key)
            while len(self._recent) > _RECENT:
                _key, seq = self._recent.popitem(last=False)
                self._floor = max(self._floor, seq)

    def clear(self, live: bool | None = None) -> None:
        """Everything goes, and nothing read before now may be kept. ``live``: whether changes are heard from now
        on (a tracking connection lost: False, nothing is kept until one is made again: True)."""
        with self._lock:
            self._seq += 1
            self._floor = self._seq
            self._entries.clear()
            self._recent.clear()
            if live is not None:
                self._live = live

    def __len__(self) -> int:
        return len(self._entries)


def tracking_prefixes(prefixes: Iterable[str]) -> list[str]:
    """The fewest prefixes covering ``prefixes`` (Redis refuses BCAST prefixes of which one starts another)."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out
