"""Gaps in the stream: purged binlogs, a server with another history, server restarts, huge transactions,
and keys nobody can vouch for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, checkpoint, connect, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_mariadb


def _tables(db: str, mode: str = "update") -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "{mode}"\n'


def _users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")


@pytest.fixture
def own_mariadb() -> Iterator[tuple[LocalServer, MySQLTarget]]:
    """A private MariaDB this test may restart or purge."""
    server = start_mariadb()
    try:
        yield server, MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb", pid=server.proc.pid)
    finally:
        server.stop()


def _purge_all_but_current(conn: pymysql.Connection) -> None:  # type: ignore[type-arg]
    """FLUSH + PURGE until the older binlogs are really gone (MariaDB purges after its binlog checkpoint)."""
    with conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]
        deadline = time.monotonic() + 30
        while True:
            cur.execute(f"PURGE BINARY LOGS TO '{current}'")
            cur.execute("SHOW BINARY LOGS")
            if [row[0] for row in cur.fetchall()] == [current]:
                return
            assert time.monotonic() < deadline, "binlogs were not purged"
            time.sleep(0.2)


def test_binlog_purged_while_down_flushes_and_continues(
    tmp_path: Path,
    own_mariadb: tuple[LocalServer, MySQLTarget],
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """The checkpoint's binlog is purged while the worker is down: it flushes, logs, and goes on from the end."""
    _server, mysql = own_mariadb
    conn = connect(mysql)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE p")
        cur.execute("CREATE TABLE p.users (id INT PRIMARY KEY, name VARCHAR(40))")
    cfg = write_config(tmp_path / "c.toml", mysql, redis_server, _tables("p"))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_caught_up(r, conn, "mariadb", w)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO p.users VALUES (1, 'a')")
    wait_caught_up(r, conn, "mariadb", w)
    w.kill9()
    with conn.cursor() as cur:
        cur.execute("UPDATE p.users SET name = 'changed while down' WHERE id = 1")
    _purge_all_but_current(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO p.users VALUES (2, 'after purge')")
    w2 = WorkerProcess(cfg, tmp_path / "w2.log").start()
    workers.append(w2)
    wait_for(lambda: "source.position_lost" in w2.event_names(), 60, "the lost position to be noticed")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO p.users VALUES (3, 'later')")
    wait_caught_up(r, conn, "mariadb", w2)
    assert r.get("user:1") is None, "the row changed while down is not served stale"
    assert json.loads(r.get("user:3") or b"")["name"] == "later"
    reasons = {e["reason"] for e in w2.events() if e.get("event") == "sync.table_flushed"}
    assert "position_lost" in reasons
    conn.close()


def test_mariadb_restart_under_the_worker(
    tmp_path: Path,
    own_mariadb: tuple[LocalServer, MySQLTarget],
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """The server restarts: the worker reconnects from its own position and misses nothing."""
    server, mysql = own_mariadb
    conn = connect(mysql)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE p")
        cur.execute("CREATE TABLE p.users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO p.users VALUES (1, 'before')")
    cfg = write_config(tmp_path / "c.toml", mysql, redis_server, _tables("p"))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_caught_up(r, conn, "mariadb", w)
    conn.close()
    server.restart()
    conn = connect(mysql)
    with conn.cursor() as cur:
        cur.execute("UPDATE p.users SET name = 'after' WHERE id = 1")
        cur.execute("INSERT INTO p.users VALUES (2, 'new')")
    wait_caught_up(r, conn, "mariadb", w)
    assert r.get("user:1") is None or json.loads(r.get("user:1") or b"")["name"] == "after"
    assert json.loads(r.get("user:2") or b"")["name"] == "new"
    assert "source.disconnected" in w.event_names()
    conn.close()


def test_checkpoint_from_another_history_flushes(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """A checkpoint the server's GTID history does not contain (another server, a restored backup) flushes."""
    _users(sql)
    w = start_worker(_tables(db))
    assert w.terminate() == 0
    r.set("cdc:checkpoint", "0-1-99999999")
    r.set("user:1", "written under another history")
    w2 = start_worker("", name="w", wait=False)
    wait_for(lambda: "source.lineage_changed" in w2.event_names(), 30, "the lineage check")
    wait_caught_up(r, sql, mysql_server.flavor, w2)
    assert r.get("user:1") is None


def test_keys_without_a_checkpoint_are_flushed_at_start(
    start_worker: StartWorker, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """No checkpoint but keys of mapped tables exist: nobody can vouch for them, so they are flushed."""
    _users(sql)
    r.set("user:1", "unknown origin")
    w = start_worker(_tables(db))
    assert r.get("user:1") is None
    assert "sync.no_checkpoint_with_keys" in w.event_names()


def test_huge_transaction_is_applied_in_chunks(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """A 12,000-row transaction with chunk_rows = 5,000: applied in chunks, nothing stale, checkpoint at commit."""
    _users(sql)
    for i in range(12000):
        r.set(f"user:{i}", "stale")
    w = start_worker(_tables(db), worker="chunk_rows = 5000\nbatch_max_rows = 2000")
    before = checkpoint(r)
    with sql.cursor() as cur:
        cur.execute("BEGIN")
        for base in range(0, 12000, 1000):
            cur.executemany("INSERT INTO users VALUES (%s, %s)", [(i, f"n{i}") for i in range(base, base + 1000)])
        cur.execute("COMMIT")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert checkpoint(r) != before
    values = r.mget([f"user:{i}" for i in range(12000)])
    stale = [i for i, v in enumerate(values) if v is not None and json.loads(v) != {"id": i, "name": f"n{i}"}]
    assert stale == []
    written = sum(v is not None for v in values)
    assert 0 < written < 12000, "early chunks were evicted, the last one written"
