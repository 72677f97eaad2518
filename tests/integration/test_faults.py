"""Faults and edge paths: config errors, secrets, DDL, Redis loss and rollback, MySQL disconnects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, checkpoint, file_position, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget


def _users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(100), name VARCHAR(100))")


def _tables(db: str, mode: str = "update") -> str:
    return f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "{mode}"
"""


def test_unknown_column_in_template_exits_2_naming_the_field(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """A template naming a column the table lacks: exit 2, message names tables[i].field."""
    _users(sql)
    cfg = write_config(
        tmp_path / "c.toml",
        mysql_server,
        redis_server,
        f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
also = ["user:email:{{emial}}"]
""",
    )
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)  # (stopped at the end, whatever happens)
    assert w.wait(30) == 2
    errors = [e for e in w.events() if e.get("event") == "worker.config_error"]
    assert errors and "tables[0].also[0]: unknown column 'emial'" in errors[0]["error"]


def test_bad_config_file_exits_2_before_connecting(tmp_path: Path) -> None:
    """Invalid TOML values fail fast with exit code 2 and the field's name on stderr."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[mysql]\nport = "x"\n[[tables]]\ntable = "a.b"\nkey = "k:{id}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_sync", "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "mysql.port: must be an integer" in proc.stderr


def test_password_never_appears_in_logs(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """A least-privileged user with a password: the worker runs, and the password is in no log line."""
    secret = "Sup3r-Secret-pw-417"
    _users(sql)
    with sql.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'cdcuser'@'%'")
        cur.execute(f"CREATE USER 'cdcuser'@'%' IDENTIFIED BY '{secret}'")
        cur.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdcuser'@'%'")
        if mysql_server.flavor == "mariadb":
            cur.execute("GRANT BINLOG MONITOR ON *.* TO 'cdcuser'@'%'")
        cur.execute(f"GRANT SELECT ON {db}.* TO 'cdcuser'@'%'")
        cur.execute("GRANT REFERENCES ON *.* TO 'cdcuser'@'%'")
    w = start_worker(_tables(db), user="cdcuser", password=secret)
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1") == 1
    assert w.terminate() == 0
    text = w.log_text()
    assert "worker.starting" in text
    assert secret not in text


def test_truncate_and_alter_flush_the_table(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """TRUNCATE (no row events) and ALTER invalidate every key of the table, logged and counted."""
    _users(sql)
    w = start_worker(_tables(db))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A'), (2, 'b@x', 'B')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1", "user:2") == 2
    r.set("user:99", "filled by a reader")
    with sql.cursor() as cur:
        cur.execute(f"TRUNCATE TABLE {db}.users")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1", "user:2", "user:99") == 0
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (3, 'c@x', 'C')")
        cur.execute("ALTER TABLE users ADD COLUMN age INT FIRST")
        cur.execute("INSERT INTO users (id, email, name, age) VALUES (4, 'd@x', 'D', 40)")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:3") == 0, "ALTER flushed the table"
    assert json.loads(r.get("user:4") or b"") == {"age": 40, "id": 4, "email": "d@x", "name": "D"}
    flushes = [e for e in w.events() if e.get("event") == "sync.table_flushed" and e["reason"] == "statement"]
    assert len(flushes) == 2


def test_redis_restart_loses_checkpoint_worker_flushes_and_continues(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """Redis restarts empty under the worker: it retries, notices the lost checkpoint, and skips nothing."""
    from tools.devservers import start_redis

    _users(sql)
    server = start_redis()
    target = RedisTarget("127.0.0.1", server.port)
    cfg = write_config(tmp_path / "c.toml", mysql_server, target, _tables(db))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    r = redis.Redis(port=server.port)
    try:
        wait_caught_up(r, sql, mysql_server.flavor, w)
        with sql.cursor() as cur:
            cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        server.keep_dir = True
        server.stop()  # Redis keeps nothing on disk: it comes back empty
        with sql.cursor() as cur:
            cur.execute("INSERT INTO users VALUES (2, 'b@x', 'B')")
            cur.execute("UPDATE users SET name='A2' WHERE id=1")
        wait_for(lambda: "sink.unavailable" in w.event_names(), 30, "worker to notice Redis is gone")
        server.restart()
        r = redis.Redis(port=server.port)
        wait_caught_up(r, sql, mysql_server.flavor, w)
        assert json.loads(r.get("user:2") or b"")["name"] == "B"
        assert json.loads(r.get("user:1") or b"")["name"] == "A2"
        assert "sync.checkpoint_lost" in w.event_names()
        wait_for(lambda: r.hlen("cdc:rules") == 1, 10, "the rules recorded again after the loss")
        w.terminate()
        w2 = WorkerProcess(cfg, tmp_path / "w2.log").start()
        workers.append(w2)
        wait_for(lambda: "source.connecting" in w2.event_names(), 60, "restart")
        assert not [e for e in w2.events() if e.get("event") == "sync.table_flushed"], "no flush for nothing"
    finally:
        server.keep_dir = False
        server.stop()


def test_redis_rolled_back_to_old_snapshot_rewinds_and_replays(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Redis comes back with an older checkpoint and older values: the worker rewinds and replays."""
    _users(sql)
    w = start_worker(_tables(db))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    old_checkpoint, old_value = checkpoint(r), r.get("user:1")
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name='A2' WHERE id=1")
        cur.execute("INSERT INTO users VALUES (2, 'b@x', 'B')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    # the "snapshot": checkpoint and data as they were, the later writes lost
    r.set("cdc:checkpoint", old_checkpoint or "")
    r.set("user:1", old_value or b"")
    r.delete("user:2")
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (3, 'c@x', 'C')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("user:1") or b"")["name"] == "A2"
    assert r.exists("user:2", "user:3") == 2
    assert "sync.rewind" in w.event_names()


def test_mysql_connection_killed_worker_reconnects_from_own_position(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The binlog connection is killed server-side: the worker reconnects and misses nothing."""
    _users(sql)
    w = start_worker(_tables(db))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")

        def dump_threads() -> list[int]:
            cur.execute("SELECT ID, COMMAND FROM information_schema.PROCESSLIST")
            return [row[0] for row in cur.fetchall() if "binlog" in str(row[1]).lower()]

        ids = wait_for(dump_threads, 20, "the binlog dump thread")
        for thread_id in ids:
            cur.execute(f"KILL {int(thread_id)}")
        cur.execute("INSERT INTO users VALUES (2, 'b@x', 'B')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1", "user:2") == 2
    wait_for(lambda: "source.disconnected" in w.event_names(), 10, "disconnect logged")
    assert w.event_names().count("source.connecting") >= 2


def test_file_position_mode(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """position_mode = "file": the checkpoint is file:pos and follows the server's binlog end."""
    _users(sql)
    w = start_worker(_tables(db), extra_mysql='position_mode = "file"', wait=False)
    wait_for(lambda: checkpoint(r) == file_position(sql), 30, "file checkpoint")
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("INSERT INTO users VALUES (2, 'b@x', 'B')")
    wait_for(lambda: checkpoint(r) == file_position(sql), 30, "file checkpoint after rotation")
    assert r.exists("user:1", "user:2") == 2
    w.kill9()
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name='B2' WHERE id=2")
    start_worker("", wait=False)
    wait_for(lambda: checkpoint(r) == file_position(sql), 30, "file checkpoint after restart")
    assert json.loads(r.get("user:2") or b"")["name"] == "B2"


def test_stalled_server_is_detected_and_the_worker_recovers(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A server that stops answering (SIGSTOP) is noticed by the read timeout, not waited on forever."""
    import os
    import signal

    if mysql_server.pid is None:
        pytest.skip("SIGSTOP needs a server process on this machine (local backend)")
    _users(sql)
    w = start_worker(_tables(db))
    pid = mysql_server.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "source.disconnected" in w.event_names(), 30, "the stall to be detected")
    finally:
        os.kill(pid, signal.SIGCONT)
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'A')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:1") == 1
