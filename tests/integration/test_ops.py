"""Operator commands end to end: doctor (PASS and FAIL cases), status, checkpoint, flush, warm, verify,
metrics and health endpoints, and systemd notifications."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, checkpoint, connect, server_position, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_mariadb


def cli(*args: str, config: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_sync", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        input=input,
    )


def cli_json(*args: str, config: Path) -> tuple[int, Any]:
    proc = cli(*args, "--json", config=config)
    return proc.returncode, json.loads(proc.stdout)


def _tables(db: str, mode: str = "update") -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "{mode}"\nexclude = ["secret"]\n'


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40), secret VARCHAR(40))")
        cur.executemany("INSERT INTO users VALUES (%s, %s, 'pw')", [(i, f"u{i}") for i in range(1, 1001)])


@pytest.fixture
def cfg(tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, users: None) -> Path:
    return write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db))


def _check(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["checks"] if c["name"] == name)


# ---- doctor -----------------------------------------------------------------------------------------


def test_doctor_passes_on_a_well_configured_server(cfg: Path) -> None:
    """A server with ROW binlog, FULL image and metadata, and a root user: no FAIL, exit 0."""
    code, data = cli_json("doctor", config=cfg)
    assert code == 0 and data["ok"], [c for c in data["checks"] if c["status"] == "FAIL"]
    assert _check(data, "mysql.binlog_row_metadata")["status"] == "PASS"
    assert _check(data, "redis.maxmemory_policy")["status"] == "PASS"
    human = cli("doctor", config=cfg).stdout
    assert "PASS  mysql.log_bin" in human and "0 FAIL" in human


@pytest.fixture
def plain_mariadb() -> Iterator[LocalServer]:
    server = start_mariadb(binlog=False)
    try:
        yield server
    finally:
        server.stop()


def test_doctor_fails_without_binlog_and_run_refuses(
    tmp_path: Path, plain_mariadb: LocalServer, redis_server: RedisTarget, workers: list[WorkerProcess]
) -> None:
    """A MariaDB started without a binlog: doctor FAILs log_bin with the fix, and run exits 2 with the same message."""
    mysql = MySQLTarget("127.0.0.1", plain_mariadb.port, "root", "", "mariadb")
    with connect(mysql) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE s")
        cur.execute("CREATE TABLE s.users (id INT PRIMARY KEY, name TEXT, secret TEXT)")
    cfg = write_config(tmp_path / "w.toml", mysql, redis_server, _tables("s"))
    code, data = cli_json("doctor", config=cfg)
    check = _check(data, "mysql.log_bin")
    assert code == 1 and check["status"] == "FAIL" and "log_bin is OFF" in check["detail"] and check["fix"]
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)  # (stopped at the end, whatever happens)
    assert w.wait(60) == 2
    errors = [e["error"] for e in w.events() if e.get("event") == "worker.config_error"]
    assert "mysql.log_bin: log_bin is OFF" in errors


def test_doctor_fails_on_minimal_row_image(cfg: Path, sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    """binlog_row_image=MINIMAL (dynamic): FAIL."""
    with sql.cursor() as cur:
        cur.execute("SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        code, data = cli_json("doctor", config=cfg)
    finally:
        with sql.cursor() as cur:
            cur.execute("SET GLOBAL binlog_row_image = 'FULL'")
    assert code == 1 and _check(data, "mysql.binlog_row_image")["status"] == "FAIL"


def test_doctor_fails_on_missing_privileges(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, users: None, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """A user with SELECT but no REPLICATION SLAVE, and one without SELECT on the table: both FAIL, named."""
    with sql.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'weak'@'%'")
        cur.execute("CREATE USER 'weak'@'%' IDENTIFIED BY 'weak-pw'")
        cur.execute("GRANT REPLICATION CLIENT ON *.* TO 'weak'@'%'")
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), user="weak", password="weak-pw")
    code, data = cli_json("doctor", config=cfg)
    assert code == 1
    assert _check(data, "mysql.privilege.replication_slave")["status"] == "FAIL"
    assert _check(data, f"mysql.privilege.select.{db}.users")["status"] == "FAIL"
    assert "weak-pw" not in json.dumps(data)


def test_doctor_names_the_accounts_that_may_turn_the_binlog_off(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    cfg: Path,
    mysql_user: Any,
) -> None:
    """SET sql_log_bin = 0 needs SUPER (or BINLOG ADMIN): changes made that way never reach the cache. Root (the
    worker's user here) is told it holds more than it needs; a user who may read the grant tables sees the
    accounts; one who may not is told that doctor cannot tell."""
    _, data = cli_json("doctor", config=cfg)
    assert _check(data, "mysql.binlog_bypass")["status"] == "WARN"
    least = ("REPLICATION SLAVE, BINLOG MONITOR, REFERENCES ON *.*", f"SELECT ON {db}.*")
    for name, grants, status in (
        ("cdcsees", (*least, "SELECT ON mysql.*"), "PASS"),
        ("cdcblind", least, "SKIP"),
    ):
        user, password = mysql_user(*grants, name=name)
        conf = write_config(
            tmp_path / f"{name}.toml", mysql_server, redis_server, _tables(db), user=user, password=password
        )
        _, seen = cli_json("doctor", config=conf)
        check = _check(seen, "mysql.binlog_bypass")
        assert check["status"] == status, check
        if status == "PASS":
            assert "root" in check["detail"] and name not in check["detail"], check


def test_doctor_fails_when_two_tables_render_the_same_keys(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, users: None, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """Two rules whose templates can render one key: FAIL naming both fields."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE admins (id INT PRIMARY KEY)")
    tables = _tables(db) + f'[[tables]]\ntable = "{db}.admins"\nkey = "user:{{id}}"\n'
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, tables)
    code, data = cli_json("doctor", config=cfg)
    overlap = _check(data, "rules.overlap")
    assert code == 1 and overlap["status"] == "FAIL" and "tables[0].key" in overlap["detail"]


