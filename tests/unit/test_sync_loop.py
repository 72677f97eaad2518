"""The sync loop's policies (retry, lost replies, rewinds, flushes) over in-memory ports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from cdc_sync.core.events import Op, RawBegin, RawCommit, RawEvent, RawQuery, RawRows, RowChange, Transaction
from cdc_sync.worker.loop import Worker
from tests.fakes.ports import FakeAdmin, FakeSink, FakeSource, NoBackoff
from tests.unit.factories import make_config

CONFIG = make_config({"table": "shop.users", "key": "user:{id}", "mode": "update"})
COLUMNS = {"shop.users": ["id", "name"]}


def txn(seq: int, *changes: RowChange) -> list[RawEvent]:
    return [RawBegin(gtid=f"0-1-{seq}", opens=True), RawRows(changes), RawCommit("bin.000001", 100 + seq, 0)]


def ins(i: int, name: str) -> RowChange:
    return RowChange(Op.INSERT, "shop", "users", None, {"id": i, "name": name})


def upd(i: int, before: str, after: str) -> RowChange:
    return RowChange(Op.UPDATE, "shop", "users", {"id": i, "name": before}, {"id": i, "name": after})


@contextmanager
def running(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():  # type: ignore[operator]
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def make(script: dict[str, list[RawEvent]], sink: FakeSink | None = None) -> tuple[Worker, FakeSource, FakeSink]:
    sink = sink or FakeSink()
    source = FakeSource(script, threading.Event())
    return Worker(CONFIG, source, FakeAdmin(COLUMNS), sink, NoBackoff()), source, sink


def value(sink: FakeSink, key: str) -> object:
    raw = sink.store.get(key)
    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]


def test_transactions_apply_in_order_and_checkpoint_follows() -> None:
    """Each transaction's changes land and the checkpoint ends at the last GTID."""
    worker, source, sink = make({"0-1-1": [*txn(2, ins(1, "a")), *txn(3, upd(1, "a", "b"), ins(2, "c"))]})
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-3")
    assert value(sink, "user:1") == {"id": 1, "name": "b"}
    assert value(sink, "user:2") == {"id": 2, "name": "c"}
    assert source.starts == ["0-1-1"]


def test_redis_failures_retry_the_same_step_without_skipping() -> None:
    """SinkUnavailable three times: the step is retried, logged each time, and nothing is lost."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    worker, _source, sink = make({"0-1-1": txn(2, ins(1, "a"))}, sink)
    sink.fail_next = 3
    with capture_logs() as logs, running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-2")
    assert value(sink, "user:1") == {"id": 1, "name": "a"}
    assert [e["event"] for e in logs].count("sink.unavailable") == 3


def test_lost_reply_is_recognised_and_not_applied_twice() -> None:
    """The step applied but its reply was lost: the retry sees its own checkpoint and moves on."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    worker, _source, sink = make({"0-1-1": [*txn(2, ins(1, "a")), *txn(3, ins(2, "b"))]}, sink)
    sink.lose_reply_next = 1
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-3")
    assert sink.applied_steps.count("0-1-2") <= 1
    assert value(sink, "user:2") == {"id": 2, "name": "b"}


def test_older_checkpoint_in_redis_rewinds_the_reader_and_replays() -> None:
    """Redis went back to an older checkpoint: the worker restarts reading there and replays."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    script = {"0-1-1": [*txn(2, ins(1, "a")), *txn(3, upd(1, "a", "b"))]}
    worker, source, sink = make(script, sink)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-3" and source.idle.is_set())
        sink.store["cdc:checkpoint"] = "0-1-2"  # the "snapshot" restore
        sink.store["user:1"] = orjson.dumps({"id": 1, "name": "a"})
        script["0-1-2"] = txn(3, upd(1, "a", "b"))
        script["0-1-3"] = txn(4, ins(9, "z"))  # what comes next, once caught up
        wait_until(lambda: "0-1-2" in source.starts and sink.load_checkpoint() == "0-1-3")
    assert value(sink, "user:1") == {"id": 1, "name": "b"}
    assert "sync.rewind" in [e["event"] for e in logs]


def test_missing_checkpoint_flushes_and_continues() -> None:
    """Redis emptied under the worker: every mapped table is flushed and the worker goes on."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    script = {"0-1-1": txn(2, ins(1, "a"))}
    worker, source, sink = make(script, sink)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-2" and source.idle.is_set())
        sink.store.clear()
        sink.store["user:7"] = b"filled by a reader after the restart"
        worker.applier.put(Transaction(position="0-1-3"))
        wait_until(lambda: sink.load_checkpoint() == "0-1-3")
    assert "user:7" not in sink.store
    assert sink.flushed == ["shop.users"]
    assert "sync.checkpoint_lost" in [e["event"] for e in logs]


