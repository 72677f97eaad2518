"""Hazards found in review: undecodable rows, foreign-key cascades, rule changes, compressed events,
shutdown while Redis is down, and the freshness heartbeat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, connect, file_position, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import start_redis


def _tables(db: str, table: str = "users", mode: str = "update", extra: str = "") -> str:
    return f"""
[[tables]]
table = "{db}.{table}"
key = "{table}:{{id}}"
mode = "{mode}"
{extra}
"""


def test_undecodable_row_flushes_and_the_worker_goes_on(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A row that cannot be decoded (an unpaired surrogate in UCS-2, ``x'd800'``, which MariaDB stores) flushes the
    tables and later changes still land. (GBK's a4 40, the old example, now decodes as the server prints it.)"""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20) CHARACTER SET ucs2)")
    w = start_worker(_tables(db))
    r.set("users:7", "stale")
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, x'd800')")
        cur.execute("INSERT INTO users VALUES (2, 'fine')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("users:7") == 0, "the undecodable event flushed the table"
    assert json.loads(r.get("users:2") or b"") == {"id": 2, "name": "fine"}
    flushes = [e for e in w.events() if e.get("event") == "sync.table_flushed" and e["reason"] == "unknown_event"]
    assert flushes and flushes[0]["detail"].startswith("decode_error")
    assert w.alive()


def test_foreign_key_cascade_flushes_the_mapped_child(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """ON DELETE CASCADE rewrites child rows with no row events: the parent's delete flushes the child."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE parents (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB")
        cur.execute(
            "CREATE TABLE orders (id INT PRIMARY KEY, parent_id INT, total INT, "
            "FOREIGN KEY (parent_id) REFERENCES parents(id) ON DELETE CASCADE) ENGINE=InnoDB"
        )
    w = start_worker(_tables(db, "orders"))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO parents VALUES (1, 'p')")
        cur.execute("INSERT INTO orders VALUES (10, 1, 99)")
        cur.execute("UPDATE parents SET name = 'q' WHERE id = 1")  # no action: the child stays cached
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("orders:10") or b"")["total"] == 99
    with sql.cursor() as cur:
        cur.execute("DELETE FROM parents WHERE id = 1")
        cur.execute("SELECT COUNT(*) FROM orders")
        assert cur.fetchone()[0] == 0
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("orders:10") == 0
    assert "sync.cascade_watched" in w.event_names()
    flushes = [e for e in w.events() if e.get("event") == "sync.table_flushed" and e["reason"] == "fk_cascade"]
    assert len(flushes) == 1


def test_changed_and_removed_rules_flush_their_tables_on_restart(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Values written under old rules never outlive them: a changed rule and a removed rule are flushed."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20), secret VARCHAR(20))")
        cur.execute("CREATE TABLE pets (id INT PRIMARY KEY, name VARCHAR(20))")
    w = start_worker(_tables(db) + _tables(db, "pets"))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a', 's3cret')")
        cur.execute("INSERT INTO pets VALUES (1, 'rex')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert "secret" in json.loads(r.get("users:1") or b"")
    assert w.terminate() == 0
    w2 = start_worker(_tables(db, extra='exclude = ["secret"]'), name="w2")
    assert r.exists("users:1", "pets:1") == 0
    reasons = {e["table"].split(".")[1]: e["reason"] for e in w2.events() if e.get("event") == "sync.table_flushed"}
    assert reasons == {"users": "rule_changed", "pets": "rule_removed"}


@contextmanager
def compressed_session(
    sql: pymysql.Connection,
    mysql: MySQLTarget,
    db: str,  # type: ignore[type-arg]
) -> Iterator[pymysql.Connection]:  # type: ignore[type-arg]
    """A new session whose binlog events are compressed (log_bin_compress on, from 10 bytes), turned off after."""
    with sql.cursor() as cur:
        cur.execute("SET GLOBAL log_bin_compress = ON")
        cur.execute("SET GLOBAL log_bin_compress_min_len = 10")
    conn = connect(mysql, db)  # (a new session picks the setting up)
    try:
        yield conn
    finally:
        conn.close()
        with sql.cursor() as cur:
            cur.execute("SET GLOBAL log_bin_compress = OFF")
            cur.execute("SET GLOBAL log_bin_compress_min_len = 256")  # (the default)


def test_compressed_binlog_events_are_applied(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """MariaDB compressed events (log_bin_compress turned on at run time): inserts, updates and deletes are
    applied as if uncompressed, and a compressed ALTER is seen as the DDL it is; nothing flushes as unknown."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name TEXT)")
    w = start_worker(_tables(db))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'plain'), (2, 'two')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("users:1") == 1
    with compressed_session(sql, mysql_server, db) as conn:
        with conn.cursor() as cur:
            cur.execute("UPDATE users SET name = %s WHERE id = 1", ("compressed " * 50,))
            cur.execute("INSERT INTO users VALUES (3, %s), (4, %s)", ("three " * 40, "four " * 40))
            cur.execute("DELETE FROM users WHERE id = 2")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        assert json.loads(r.get("users:1") or b"")["name"] == "compressed " * 50
        assert json.loads(r.get("users:3") or b"")["name"] == "three " * 40
        assert r.exists("users:2") == 0
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE users ADD COLUMN note VARCHAR(200) DEFAULT 'a default note, long enough'")
            cur.execute("UPDATE users SET note = %s WHERE id = 4", ("noted " * 20,))
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("users:4") or b"") == {"id": 4, "name": "four " * 40, "note": "noted " * 20}
    reasons = [e["reason"] for e in w.events() if e.get("event") == "sync.table_flushed"]
    assert reasons == ["statement"], "the ALTER flushed as a statement, nothing as an unknown event"


