"""What operators read is one plain finding per problem: no GRANT for a missing table, no knock-on FAILs behind
a root cause, no driver exception reprs, every denied Redis command at once, the position formats spelled out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.helpers import connect, write_config
from tests.integration.forwarder import Forwarder
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_mariadb

# a driver's repr (OperationalError(2003, ...), ConnectionError('Error 111 ...')) or a raw errno
RAW = re.compile(r"\b\w*(Error|Exception)\(|\[Errno|Error \d+ connecting")


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_sync", *args, "--config", str(config)], capture_output=True, text=True, timeout=120
    )


def doctor(config: Path) -> tuple[int, dict[str, Any], str]:
    proc = cli("doctor", "--json", config=config)
    return proc.returncode, json.loads(proc.stdout), cli("doctor", config=config).stdout


def _check(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["checks"] if c["name"] == name)


def _tables(*names: str) -> str:
    return "".join(f'[[tables]]\ntable = "{n}"\nkey = "{n.split(".")[1]}:{{id}}"\n' for n in names)


def test_a_missing_table_gets_no_grant_suggestion(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """A mapped table that does not exist: mysql.tables FAILs; its SELECT check is SKIP, suggesting no GRANT."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(f"{db}.users", f"{db}.nope"))
    code, data, human = doctor(cfg)
    assert code == 1
    skipped = _check(data, f"mysql.privilege.select.{db}.nope")
    assert skipped["status"] == "SKIP" and "does not exist (see mysql.tables)" in skipped["detail"]
    assert _check(data, f"mysql.privilege.select.{db}.users")["status"] == "PASS"
    tables = _check(data, "mysql.tables")
    assert tables["status"] == "FAIL" and f"table {db}.nope does not exist" in tables["detail"]
    assert f"GRANT SELECT ON {db}.nope" not in human and "SKIP  mysql.privilege.select" in human


def test_a_table_the_user_may_not_read_is_a_privilege_finding_not_a_missing_table(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """No SELECT on an existing table: the privilege FAILs with the GRANT; mysql.tables does not claim it is missing."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY)")
        cur.execute("DROP USER IF EXISTS 'blind'@'%'")
        cur.execute("CREATE USER 'blind'@'%' IDENTIFIED BY 'blind-pw'")
        cur.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR ON *.* TO 'blind'@'%'")
    cfg = write_config(
        tmp_path / "w.toml", mysql_server, redis_server, _tables(f"{db}.users"), user="blind", password="blind-pw"
    )
    _code, data, _human = doctor(cfg)
    select = _check(data, f"mysql.privilege.select.{db}.users")
    assert select["status"] == "FAIL" and select["fix"] == f"GRANT SELECT ON {db}.users TO 'blind'@'%'"
    tables = _check(data, "mysql.tables")
    assert tables["status"] == "SKIP" and "does not exist" not in tables["detail"]


@pytest.fixture
def plain_mariadb() -> Iterator[LocalServer]:
    server = start_mariadb(binlog=False)
    try:
        yield server
    finally:
        server.stop()


def test_log_bin_off_is_one_root_cause_not_a_cascade(
    tmp_path: Path, plain_mariadb: LocalServer, redis_server: RedisTarget
) -> None:
    """Binlog off: log_bin FAILs with a file-basename fix; SHOW BINARY LOGS, GTID and retention checks are SKIP
    naming log_bin, and no FAIL mentions 'not using binary logging'."""
    mysql = MySQLTarget("127.0.0.1", plain_mariadb.port, "root", "", "mariadb")
    with connect(mysql) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE s")
        cur.execute("CREATE TABLE s.users (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path / "w.toml", mysql, redis_server, _tables("s.users"))
    code, data, human = doctor(cfg)
    assert code == 1
    log_bin = _check(data, "mysql.log_bin")
    assert log_bin["status"] == "FAIL" and "log_bin = mysql-bin" in log_bin["fix"] and "ON.000001" in log_bin["fix"]
    for name in ("mysql.privilege.binlog_monitor", "mysql.gtid", "mysql.binlog_retention"):
        check = _check(data, name)
        assert check["status"] == "SKIP" and "see mysql.log_bin" in check["detail"], check
    assert "binary logging" not in " ".join(c["detail"] for c in data["checks"] if c["status"] == "FAIL")
    assert "SKIP" in human.splitlines()[-1]


def test_no_driver_reprs_in_doctor_status_or_cli_errors(tmp_path: Path, db: str) -> None:
    """Servers unreachable: every doctor detail, status line and CLI error is a sentence, not a repr or errno."""
    mysql, redis_port = Forwarder(1), Forwarder(1)  # nothing listens on either port
    cfg = write_config(
        tmp_path / "w.toml",
        MySQLTarget("127.0.0.1", mysql.port, "root", "", "mariadb"),
        RedisTarget("127.0.0.1", redis_port.port),
        _tables(f"{db}.users"),
    )
    code, data, human = doctor(cfg)
    assert code == 1 and "connection refused" in _check(data, "mysql.connect")["detail"]
    assert "connection refused" in _check(data, "redis.connect")["detail"]
    outputs = [human, json.dumps(data)]
    for args in (("status",), ("status", "--json"), ("checkpoint", "show"), ("flush",), ("verify",)):
        proc = cli(*args, config=cfg)
        assert proc.returncode != 0, args
        outputs.append(proc.stdout + proc.stderr)
    for text in outputs:
        assert not RAW.search(text), text


def test_every_denied_redis_command_is_listed_at_once(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    sql: pymysql.Connection,
    r: redis.Redis,
) -> None:  # type: ignore[type-arg]
    """A real ACL user lacking HSET, SADD and UNLINK: one FAIL that names all three, with one ACL line to fix it."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY)")
    r.execute_command("ACL", "SETUSER", "narrow", "on", ">narrow-pw", "~*", "&*", "+@all", "-hset", "-sadd", "-unlink")
    try:
        cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(f"{db}.users"))
        url = f"redis://narrow:narrow-pw@{redis_server.host}:{redis_server.port}/0"
        cfg.write_text(cfg.read_text().replace(redis_server.url, url))
        _code, data, _human = doctor(cfg)
    finally:
        r.execute_command("ACL", "DELUSER", "narrow")
    acl = _check(data, "redis.acl")
    assert acl["status"] == "FAIL" and acl["blocking"] is True
    assert "HSET, SADD, UNLINK" in acl["detail"] and "+hset +sadd +unlink" in acl["fix"]
    assert "narrow-pw" not in json.dumps(data)


def test_a_bad_checkpoint_position_shows_the_valid_formats(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str
) -> None:
    """checkpoint set with a bad position: exit 2 and the three formats, with an example each."""
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(f"{db}.users"))
    proc = cli("checkpoint", "set", "bin-000003:12x", config=cfg)
    assert proc.returncode == 2 and "not a binlog position" in proc.stderr
    for example in ("0-1-42", "uuid:1-42", "bin.000003:1234"):
        assert example in proc.stderr, proc.stderr
