"""cdc_sync.core.transactions: grouping raw binlog events into committed transactions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cdc_sync.core.events import (
    Heartbeat,
    Op,
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
from cdc_sync.core.positions import PositionTracker
from cdc_sync.core.transactions import BENIGN_UNKNOWN_TYPES, Assembler
from cdc_sync.errors import ServerConfigError
from tests.unit.factories import make_rules

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "8a94f357-aab4-11df-86ab-c80aa9429562"
TS = 1_700_000_000
ROW = RowChange(Op.INSERT, "shop", "users", None, {"id": 1})
ROW2 = RowChange(Op.DELETE, "shop", "orders", {"id": 5}, None)
RULES = make_rules({"table": "shop.users", "key": "user:{id}"}, {"table": "shop.orders", "key": "order:{id}"})


def _assembler(start: str) -> tuple[Assembler, list[Transaction]]:
    skipped: list[Transaction] = []
    return Assembler(PositionTracker(start), RULES, on_skip=skipped.append), skipped


def _feed(asm: Assembler, events: Sequence[RawEvent]) -> list[StreamItem | None]:
    return [asm.feed(ev) for ev in events]


def _only(results: list[StreamItem | None]) -> Transaction:
    """The last result is a Transaction and every earlier one is None."""
    assert results[:-1] == [None] * (len(results) - 1)
    txn = results[-1]
    assert isinstance(txn, Transaction)
    return txn


def _maria_rows(gtid: str, pos: int, *changes: RowChange) -> list[RawEvent]:
    return [RawBegin(gtid, opens=True), RawRows(changes or (ROW,)), RawCommit("bin.000001", pos, TS)]


def _query(sql: str, pos: int = 900) -> RawQuery:
    return RawQuery(sql, "shop", "bin.000001", pos, TS)


# ---- the three boundary shapes ---------------------------------------------------------------------


def test_mariadb_row_transaction() -> None:
    """GTID (opens) → rows → XID yields one transaction at the new GTID position."""
    asm, _ = _assembler("0-1-100")
    txn = _only(_feed(asm, _maria_rows("0-1-101", 500, ROW, ROW2)))
    assert txn == Transaction(position="0-1-101", changes=(ROW, ROW2), timestamp=TS, gtid="0-1-101")


def test_mariadb_rows_events_accumulate() -> None:
    """Several rows events of one transaction are kept in order."""
    asm, _ = _assembler("0-1-100")
    events = [RawBegin("0-1-101", True), RawRows((ROW,)), RawRows((ROW2,)), RawCommit("bin.000001", 9, TS)]
    assert _only(_feed(asm, events)).changes == (ROW, ROW2)


def test_mariadb_ddl_commits_on_statement() -> None:
    """A standalone GTID followed by DDL commits at the statement, flushing the table."""
    asm, _ = _assembler("0-1-100")
    txn = _only(_feed(asm, [RawBegin("0-1-101", opens=False), _query("ALTER TABLE users ADD c INT")]))
    assert txn.position == "0-1-101"
    assert txn.gtid == "0-1-101"
    assert [(f.reason, f.schema, f.table) for f in txn.flushes] == [("statement", "shop", "users")]
    assert txn.changes == ()


def test_ddl_on_unmapped_table_still_advances() -> None:
    """DDL on another table commits with no flush and moves the position."""
    asm, _ = _assembler("0-1-100")
    txn = _only(_feed(asm, [RawBegin("0-1-101"), _query("CREATE TABLE shop.products (id INT)")]))
    assert (txn.position, txn.flushes) == ("0-1-101", ())


def test_mysql_row_transaction() -> None:
    """MySQL GTID → BEGIN → rows → XID yields one transaction; BEGIN keeps the GTID."""
    asm, _ = _assembler(f"{U1}:1-100")
    events = [RawBegin(f"{U1}:101", opens=False), RawBegin(None, opens=True), RawRows((ROW,))]
    txn = _only(_feed(asm, [*events, RawCommit("bin.000003", 777, TS)]))
    assert txn == Transaction(position=f"{U1}:1-101", changes=(ROW,), timestamp=TS, gtid=f"{U1}:101")


def test_mysql_ddl() -> None:
    """MySQL GTID → DDL commits at the statement."""
    asm, _ = _assembler(f"{U1}:1-100")
    txn = _only(_feed(asm, [RawBegin(f"{U1}:101"), _query("DROP TABLE `shop`.`orders`")]))
    assert txn.position == f"{U1}:1-101"
    assert [f.table for f in txn.flushes] == ["orders"]


def test_statement_inside_begin_does_not_commit() -> None:
    """A statement between BEGIN and COMMIT joins the transaction; the commit ends it."""
    asm, _ = _assembler(f"{U1}:1-100")
    events = [RawBegin(f"{U1}:101"), RawBegin(None, True), _query("UPDATE users SET a = 1"), RawRows((ROW2,))]
    txn = _only(_feed(asm, [*events, RawCommit("bin.000001", 950, TS)]))
    assert txn.changes == (ROW2,)
    assert [f.table for f in txn.flushes] == ["users"]
    assert txn.position == f"{U1}:1-101"


def test_txn_control_statement_ignored() -> None:
    """SAVEPOINT and friends inside a transaction neither commit nor flush."""
    asm, _ = _assembler("0-1-100")
    events = [RawBegin("0-1-101", True), _query("SAVEPOINT s1"), RawRows((ROW,)), _query("ROLLBACK TO SAVEPOINT s1")]
    txn = _only(_feed(asm, [*events, RawCommit("bin.000001", 9, TS)]))
    assert (txn.changes, txn.flushes) == ((ROW,), ())


def test_rollback_group_is_evict_only() -> None:
    """A ROLLBACK-terminated group becomes an evict-only transaction."""
    asm, _ = _assembler("0-1-100")
    events = [RawBegin("0-1-101", True), RawRows((ROW,)), RawCommit("bin.000001", 9, TS, rollback=True)]
    txn = _only(_feed(asm, events))
    assert txn.evict_only is True
    assert txn.changes == (ROW,)


def test_commit_is_not_evict_only() -> None:
    """An ordinary commit is not evict-only."""
    asm, _ = _assembler("0-1-100")
    assert _only(_feed(asm, _maria_rows("0-1-101", 9))).evict_only is False


def test_mysql_xa_prepare_then_commit() -> None:
    """XA: the prepared rows are evict-only; XA COMMIT later flushes every mapped table."""
    asm, _ = _assembler(f"{U1}:1-100")
    prepare = [RawBegin(f"{U1}:101"), RawBegin(None, True), RawRows((ROW,)), _query("XA END 'x'")]
    first = _only(_feed(asm, [*prepare, RawCommit("bin.000001", 500, TS, rollback=True)]))
    assert first.evict_only and first.changes == (ROW,)
    second = _only(_feed(asm, [RawBegin(f"{U1}:102"), _query("XA COMMIT 'x'", 600)]))
    assert [(f.reason, f.table) for f in second.flushes] == [("xa_commit", "users"), ("xa_commit", "orders")]
    assert second.position == f"{U1}:1-102"


def test_file_mode_statement_without_gtid() -> None:
    """In file mode a statement with no GTID event commits at its own end position."""
    asm, _ = _assembler("bin.000001:100")
    txn = _only(_feed(asm, [_query("TRUNCATE users", 400)]))
    assert (txn.position, txn.gtid) == ("bin.000001:400", None)


# ---- heartbeats and unknown events -----------------------------------------------------------------


def test_heartbeat_outside_transaction() -> None:
    """A heartbeat between transactions yields Heartbeat."""
    asm, _ = _assembler("0-1-100")
    assert asm.feed(RawHeartbeat()) == Heartbeat()
    _feed(asm, _maria_rows("0-1-101", 9))
    assert asm.feed(RawHeartbeat()) == Heartbeat()


@pytest.mark.parametrize(
    "opening",
    [
        [RawBegin("0-1-101", opens=False)],
        [RawBegin("0-1-101", opens=True)],
        [RawBegin("0-1-101", opens=True), RawRows((ROW,))],
    ],
)
def test_heartbeat_inside_transaction_ignored(opening: list[RawEvent]) -> None:
    """A heartbeat inside a transaction yields nothing and does not disturb it."""
    asm, _ = _assembler("0-1-100")
    _feed(asm, opening)
    assert asm.feed(RawHeartbeat()) is None
    assert asm.in_txn


@pytest.mark.parametrize("event_type", sorted(BENIGN_UNKNOWN_TYPES))
def test_benign_unknown_ignored(event_type: int) -> None:
    """Benign unknown event types yield nothing inside or outside a transaction."""
    asm, _ = _assembler("0-1-100")
    assert asm.feed(RawUnknown(event_type)) is None
    txn = _only(_feed(asm, [RawBegin("0-1-101", True), RawUnknown(event_type), *_maria_rows("0-1-101", 9)[1:]]))
    assert txn.flushes == ()


def test_unknown_outside_txn_flushes_at_same_position() -> None:
    """An unknown event between transactions yields flushes of every rule at the unchanged position."""
    asm, _ = _assembler("0-1-100,1-2-3")
    item = asm.feed(RawUnknown(0x99, detail="odd"))
    assert isinstance(item, Transaction)
    assert item.position == "0-1-100,1-2-3"
    assert item.changes == ()
    assert [(f.reason, f.schema, f.table, f.detail) for f in item.flushes] == [
        ("unknown_event", "shop", "users", "type=0x99 odd"),
        ("unknown_event", "shop", "orders", "type=0x99 odd"),
    ]
    assert asm.tracker.render() == "0-1-100,1-2-3"


def test_unknown_inside_txn_joins_it() -> None:
    """An unknown event inside a transaction adds flushes of every rule to that transaction."""
    asm, _ = _assembler("0-1-100")
    events = [RawBegin("0-1-101", True), RawRows((ROW,)), RawUnknown(0x26), RawCommit("bin.000001", 9, TS)]
    txn = _only(_feed(asm, events))
    assert txn.changes == (ROW,)
    assert [(f.reason, f.table) for f in txn.flushes] == [("unknown_event", "users"), ("unknown_event", "orders")]
    assert txn.position == "0-1-101"


def test_unexpected_event_type_raises() -> None:
    """Anything that is not a RawEvent is a TypeError."""
    asm, _ = _assembler("0-1-100")
    with pytest.raises(TypeError):
        asm.feed(Heartbeat())  # type: ignore[arg-type]


# ---- replays ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gtid", ["0-1-100", "0-1-42"])
def test_mariadb_lower_or_equal_sequence_numbers_are_applied(gtid: str) -> None:
    """A MariaDB transaction whose number is at or below the position's is a new transaction in stream order
    (SET gtid_seq_no, replayed mysqlbinlog output): it is applied, not skipped as a replay."""
    asm, skipped = _assembler("0-1-100")
    txn = _only(_feed(asm, _maria_rows(gtid, 321, ROW)))
    assert txn.changes == (ROW,) and txn.gtid == gtid
    assert skipped == []
    assert asm.tracker.render() == gtid


def test_mysql_replay_skipped() -> None:
    """A MySQL GTID inside the tracker's set is skipped and reported."""
    asm, skipped = _assembler(f"{U1}:1-100")
    assert _feed(asm, [RawBegin(f"{U1}:50"), _query("TRUNCATE users", 70)]) == [None, None]
    assert [t.gtid for t in skipped] == [f"{U1}:50"]


