"""Binlog positions: parsing, rendering, ordering. Pure code, shared by every server flavor.

Three textual forms, all human readable and stored as such in ``<namespace>:checkpoint``:

* file position ``bin.000042:1234`` (works everywhere),
* MariaDB GTID state ``0-1-100,1-7-5`` (``domain-server-sequence`` per domain), optionally followed by where
  in which server's binlog that state was reached: ``0-1-100,1-7-5@1:bin.000042:1234/1796168716``
  (``@server_id:file:pos``, and when known ``/`` the creation time of that file, which a RESET MASTER changes),
* MySQL GTID set ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100:200-210,...``.

**Stream order, not numbers.** MariaDB sequence numbers need not grow: with ``gtid_strict_mode=OFF`` (the
default) ``SET gtid_seq_no``, replayed ``mysqlbinlog`` output or multi-source rings put a lower number after a
higher one in the same domain, and a GTID may even repeat. A MariaDB GTID state says *what* was applied last in
each domain, not *where* in the stream. So the worker never skips a MariaDB transaction by comparing numbers
(the server itself starts a replica exactly after the position it asks for), the freshness heartbeat compares
binlog file positions of one server (``reached``), and the checkpoint carries that file position so that a
restart on the same server resumes by it: once numbers went backwards, MariaDB refuses a GTID resume (error
1236) or, without strict mode on the replica's side, resumes at the wrong one of two equal numbers. MySQL GTIDs
are unique and a GTID set is order-free, so MySQL positions compare as sets.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from cdc_sync.errors import PositionError

_FILE_RE = re.compile(r"^(?P<file>[^:\s@]+\.(?P<seq>\d+)):(?P<pos>\d+)$")
_MARIADB_RE = re.compile(r"^\d+-\d+-\d+(,\d+-\d+-\d+)*$")
_STREAM_RE = re.compile(r"^(?P<server>\d+):(?P<at>[^:\s@/]+\.\d+:\d+)(?:/(?P<created>\d+))?$")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_MYSQL_ONE_RE = re.compile(rf"^(?P<uuid>{_UUID})(?P<ranges>(:\d+(-\d+)?)+)$")
# MySQL >= 8.3 tagged GTIDs: uuid:tag:1-5 (a tag is a letter or _ then up to 31 letters, digits or _)
_MYSQL_TAGGED_RE = re.compile(rf"{_UUID}(:\d+(-\d+)?)*:[A-Za-z_][A-Za-z0-9_]{{0,31}}(:|$)")


FORMATS_HELP = (
    "a MariaDB GTID state (0-1-42, one domain-server-sequence per domain, optionally with where in which server's "
    "binlog: 0-1-42@1:bin.000003:1234), a MySQL GTID set (uuid:1-42, e.g. 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42) "
    "or a file position (bin.000003:1234)"
)


def has_tagged_gtids(text: str) -> bool:
    """True for a MySQL GTID set with tagged GTIDs (``uuid:tag:1-5``, MySQL >= 8.3), which cdc-sync refuses."""
    return bool(_MYSQL_TAGGED_RE.search(text.replace("\n", "")))


def kind_of(text: str) -> str:
    """Return "file", "mariadb" or "mysql" for a position string, or raise PositionError."""
    text = text.strip()
    if _FILE_RE.match(text):
        return "file"
    gtid, sep, stream = text.partition("@")
    if _MARIADB_RE.match(gtid) and (not sep or _STREAM_RE.match(stream)):
        return "mariadb"
    parts = [p.strip() for p in text.replace("\n", "").split(",")]
    if text and all(_MYSQL_ONE_RE.match(p) for p in parts):
        return "mysql"
    if has_tagged_gtids(text):
        raise PositionError(f"tagged GTIDs (uuid:tag:n, MySQL 8.3+) are not supported: {text[:200]!r}")
    raise PositionError(f"not a binlog position: {text!r}; expected {FORMATS_HELP}")


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

    @classmethod
    def of(cls, file: str, pos: int) -> FilePos:
        """``file``:``pos`` (what ``parse`` reads from text), for an event's position: the file's sequence number is
        read once per file name."""
        return cls(_file_seq(file), pos, file)

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"


@functools.lru_cache(maxsize=256)
def _file_seq(file: str) -> int:
    return FilePos.parse(f"{file}:0").seq


@dataclass(frozen=True, slots=True)
class StreamPos:
    """Where in one server's binlog (``server_id``) a MariaDB GTID state was reached: its stream order.

    ``created``: the creation time of that binlog file (its format description's timestamp; 0: unknown), so that a
    file of the same name written anew (RESET MASTER) is not taken for it.
    """

    server_id: int
    at: FilePos
    created: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.server_id}:{self.at}/{self.created}" if self.created else f"{self.server_id}:{self.at}"


def split_stream(text: str) -> tuple[str, StreamPos | None]:
    """``0-1-5@1:bin.000002:300`` → (``0-1-5``, StreamPos); a position without ``@`` → (text, None)."""
    gtid, sep, stream = text.strip().partition("@")
    if not sep:
        return gtid, None
    m = _STREAM_RE.match(stream)
    if not m or not _MARIADB_RE.match(gtid):
        raise PositionError(f"not a MariaDB position: {text!r}; expected {FORMATS_HELP}")
    return gtid, StreamPos(int(m["server"]), FilePos.parse(m["at"]), int(m["created"] or 0))


def gtid_part(text: str) -> str:
    """The position without its stream part (a MariaDB state's ``@server:file:pos``)."""
    return text.strip().partition("@")[0]


def parse_mariadb(text: str) -> dict[int, tuple[int, int]]:
    """``0-1-100,1-7-5`` (a stream part is ignored) → {domain: (server_id, seq)}."""
    text = gtid_part(text)
    if not _MARIADB_RE.match(text):
        raise PositionError(f"not a MariaDB GTID state: {text!r}")
    state: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        domain, server, seq = (int(x) for x in part.split("-"))
        state[domain] = (server, seq)
    return state


def binlog_state_holds(binlog_state: str, target: str) -> bool:
    """Whether a MariaDB ``gtid_binlog_state`` (the last sequence number logged per domain *and* server id)
    holds each GTID of the state ``target`` from its own server: ``(domain, server)`` at or past its number.

    A replica promoted after it fell behind (it holds ``0-1-5``) that wrote its own ``0-2-6`` .. ``0-2-11``
    shows ``0-2-11`` as its domain's position, which ``contains`` takes for past ``0-1-8``; its binlog state
    ``0-1-5,0-2-11`` shows that it never had ``0-1-8``."""
    if not gtid_part(target):
        return True
    text = gtid_part(binlog_state)
    if not text:
        return False
    if not _MARIADB_RE.match(text):
        raise PositionError(f"not a MariaDB GTID binlog state: {text!r}")
    logged: dict[tuple[int, int], int] = {}
    for part in text.split(","):
        domain, server, seq = (int(x) for x in part.split("-"))
        logged[(domain, server)] = max(seq, logged.get((domain, server), 0))
    return all(logged.get((d, s), -1) >= n for d, (s, n) in parse_mariadb(target).items())


def same_state(a: str, b: str) -> bool:
    """Two MariaDB GTID states name the same GTIDs (domain order and stream parts aside; "" is the empty one)."""
    a, b = gtid_part(a), gtid_part(b)
    return a == b if not (a and b) else parse_mariadb(a) == parse_mariadb(b)


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
    ``advance(...)`` moves past a transaction and ``render()`` gives the checkpoint text. A MariaDB tracker
    also follows the stream position on the server it reads (``set_server``), rendered after ``@``.
    """

    def __init__(self, start: str) -> None:
        self.kind = kind_of(start)
        self._maria = parse_mariadb(start) if self.kind == "mariadb" else {}
        self._stream = split_stream(start)[1] if self.kind == "mariadb" else None
        self._server: int | None = None  # server_id of the binlog being read (MariaDB), once known
        self._file: FilePos | None = FilePos.parse(start) if self.kind == "file" else None
        self._reading: tuple[str, int] = ("", 0)  # the binlog file being read and its creation time
        self._mysql = parse_mysql(start) if self.kind == "mysql" else {}

    @property
    def stream(self) -> StreamPos | None:
        """The MariaDB stream position of the last transaction (None: unknown, resume by GTID)."""
        return self._stream

    def set_server(self, server_id: int, file: str = "", created: int = 0) -> None:
        """The binlog now read (``file``, created at ``created``) is ``server_id``'s: a stream position on another
        server means nothing here."""
        self._server = server_id
        self._reading = (file, created)
        if self._stream is not None and self._stream.server_id != server_id:
            self._stream = None

    def forget_stream(self) -> None:
        """Resume by GTID: the stream position cannot be used (the server changed, or its file is gone)."""
        self._stream = None

    def covers(self, gtid: str | None, file: str, pos: int) -> bool:
        """True when the transaction is already applied, judged by stream order.

        File trackers compare file positions. MySQL trackers test GTID set membership (MySQL never logs a
        GTID twice). MariaDB trackers never skip: the server starts streaming exactly after the position the
        worker asks for, and sequence numbers may go backwards, so a lower number is no sign of a replay.
        """
        if self.kind == "file":
            assert self._file is not None
            return FilePos.of(file, pos) <= self._file
        if gtid is None or self.kind == "mariadb":
            return False
        uuid, _, gno_text = gtid.rpartition(":")
        gno = int(gno_text)
        return any(lo <= gno <= hi for lo, hi in self._mysql.get(uuid.lower(), ()))

    def advance(self, gtid: str | None, file: str, pos: int) -> None:
        """Move past a transaction."""
        if self.kind == "file":
            self._file = FilePos.of(file, pos)
        elif gtid is None:
            raise PositionError(f"transaction ending at {file}:{pos} has no GTID in GTID mode")
        elif self.kind == "mariadb":
            domain, server, seq = (int(x) for x in gtid.split("-"))
            self._maria[domain] = (server, seq)
            self.advance_stream(file, pos)
        else:
            uuid, _, gno_text = gtid.rpartition(":")
            gno = int(gno_text)
            ranges = self._mysql.setdefault(uuid.lower(), [])
            ranges.append((gno, gno))
            self._mysql[uuid.lower()] = _merge(ranges)

    def advance_stream(self, file: str, pos: int) -> bool:
        """Between transactions: the stream has been read up to ``file:pos`` (MariaDB, or a file tracker).

        Returns True when the rendered position changed.
        """
        if not file:
            return False
        at = FilePos.of(file, pos)
        if self.kind == "file":
            assert self._file is not None
            if at <= self._file:
                return False
            self._file = at
            return True
        if self.kind != "mariadb" or self._server is None:
            return False
        if self._stream is not None and self._stream.server_id == self._server and at <= self._stream.at:
            return False
        self._stream = StreamPos(self._server, at, self._reading[1] if self._reading[0] == at.file else 0)
        return True

    def render(self) -> str:
        if self.kind == "file":
            return str(self._file)
        if self.kind == "mariadb":
            state = render_mariadb(self._maria)
            return f"{state}@{self._stream}" if self._stream is not None else state
        return render_mysql(self._mysql)


def reached(applied: str, target: str) -> bool:
    """True when position ``applied`` includes everything up to ``target`` (both of one form), in stream order.

    File positions compare in order. MariaDB positions compare their stream parts when both have one of the
    same server (a part of another server, or a target with a part that ``applied`` lacks: not reached, since
    sequence numbers say nothing about order); two states without stream parts compare as before, every domain's
    sequence number at least the target's. A MySQL GTID set reaches another when it contains it.
    """
    kind = kind_of(applied)
    if kind != kind_of(target):
        raise PositionError(f"cannot compare {applied!r} with {target!r}")
    if kind == "file":
        return FilePos.parse(target) <= FilePos.parse(applied)
    if kind == "mariadb":
        _a, mine = split_stream(applied)
        _t, theirs = split_stream(target)
        if theirs is not None:
            return mine is not None and mine.server_id == theirs.server_id and theirs.at <= mine.at
        return contains(applied, target)
    return contains(applied, target)


def contains(applied: str, target: str) -> bool:
    """GTID containment, whatever the stream order: every MariaDB domain of ``target`` is in ``applied`` with at
    least its sequence number (stream parts ignored), or the MySQL set ``applied`` holds all of ``target``.

    This is what a server's GTID state must show for a checkpoint of its own lineage; it is no proof of order.
    """
    kind = kind_of(applied)
    if kind != kind_of(target) or kind == "file":
        raise PositionError(f"cannot compare {applied!r} with {target!r} as GTIDs")
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
