"""The checker's model: every committed version of every row, and how to date a read against it.

Every written value is unique, so a read's value names exactly one version. A read is **stale** when the
version after the one it returned had committed more than ``max_staleness_ms`` before the read started; a
read is a **phantom** when it returns a value that was never committed (or not yet, when the read ended).
Commit times are taken by the writers: ``t_start`` before COMMIT is sent, ``t_end`` after it returns.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

INF = float("inf")


@dataclass(frozen=True)
class Version:
    t_start: float  # COMMIT sent (the value may be visible from here on)
    t_end: float  # COMMIT returned (the value is surely visible)
    v: str | None  # None: no row
    grp: int | None = None


@dataclass(frozen=True)
class Verdict:
    kind: str  # "fresh" | "stale" | "phantom"
    staleness_s: float


class History:
    """Thread-safe record of versions per (table, id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.versions: dict[tuple[str, int], list[Version]] = defaultdict(lambda: [Version(0.0, 0.0, None)])
        self.by_value: dict[str, tuple[str, int, int]] = {}
        self.rolled_back: set[str] = set()
        self.group_members: dict[int, set[int]] = defaultdict(set)

    def record(self, table: str, row_id: int, v: str | None, grp: int | None, t_start: float, t_end: float) -> None:
        with self._lock:
            versions = self.versions[(table, row_id)]
            versions.append(Version(t_start, t_end, v, grp))
            if v is not None:
                self.by_value[v] = (table, row_id, len(versions) - 1)
            if table == "items" and grp is not None:
                self.group_members[grp].add(row_id)

    def rollback(self, v: str) -> None:
        with self._lock:
            self.rolled_back.add(v)

    def ids(self, table: str) -> list[int]:
        with self._lock:
            return [i for (t, i) in self.versions if t == table]

    def current(self, table: str, row_id: int) -> Version:
        with self._lock:
            return self.versions[(table, row_id)][-1]

    @staticmethod
    def _staleness(versions: list[Version], i: int, rs: float) -> float:
        """How long before the read started the next version had surely committed (0 if it had not)."""
        if i + 1 >= len(versions):
            return 0.0
        return max(0.0, rs - versions[i + 1].t_end)

    def judge_row(self, table: str, row_id: int, value: str | None, rs: float, re: float, max_stale: float) -> Verdict:
        with self._lock:
            versions = list(self.versions[(table, row_id)])
            found = self.by_value.get(value) if value is not None else None
            rolled_back = value in self.rolled_back if value is not None else False
        if value is not None:
            if rolled_back or found is None or found[:2] != (table, row_id) or versions[found[2]].t_start > re:
                return Verdict("phantom", INF)
            staleness = self._staleness(versions, found[2], rs)
        else:
            candidates = [i for i, ver in enumerate(versions) if ver.v is None and ver.t_start <= re]
            staleness = min(self._staleness(versions, i, rs) for i in candidates)
        return Verdict("stale" if staleness > max_stale else "fresh", staleness)

    def judge_group(self, grp: int, result: list[tuple[int, str]], rs: float, re: float, max_stale: float) -> Verdict:
        """A group query result: every member's value and every absence must be fresh enough."""
        with self._lock:
            members = set(self.group_members[grp])
            snapshot = {i: list(self.versions[("items", i)]) for i in members | {r for r, _ in result}}
            found = {v: self.by_value.get(v) for _, v in result}
            rolled = {v for _, v in result if v in self.rolled_back}
        worst = 0.0
        present = set()
        for row_id, v in result:
            present.add(row_id)
            hit = found.get(v)
            versions = snapshot[row_id]
            if v in rolled or hit is None or hit[:2] != ("items", row_id):
                return Verdict("phantom", INF)
            ver = versions[hit[2]]
            if ver.grp != grp or ver.t_start > re:
                return Verdict("phantom", INF)
            worst = max(worst, self._staleness(versions, hit[2], rs))
        for row_id in members - present:
            versions = snapshot[row_id]
            candidates = [
                i for i, ver in enumerate(versions) if (ver.v is None or ver.grp != grp) and ver.t_start <= re
            ]
            if not candidates:
                return Verdict("stale", INF)
            worst = max(worst, min(self._staleness(versions, i, rs) for i in candidates))
        return Verdict("stale" if worst > max_stale else "fresh", worst)