@pytest.mark.parametrize(("pos", "is_skipped"), [(400, True), (500, True), (501, False)])
def test_file_replay_skipped(pos: int, is_skipped: bool) -> None:
    """In file mode a transaction ending at or before the position is skipped."""
    asm, skipped = _assembler("bin.000002:500")
    events = [RawBegin(None, True), RawRows((ROW,)), RawCommit("bin.000002", pos, TS)]
    result = _feed(asm, events)[-1]
    assert (result is None) is is_skipped
    assert len(skipped) == int(is_skipped)


def test_skip_without_callback() -> None:
    """Skipping works when no on_skip callback is given."""
    asm = Assembler(PositionTracker("bin.000002:500"), RULES)
    assert _feed(asm, [RawBegin(None, True), RawRows((ROW,)), RawCommit("bin.000002", 400, TS)])[-1] is None


def test_skipped_changes_do_not_leak() -> None:
    """The rows of a skipped replay are not carried into the next transaction."""
    asm, _ = _assembler(f"{U1}:1-100")
    _feed(asm, [RawBegin(f"{U1}:50"), RawBegin(None, True), RawRows((ROW,)), RawCommit("bin.000001", 9, TS)])
    txn = _only(_feed(asm, [RawBegin(f"{U1}:101"), RawBegin(None, True), RawRows((ROW2,)), RawCommit("b.1", 10, TS)]))
    assert txn.changes == (ROW2,)


