"""Wholesale flushes and hand-moved checkpoints never let a reader trust what they skipped or evicted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from click.testing import CliRunner

from cdc_sync import CacheReader
from cdc_sync.adapters.redis import RedisSink
from cdc_sync.cli import main
from cdc_sync.config import TableRule, load
from cdc_sync.errors import OperatorLockLost
from cdc_sync.ops import maintenance
from tests.helpers import wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget

READER = "[reader]\nholdoff_ms = 60000\nmax_staleness_ms = 60000\n"


def _tables(db: str) -> str:
    return f"""
[[tables]]
table = "{db}.a"
key = "a:{{id}}"
mode = "update"

[[tables]]
table = "{db}.b"
key = "b:{{id}}"
mode = "update"

[[tables]]
table = "{db}.orders"
tags = ["user_id"]
"""


@pytest.fixture
def schema(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        for t in ("a", "b"):
            cur.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(20))")
            cur.execute(f"INSERT INTO {t} VALUES (1, 'db')")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[list[CacheReader]]:
    made: list[CacheReader] = []
    yield made
    for rd in made:
        rd.close()


def _reader(tmp_path: Path, made: list[CacheReader]) -> CacheReader:
    rd = CacheReader(load(tmp_path / "w.toml"))
    made.append(rd)
    return rd


def test_checkpoint_reset_marks_every_table_before_the_checkpoint_moves(
    tmp_path: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    reader: list[CacheReader],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reset under a running worker: while table b waits for its flush, the worker has rewound and its
    heartbeat is fresh again, yet b's old value (a change the jump skipped) is never served."""
    start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    r.set("b:1", json.dumps({"id": 1, "v": "skipped by the jump"}))  # as if the jump skipped b's change
    b_reached, release = threading.Event(), threading.Event()

    class SlowSink(RedisSink):
        def flush(self, rule: TableRule, held: bool = False) -> int:
            if rule.table == "b":
                b_reached.set()
                assert release.wait(60)
            return super().flush(rule, held)

    monkeypatch.setattr(maintenance, "make_sink", SlowSink)  # (a one-node sink: its class is the factory)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(maintenance.reset(load(tmp_path / "w.toml"))))
    t.start()
    try:
        assert b_reached.wait(60)
        wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "the worker vouching again after its rewind")
        row = _reader(tmp_path, reader).get_row(f"{db}.b", id=1)
        assert row == {"id": 1, "v": "db"}, "a table not yet flushed is bypassed, not trusted"
    finally:
        release.set()
        t.join(60)
    assert result and r.get("b:1") is None
    assert r.pttl(f"cdc:flushing:{db}.b") > 0, "after its flush the marker stays as a hold-off"