def test_ddl_on_a_mapped_table_flushes_before_later_changes() -> None:
    """TRUNCATE flushes the table's keys; changes after it land afterwards."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    ddl: list[RawEvent] = [
        RawBegin(gtid="0-1-3", opens=False),
        RawQuery("TRUNCATE shop.users", "", "bin.000001", 200, 0),
    ]
    worker, _source, sink = make({"0-1-1": [*txn(2, ins(1, "a")), *ddl, *txn(4, ins(2, "b"))]}, sink)
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-4")
    assert "user:1" not in sink.store
    assert value(sink, "user:2") == {"id": 2, "name": "b"}
    assert sink.flushed == ["shop.users"]


def test_fresh_start_records_the_start_position_and_flushes_unvouched_keys() -> None:
    """No checkpoint: keys already present are flushed and the start position is written at once."""
    sink = FakeSink()
    sink.store["user:1"] = b"from nobody we know"
    worker, _source, sink = make({}, sink)
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-1")
    assert "user:1" not in sink.store


def test_a_value_that_cannot_be_encoded_flushes_instead_of_killing_the_worker() -> None:
    """An unencodable value (here an object) is a plan error: the table is flushed and the loop goes on."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    bad = RowChange(Op.INSERT, "shop", "users", None, {"id": 1, "name": object()})
    worker, _source, sink = make({"0-1-1": [*txn(2, bad), *txn(3, ins(2, "b"))]}, sink)
    with capture_logs() as logs, running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-3")
    assert "user:1" not in sink.store
    assert value(sink, "user:2") == {"id": 2, "name": "b"}
    assert "sync.plan_failed" in [e["event"] for e in logs]
    assert sink.flushed == ["shop.users"]


def test_stop_returns_even_while_redis_is_down() -> None:
    """SIGTERM with Redis unreachable and the queue full: run() still returns within the shutdown bound."""
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    events = [e for i in range(2, 40) for e in txn(i, ins(i, "x"))]
    config = make_config(
        {"table": "shop.users", "key": "user:{id}", "mode": "update"},
        worker={"queue_max_transactions": 2, "shutdown_timeout_s": 0.5},
    )
    source = FakeSource({"0-1-1": events}, threading.Event())
    worker = Worker(config, source, FakeAdmin(COLUMNS), sink, NoBackoff())
    sink.fail_next = 10**9
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_until(lambda: worker.applier.queue.full())
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert sink.load_checkpoint() == "0-1-1", "nothing was recorded as applied"


def test_checkpoint_unknown_to_the_server_flushes_and_starts_at_its_end() -> None:
    """A GTID checkpoint the server's history does not include (another lineage): flush all, start at its end."""
    sink = FakeSink()
    sink.store.update({"cdc:checkpoint": "0-1-500", "user:1": b"from the old lineage"})
    source = FakeSource({}, threading.Event())
    worker = Worker(CONFIG, source, FakeAdmin(COLUMNS, gtid_position="0-2-10"), sink, NoBackoff())
    with capture_logs() as logs, running(worker):
        wait_until(lambda: source.starts == ["0-2-10"])
    assert sink.load_checkpoint() == "0-2-10"
    assert "user:1" not in sink.store
    assert "source.lineage_changed" in [e["event"] for e in logs]


def test_a_promoted_replica_that_fell_behind_is_another_lineage() -> None:
    """The server's domain position 0-2-11 is past the checkpoint 0-1-8 by number, but its binlog state says it
    had 0-1-5 from server 1 only (promoted behind, then wrote its own): flush all, start at its end. The same
    server with 0-1-8 in its binlog state resumes (a failover to a replica that applied it)."""
    for state, lost in (("0-1-5,0-2-11", True), ("0-1-8,0-2-11", False)):
        sink = FakeSink()
        sink.store.update({"cdc:checkpoint": "0-1-8", "user:1": b"cached"})
        source = FakeSource({}, threading.Event())
        admin = FakeAdmin(COLUMNS, gtid_position="0-2-11")
        admin.variables["gtid_binlog_state"] = state
        worker = Worker(CONFIG, source, admin, sink, NoBackoff())
        with capture_logs() as logs, running(worker):
            wait_until(lambda source=source: len(source.starts) == 1)
        assert source.starts == (["0-2-11"] if lost else ["0-1-8"]), state
        assert ("user:1" not in sink.store) is lost, state
        assert ("source.lineage_changed" in [e["event"] for e in logs]) is lost, state