# ---- status, checkpoint, flush --------------------------------------------------------------------------


def test_status_shows_checkpoint_lag_worker_and_counts(
    cfg: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """status: checkpoint equals the server position once caught up; applied counts per table and op."""
    w = start_worker("", name="w", wait=True)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'x' WHERE id <= 3")
        cur.execute("DELETE FROM users WHERE id = 4")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    code, data = cli_json("status", config=cfg)
    assert code == 0
    assert data["checkpoint"].partition("@")[0] == server_position(sql, mysql_server.flavor)
    assert data["behind_transactions"] == 0
    table = next(iter(data["applied"]))
    assert data["applied"][table] == {"update": 3, "delete": 1}
    assert data["worker"]["state"] == "streaming" and data["heartbeat_age_s"] < 30
    human = cli("status", config=cfg).stdout
    assert "checkpoint" in human and "update 3" in human


def test_checkpoint_set_makes_the_worker_replay_and_reset_flushes(
    cfg: Path,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """checkpoint set to an older position: the worker rewinds and replays; reset flushes and jumps to now."""
    w = start_worker("", name="w")
    old = checkpoint(r)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'one' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    r.delete("user:1")
    assert cli("checkpoint", "show", config=cfg).stdout.strip() == checkpoint(r)
    assert cli("checkpoint", "set", old or "", config=cfg).returncode == 0
    wait_for(lambda: r.get("user:1") is not None, 30, "the replay to rewrite user:1")
    assert "sync.rewind" in w.event_names()
    bad = cli("checkpoint", "set", "not-a-position", config=cfg)
    assert bad.returncode == 2 and "not a binlog position" in bad.stderr
    assert cli("checkpoint", "reset", config=cfg, input="n\n").returncode != 0, "asks for confirmation"
    code, data = cli_json("checkpoint", "reset", "--yes", config=cfg)
    assert code == 0 and data["flushed_keys"] >= 1 and r.get("user:1") is None


def test_flush_invalidates_a_table(cfg: Path, start_worker: StartWorker, db: str, r: redis.Redis) -> None:
    """flush TABLE deletes its keys; an unknown table is an error that names the mapped ones."""
    start_worker("", name="w")
    r.set("user:1", "x")
    r.set("user:2", "y")
    assert cli("flush", f"{db}.users", config=cfg).returncode == 0
    assert r.exists("user:1", "user:2") == 0
    bad = cli("flush", "nope.nope", config=cfg)
    assert bad.returncode == 2 and f"{db}.users" in bad.stderr


# ---- warm and verify ----------------------------------------------------------------------------------


def test_warm_fills_every_row_and_resumes(cfg: Path, start_worker: StartWorker, db: str, r: redis.Redis) -> None:
    """warm fills the rows present before the worker started, in the worker's format; a saved place resumes."""
    start_worker("", name="w")
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    r.set(f"cdc:warm:{db}.users", "[900]")  # as if an earlier warm was interrupted after id 900
    code, data = cli_json("warm", f"{db}.users", config=cfg)
    assert code == 0 and data[0]["rows"] == 100 and data[0]["filled"] == 100
    assert r.exists("user:900") == 0 and json.loads(r.get("user:901") or b"") == {"id": 901, "name": "u901"}
    code, data = cli_json("warm", "--restart", config=cfg)
    assert code == 0 and data[0]["rows"] == 1000 and data[0]["filled"] == 900
    print(f"warm: {data[0]['rows_per_s']} rows/s")
    assert all(r.exists(f"user:{i}") for i in (1, 500, 1000))


def test_verify_finds_divergence_and_repairs_it(cfg: Path, start_worker: StartWorker, db: str, r: redis.Redis) -> None:
    """A corrupted cached value is reported (exit 1, both values, no secret) and --repair evicts it."""
    start_worker("", name="w")
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    cli("warm", config=cfg)
    assert cli("verify", config=cfg).returncode == 0
    r.set("user:7", json.dumps({"id": 7, "name": "wrong"}))
    proc = cli("verify", f"{db}.users", config=cfg)
    assert proc.returncode == 1 and "user:7" in proc.stdout and "wrong" in proc.stdout and "u7" in proc.stdout
    assert "pw" not in proc.stdout, "excluded columns never appear"
    code, data = cli_json("verify", "--repair", config=cfg)
    assert code == 1 and data["tables"][0]["repaired"] == 1
    assert r.get("user:7") is None
    assert cli("verify", config=cfg).returncode == 0


# ---- metrics, health, systemd ---------------------------------------------------------------------------


def _http_port(w: WorkerProcess) -> int:
    event = wait_for(
        lambda: next((e for e in w.events() if e.get("event") == "worker.http_listening"), None),
        30,
        "the HTTP endpoint",
    )
    return int(event["port"])


def test_metrics_and_health_endpoints(
    cfg: Path, start_worker: StartWorker, mysql_server: MySQLTarget, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """/metrics is scraped with the worker's counters; /healthz and /readyz answer 200 when streaming."""
    w = start_worker("", name="w")
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'm' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    port = _http_port(w)
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'cdc_sync_changes_applied_total{op="update",table=' in body
    assert "cdc_sync_apply_seconds_bucket" in body and "cdc_sync_heartbeats_total" in body
    # the gauges operators ask for: the build, the queue, each side's connection, each table's lag
    assert 'cdc_sync_build_info{mysql_replication="' in body and 'version="' in body
    assert "cdc_sync_queue_transactions " in body and "cdc_sync_queue_rows " in body
    assert 'cdc_sync_connected{side="mysql"} 1.0' in body and 'cdc_sync_connected{side="redis"} 1.0' in body
    assert 'cdc_sync_table_lag_seconds{table="' in body
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    assert health["alive"] is True
    ready = wait_for(lambda: _get_json(f"http://127.0.0.1:{port}/readyz"), 30, "readiness")
    assert ready["ready"] is True and ready["streaming"] is True


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        return json.loads(urllib.request.urlopen(url, timeout=5).read())  # type: ignore[no-any-return]
    except OSError:
        return None


def test_systemd_notifications(tmp_path: Path, cfg: Path) -> None:
    """Under systemd: READY=1 once streaming, WATCHDOG=1 while healthy, STATUS=, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(30)
    w = WorkerProcess(cfg, tmp_path / "n.log", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}).start()
    try:
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages) or not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert any("STATUS=streaming" in m for m in messages)
        assert w.terminate() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
    finally:
        w.stop()
        listener.close()
