"""Plain value types that flow from the source to the sink. No I/O, no third-party imports.

Most are frozen dataclasses. The few made once or more per transaction (``Transaction``, ``RawBegin``,
``RawRows``, ``RawCommit``) are plain slotted dataclasses, because a frozen dataclass's ``__init__`` costs about
four times as much and single-row transactions make millions of them; they are values all the same: nothing
assigns to one after it is made (``dataclasses.replace`` makes a new one).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Op(enum.Enum):
    """Kind of a row change."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


Row = Mapping[str, object]


class RowChange(NamedTuple):
    """One committed row change: ``before`` is None for inserts, ``after`` for deletes.

    A NamedTuple rather than a frozen dataclass: one is made per decoded row, and this builds twice as fast.
    """

    op: Op
    schema: str
    table: str
    before: Row | None
    after: Row | None


@dataclass(frozen=True, slots=True)
class Flush:
    """Invalidate a mapped table wholesale (``table`` None: every mapped table)."""

    reason: str
    schema: str | None = None
    table: str | None = None
    detail: str = ""
    # "hold": mark the table as flushing until a later "release" (flush, then end the mark) or "unhold" (end it)
    hold: str = ""


@dataclass(slots=True)  # (not frozen: see the module docstring)
class Transaction:
    """A committed transaction with the checkpoint position that follows it."""

    position: str
    changes: tuple[RowChange, ...] = ()
    flushes: tuple[Flush, ...] = ()
    timestamp: int = 0  # binlog event time, seconds since the epoch
    gtid: str | None = None
    evict_only: bool = False  # True for a ROLLBACK group: evict, never write values
    partial: bool = False  # a chunk of a large transaction still open: the position is the previous one
    folded: int = 0  # empty transactions just before this one that it stands for (their positions are behind it)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The server had nothing more to send at the time of this event: the stream is caught up.

    ``position`` is the checkpoint to record (in file mode the server's binlog end, which moves past
    non-transaction events such as MariaDB's binlog checkpoints); empty: the current one.
    """

    position: str = ""


# --- raw events: what the source adapter emits, one per binlog event of interest ----------------


@dataclass(slots=True)  # (not frozen: see the module docstring)
class RawBegin:
    """Start of a transaction (GTID event or ``BEGIN``)."""

    gtid: str | None = None
    opens: bool = False  # True: statements that follow belong to this transaction


@dataclass(slots=True)  # (not frozen: see the module docstring)
class RawRows:
    """Row changes of one rows event (``evict_only``: the images are incomplete, e.g. a partial JSON update)."""

    changes: tuple[RowChange, ...]
    evict_only: bool = False


@dataclass(slots=True)  # (not frozen: see the module docstring)
class RawCommit:
    """End of a transaction: XID, ``COMMIT`` or ``ROLLBACK``; ``file``/``pos`` point past it."""

    file: str
    pos: int
    timestamp: int
    rollback: bool = False
    xid: tuple[int, bytes, bytes] | None = None  # XA PREPARE: (formatID, gtrid, bqual) of the prepared transaction


@dataclass(frozen=True, slots=True)
class RawQuery:
    """A statement that is neither BEGIN nor COMMIT (DDL, statement-format DML)."""

    sql: str
    schema: str
    file: str
    pos: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class RawUnknown:
    """An event the library could not decode (type -1) or does not know; ``file``/``pos`` point past it."""

    event_type: int
    detail: str = ""
    file: str = ""
    pos: int = 0


@dataclass(frozen=True, slots=True)
class RawHeartbeat:
    """Server heartbeat: nothing more to send right now; ``file``/``pos``: the server's binlog end."""

    file: str = ""
    pos: int = 0


@dataclass(frozen=True, slots=True)
class RawServer:
    """The binlog being read is written by this server (a format description event's ``server_id``); ``file``
    was created at ``created`` (the event's timestamp, seconds)."""

    server_id: int
    file: str = ""
    created: int = 0


@dataclass(frozen=True, slots=True)
class RawProgress:
    """The stream read on through events nothing needs (another table's rows, say): nothing to apply."""


RawEvent = RawBegin | RawRows | RawCommit | RawQuery | RawUnknown | RawHeartbeat | RawServer | RawProgress
StreamItem = Transaction | Heartbeat


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the worker needs to know about the MySQL server it reads."""

    flavor: str  # "mariadb" | "mysql"
    version: str
    gtid_position: str  # current GTID state ("" when the server has none)
    file_position: str  # current "file:pos"
    first_file: str  # oldest binlog file on the server
    server_uuid: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    gtid_at_file: str | None = None  # MariaDB: the GTID state exactly at file_position (BINLOG_GTID_POS)
    file_server_id: int | None = None  # MariaDB: the server id in that binlog file's format description


class RedisMemory(NamedTuple):
    """What the worker watches of Redis's memory settings (``Sink.memory``)."""

    evicted_keys: int
    policy: str  # maxmemory-policy
    maxmemory: int  # bytes, 0 = no limit

    @classmethod
    def from_info(cls, info: Mapping[str, object]) -> RedisMemory:
        """From a parsed ``INFO`` reply (sections stats and memory; a missing field reads as none)."""
        return cls(
            int(str(info.get("evicted_keys", 0))),
            str(info.get("maxmemory_policy", "")),
            int(str(info.get("maxmemory", 0))),
        )

    @property
    def may_evict(self) -> bool:
        """Whether Redis may evict keys: a limit and a policy other than noeviction."""
        return self.maxmemory > 0 and self.policy not in ("", "noeviction")
