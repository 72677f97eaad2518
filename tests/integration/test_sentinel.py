"""A Sentinel-managed Redis: a real master, a replica and three Sentinels (tools/devservers.start_sentinel_set).

The worker, the reader and the commands follow a failover; a failover that loses acknowledged writes is caught by
the checkpoint's compare-and-set and replayed; ``wait_replicas`` counts and logs steps the replicas did not
acknowledge in time.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from cdc_sync import config as config_mod
from cdc_sync.reader.client import CacheReader
from tests.helpers import WorkerProcess, cli, server_position, wait_for, write_config
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import SentinelSet, start_sentinel_set

TABLES = """
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "update"
"""


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    started = start_sentinel_set(replicas=1, sentinels=3, down_after_ms=1000)
    try:
        yield started
    finally:
        started.stop()


def _config(tmp_path: Path, mysql: MySQLTarget, s: SentinelSet, db: str, redis_extra: str = "") -> Path:
    extra = f'sentinels = {json.dumps(s.addresses)}\nmaster_name = "{s.master_name}"\n{redis_extra}'
    unused = RedisTarget("127.0.0.1", 1)  # (with Sentinels the url names no address)
    return write_config(
        tmp_path / "w.toml", mysql, unused, TABLES.format(db=db), redis_url="redis:///0", redis_extra=extra
    )


def _master(s: SentinelSet) -> redis.Redis:
    port = s.master_port()
    assert port is not None, "no Sentinel names a master"
    return redis.Redis(port=port)


def _start(cfg: Path, tmp_path: Path, workers: list[WorkerProcess]) -> WorkerProcess:
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    assert w.alive(), w.log_text()[-3000:]
    return w


def _caught_up(s: SentinelSet, sql: pymysql.Connection, w: WorkerProcess, timeout: float = 60) -> None:  # type: ignore[type-arg]
    target = server_position(sql, "mariadb")

    def done() -> bool:
        assert w.alive(), w.log_text()[-3000:]
        try:
            stored = _master(s).get("cdc:checkpoint")
        except (redis.RedisError, AssertionError):
            return False
        return stored is not None and stored.decode().partition("@")[0] == target

    wait_for(done, timeout, f"the checkpoint {target} on the master the Sentinels name")


def _values(s: SentinelSet, ids: range) -> list[object]:
    master = _master(s)
    return [json.loads(v)["name"] if v else None for v in (master.get(f"user:{i}") for i in ids)]


def _failover_to(s: SentinelSet, port: int, timeout: float = 60) -> None:
    wait_for(lambda: s.master_port() == port, timeout, f"the Sentinels to name the replica on {port} master")


def test_worker_reader_and_commands_follow_a_failover(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    sentinel_set: SentinelSet,
    workers: list[WorkerProcess],
) -> None:
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")
    cfg = _config(tmp_path, mysql_server, sentinel_set, db)
    w = _start(cfg, tmp_path, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = CONCAT(name, '1')")
    _caught_up(sentinel_set, sql, w)
    assert _values(sentinel_set, range(1, 3)) == ["a1", "b1"]
    reader = CacheReader(config_mod.load(cfg))
    try:
        wait_for(lambda: _master(sentinel_set).get("cdc:heartbeat"), 30, "a heartbeat")
        assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "a1"}
        before = sentinel_set.master_port()
        replica = next(x.port for x in sentinel_set.servers if x.port != before)
        redis.Redis(port=sentinel_set.sentinels[0].port).execute_command("SENTINEL", "FAILOVER", "cache")
        _failover_to(sentinel_set, replica)
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = CONCAT(name, '2')")
        _caught_up(sentinel_set, sql, w)  # on the new master
        # a key is current or gone (a change applied to the old master after the failover is lost with it, and
        # the new master's checkpoint then has the worker replay or flush), never an older value
        assert set(_values(sentinel_set, range(1, 3))) <= {"a12", "b12", None}
        wait_for(lambda: "redis.master_changed" in w.event_names(), 30, "the worker to log the new master")
        got = wait_for(
            lambda: (reader.get_row(f"{db}.users", id=2) or {}).get("name") == "b12" or None, 30, "the reader"
        )
        assert got
    finally:
        reader.close()
    status = cli(cfg, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["redis"].startswith("redis+sentinel://") and shown["checkpoint"]
    doctor = cli(cfg, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    replication = checks["redis.replication"]
    assert replication["status"] == "PASS" and "3 Sentinel(s) name master 127.0.0.1:" in replication["detail"]
    assert checks["redis.connect"]["status"] == "PASS"


def test_a_failover_that_loses_acknowledged_writes_is_replayed(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    sentinel_set: SentinelSet,
    workers: list[WorkerProcess],
) -> None:
    """The replica is stopped (its socket buffers full) while the worker applies, and Redis acknowledges, changes on
    the master; the master is killed and the Sentinels promote the replica, which lacks them. The worker's next
    step finds an older checkpoint there (REWIND), replays from it, and the new master ends with every change."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'v0')" for i in range(1, 21)))
    cfg = _config(tmp_path, mysql_server, sentinel_set, db)
    w = _start(cfg, tmp_path, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'v1'")
    _caught_up(sentinel_set, sql, w)
    master_port = sentinel_set.master_port()
    assert master_port is not None
    replica = next(x for x in sentinel_set.servers if x.port != master_port)
    wait_for(lambda: redis.Redis(port=replica.port).get("user:20") is not None, 30, "the replica to hold v1")
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        # more than the stopped replica's socket buffers take: what follows waits in the master's memory only
        redis.Redis(port=master_port).set("filler", b"x" * (32 << 20))
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = 'v2' WHERE id <= 10")
        _caught_up(sentinel_set, sql, w)
        assert _values(sentinel_set, range(1, 21)) == ["v2"] * 10 + ["v1"] * 10  # acknowledged by the master
        sentinel_set.server(master_port).proc.kill()  # kill -9: what the replica never got is lost
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    _failover_to(sentinel_set, replica.port)
    assert redis.Redis(port=replica.port).get("user:1") is not None
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'v3' WHERE id > 15")
    _caught_up(sentinel_set, sql, w)
    assert _values(sentinel_set, range(1, 21)) == ["v2"] * 10 + ["v1"] * 5 + ["v3"] * 5
    rewinds = [e for e in w.events() if e.get("event") == "sync.rewind"]
    assert rewinds, "the lost writes were found by the checkpoint's compare-and-set"
    wait_for(lambda: "redis.master_changed" in w.event_names(), 30, "the worker to log the new master")


def test_wait_replicas_counts_and_logs_steps_not_acknowledged_in_time(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    sentinel_set: SentinelSet,
    workers: list[WorkerProcess],
) -> None:
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("INSERT INTO users VALUES (1, 'a')")
    cfg = _config(tmp_path, mysql_server, sentinel_set, db, "wait_replicas = 1\nwait_timeout_ms = 50")
    w = _start(cfg, tmp_path, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'b'")
    _caught_up(sentinel_set, sql, w)
    assert "redis.wait_short" not in w.event_names()
    master_port = sentinel_set.master_port()
    replica = next(x for x in sentinel_set.servers if x.port != master_port)
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = 'c'")
        _caught_up(sentinel_set, sql, w)  # applied on the master all the same
        assert _values(sentinel_set, range(1, 2)) == ["c"]
        short = wait_for(lambda: [e for e in w.events() if e.get("event") == "redis.wait_short"], 10, "wait_short")
        assert short[0]["acknowledged"] == 0 and short[0]["wanted"] == 1
        port = int(next(e for e in w.events() if e.get("event") == "worker.http_listening")["port"])
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        counted = [line for line in body.splitlines() if line.startswith("cdc_sync_redis_wait_short_total ")]
        assert counted and float(counted[0].split()[1]) >= 1
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'd'")
    wait_for(lambda: "redis.wait_recovered" in w.event_names(), 30, "the replica to acknowledge again")