def test_checkpoint_set_forward_flushes_and_a_rewind_replays(
    tmp_path: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A position ahead of the checkpoint may skip changes: it flushes; one behind it (a rewind) does not."""
    w = start_worker(_tables(db), extra=READER)
    start = (r.get("cdc:checkpoint") or b"").decode()
    with sql.cursor() as cur:
        cur.execute("UPDATE a SET v = 'later' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("a:1") is not None
    cfg = load(tmp_path / "w.toml")
    _previous, flushed = maintenance.set_position(cfg, start)
    assert flushed is None, "behind the stored checkpoint: a replay, no flush"
    wait_for(lambda: "sync.rewind" in w.event_names(), 30, "the rewind")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    ahead = (r.get("cdc:checkpoint") or b"").decode()
    with sql.cursor() as cur:
        cur.execute("UPDATE a SET v = 'skipped' WHERE id = 1")
    # the worker may apply it first; what matters is that a jump never leaves a:1 trusted without a flush
    _, flushed = maintenance.set_position(cfg, ahead.partition("@")[0])  # a bare GTID state: order unknown
    assert flushed is not None


def test_a_flush_leaves_a_holdoff_on_the_table(
    tmp_path: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    reader: list[CacheReader],
) -> None:
    """After a wholesale flush (here a statement-format UPDATE), readers do not fill that table during the
    hold-off: the flushing change's commit may not be visible to their SELECT yet."""
    w = start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    with sql.cursor() as cur:
        cur.execute("SET SESSION binlog_format = 'STATEMENT'")
        cur.execute("UPDATE a SET v = 'by statement' WHERE id = 1")
        cur.execute("SET SESSION binlog_format = 'ROW'")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert any(e.get("reason") == "statement" for e in w.events() if e.get("event") == "sync.table_flushed")
    rd = _reader(tmp_path, reader)
    assert rd.get_row(f"{db}.a", id=1) == {"id": 1, "v": "by statement"}
    assert r.get("a:1") is None, "no fill within the hold-off after a flush"
    assert rd.stats["bypass:flushing"] == 1


def test_a_fresh_start_flushes_reader_keys_of_tag_only_rules(
    tmp_path: Path,
    start_worker: StartWorker,
    db: str,
    schema: None,
    r: redis.Redis,
) -> None:
    """No checkpoint, but reader results registered under a tag-only rule's tags: nobody vouches for them."""
    r.sadd(f"cdc:tag:{db}.orders:user_id=5", "orders-of:5")
    r.set("orders-of:5", "[10]")
    w = start_worker(_tables(db), extra=READER)
    assert r.get("orders-of:5") is None
    assert "sync.no_checkpoint_with_keys" in w.event_names()


def test_xa_commit_evicts_what_its_prepare_changed_and_nothing_else(
    tmp_path: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """XA PREPARE evicts a:1; while prepared, a value of the old row is cached again (as a reader would); the
    XA COMMIT makes the new row visible and evicts a:1 once more, with no flush of any table."""
    w = start_worker(_tables(db), extra=READER)
    with sql.cursor() as cur:
        cur.execute("UPDATE a SET v = 'before xa' WHERE id = 1")
    wait_for(lambda: r.get("a:1") is not None, 30, "a:1 cached by the worker")
    with sql.cursor() as cur:
        cur.execute("XA START 'x1'")
        cur.execute("UPDATE a SET v = 'by xa' WHERE id = 1")
        cur.execute("XA END 'x1'")
        cur.execute("XA PREPARE 'x1'")
    wait_for(lambda: r.get("a:1") is None, 30, "the prepare's eviction")
    r.set("a:1", json.dumps({"id": 1, "v": "before xa"}))  # a fill of the still-visible old row while prepared
    r.set("b:1", json.dumps({"id": 1, "v": "db"}))
    with sql.cursor() as cur:
        cur.execute("XA COMMIT 'x1'")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("a:1") is None, "the commit evicted the row its prepare changed"
    assert r.get("b:1") is not None, "and nothing else"
    assert not [e for e in w.events() if e.get("event") == "sync.table_flushed" and e.get("reason") == "xa_commit"]


def test_a_hold_left_by_a_dead_worker_is_flushed_and_released_at_start(
    tmp_path: Path, start_worker: StartWorker, db: str, schema: None, r: redis.Redis
) -> None:
    """A flushing marker held with no expiry while no operator command runs was left by a worker that died
    holding it: the next start flushes the table and releases the marker (held by an operator: left alone)."""
    r.set(f"cdc:flushing:{db}.a", "1")  # held, no expiry
    r.set(f"cdc:flushing:{db}.b", "1")
    r.set("cdc:operator", "flush on another host")  # an operator command holds b... and a: nothing is released
    w = start_worker(_tables(db), extra=READER)
    assert r.pttl(f"cdc:flushing:{db}.a") == -1 and r.pttl(f"cdc:flushing:{db}.b") == -1
    w.kill9()
    r.delete("cdc:operator")
    r.set("a:1", json.dumps({"id": 1, "v": "stale"}))
    w2 = start_worker(_tables(db), name="w2", extra=READER, wait=False)
    wait_for(lambda: "source.connecting" in w2.event_names(), 60, "restart")
    assert r.get("a:1") is None, "the held table is flushed before it is released"
    assert r.pttl(f"cdc:flushing:{db}.a") != -1 and r.pttl(f"cdc:flushing:{db}.b") != -1
    reasons = [e.get("reason") for e in w2.events() if e.get("event") == "sync.table_flushed"]
    assert reasons.count("leftover_hold") == 2


def test_an_operator_sink_whose_lock_is_another_commands_is_refused_every_step_and_the_worker_is_not(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, r: redis.Redis
) -> None:
    """With ``operator_token`` set and ``<ns>:operator`` holding another token, the checkpoint, hold, mark and
    tag-eviction steps are refused (OperatorLockLost) and change nothing; the worker's sink (no token) runs them."""
    cfg = load(write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), extra=READER))
    a = cfg.tables[0]
    r.set("cdc:checkpoint", "before")
    r.set("cdc:heartbeat", "1")
    r.set("cdc:operator", "checkpoint reset on another host")
    sink = RedisSink(cfg.redis, cfg.reader.holdoff_ms)
    try:
        sink.operator_token = "flush on this host"
        with pytest.raises(OperatorLockLost, match="now held by checkpoint reset on another host"):
            sink.set_checkpoint("after")
        assert r.get("cdc:checkpoint") == b"before" and r.get("cdc:heartbeat") == b"1"
        with pytest.raises(OperatorLockLost, match="hold step was refused"):
            sink.hold_flushing([a])
        with pytest.raises(OperatorLockLost, match="mark step was refused"):
            sink.flush(a, held=True)
        assert not r.exists(f"cdc:flushing:{db}.a")
        r.set("cdc:operator", sink.operator_token)
        r.sadd(f"cdc:tag:{db}.a", "reader-key")
        r.set("reader-key", "1")
        steps = sink._step

        def steal_after_mark(op: str, keys: Any, ms: int = 0) -> int:
            done = steps(op, keys, ms)
            if op == "mark":
                r.set("cdc:operator", "checkpoint reset on another host")
            return done

        sink._step = steal_after_mark  # type: ignore[method-assign]
        with pytest.raises(OperatorLockLost, match="evict tags step was refused"):
            sink.flush(a, held=True)
        assert r.exists("reader-key"), "the refused tag eviction deleted nothing"
        worker = RedisSink(cfg.redis, cfg.reader.holdoff_ms)
        try:
            worker.set_checkpoint("after")
            assert worker.flush(a) == 1 and not r.exists("reader-key")
            assert r.get("cdc:checkpoint") == b"after"
        finally:
            worker.close()
    finally:
        sink.close()


def test_cdc_sync_flush_that_loses_its_lock_stops_with_exit_1_and_leaves_its_hold(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cdc-sync flush` whose lock is taken while it runs (it was paused past the TTL) says so and exits 1, as
    for a concurrent command; the table it held stays held (bypassed, never stale) for the next flush."""
    path = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), extra=READER)

    class Paused(RedisSink):
        def hold_flushing(self, rules: Any) -> None:
            super().hold_flushing(rules)
            r.set("cdc:operator", "checkpoint reset on another host")  # the lock expired and was taken

    monkeypatch.setattr(maintenance, "make_sink", Paused)  # (a one-node sink: its class is the factory)
    result = CliRunner().invoke(main, ["flush", f"{db}.b", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "cdc:operator no longer holds this command's lock" in result.stderr
    assert "run the command again" in result.stderr
    assert r.pttl(f"cdc:flushing:{db}.b") == -1, "its hold stands"
    assert r.get("cdc:operator") == b"checkpoint reset on another host", "the other command's lock is not released"
