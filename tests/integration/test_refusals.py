"""Failures that no retry heals exit 2 with a fix line; transient ones (a server down or late) are retried.

Real processes and servers: a wrong MySQL password (at start and after a password change while running), an
unknown database, another replica taking over the worker's server_id, a wrong Redis password; and a boot where
MySQL and Redis come up after the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, wait_caught_up, wait_for, write_config
from tests.integration.forwarder import Forwarder
from tests.servers import MySQLTarget, RedisTarget

PROMPT_S = 30  # "promptly": well before anyone would notice a retry loop (the check is not a timing figure)


def _tables(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO users VALUES (1, 'a')")


def _config_errors(w: WorkerProcess) -> list[dict[str, Any]]:
    return [e for e in w.events() if e.get("event") == "worker.config_error"]


def _doctor(cfg: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_sync", "doctor", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _check(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["checks"] if c["name"] == name)


@pytest.fixture
def cdc_user(sql: pymysql.Connection, db: str) -> Iterator[tuple[str, str]]:  # type: ignore[type-arg]
    """A least-privileged MySQL user with a password: (user, password)."""
    user, password = "cdcpw", "Right-Secret-552"
    with sql.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR ON *.* TO '{user}'@'%'")
        cur.execute(f"GRANT SELECT ON {db}.* TO '{user}'@'%'")
    try:
        yield user, password
    finally:
        with sql.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def test_a_wrong_mysql_password_exits_2_promptly_with_a_fix(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    cdc_user: tuple[str, str],
    workers: list[WorkerProcess],
) -> None:
    """Access denied (1045) at start: exit 2 at once (no retry loop), a fix line, and no password anywhere."""
    wrong = "Wrong-Secret-913"
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), user=cdc_user[0], password=wrong)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    assert w.wait(PROMPT_S) == 2
    errors = _config_errors(w)
    assert errors and errors[0]["error"].startswith("mysql.connect: ") and "refused the login" in errors[0]["error"]
    assert "password" in errors[0]["fix"] and "1045" in errors[0]["error"]
    assert wrong not in w.log_text() and cdc_user[1] not in w.log_text()
    check = _check(_doctor(cfg), "mysql.connect")
    assert check["status"] == "FAIL" and check["blocking"] is True and wrong not in json.dumps(check)


def _streaming(r: redis.Redis, namespace: str = "cdc") -> bool:
    """The worker's status record says streaming (statusreport.py)."""
    return any(json.loads(v).get("state") == "streaming" for v in r.hvals(f"{namespace}:workers"))


def _kill_binlog_dumps(sql: pymysql.Connection, user: str) -> int:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND COMMAND LIKE 'Binlog Dump%%'",
            (user,),
        )
        ids = [row[0] for row in cur.fetchall()]
        for thread in ids:
            cur.execute(f"KILL {int(thread)}")
    return len(ids)


def test_a_password_changed_while_running_exits_2_at_the_next_reconnect(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    cdc_user: tuple[str, str],
    workers: list[WorkerProcess],
) -> None:
    """The binlog stream is cut and the reconnect is refused (1045): classified at the adapter, exit 2."""
    user, password = cdc_user
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), user=user, password=password)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: _streaming(r), 30, "the worker to stream")
    with sql.cursor() as cur:
        cur.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'Another-Secret-118'")
    wait_for(lambda: _kill_binlog_dumps(sql, user), 30, "the worker's binlog dump thread")
    assert w.wait(PROMPT_S) == 2
    errors = _config_errors(w)
    assert errors and errors[0]["refused"] == "credentials" and "1045" in errors[0]["error"] and errors[0]["fix"]
    assert "source.disconnected" in w.event_names(), "the cut itself was an ordinary, retried disconnect"
    assert password not in w.log_text() and "Another-Secret-118" not in w.log_text()


def test_an_unknown_database_in_a_mapped_table_is_a_config_error(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, workers: list[WorkerProcess]
) -> None:
    """``table = "nosuchdb.users"``: exit 2 naming the field and the table."""
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables("nosuchdb"))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    assert w.wait(PROMPT_S) == 2
    errors = [e["error"] for e in _config_errors(w)]
    assert "mysql.tables: tables[0].table: table nosuchdb.users does not exist" in errors