def test_file_checkpoint_from_another_server_flushes() -> None:
    """A file checkpoint written against another server identity is meaningless here: flush, start at the end."""
    sink = FakeSink()
    sink.store.update({"cdc:checkpoint": "bin.000009:999", "cdc:server": "mariadb:7", "user:1": b"old"})
    admin = FakeAdmin(COLUMNS, gtid_position="")
    admin.variables["server_id"] = "1"
    source = FakeSource({}, threading.Event())
    worker = Worker(CONFIG, source, admin, sink, NoBackoff())
    with running(worker):
        wait_until(lambda: source.starts == ["bin.000001:4"])
    assert "user:1" not in sink.store
    assert sink.store["cdc:server"] == "mariadb:1"


def test_large_transaction_is_applied_in_chunks_and_the_checkpoint_waits_for_its_commit() -> None:
    """A transaction of 25 rows with chunk_rows=10: two chunks evict early at the old checkpoint, the commit lands."""
    config = make_config(
        {"table": "shop.users", "key": "user:{id}", "mode": "update"}, worker={"chunk_rows": 10, "batch_max_rows": 10}
    )
    sink = FakeSink()
    sink.store["cdc:checkpoint"] = "0-1-1"
    for i in range(25):
        sink.store[f"user:{i}"] = b"stale"
    big: list[RawEvent] = [RawBegin(gtid="0-1-2", opens=True)]
    big += [RawRows((ins(i, f"n{i}"),)) for i in range(25)]
    big.append(RawCommit("bin.000001", 500, 0))
    source = FakeSource({"0-1-1": big}, threading.Event())
    worker = Worker(config, source, FakeAdmin(COLUMNS), sink, NoBackoff())
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-2")
    assert sink.applied_steps[:2] == ["0-1-1", "0-1-1"], "chunks keep the old checkpoint"
    assert all(f"user:{i}" not in sink.store for i in range(20)), "chunked rows are evicted"
    assert all(value(sink, f"user:{i}") == {"id": i, "name": f"n{i}"} for i in range(20, 25))


def test_keys_evicted_while_no_worker_ran_flush_at_start() -> None:
    """Redis evicted keys since the count recorded when the cache was last whole (a tag set may be gone): flush
    every table before resuming, then record the count. The same count flushes nothing."""
    for recorded, evicted, flushed in (("3", 5, True), ("5", 5, False), (None, 0, False), (None, 2, True)):
        sink = FakeSink()
        sink.store.update({"cdc:checkpoint": "0-1-1", "user:1": b"cached"})
        if recorded is not None:
            sink.store["cdc:evictions"] = recorded
        sink.evictions = evicted
        worker = Worker(CONFIG, FakeSource({}, threading.Event()), FakeAdmin(COLUMNS), sink, NoBackoff())
        with capture_logs() as logs:
            worker.prepare()
        assert ("user:1" not in sink.store) is flushed, (recorded, evicted)
        assert ("sync.keys_evicted" in [e["event"] for e in logs]) is flushed
        assert sink.store["cdc:evictions"] == str(evicted)


def test_an_eviction_while_running_holds_the_heartbeat_back_until_every_table_is_flushed() -> None:
    """evictions_settled (asked by the prober before each heartbeat move): True while the count is the one the
    cache is whole at; a new count flushes every table, records it and answers False for that probe."""
    sink = FakeSink()
    sink.store.update({"cdc:checkpoint": "0-1-1"})
    worker = Worker(CONFIG, FakeSource({}, threading.Event()), FakeAdmin(COLUMNS), sink, NoBackoff())
    worker.prepare()
    assert worker.evictions_settled()
    sink.store["user:1"] = b"cached"
    sink.evictions = 4
    with capture_logs() as logs:
        assert not worker.evictions_settled()
    assert "user:1" not in sink.store and sink.store["cdc:evictions"] == "4"
    assert "sync.keys_evicted" in [e["event"] for e in logs]
    assert worker.evictions_settled()


def test_an_eviction_flush_records_the_rules_and_checkpoint_again_and_a_policy_change_is_said() -> None:
    """An allkeys-* policy may evict <ns>:rules (readers then fill nothing) and the checkpoint (the heartbeat then
    stands still until the next change): the eviction flush writes both again.
    The policy and limit are read with each eviction count; a change is logged and sets the gauge."""
    sink = FakeSink()
    sink.store.update({"cdc:checkpoint": "0-1-1"})
    worker = Worker(CONFIG, FakeSource({}, threading.Event()), FakeAdmin(COLUMNS), sink, NoBackoff(), rules_store=sink)
    worker.prepare()
    rules = sink.store["cdc:rules"]
    del sink.store["cdc:rules"], sink.store["cdc:checkpoint"]
    sink.evictions, sink.policy, sink.maxmemory = 2, "allkeys-lru", 1 << 20
    with capture_logs() as logs:
        assert not worker.evictions_settled()
    assert sink.store["cdc:rules"] == rules
    assert sink.store["cdc:checkpoint"] == "0-1-1"  # flushed, then written again (the heartbeat needs it)
    assert [e["action"] for e in logs if e["event"] == "sync.checkpoint_lost"] == ["flushed_and_restored"]
    said = [e for e in logs if e["event"] == "sync.eviction_policy"]
    assert [(e["policy"], e["may_evict"], e["log_level"]) for e in said] == [("allkeys-lru", True, "warning")]
    assert REGISTRY.get_sample_value("cdc_sync_redis_may_evict") == 1
    with capture_logs() as logs:
        assert worker.evictions_settled()
    assert not [e for e in logs if e["event"] == "sync.eviction_policy"]  # said once per change
    sink.policy = "noeviction"
    with capture_logs() as logs:
        assert worker.evictions_settled()
    assert [e["may_evict"] for e in logs if e["event"] == "sync.eviction_policy"] == [False]
    assert REGISTRY.get_sample_value("cdc_sync_redis_may_evict") == 0