def test_mariadb_positions_carry_the_stream_part_once_the_server_is_known() -> None:
    """After the format description names the server, each commit's position is state@server:file:pos, and an
    idle heartbeat between transactions moves the stream part to the server's end."""
    asm, _ = _assembler("0-1-100")
    assert asm.feed(RawServer(1)) is None
    txn = _only(_feed(asm, _maria_rows("0-1-101", 900, ROW)))
    assert txn.position == "0-1-101@1:bin.000001:900"
    beat = asm.feed(RawHeartbeat("bin.000001", 950))
    assert beat == Heartbeat("0-1-101@1:bin.000001:950")
    assert asm.feed(RawHeartbeat("bin.000001", 950)) == Heartbeat(), "nothing new: no position to record"


def test_tagged_mysql_gtid_event_is_refused_with_a_config_error() -> None:
    """A MySQL 8.3+ tagged GTID event (0x2A) stops the worker with a clear error (exit 2), not a crash loop."""
    asm, _ = _assembler(f"{U1}:1-100")
    with pytest.raises(ServerConfigError, match="tagged GTID"):
        asm.feed(RawUnknown(0x2A, "", "binlog.000001", 500))
    file_asm, _ = _assembler("bin.000001:4")
    assert file_asm.feed(RawUnknown(0x2A, "", "bin.000001", 500)) is None and file_asm.in_txn


