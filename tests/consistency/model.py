"""The checker's model: every committed version of every row, and how to date a read against it.

Every written value is unique, so a read's value names exactly one version. A read is **stale** when the
version after the one it returned had committed more than ``max_staleness_ms`` before the read started; a
read is a **phantom** when it returns a value that was never committed (or not yet, when the read ended).
Commit times are taken by the writers: ``t_start`` before COMMIT is sent, ``t_end`` after it returns.
Reads are judged after the run, when the history is complete (judging does not lock or copy).

Versions the binlog never shows are recorded too: rows InnoDB deleted through ``ON DELETE CASCADE`` (``via``
``cascade``, read back in the deleting transaction). ``via`` also names a transaction's hand-picked GTID, so a
stale read can say which kind of change it missed.
"""

from __future__ import annotations

import bisect
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
    via: str = ""  # how it was made, when not by a plain statement: "cascade from <parent>", "gtid 0-1-N", both


@dataclass(frozen=True)
class Verdict:
    kind: str  # "fresh" | "stale" | "phantom"
    staleness_s: float
    missed: Version | None = None  # the newer version a stale read missed (the worst one, for a group)


class History:
    """Versions per (table, id); recording is thread-safe, judging expects the history to be complete."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.versions: dict[tuple[str, int], list[Version]] = defaultdict(lambda: [Version(0.0, 0.0, None)])
        self.by_value: dict[str, tuple[str, int, int]] = {}
        self.rolled_back: set[str] = set()
        self.group_members: dict[int, set[int]] = defaultdict(set)
        self._starts: dict[tuple[str, int], list[float]] = {}
        self._last_out: dict[tuple[str, int, int | None], list[int]] = {}

    def record(
        self, table: str, row_id: int, v: str | None, grp: int | None, t_start: float, t_end: float, via: str = ""
    ) -> None:
        with self._lock:
            versions = self.versions[(table, row_id)]
            versions.append(Version(t_start, t_end, v, grp, via))
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

    # ---- judging (after the run) ----------------------------------------------------------------

    def _staleness(self, key: tuple[str, int], i: int, rs: float) -> float:
        """How long before the read started the next version had surely committed (0 if it had not)."""
        versions = self.versions[key]
        if i + 1 >= len(versions):
            return 0.0
        return max(0.0, rs - versions[i + 1].t_end)

    def _next(self, key: tuple[str, int], i: int) -> Version | None:
        versions = self.versions[key]
        return versions[i + 1] if i + 1 < len(versions) else None

    def _latest_out(self, key: tuple[str, int], grp: int | None, re: float) -> int | None:
        """The latest version committed (started) by ``re`` in which the row is absent (or not in ``grp``).

        Later versions have later successors, so the latest candidate is the freshest explanation of an absence.
        """
        starts = self._starts.get(key)
        if starts is None:
            starts = self._starts[key] = [ver.t_start for ver in self.versions[key]]
        marks = self._last_out.get((*key, grp))
        if marks is None:
            last, marks = -1, []
            for i, ver in enumerate(self.versions[key]):
                if ver.v is None or (grp is not None and ver.grp != grp):
                    last = i
                marks.append(last)
            self._last_out[(*key, grp)] = marks
        k = bisect.bisect_right(starts, re) - 1
        return None if k < 0 or marks[k] < 0 else marks[k]

    def _found(self, table: str, row_id: int, v: str, re: float) -> int | None:
        """Index of the version that wrote ``v`` to this row, if it could have been seen by ``re``."""
        hit = self.by_value.get(v)
        if v in self.rolled_back or hit is None or hit[:2] != (table, row_id):
            return None
        return hit[2] if self.versions[(table, row_id)][hit[2]].t_start <= re else None

    def judge_row(self, table: str, row_id: int, value: str | None, rs: float, re: float, max_stale: float) -> Verdict:
        key = (table, row_id)
        i = self._found(table, row_id, value, re) if value is not None else self._latest_out(key, None, re)
        if i is None:
            return Verdict("phantom", INF)
        staleness = self._staleness(key, i, rs)
        if staleness > max_stale:
            return Verdict("stale", staleness, self._next(key, i))
        return Verdict("fresh", staleness)

    def judge_group(self, grp: int, result: list[tuple[int, str]], rs: float, re: float, max_stale: float) -> Verdict:
        """A group query result: every member's value and every absence must be fresh enough."""
        worst, missed = 0.0, None
        present = set()
        for row_id, v in result:
            present.add(row_id)
            i = self._found("items", row_id, v, re)
            if i is None or self.versions[("items", row_id)][i].grp != grp:
                return Verdict("phantom", INF)
            staleness = self._staleness(("items", row_id), i, rs)
            if staleness > worst:
                worst, missed = staleness, self._next(("items", row_id), i)
        for row_id in self.group_members[grp] - present:
            j = self._latest_out(("items", row_id), grp, re)
            if j is None:
                return Verdict("stale", INF)
            staleness = self._staleness(("items", row_id), j, rs)
            if staleness > worst:
                worst, missed = staleness, self._next(("items", row_id), j)
        if worst > max_stale:
            return Verdict("stale", worst, missed)
        return Verdict("fresh", worst)