def test_another_replica_taking_the_server_id_exits_2_naming_the_conflict(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """A second worker (another namespace) connects with the same server_id: MariaDB hands the first one error
    4052; it exits 2 naming server_id and how to pick another, instead of knocking the other off in a loop."""
    a_cfg = write_config(tmp_path / "a.toml", mysql_server, redis_server, _tables(db), server_id=4711)
    a = WorkerProcess(a_cfg, tmp_path / "a.log").start()
    workers.append(a)
    wait_caught_up(r, sql, mysql_server.flavor, a)
    wait_for(lambda: _streaming(r), 30, "the first worker to stream")
    b_cfg = write_config(tmp_path / "b.toml", mysql_server, redis_server, _tables(db), server_id=4711, namespace="b")
    b = WorkerProcess(b_cfg, tmp_path / "b.log").start()
    workers.append(b)
    assert a.wait(60) == 2
    error = _config_errors(a)[0]
    assert error["refused"] == "server_id" and error["server_id"] == 4711 and "4052" in error["error"]
    assert "server_id" in error["error"] and "mysql.server_id" in error["fix"] and "server_id = 0" in error["fix"]
    wait_caught_up(r, sql, mysql_server.flavor, b, namespace="b")
    time.sleep(2)
    assert b.alive() and not _config_errors(b), "the newer connection keeps the server_id"


@pytest.fixture
def redis_user(r: redis.Redis) -> Iterator[tuple[str, str]]:
    user, password = "cdcr", "Right-Redis-pw-77"
    r.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        yield user, password
    finally:
        r.execute_command("ACL", "DELUSER", user)


def test_a_wrong_redis_password_exits_2_promptly_with_a_fix(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    redis_user: tuple[str, str],
    workers: list[WorkerProcess],
) -> None:
    """WRONGPASS: exit 2 at once with a fix line; the password is in no output."""
    wrong = "Wrong-Redis-pw-31"
    target = RedisTarget(redis_server.host, redis_server.port)
    cfg = write_config(tmp_path / "w.toml", mysql_server, target, _tables(db))
    cfg.write_text(
        cfg.read_text().replace(target.url, f"redis://{redis_user[0]}:{wrong}@{target.host}:{target.port}/0")
    )
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    assert w.wait(PROMPT_S) == 2
    errors = _config_errors(w)
    assert errors and errors[0]["error"].startswith("redis.connect: ") and "refused the login" in errors[0]["error"]
    assert "redis.url" in errors[0]["fix"]
    assert wrong not in w.log_text() and redis_user[1] not in w.log_text()
    data = _doctor(cfg)
    assert _check(data, "redis.connect")["blocking"] is True and wrong not in json.dumps(data)


def test_servers_that_come_up_after_the_worker_are_waited_for(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """Boot order: MySQL and Redis refuse connections when the worker starts; it keeps retrying (never exits),
    then streams once they are up."""
    mysql_fwd, redis_fwd = Forwarder(mysql_server.port), Forwarder(redis_server.port)
    via_mysql = MySQLTarget("127.0.0.1", mysql_fwd.port, mysql_server.user, mysql_server.password, mysql_server.flavor)
    via_redis = RedisTarget("127.0.0.1", redis_fwd.port, redis_server.db)
    cfg = write_config(tmp_path / "w.toml", via_mysql, via_redis, _tables(db))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    try:
        wait_for(lambda: "source.unavailable" in w.event_names(), 60, "the worker to retry MySQL")
        assert w.alive()
        mysql_fwd.on()
        wait_for(lambda: "sink.unavailable" in w.event_names(), 60, "the worker to retry Redis")
        assert w.alive() and not _config_errors(w)
        redis_fwd.on()
        wait_caught_up(r, sql, mysql_server.flavor, w)
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = 'late' WHERE id = 1")
        wait_for(lambda: json.loads(r.get("user:1") or b"{}").get("name") == "late", 30, "the change to arrive")
    finally:
        w.stop()
        mysql_fwd.off()
        redis_fwd.off()


def test_connect_refused_is_retried_not_refused(
    tmp_path: Path, redis_server: RedisTarget, db: str, workers: list[WorkerProcess]
) -> None:
    """Nothing listening on the MySQL port: the doctor's FAIL does not block, the worker waits (alive)."""
    fwd = Forwarder(1)  # never switched on: connections are refused
    mysql = MySQLTarget("127.0.0.1", fwd.port, "root", "", "mariadb")
    cfg = write_config(tmp_path / "w.toml", mysql, redis_server, _tables(db))
    data = _doctor(cfg)
    assert _check(data, "mysql.connect")["status"] == "FAIL" and _check(data, "mysql.connect")["blocking"] is False
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: w.event_names().count("source.unavailable") >= 3, 60, "three retries")
    assert w.alive() and not _config_errors(w)
