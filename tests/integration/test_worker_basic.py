"""End-to-end: the real worker process against real MariaDB and Redis."""

from __future__ import annotations

import json

import pymysql
import redis

from tests.helpers import wait_caught_up
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget


def _users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute(
            "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(100), name VARCHAR(100), password_hash VARCHAR(100))"
        )


def test_evict_mode_deletes_keys_on_insert_update_delete(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]  # type: ignore[type-arg]
    """Evict mode: every committed change deletes the row's keys (primary and `also`)."""
    _users(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
also = ["user:email:{{email}}"]
""")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    r.set("user:1", "stale")
    r.set("user:email:a@x", "stale")
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A', 'h')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("user:1") is None and r.get("user:email:a@x") is None
    r.set("user:1", "stale")
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name='B' WHERE id=1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("user:1") is None
    assert r.exists("cdc:inv:user:1") == 1, "an eviction leaves a hold-off marker"
    r.set("user:1", "stale")
    with sql.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id=1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("user:1") is None


def test_update_mode_writes_json_and_deletes(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """Update mode writes the selected columns as JSON with the TTL, and deletes on delete."""
    _users(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "update"
exclude = ["password_hash"]
ttl = 3600
""")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A', 'secret-hash')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("user:1") or b"") == {"id": 1, "email": "a@x", "name": "A"}
    assert 3590 <= (r.ttl("user:1")) <= 3600
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name='B' WHERE id=1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("user:1") or b"")["name"] == "B"
    with sql.cursor() as cur:
        cur.execute("DELETE FROM users WHERE id=1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1") == 0


def test_primary_key_and_also_column_change_leave_no_orphans(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """Changing the primary key or an `also` column removes the keys of the before image."""
    _users(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
also = ["user:email:{{email}}"]
mode = "update"
columns = ["id", "email", "name"]
""")
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A', 'h')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1", "user:email:a@x") == 2
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET id=2 WHERE id=1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1") == 0
    assert json.loads(r.get("user:2") or b"")["id"] == 2
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET email='b@x' WHERE id=2")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:email:a@x") == 0
    assert json.loads(r.get("user:email:b@x") or b"")["email"] == "b@x"
    assert sorted(k.decode() for k in r.scan_iter("user:*")) == ["user:2", "user:email:b@x"]


def test_multi_statement_transaction_and_rollback(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]  # type: ignore[type-arg]
    """A committed multi-statement transaction applies entirely; a rolled-back one changes nothing."""
    _users(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "update"
columns = ["id", "name"]
""")
    with sql.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A', 'h')")
        cur.execute("INSERT INTO users VALUES (2, 'b@x', 'B', 'h')")
        cur.execute("UPDATE users SET name='A2' WHERE id=1")
        cur.execute("DELETE FROM users WHERE id=2")
        cur.execute("COMMIT")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("user:1") or b"") == {"id": 1, "name": "A2"}
    assert r.exists("user:2") == 0
    with sql.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("UPDATE users SET name='never' WHERE id=1")
        cur.execute("INSERT INTO users VALUES (3, 'c@x', 'C', 'h')")
        cur.execute("ROLLBACK")
        cur.execute("INSERT INTO users VALUES (4, 'd@x', 'D', 'h')")  # a later commit to wait on
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("user:1") or b"") == {"id": 1, "name": "A2"}
    assert r.exists("user:3") == 0
    assert r.exists("user:4") == 1


def test_sigterm_exits_zero_promptly(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """SIGTERM: the worker finishes, logs worker.stopped and exits 0."""
    _users(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
""")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert w.terminate(timeout=10) == 0
    assert "worker.stopped" in w.event_names()