def test_reset_forgets_partial_transaction() -> None:
    """reset() drops a half-read transaction (after a reconnect)."""
    asm, _ = _assembler("0-1-100")
    _feed(asm, [RawBegin("0-1-101", True), RawRows((ROW,)), RawUnknown(0x99)])
    asm.reset()
    assert not asm.in_txn
    assert asm.feed(RawHeartbeat()) == Heartbeat()
    txn = _only(_feed(asm, _maria_rows("0-1-101", 9, ROW2)))
    assert (txn.changes, txn.flushes) == ((ROW2,), ())


# ---- positions after each commit -------------------------------------------------------------------


def test_mariadb_positions_across_domains() -> None:
    """Each commit's position is the full multi-domain state after it."""
    asm, _ = _assembler("0-1-100,1-2-5")
    positions = [_only(_feed(asm, _maria_rows(g, 9))).position for g in ("1-2-6", "0-1-101", "2-3-1")]
    assert positions == ["0-1-100,1-2-6", "0-1-101,1-2-6", "0-1-101,1-2-6,2-3-1"]


def test_mysql_positions_across_servers() -> None:
    """Each commit's position is the merged GTID set after it."""
    asm, _ = _assembler(f"{U2}:1-100")
    positions = []
    for gtid in (f"{U2}:101", f"{U1}:1", f"{U2}:102"):
        events = [RawBegin(gtid), RawBegin(None, True), RawRows((ROW,)), RawCommit("bin.000001", 9, TS)]
        positions.append(_only(_feed(asm, events)).position)
    assert positions == [f"{U2}:1-101", f"{U1}:1,{U2}:1-101", f"{U1}:1,{U2}:1-102"]


def test_file_positions_across_rotation() -> None:
    """In file mode each commit's position is the end of its commit event, across files."""
    asm, _ = _assembler("bin.000009:4")
    positions = []
    for file, pos in (("bin.000009", 900), ("bin.000010", 300)):
        events = [RawBegin(None, True), RawRows((ROW,)), RawCommit(file, pos, TS)]
        positions.append(_only(_feed(asm, events)).position)
    assert positions == ["bin.000009:900", "bin.000010:300"]


