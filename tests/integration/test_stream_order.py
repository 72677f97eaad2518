"""MariaDB GTIDs out of order (gtid_strict_mode=OFF): what is applied follows the stream, never the numbers.

Each test runs its own MariaDB: `SET gtid_seq_no` leaves a domain whose numbers went backwards, which other
tests must not inherit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, checkpoint, connect, wait_caught_up, wait_for, write_config
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_mariadb

TABLES = '[[tables]]\ntable = "d.users"\nkey = "user:{id}"\nmode = "update"\n'


@pytest.fixture
def own_mariadb() -> Iterator[MySQLTarget]:
    server: LocalServer = start_mariadb()
    try:
        yield MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb", pid=server.proc.pid)
    finally:
        server.stop()


@pytest.fixture
def conn(own_mariadb: MySQLTarget) -> Iterator[pymysql.Connection]:  # type: ignore[type-arg]
    c = connect(own_mariadb)
    with c.cursor() as cur:
        cur.execute("CREATE DATABASE d")
        cur.execute("CREATE TABLE d.users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO d.users VALUES (1, 'first'), (2, 'first')")
    try:
        yield c
    finally:
        c.close()


def _start(
    tmp_path: Path, mysql: MySQLTarget, redis_server: RedisTarget, workers: list[WorkerProcess]
) -> WorkerProcess:
    cfg = write_config(tmp_path / "w.toml", mysql, redis_server, TABLES)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    return w


def _run(cur: pymysql.cursors.Cursor, sql: str, *, seq: int | None = None, domain: int | None = None) -> None:
    if domain is not None:
        cur.execute(f"SET SESSION gtid_domain_id = {domain}")
    if seq is not None:
        cur.execute(f"SET SESSION gtid_seq_no = {seq}")
    cur.execute(sql)


def _cached(r: redis.Redis, key: str) -> object:
    raw = r.get(key)
    return None if raw is None else json.loads(raw)["name"]


def test_a_lower_sequence_number_after_a_higher_one_is_applied(
    tmp_path: Path,
    own_mariadb: MySQLTarget,
    conn: pymysql.Connection,  # type: ignore[type-arg]
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """0-1-1000 then 0-1-500 (SET gtid_seq_no): the second change is newer and must reach the cache."""
    w = _start(tmp_path, own_mariadb, redis_server, workers)
    with conn.cursor() as cur:
        _run(cur, "UPDATE d.users SET name = 'jumped' WHERE id = 1", seq=1000)
        _run(cur, "UPDATE d.users SET name = 'lower number, later' WHERE id = 1", seq=500)
        cur.execute("SELECT @@global.gtid_binlog_pos")
        assert cur.fetchone()[0] == "0-1-500", "the server's state went backwards, as in production"
    wait_caught_up(r, conn, "mariadb", w)
    assert _cached(r, "user:1") == "lower number, later"
    assert "sync.replay_skipped" not in w.event_names()


def test_out_of_order_numbers_across_two_domains_and_a_restart(
    tmp_path: Path,
    own_mariadb: MySQLTarget,
    conn: pymysql.Connection,  # type: ignore[type-arg]
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """Two domains, numbers going backwards in both, a kill -9 and a restart: every change is applied once, in
    stream order, and the restart resumes exactly (by file position; no flush, no refused GTID position), even
    though the server's GTID state is now below the checkpoint's numbers (the lineage check must not take that
    for another history)."""
    w = _start(tmp_path, own_mariadb, redis_server, workers)
    with conn.cursor() as cur:
        _run(cur, "UPDATE d.users SET name = 'd0 high' WHERE id = 1", domain=0, seq=900)
        _run(cur, "UPDATE d.users SET name = 'd1 high' WHERE id = 2", domain=1, seq=800)
        _run(cur, "UPDATE d.users SET name = 'd0 low' WHERE id = 1", domain=0, seq=300)
        _run(cur, "UPDATE d.users SET name = 'd1 low' WHERE id = 2", domain=1, seq=200)
    wait_caught_up(r, conn, "mariadb", w)
    assert (_cached(r, "user:1"), _cached(r, "user:2")) == ("d0 low", "d1 low")
    stored = checkpoint(r) or ""
    assert stored.partition("@")[0] == "0-1-300,1-1-200" and "@1:" in stored, stored
    w.kill9()
    with conn.cursor() as cur:  # written while the worker is down, below even the checkpoint's numbers
        _run(cur, "UPDATE d.users SET name = 'while down' WHERE id = 1", domain=0, seq=250)
        _run(cur, "UPDATE d.users SET name = 'while down' WHERE id = 2", domain=1, seq=150)
    w2 = _start(tmp_path, own_mariadb, redis_server, workers)
    wait_caught_up(r, conn, "mariadb", w2)
    assert (_cached(r, "user:1"), _cached(r, "user:2")) == ("while down", "while down")
    events = w2.event_names()
    assert "sync.table_flushed" not in events and "source.position_lost" not in events, events
    assert "source.resume_by_gtid" not in events
    with conn.cursor() as cur:
        _run(cur, "UPDATE d.users SET name = 'after restart' WHERE id = 1", domain=0)
    wait_caught_up(r, conn, "mariadb", w2)
    assert _cached(r, "user:1") == "after restart"


def test_a_checkpoint_without_its_file_position_resumes_by_gtid(
    tmp_path: Path,
    own_mariadb: MySQLTarget,
    conn: pymysql.Connection,  # type: ignore[type-arg]
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """A checkpoint whose stream part names another server (a failover) is resumed by its GTID state."""
    w = _start(tmp_path, own_mariadb, redis_server, workers)
    wait_caught_up(r, conn, "mariadb", w)
    w.kill9()
    gtid = (checkpoint(r) or "").partition("@")[0]
    r.set("cdc:checkpoint", f"{gtid}@99:bin.000001:4")  # server 99's coordinates: meaningless here
    with conn.cursor() as cur:
        cur.execute("UPDATE d.users SET name = 'after failover' WHERE id = 2")
    w2 = _start(tmp_path, own_mariadb, redis_server, workers)
    wait_caught_up(r, conn, "mariadb", w2)
    assert "source.resume_by_gtid" in w2.event_names()
    assert _cached(r, "user:2") == "after failover"
    assert "sync.table_flushed" not in w2.event_names()


def test_a_checkpoint_whose_state_is_not_the_servers_at_its_position_is_another_history(
    tmp_path: Path,
    own_mariadb: MySQLTarget,
    conn: pymysql.Connection,  # type: ignore[type-arg]
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """Same server id and a real file position, but the server's GTID state there is not the checkpoint's (a
    restored backup, a re-initialised server): another history, so the cache is flushed and the worker starts
    at the server's end."""
    w = _start(tmp_path, own_mariadb, redis_server, workers)
    wait_caught_up(r, conn, "mariadb", w)
    w.kill9()
    _gtid, _, stream = (checkpoint(r) or "").partition("@")
    r.set("cdc:checkpoint", f"0-1-77777@{stream}")
    r.set("user:9", "from another history")
    w2 = _start(tmp_path, own_mariadb, redis_server, workers)
    wait_caught_up(r, conn, "mariadb", w2)
    assert "source.lineage_changed" in w2.event_names()
    assert r.get("user:9") is None