def test_a_compressed_event_that_cannot_be_expanded_flushes(
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compressed event whose expansion fails (here: made to fail) is reported as undecodable, never dropped."""
    from cdc_sync.adapters import readahead
    from cdc_sync.adapters.binlog import BinlogSource
    from cdc_sync.config import MySQLConfig
    from cdc_sync.core.binlogframes import FrameError
    from cdc_sync.core.events import RawHeartbeat, RawRows, RawUnknown

    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name TEXT)")
    start = file_position(sql)
    with compressed_session(sql, mysql_server, db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, %s)", ("compressed " * 50,))

    def broken(data: bytes, checksum: bool, post_header_len: object = None) -> bytes:
        raise FrameError("zlib stream truncated (injected)")

    monkeypatch.setattr(readahead, "mariadb_uncompressed", broken)
    cfg = MySQLConfig(
        host=mysql_server.host, port=mysql_server.port, user=mysql_server.user, password=mysql_server.password
    )
    seen = []
    for raw in BinlogSource(cfg, [(db, "users")], "mysql").events(start):
        if isinstance(raw, RawHeartbeat):
            break
        seen.append(raw)
    unknown = [raw for raw in seen if isinstance(raw, RawUnknown)]
    assert unknown and "injected" in unknown[0].detail
    assert unknown[0].event_type == 0xA6, "reported as the compressed rows event it is (so its transaction goes on)"
    assert not [raw for raw in seen if isinstance(raw, RawRows)]


def test_sigterm_while_redis_is_down_exits_within_the_shutdown_bound(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """Redis gone, writes pending, SIGTERM: the worker still exits 0 (nothing unapplied is checkpointed)."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name TEXT)")
    server = start_redis()
    try:
        cfg = write_config(tmp_path / "c.toml", mysql_server, RedisTarget("127.0.0.1", server.port), _tables(db))
        w = WorkerProcess(cfg, tmp_path / "w.log").start()
        workers.append(w)
        r = redis.Redis(port=server.port)
        wait_caught_up(r, sql, mysql_server.flavor, w)
        server.stop()
        with sql.cursor() as cur:
            for i in range(20):
                cur.execute("INSERT INTO users VALUES (%s, 'x')", (i,))
        wait_for(lambda: "sink.unavailable" in w.event_names(), 30, "Redis failure noticed")
        assert w.terminate(timeout=30) == 0
        assert "worker.shutdown_incomplete" in w.event_names()
    finally:
        server.stop()


def test_heartbeat_follows_the_worker_and_stops_with_it(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """<ns>:heartbeat trails Redis time while the worker runs, and stops moving when it stops."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name TEXT)")
    w = start_worker(_tables(db))

    def now_ms() -> int:
        s, us = r.time()
        return int(s) * 1000 + int(us) // 1000

    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a first heartbeat")
    first = int(r.get("cdc:heartbeat") or 0)
    with sql.cursor() as cur:
        for i in range(50):
            cur.execute("INSERT INTO users VALUES (%s, 'x')", (i,))
    wait_for(lambda: int(r.get("cdc:heartbeat") or 0) > first, 30, "the heartbeat to move")
    assert int(r.get("cdc:heartbeat") or 0) <= now_ms()
    assert w.terminate() == 0
    stopped_at = int(r.get("cdc:heartbeat") or 0)
    time.sleep(1.5)
    assert int(r.get("cdc:heartbeat") or 0) == stopped_at
    assert now_ms() - stopped_at >= 1500


def test_a_session_with_minimal_row_images_cannot_write_wrong_values(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A session's binlog_row_image=MINIMAL leaves columns out of the images: the worker does not write them
    as NULLs; it evicts, and when a key column is absent (here the key is on email) it flushes the table."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(40), name VARCHAR(20))")
    w = start_worker(_tables(db).replace('key = "users:{id}"', 'key = "users:{email}"'))
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (1, 'a@x', 'old')")
    wait_for(lambda: r.get("users:a@x") is not None, 30, "the insert to be written")
    with sql.cursor() as cur:
        cur.execute("SET SESSION binlog_row_image = 'MINIMAL'")
        cur.execute("UPDATE users SET name = 'new' WHERE id = 1")
        cur.execute("SET SESSION binlog_row_image = 'FULL'")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("users:a@x") is None, "the old value was evicted, not kept or overwritten with NULLs"
    names = w.event_names()
    assert "source.partial_row_image" in names and "sync.table_flushed" in names
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'full' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("users:a@x") or b"") == {"id": 1, "email": "a@x", "name": "full"}