def empty(seq: int) -> list[RawEvent]:
    """A transaction of another table: nothing in it for the cache."""
    return [RawBegin(gtid=f"0-1-{seq}", opens=True), RawCommit("bin.000001", 100 + seq, 0)]


def recording_puts(worker: Worker) -> list[object]:
    """Every item the reading side queues for the applier, in order."""
    queued: list[object] = []
    put = worker.applier.put

    def record(item: object, give_up: object = None) -> None:
        queued.append(item)
        put(item, give_up=give_up)  # type: ignore[arg-type]

    worker.applier.put = record  # type: ignore[method-assign]
    return queued


def test_empty_transactions_read_ahead_of_the_next_are_folded_into_it() -> None:
    """While the next event is already read, empty transactions wait and the next one stands for them: one item
    queued, the checkpoint past all of them, and every one counted as applied."""
    applied = REGISTRY.get_sample_value("cdc_sync_transactions_applied_total") or 0.0
    worker, source, sink = make({"0-1-1": [*empty(2), *empty(3), *empty(4), *txn(5, ins(1, "a"))]})
    source.buffering = True
    queued = recording_puts(worker)
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-5")
    txns = [q for q in queued if isinstance(q, Transaction)]
    assert [(t.position, t.folded) for t in txns][:1] == [("0-1-5", 3)]
    assert value(sink, "user:1") == {"id": 1, "name": "a"}
    assert (REGISTRY.get_sample_value("cdc_sync_transactions_applied_total") or 0.0) - applied == 4


def test_the_last_empty_transaction_is_applied_when_nothing_more_is_read() -> None:
    """A run of empty transactions at the end of what the server sent: the last one is queued as soon as no
    further event is buffered, so the checkpoint (and the heartbeat) reach the server's end."""
    worker, source, sink = make({"0-1-1": [*txn(2, ins(1, "a")), *empty(3), *empty(4), *empty(5)]})
    source.buffering = True
    queued = recording_puts(worker)
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-5")
    txns = [q for q in queued if isinstance(q, Transaction)]
    assert [(t.position, t.folded) for t in txns][:2] == [("0-1-2", 0), ("0-1-5", 2)]


def test_an_empty_transaction_held_when_the_connection_drops_is_still_applied() -> None:
    """The link fails right after an empty transaction that waited for the next event: it is queued anyway (the
    reconnect resumes after it), so the checkpoint reaches it without waiting for another write."""
    from cdc_sync.errors import SourceError

    script: dict[str, list[RawEvent]] = {"0-1-1": [*txn(2, ins(1, "a")), *empty(3), *empty(4)]}
    script["0-1-1"].append(SourceError("link reset"))  # type: ignore[arg-type]
    worker, source, sink = make(script)
    source.buffering = True
    with running(worker):
        wait_until(lambda: sink.load_checkpoint() == "0-1-4")
    assert source.starts[:2] == ["0-1-1", "0-1-4"]


def test_an_empty_transaction_held_at_a_rewind_is_dropped_with_the_rest() -> None:
    """A rewind while an empty transaction waits: it was read before the rewind, so it is dropped, never queued
    in the new generation (where its later position would run the checkpoint ahead of the replay)."""
    script: dict[str, list[RawEvent]] = {}
    worker, source, sink = make(script)

    def rewind() -> None:  # what the applier does when Redis holds an older checkpoint
        worker.applier.rewind_to = "0-1-1"

    script["0-1-1"] = [*txn(2, ins(1, "a")), *empty(3), rewind, *empty(4), *empty(5)]  # type: ignore[list-item]
    source.buffering = True
    with running(worker):
        wait_until(lambda: source.starts.count("0-1-1") >= 2)
        script["0-1-1"] = txn(2, ins(1, "a"))
        wait_until(lambda: sink.applied_steps.count("0-1-2") >= 2)
    seqs = [int(step.rsplit("-", 1)[1]) for step in sink.applied_steps]
    assert seqs == sorted(seqs), f"the checkpoint went back: {sink.applied_steps}"
