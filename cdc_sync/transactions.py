"""Group raw binlog events into committed transactions with checkpoint positions. Pure code.

Boundaries, as both servers write them:

* MariaDB row transaction: GTID event (not standalone), table maps and rows, XID (or ``COMMIT`` for
  non-transactional engines).
* MariaDB DDL: GTID event (standalone flag), then the statement itself, which commits.
* MySQL: GTID (or anonymous GTID) event, ``BEGIN``, rows, XID; DDL: GTID, then the statement.

A ``ROLLBACK`` group (non-transactional rows inside a rolled-back transaction) and an XA PREPARE
group are kept as evict-only transactions: an eviction is always safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cdc_sync.config import TableRule
from cdc_sync.errors import ServerConfigError
from cdc_sync.events import (
    Flush,
    Heartbeat,
    RawBegin,
    RawCommit,
    RawEvent,
    RawHeartbeat,
    RawQuery,
    RawRows,
    RawServer,
    RawUnknown,
    RowChange,
    StreamItem,
    Transaction,
)
from cdc_sync.planner import is_txn_control, statement_flushes
from cdc_sync.positions import PositionTracker

# Event types the library does not decode but that change no data:
# 0x22 anonymous GTID (MySQL without GTIDs), 0x24 transaction context, 0x25 view change,
# 0x1C ignorable, 0x29 heartbeat v2, 0xA4 MariaDB start encryption.
BENIGN_UNKNOWN_TYPES = frozenset({0x1C, 0x22, 0x24, 0x25, 0x29, 0xA4})
# Unknown event types that are a whole transaction or statement by themselves (no XID follows):
# 0x28 MySQL transaction payload (compressed transaction), 0xA5 MariaDB compressed query.
SELF_COMMITTING_UNKNOWN_TYPES = frozenset({0x28, 0xA5})
# MySQL >= 8.3 GTID_TAGGED_LOG_EVENT: a transaction with a tagged GTID, whose position cannot be tracked.
TAGGED_GTID_EVENT = 0x2A


class Assembler:
    """Feeds on RawEvents and yields Transactions (and Heartbeats when idle)."""

    def __init__(
        self,
        tracker: PositionTracker,
        rules: Sequence[TableRule],
        on_skip: Callable[[Transaction], None] | None = None,
        chunk_rows: int = 0,
    ) -> None:
        self.tracker = tracker
        self.rules = list(rules)
        self._on_skip = on_skip
        self.chunk_rows = chunk_rows  # 0: never split a transaction
        self.reset()

    def reset(self) -> None:
        """Forget a partly read transaction (after a reconnect)."""
        self.in_txn = False
        self._open = False  # inside BEGIN..COMMIT (statements do not commit by themselves)
        self._gtid: str | None = None
        self._changes: list[RowChange] = []
        self._flushes: list[Flush] = []
        self._evict_only = False

    def feed(self, ev: RawEvent) -> StreamItem | None:
        if isinstance(ev, RawRows):
            self.in_txn = True
            self._open = True
            self._changes.extend(ev.changes)
            self._evict_only = self._evict_only or ev.evict_only
            if self.chunk_rows and len(self._changes) >= self.chunk_rows:
                return self._chunk()
            return None
        if isinstance(ev, RawBegin):
            if ev.gtid is not None:
                self._gtid = ev.gtid
            self.in_txn = True
            self._open = self._open or ev.opens
            return None
        if isinstance(ev, RawCommit):
            return self._commit(ev.file, ev.pos, ev.timestamp, evict_only=ev.rollback)
        if isinstance(ev, RawQuery):
            if is_txn_control(ev.sql):
                return None
            self._flushes.extend(statement_flushes(ev.sql, self.rules))
            if self._open:
                return None  # a statement inside BEGIN..COMMIT: the XID/COMMIT ends it
            return self._commit(ev.file, ev.pos, ev.timestamp, evict_only=False)
        if isinstance(ev, RawUnknown):
            if ev.event_type in BENIGN_UNKNOWN_TYPES:
                return None
            if ev.event_type == TAGGED_GTID_EVENT:
                if self.tracker.kind == "mysql":
                    # Refused with a clear message (exit 2, not restarted), never a crash loop on the same event.
                    raise ServerConfigError(
                        f"a tagged GTID transaction (MySQL 8.3+) at {ev.file}:{ev.pos}: cdc-sync cannot track tagged "
                        'GTIDs; stop using them, or set mysql.position_mode = "file" and reset the checkpoint'
                    )
                self.in_txn = True  # file positions: a GTID event like any other, its transaction follows
                return None
            label = "decode_error" if ev.event_type < 0 else f"type=0x{ev.event_type:02x}"
            flushes = [Flush("unknown_event", r.schema, r.table, detail=f"{label} {ev.detail}") for r in self.rules]
            if ev.event_type in SELF_COMMITTING_UNKNOWN_TYPES and ev.file:
                self._flushes.extend(flushes)
                return self._commit(ev.file, ev.pos, 0, evict_only=True)
            if self.in_txn:
                self._flushes.extend(flushes)
                return None
            return Transaction(position=self.tracker.render(), flushes=tuple(flushes))
        if isinstance(ev, RawHeartbeat):
            if self.in_txn:
                return None
            # Between transactions any event boundary is a sound resume point: follow the server's end (file
            # trackers, and the stream part of MariaDB positions).
            if self.tracker.advance_stream(ev.file, ev.pos):
                return Heartbeat(self.tracker.render())
            return Heartbeat()
        if isinstance(ev, RawServer):
            self.tracker.set_server(ev.server_id)
            return None
        raise TypeError(f"unexpected event {ev!r}")

    def _chunk(self) -> Transaction:
        """Hand over the rows read so far of a large transaction, as evictions at the previous position.

        The transaction's end (a commit, or a ROLLBACK of non-transactional rows) is not known yet, so these
        rows are only evicted, never written; the checkpoint does not move until the commit.
        """
        chunk, self._changes = tuple(self._changes), []
        return Transaction(position=self.tracker.render(), changes=chunk, evict_only=True, partial=True)

    def _commit(self, file: str, pos: int, timestamp: int, evict_only: bool) -> Transaction | None:
        txn_changes, flushes, gtid = tuple(self._changes), tuple(self._flushes), self._gtid
        evict_only = evict_only or self._evict_only
        self.reset()
        if self.tracker.covers(gtid, file, pos):
            if self._on_skip is not None:
                self._on_skip(Transaction(position=f"{file}:{pos}", gtid=gtid))
            return None
        self.tracker.advance(gtid, file, pos)
        return Transaction(
            position=self.tracker.render(),
            changes=txn_changes,
            flushes=flushes,
            timestamp=timestamp,
            gtid=gtid,
            evict_only=evict_only,
        )
