"""Crashes: kill -9 of the worker while writes continue loses nothing and regresses nothing."""

from __future__ import annotations

import json
import random
import threading

import pymysql
import redis

from tests.helpers import connect, wait_caught_up, wait_for
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget


def _writer(mysql: MySQLTarget, db: str, stop: threading.Event, seed: int, counter: list[int]) -> None:
    rng = random.Random(seed)
    conn = connect(mysql, db)
    with conn.cursor() as cur:
        while not stop.is_set():
            k = rng.randrange(200)
            action = rng.random()
            if action < 0.4:
                cur.execute(
                    "INSERT INTO items (id, v, n) VALUES (%s, %s, 0) ON DUPLICATE KEY UPDATE v=VALUES(v), n=n+1",
                    (k, f"v{rng.randrange(10**6)}"),
                )
            elif action < 0.7:
                cur.execute("UPDATE items SET v=%s, n=n+1 WHERE id=%s", (f"u{rng.randrange(10**6)}", k))
            elif action < 0.85:
                cur.execute("DELETE FROM items WHERE id=%s", (k,))
            else:
                cur.execute("BEGIN")
                for _ in range(rng.randrange(2, 8)):
                    j = rng.randrange(200)
                    cur.execute(
                        "INSERT INTO items (id, v, n) VALUES (%s, 'tx', 0) "
                        "ON DUPLICATE KEY UPDATE v=CONCAT('tx', n), n=n+1",
                        (j,),
                    )
                cur.execute("COMMIT")
            counter[0] += 1
    conn.close()


def _assert_cache_equals_db(r: redis.Redis, sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("SELECT id, v, n FROM items")
        rows = {f"item:{i}": {"id": i, "v": v, "n": n} for i, v, n in cur.fetchall()}
    cached = {k.decode(): json.loads(r.get(k) or b"null") for k in r.scan_iter("item:*")}
    missing = sorted(set(rows) - set(cached))
    extra = sorted(set(cached) - set(rows))
    wrong = sorted(k for k in rows if k in cached and cached[k] != rows[k])
    assert (missing, extra, wrong) == ([], [], []), f"{len(rows)} rows"


def test_kill9_mid_stream_then_restart_converges(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """kill -9 while writers run, restart: every key ends equal to its row; none missed, none extra."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(40), n INT)")
    tables = f"""
[[tables]]
table = "{db}.items"
key = "item:{{id}}"
mode = "update"
"""
    w = start_worker(tables)
    stop = threading.Event()
    count = [0]
    writer = threading.Thread(target=_writer, args=(mysql_server, db, stop, 7, count))
    writer.start()
    try:
        for _round in range(3):
            at = count[0]
            wait_for(lambda at=at: count[0] >= at + 150, 60, "writes")
            w.kill9()
            wait_for(lambda at=at: count[0] >= at + 300, 60, "writes while the worker is down")
            w = start_worker("", wait=False)
    finally:
        stop.set()
        writer.join(30)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert count[0] > 900
    _assert_cache_equals_db(r, sql)
    names = w.event_names()
    assert "sync.resume" in names