def test_file_mode_heartbeat_moves_the_checkpoint_to_the_server_end() -> None:
    """File mode: an idle heartbeat past the last commit (e.g. after MariaDB binlog checkpoints) is recorded."""
    asm, _ = _assembler("bin.000001:100")
    assert asm.feed(RawHeartbeat("bin.000002", 385)) == Heartbeat("bin.000002:385")
    assert asm.tracker.render() == "bin.000002:385"
    assert asm.feed(RawHeartbeat("bin.000002", 385)) == Heartbeat(), "no move: nothing new to record"


def test_gtid_mode_heartbeat_leaves_the_position_alone() -> None:
    """GTID mode: heartbeats carry no GTID, so the position stays as it is."""
    asm, _ = _assembler("0-1-5")
    assert asm.feed(RawHeartbeat("bin.000009", 999)) == Heartbeat()
    assert asm.tracker.render() == "0-1-5"


def test_decode_error_is_labelled_as_such() -> None:
    """An undecodable event (type -1) is labelled decode_error in the flush detail (and so the metric)."""
    asm, _ = _assembler("0-1-5")
    txn = asm.feed(RawUnknown(-1, "decode error: UnicodeDecodeError"))
    assert isinstance(txn, Transaction)
    assert {f.detail.split(" ", 1)[0] for f in txn.flushes} == {"decode_error"}


def test_mysql_transaction_payload_commits_and_flushes() -> None:
    """A compressed MySQL transaction (GTID + payload 0x28, no XID) closes at once and flushes every table."""
    asm, _ = _assembler(f"{U1}:1-3")
    assert asm.feed(RawBegin(f"{U1}:4", opens=False)) is None
    txn = asm.feed(RawUnknown(0x28, "", "binlog.000002", 900))
    assert isinstance(txn, Transaction)
    assert txn.position == f"{U1}:1-4"
    assert txn.evict_only
    assert {(f.schema, f.table) for f in txn.flushes} == {("shop", "users"), ("shop", "orders")}
    assert not asm.in_txn


def test_partial_rows_make_the_transaction_evict_only() -> None:
    """Rows flagged evict_only (partial JSON images) turn the whole transaction into evictions."""
    asm, _ = _assembler("0-1-5")
    txn = _only(_feed(asm, [RawBegin("0-1-6", opens=True), RawRows((ROW,), evict_only=True), RawCommit("b.1", 9, TS)]))
    assert txn.evict_only


def test_xa_commit_of_a_known_prepared_xid_evicts_its_rows_again() -> None:
    """XA PREPARE's rows are remembered by XID; its XA COMMIT (as the server logs it) evicts them again instead
    of flushing every table. An XID the worker never saw prepared still flushes everything."""
    asm, _ = _assembler("0-1-100")
    xid = (1, b"x0", b"")
    prepare = [RawBegin("0-1-101", True), RawRows((ROW,)), _query("XA END X'7830',X'',1")]
    first = _only(_feed(asm, [*prepare, RawCommit("bin.000001", 500, TS, rollback=True, xid=xid)]))
    assert first.evict_only and first.changes == (ROW,)
    second = _only(_feed(asm, [RawBegin("0-1-102"), _query("XA COMMIT X'7830',X'',1", 600)]))
    assert second.flushes == () and second.changes == (ROW,) and second.evict_only
    unknown = _only(_feed(asm, [RawBegin("0-1-103"), _query("XA COMMIT X'7831',X'',1", 700)]))
    assert [f.reason for f in unknown.flushes] == ["xa_commit", "xa_commit"]


def test_xa_prepare_of_a_chunked_transaction_is_not_remembered() -> None:
    """A prepared transaction handed over in chunks has rows the assembler no longer holds: its XA COMMIT flushes."""
    asm = Assembler(PositionTracker("0-1-100"), RULES, chunk_rows=1)
    xid = (1, b"big", b"")
    assert asm.feed(RawBegin("0-1-101", True)) is None
    assert asm.feed(RawRows((ROW,))) is not None, "a chunk"
    _feed(asm, [RawRows((ROW2,)), RawCommit("bin.000001", 500, TS, rollback=True, xid=xid)])
    commit = _only(_feed(asm, [RawBegin("0-1-102"), _query("XA COMMIT X'626967',X'',1", 600)]))
    assert [f.reason for f in commit.flushes] == ["xa_commit", "xa_commit"]
