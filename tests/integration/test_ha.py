"""High availability with real processes: one applier per namespace, takeover, and fencing."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path

import pymysql
import redis

from tests.helpers import WorkerProcess, connect, wait_caught_up, wait_for, write_config
from tests.servers import MySQLTarget, RedisTarget

TTL_MS = 2000
HA = f"[ha]\nenabled = true\nlease_ttl_ms = {TTL_MS}\n"


def _start(
    tmp_path: Path,
    name: str,
    mysql: MySQLTarget,
    redis_t: RedisTarget,
    db: str,
    server_id: int,
    workers: list[WorkerProcess],
) -> WorkerProcess:
    tables = f'[[tables]]\ntable = "{db}.items"\nkey = "item:{{id}}"\nmode = "update"\n'
    cfg = write_config(tmp_path / f"{name}.toml", mysql, redis_t, tables, extra=HA, server_id=server_id)
    w = WorkerProcess(cfg, tmp_path / f"{name}.log").start()
    workers.append(w)
    return w


def _at(event: dict[str, object]) -> float:
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _events(w: WorkerProcess, name: str) -> list[dict[str, object]]:
    return [e for e in w.events() if e.get("event") == name]


def _writer(mysql: MySQLTarget, db: str, stop: threading.Event) -> None:
    conn = connect(mysql, db)
    n = 0
    with conn.cursor() as cur:
        while not stop.is_set():
            n += 1
            cur.execute("INSERT INTO items VALUES (%s, %s) ON DUPLICATE KEY UPDATE v = VALUES(v)", (n % 50, f"v{n}"))
            time.sleep(0.005)
    conn.close()


def _assert_cache_equals_db(r: redis.Redis, sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("SELECT id, v FROM items")
        rows = {f"item:{i}": {"id": i, "v": v} for i, v in cur.fetchall()}
    for key in r.scan_iter("item:*"):
        assert json.loads(r.get(key) or b"null") == rows.get(key.decode()), key


def test_one_applies_and_a_standby_takes_over_after_kill9(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    sql: pymysql.Connection,
    r: redis.Redis,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """Two workers: one leader, one standby; kill -9 of the leader under load: the standby applies within TTL + 2 s."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40))")
    a = _start(tmp_path, "a", mysql_server, redis_server, db, 5001, workers)
    b = _start(tmp_path, "b", mysql_server, redis_server, db, 5002, workers)
    wait_for(lambda: _events(a, "ha.acquired") or _events(b, "ha.acquired"), 30, "a leader")
    leader, standby = (a, b) if _events(a, "ha.acquired") else (b, a)
    wait_for(lambda: _events(standby, "ha.standby"), 30, "the standby")
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(mysql_server, db, stop))
    writer.start()
    try:
        time.sleep(1)
        killed_at = time.time()
        leader.kill9()
        acquired = wait_for(lambda: _events(standby, "ha.acquired"), 30, "the takeover")
        wait_for(
            lambda: [e for e in _events(standby, "sync.batch_applied") if _at(e) > killed_at], 30, "its first apply"
        )
    finally:
        stop.set()
        writer.join(30)
    first_apply = min(_at(e) for e in _events(standby, "sync.batch_applied") if _at(e) > killed_at)
    assert first_apply - killed_at <= TTL_MS / 1000 + 2, f"takeover took {first_apply - killed_at:.2f}s"
    assert acquired[0]["fence"] > _events(leader, "ha.acquired")[0]["fence"]
    wait_caught_up(r, sql, mysql_server.flavor, standby)
    _assert_cache_equals_db(r, sql)


def test_paused_leader_is_fenced_when_it_wakes(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    sql: pymysql.Connection,
    r: redis.Redis,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """SIGSTOP of the leader past its TTL, then SIGCONT: it writes nothing more and steps down to standby."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40))")
    a = _start(tmp_path, "a", mysql_server, redis_server, db, 5011, workers)
    wait_for(lambda: _events(a, "ha.acquired"), 30, "a leader")
    b = _start(tmp_path, "b", mysql_server, redis_server, db, 5012, workers)
    wait_for(lambda: _events(b, "ha.standby"), 30, "the standby")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _events(b, "ha.acquired"), 30, "the standby taking over")
        with sql.cursor() as cur:
            for i in range(20):
                cur.execute("INSERT INTO items VALUES (%s, %s)", (i, f"during-pause-{i}"))
    finally:
        woke_at = time.time()
        os.kill(a.proc.pid, signal.SIGCONT)
    wait_for(lambda: _events(a, "ha.stepped_down"), 30, "the old leader to step down")
    assert not [e for e in _events(a, "sync.batch_applied") if _at(e) > woke_at], "the fenced leader wrote"
    assert _events(a, "ha.fenced") or _events(a, "ha.lease_lost")
    wait_for(lambda: len(_events(a, "ha.standby")) >= 2, 30, "the old leader back as standby")
    wait_caught_up(r, sql, mysql_server.flavor, b)
    _assert_cache_equals_db(r, sql)


def test_restarting_both_workers_never_makes_two_appliers(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    sql: pymysql.Connection,
    r: redis.Redis,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """Both workers stopped and started again and again under load: fences never repeat, the cache converges."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40))")
    procs = {
        "a": _start(tmp_path, "a", mysql_server, redis_server, db, 5021, workers),
        "b": _start(tmp_path, "b", mysql_server, redis_server, db, 5022, workers),
    }
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(mysql_server, db, stop))
    writer.start()
    try:
        for round_ in range(4):
            name = "ab"[round_ % 2]
            time.sleep(1.5)
            if round_ % 2:
                procs[name].kill9()
            else:
                procs[name].terminate()
            procs[name] = WorkerProcess(tmp_path / f"{name}.toml", tmp_path / f"{name}.log").start()
            workers.append(procs[name])
    finally:
        stop.set()
        writer.join(30)
    leader = wait_for(lambda: next((w for w in procs.values() if _holds_lease(w, r)), None), 30, "a leader")
    wait_caught_up(r, sql, mysql_server.flavor, leader)
    logs = {w.log_path: w for w in workers}.values()  # one reader per log file (restarts append to it)
    fences = [int(e["fence"]) for w in logs for e in _events(w, "ha.acquired")]
    assert len(fences) == len(set(fences)) >= 2
    _assert_cache_equals_db(r, sql)


def _holds_lease(w: WorkerProcess, r: redis.Redis) -> bool:
    token = (r.get("cdc:leader") or b"").decode()
    mine = [e for e in _events(w, "ha.acquired") if e.get("holder") == token]
    return bool(token and mine and w.alive())
