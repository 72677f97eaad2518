"""Binlog positions: parsing, rendering, ordering. Pure code, shared by every server flavor.

Three textual forms, all human readable and stored as such in ``<namespace>:checkpoint``:

* file position ``bin.000042:1234`` (works everywhere),
* MariaDB GTID state ``0-1-100,1-7-5`` (``domain-server-sequence`` per domain),
* MySQL GTID set ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100:200-210,...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cdc_sync.errors import CdcSyncError

_FILE_RE = re.compile(r"^(?P<file>[^:\s]+\.(?P<seq>\d+)):(?P<pos>\d+)$")
_MARIADB_RE = re.compile(r"^\d+-\d+-\d+(,\d+-\d+-\d+)*$")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_MYSQL_ONE_RE = re.compile(rf"^(?P<uuid>{_UUID})(?P<ranges>(:\d+(-\d+)?)+)$")


class PositionError(CdcSyncError):
    """A position string could not be parsed."""


def kind_of(text: str) -> str:
    """Return "file", "mariadb" or "mysql" for a position string, or raise PositionError."""
    text = text.strip()
    if _FILE_RE.match(text):
        return "file"
    if _MARIADB_RE.match(text):
        return "mariadb"
    parts = [p.strip() for p in text.replace("\n", "").split(",")]
    if text and all(_MYSQL_ONE_RE.match(p) for p in parts):
        return "mysql"
    raise PositionError(f"not a binlog position: {text!r}")


@dataclass(frozen=True, slots=True, order=True)
class FilePos:
    """A file position; ordered by (file sequence number, offset)."""

    seq: int
    pos: int
    file: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> FilePos:
        m = _FILE_RE.match(text.strip())
        if not m:
            raise PositionError(f"not a file position: {text!r}")
        return cls(int(m["seq"]), int(m["pos"]), m["file"])

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"


def parse_mariadb(text: str) -> dict[int, tuple[int, int]]:
    """``0-1-100,1-7-5`` → {domain: (server_id, seq)}."""
    text = text.strip()
    if not _MARIADB_RE.match(text):
        raise PositionError(f"not a MariaDB GTID state: {text!r}")
    state: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        domain, server, seq = (int(x) for x in part.split("-"))
        state[domain] = (server, seq)
    return state


def render_mariadb(state: dict[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(state.items()))


def parse_mysql(text: str) -> dict[str, list[tuple[int, int]]]:
    """MySQL GTID set → {uuid: sorted, merged [(start, end)] inclusive intervals}."""
    out: dict[str, list[tuple[int, int]]] = {}
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        m = _MYSQL_ONE_RE.match(part)
        if not m:
            raise PositionError(f"not a MySQL GTID set: {text!r}")
        ranges = out.setdefault(m["uuid"].lower(), [])
        for r in m["ranges"].strip(":").split(":"):
            lo, _, hi = r.partition("-")
            ranges.append((int(lo), int(hi or lo)))
    return {uuid: _merge(ranges) for uuid, ranges in out.items()}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def render_mysql(gtids: dict[str, list[tuple[int, int]]]) -> str:
    return ",".join(
        uuid + "".join(f":{lo}" if lo == hi else f":{lo}-{hi}" for lo, hi in ranges)
        for uuid, ranges in sorted(gtids.items())
    )


class PositionTracker:
    """The position of the last applied transaction, in one of the three forms.

    ``covers(gtid, file, pos)`` tells whether a transaction is already included (so a replay can skip it);
    ``advance(...)`` moves past a transaction and ``render()`` gives the checkpoint text.
    """

    def __init__(self, start: str) -> None:
        self.kind = kind_of(start)
        self._file: FilePos | None = FilePos.parse(start) if self.kind == "file" else None
        self._maria = parse_mariadb(start) if self.kind == "mariadb" else {}
        self._mysql = parse_mysql(start) if self.kind == "mysql" else {}

    def covers(self, gtid: str | None, file: str, pos: int) -> bool:
        """True when the transaction (its GTID, or the file position past its end) is already applied."""
        if self.kind == "file":
            assert self._file is not None
            return FilePos.parse(f"{file}:{pos}") <= self._file
        if gtid is None:
            return False
        if self.kind == "mariadb":
            domain, _server, seq = (int(x) for x in gtid.split("-"))
            have = self._maria.get(domain)
            return have is not None and seq <= have[1]
        uuid, _, gno_text = gtid.rpartition(":")
        gno = int(gno_text)
        return any(lo <= gno <= hi for lo, hi in self._mysql.get(uuid.lower(), ()))

    def advance(self, gtid: str | None, file: str, pos: int) -> None:
        """Move past a transaction."""
        if self.kind == "file":
            self._file = FilePos.parse(f"{file}:{pos}")
        elif gtid is None:
            raise PositionError(f"transaction ending at {file}:{pos} has no GTID in GTID mode")
        elif self.kind == "mariadb":
            domain, server, seq = (int(x) for x in gtid.split("-"))
            self._maria[domain] = (server, seq)
        else:
            uuid, _, gno_text = gtid.rpartition(":")
            gno = int(gno_text)
            ranges = self._mysql.setdefault(uuid.lower(), [])
            ranges.append((gno, gno))
            self._mysql[uuid.lower()] = _merge(ranges)

    def render(self) -> str:
        if self.kind == "file":
            return str(self._file)
        if self.kind == "mariadb":
            return render_mariadb(self._maria)
        return render_mysql(self._mysql)


def reached(applied: str, target: str) -> bool:
    """True when position ``applied`` includes everything up to ``target`` (both of one form).

    File positions compare in order; a MariaDB state reaches another when every domain's sequence
    number is at least the target's; a MySQL GTID set when it contains the target set.
    """
    kind = kind_of(applied)
    if kind != kind_of(target):
        raise PositionError(f"cannot compare {applied!r} with {target!r}")
    if kind == "file":
        return FilePos.parse(target) <= FilePos.parse(applied)
    if kind == "mariadb":
        have = parse_mariadb(applied)
        return all(d in have and have[d][1] >= seq for d, (_s, seq) in parse_mariadb(target).items())
    have_sets = parse_mysql(applied)
    for uuid, ranges in parse_mysql(target).items():
        mine = have_sets.get(uuid, [])
        for lo, hi in ranges:
            if not any(a <= lo and hi <= b for a, b in mine):
                return False
    return True
