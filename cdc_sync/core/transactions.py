"""Group raw binlog events into committed transactions with checkpoint positions. Pure code.

Boundaries, as both servers write them:

* MariaDB row transaction: GTID event (not standalone), table maps and rows, XID (or ``COMMIT`` for
  non-transactional engines).
* MariaDB DDL: GTID event (standalone flag), then the statement itself, which commits.
* MySQL: GTID (or anonymous GTID) event, ``BEGIN``, rows, XID; DDL: GTID, then the statement.

A ``ROLLBACK`` group (non-transactional rows inside a rolled-back transaction) and an XA PREPARE
group are kept as evict-only transactions: an eviction is always safe. A prepared XA transaction's rows become
visible at its ``XA COMMIT`` (readers may have filled the old values meanwhile), so that statement evicts the
same rows again; an XID prepared before the worker's start (or forgotten: too many open) flushes every table.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cdc_sync.config import TableRule
from cdc_sync.core.events import (
    Flush,
    Heartbeat,
    RawBegin,
    RawCommit,
    RawEvent,
    RawHeartbeat,
    RawProgress,
    RawQuery,
    RawRows,
    RawServer,
    RawUnknown,
    RowChange,
    StreamItem,
    Transaction,
)
from cdc_sync.core.planner import is_txn_control, statement_flushes
from cdc_sync.core.positions import PositionTracker
from cdc_sync.errors import ServerConfigError

# Event types the library does not decode but that change no data:
# 0x22 anonymous GTID (MySQL without GTIDs), 0x24 transaction context, 0x25 view change,
# 0x1C ignorable, 0x29 heartbeat v2, 0xA4 MariaDB start encryption.
BENIGN_UNKNOWN_TYPES = frozenset({0x1C, 0x22, 0x24, 0x25, 0x29, 0xA4})
# Unknown event types that are a whole transaction or statement by themselves (no XID follows):
# 0x28 MySQL transaction payload (compressed transaction), 0xA5 MariaDB compressed query.
SELF_COMMITTING_UNKNOWN_TYPES = frozenset({0x28, 0xA5})
PREPARED_MAX_ROWS = 200_000  # rows of prepared XA transactions kept for their XA COMMIT (older ones: flush)
# XA COMMIT/ROLLBACK as the server logs it: X'<gtrid hex>',X'<bqual hex>',<formatID> (or a quoted gtrid)
_XA_END = re.compile(
    r"^\s*XA\s+(COMMIT|ROLLBACK)\s+(?:X'([0-9A-Fa-f]*)'\s*,\s*X'([0-9A-Fa-f]*)'\s*,\s*(\d+)|'((?:[^']|'')*)')\s*$", re.I
)
XID = tuple[int, bytes, bytes]


def xa_end(sql: str) -> XID | None:
    """The XID an ``XA COMMIT``/``XA ROLLBACK`` statement names (None: not one, or an XID form not known)."""
    m = _XA_END.match(sql)
    if m is None:
        return None
    if m.group(5) is not None:
        return (1, m.group(5).replace("''", "'").encode(), b"")
    return (int(m.group(4)), bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3)))


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
        self._prepared: OrderedDict[XID, tuple[RowChange, ...]] = OrderedDict()  # XA PREPAREd, not yet ended
        self._prepared_rows = 0
        self.reset()

    def reset(self) -> None:
        """Forget a partly read transaction (after a reconnect)."""
        self.in_txn = False
        self._open = False  # inside BEGIN..COMMIT (statements do not commit by themselves)
        self._gtid: str | None = None
        self._changes: list[RowChange] = []
        self._flushes: list[Flush] = []
        self._evict_only = False
        self._chunked = False  # rows of this transaction were handed over in chunks already

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
            if ev.xid is not None and not self._chunked:  # a chunked one's earlier rows are gone: its COMMIT flushes
                self._remember_prepared(ev.xid, tuple(self._changes))
            return self._commit(ev.file, ev.pos, ev.timestamp, evict_only=ev.rollback)
        if isinstance(ev, RawQuery):
            if is_txn_control(ev.sql):
                return None
            xid = xa_end(ev.sql)
            if xid is not None and xid in self._prepared:
                # its rows, seen at XA PREPARE, become visible (COMMIT) or stay as they were (ROLLBACK): evict again
                changes = self._prepared.pop(xid)
                self._prepared_rows -= len(changes)
                self._changes.extend(changes)
                self._evict_only = True
            else:
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
        if isinstance(ev, RawProgress):
            return None
        if isinstance(ev, RawServer):
            self.tracker.set_server(ev.server_id, ev.file, ev.created)
            return None
        raise TypeError(f"unexpected event {ev!r}")

    def _remember_prepared(self, xid: XID, changes: tuple[RowChange, ...]) -> None:
        """Keep a prepared XA transaction's rows for its XA COMMIT; the oldest are dropped beyond
        PREPARED_MAX_ROWS (their XA COMMIT then flushes every mapped table)."""
        old = self._prepared.pop(xid, ())
        self._prepared_rows += len(changes) - len(old)
        self._prepared[xid] = changes
        while self._prepared_rows > PREPARED_MAX_ROWS and len(self._prepared) > 1:
            _, dropped = self._prepared.popitem(last=False)
            self._prepared_rows -= len(dropped)

    def _chunk(self) -> Transaction:
        """Hand over the rows read so far of a large transaction, as evictions at the previous position.

        The transaction's end (a commit, or a ROLLBACK of non-transactional rows) is not known yet, so these
        rows are only evicted, never written; the checkpoint does not move until the commit.
        """
        chunk, self._changes = tuple(self._changes), []
        self._chunked = True
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
