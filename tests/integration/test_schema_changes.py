"""Schema-derived state follows the server: stored table names, and foreign-key cascades added by DDL while
the worker runs (their effects never reach the binlog)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, connect, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_mariadb


def _kids(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.kids"\nkey = "kid:{{id}}"\nmode = "update"\n'


def _fk_flushes(w: WorkerProcess) -> list[dict[str, object]]:
    return [e for e in w.events() if e.get("event") == "sync.table_flushed" and e.get("reason") == "fk_cascade"]


def _cached(r: redis.Redis, key: str) -> object:
    raw = r.get(key)
    return None if raw is None else json.loads(raw)


@pytest.fixture
def family(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE parents (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("CREATE TABLE kids (id INT PRIMARY KEY, pid INT, v VARCHAR(20), KEY (pid)) ENGINE=InnoDB")
        cur.execute("INSERT INTO parents VALUES (1), (2)")
        cur.execute("INSERT INTO kids VALUES (10, 1, 'a'), (20, 2, 'b')")


def test_foreign_key_added_while_running_is_watched(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    family: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """ALTER TABLE kids ADD FOREIGN KEY ... ON DELETE CASCADE while the worker runs: a later parent delete,
    which removes kids inside InnoDB without row events, flushes the cached kids."""
    w = start_worker(_kids(db))
    with sql.cursor() as cur:
        cur.execute("ALTER TABLE kids ADD FOREIGN KEY (pid) REFERENCES parents(id) ON DELETE CASCADE")
        cur.execute("UPDATE kids SET v = 'cached' WHERE id IN (10, 20)")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert _cached(r, "kid:10") == {"id": 10, "pid": 1, "v": "cached"}
    with sql.cursor() as cur:
        cur.execute("DELETE FROM parents WHERE id = 1")
        cur.execute("SELECT id FROM kids")
        assert cur.fetchall() == ((20,),), "InnoDB cascaded the delete"
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("kid:10") == 0, "the cascaded delete left no stale kid"
    assert _fk_flushes(w)
    assert "sync.schema_refreshed" in w.event_names()


def test_cascade_chain_built_by_create_table_while_running_is_watched(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    family: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """CREATE TABLE of a new cascading parent, then a key from the mapped table to it: deleting a row of the
    new grandparent cascades through two tables into the mapped one, and flushes it."""
    w = start_worker(_kids(db))
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE grand (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(
            "CREATE TABLE middle (id INT PRIMARY KEY, gid INT, "
            "FOREIGN KEY (gid) REFERENCES grand(id) ON DELETE CASCADE) ENGINE=InnoDB"
        )
        cur.execute("INSERT INTO grand VALUES (7)")
        cur.execute("INSERT INTO middle VALUES (1, 7)")
        cur.execute("DELETE FROM kids WHERE id = 20")
        cur.execute("ALTER TABLE kids ADD FOREIGN KEY (pid) REFERENCES middle(id) ON DELETE CASCADE")
    wait_caught_up(r, sql, mysql_server.flavor, w)  # (a lagging stretch with two rewiring DDLs is flushed)
    with sql.cursor() as cur:
        cur.execute("UPDATE kids SET v = 'cached' WHERE id = 10")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert _cached(r, "kid:10") is not None
    with sql.cursor() as cur:
        cur.execute("DELETE FROM grand WHERE id = 7")
        cur.execute("SELECT COUNT(*) FROM kids")
        assert cur.fetchone()[0] == 0
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("kid:10") == 0
    assert _fk_flushes(w)


def test_foreign_key_added_and_dropped_before_the_worker_reads_it_is_still_watched(
    tmp_path: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    family: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The worker is down (or lagging) while a key is added, a parent deleted and the key dropped again: when
    it reads the ADD FOREIGN KEY statement, information_schema no longer has the key, yet the delete in between
    did cascade. The statement's own text makes the parent watched."""
    w = start_worker(_kids(db))
    with sql.cursor() as cur:
        cur.execute("UPDATE kids SET v = 'cached' WHERE id = 10")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    w.kill9()
    with sql.cursor() as cur:
        cur.execute("ALTER TABLE kids ADD CONSTRAINT kfk FOREIGN KEY (pid) REFERENCES parents(id) ON DELETE CASCADE")
        cur.execute("UPDATE kids SET v = 'again' WHERE id = 10")  # cached again after the ALTER's flush
        cur.execute("DELETE FROM parents WHERE id = 1")  # cascades: kid 10 is gone, no row event
        cur.execute("ALTER TABLE kids DROP FOREIGN KEY kfk")
    w2 = start_worker(_kids(db), name="w2", wait=False)
    wait_for(lambda: "source.connecting" in w2.event_names(), 60, "restart")
    wait_caught_up(r, sql, mysql_server.flavor, w2)
    assert r.exists("kid:10") == 0
    assert _fk_flushes(w2), [(e.get("event"), e.get("reason"), e.get("position")) for e in w2.events()]


@pytest.fixture
def lower_case_mariadb() -> Iterator[MySQLTarget]:
    server: LocalServer = start_mariadb(extra_args=("--lower-case-table-names=1",))
    try:
        yield MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb", pid=server.proc.pid)
    finally:
        server.stop()


def test_table_names_are_resolved_as_the_server_stores_them(
    tmp_path: Path,
    lower_case_mariadb: MySQLTarget,
    redis_server: RedisTarget,
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """lower_case_table_names=1 and table = "Shop.Users": the binlog says shop.users, and the rule still
    matches (changes are applied, TRUNCATE flushes), while Redis keeps the configured name."""
    conn = connect(lower_case_mariadb)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE Shop")
        cur.execute("CREATE TABLE Shop.Users (id INT PRIMARY KEY, name VARCHAR(20))")
    tables = '[[tables]]\ntable = "Shop.Users"\nkey = "user:{id}"\nmode = "update"\n'
    cfg = write_config(tmp_path / "w.toml", lower_case_mariadb, redis_server, tables)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO Shop.Users VALUES (1, 'one')")
        cur.execute("UPDATE shop.users SET name = 'uno' WHERE id = 1")
    wait_caught_up(r, conn, "mariadb", w)
    assert _cached(r, "user:1") == {"id": 1, "name": "uno"}
    assert "sync.table_name_resolved" in w.event_names()
    with conn.cursor() as cur:
        cur.execute("TRUNCATE TABLE shop.users")
    wait_caught_up(r, conn, "mariadb", w)
    assert r.exists("user:1") == 0
    conn.close()
