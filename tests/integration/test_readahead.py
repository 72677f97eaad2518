"""Events decided from their bytes (readahead.py) are exactly what the library would have given.

Differential: the same binlog is read once with the read-ahead and once with the library decoding every event;
the two streams of RawEvents must be equal, event by event: begins, commits with their positions, row changes,
statements, and nothing extra or missing. The binlog mixes what the read-ahead decides by itself (GTIDs, XIDs,
annotations, maps and rows of unmapped tables, maps seen before) with what it must leave to the library (a map
after an ALTER, a rotation, DDL, a non-transactional table, a table whose schema and name are each streamed but
not together).
"""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from cdc_sync.adapters.binlog import BinlogSource
from cdc_sync.config import MySQLConfig
from cdc_sync.core.events import RawEvent, RawHeartbeat, RawProgress, RawRows
from tests.helpers import connect, file_position
from tests.servers import MySQLTarget
from tools.devservers import start_mariadb


@pytest.fixture
def other_db(mysql_server: MySQLTarget) -> Iterator[str]:
    conn = connect(mysql_server)
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS readahead_other")
        cur.execute("CREATE DATABASE readahead_other")
    try:
        yield "readahead_other"
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS readahead_other")
        conn.close()


def _read(
    mysql: MySQLTarget, tables: list[tuple[str, str]], start: str, read_ahead: bool, sid: int, rows: int = 50
) -> list[RawEvent]:
    """Every RawEvent from ``start`` until the stream is caught up (the first server heartbeat); with the
    read-ahead, at least ``rows`` rows events must have been decided by it."""
    cfg = MySQLConfig(host=mysql.host, port=mysql.port, user=mysql.user, password=mysql.password, server_id=sid)
    source = BinlogSource(cfg, tables, "mysql", needed={t: None for t in tables}, read_ahead=read_ahead)
    out: list[RawEvent] = []
    for raw in source.events(start):
        if isinstance(raw, RawHeartbeat):
            break
        if not isinstance(raw, RawProgress):  # (the read-ahead's marker in a long run of dropped events)
            out.append(raw)
    ahead = source.ahead
    source.close()
    if read_ahead:
        assert ahead is not None and ahead.decided > 2 * rows, "the read-ahead decided most events itself"
        assert ahead.rows_decided >= rows, "... the mapped tables' rows events included"
    return out


def test_read_ahead_gives_the_same_events_as_the_library(
    mysql_server: MySQLTarget,
    db: str,
    other_db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
) -> None:
    """Single-row and multi-statement transactions on mapped and unmapped tables, an ALTER of a mapped table,
    a binlog rotation, DDL, a MyISAM table and a cross-named table: the same RawEvents either way."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE m (id INT PRIMARY KEY, v VARCHAR(20), n INT)")
        cur.execute("CREATE TABLE u (id INT PRIMARY KEY, v VARCHAR(20))")
        cur.execute("CREATE TABLE x (id INT PRIMARY KEY)")
        cur.execute(f"CREATE TABLE {other_db}.m (id INT PRIMARY KEY, v VARCHAR(20))")  # streamed: other_db.x only
        cur.execute(f"CREATE TABLE {other_db}.x (id INT PRIMARY KEY)")
        cur.execute("CREATE TABLE my (id INT PRIMARY KEY) ENGINE=MyISAM")
    start = file_position(sql)
    with sql.cursor() as cur:
        for i in range(60):
            cur.execute("INSERT INTO m VALUES (%s, %s, %s)", (i, f"v{i}", i))
            for j in range(3):
                cur.execute("INSERT INTO u VALUES (%s, %s)", (i * 3 + j, "u"))
            cur.execute(f"INSERT INTO {other_db}.m VALUES (%s, 'o')", (i,))
        cur.execute("BEGIN")
        cur.execute("UPDATE m SET n = n + 1 WHERE id < 10")
        cur.execute("UPDATE u SET v = 'w' WHERE id < 10")
        cur.execute("DELETE FROM m WHERE id = 59")
        cur.execute(f"INSERT INTO {other_db}.x VALUES (1)")
        cur.execute("COMMIT")
        cur.execute("ALTER TABLE m ADD COLUMN extra INT DEFAULT 7 FIRST")
        for i in range(100, 130):
            cur.execute("INSERT INTO m (id, v, n) VALUES (%s, 'after', 1)", (i,))
            cur.execute("INSERT INTO u VALUES (%s, 'u')", (i * 10,))
        cur.execute("FLUSH BINARY LOGS")
        for i in range(200, 220):
            cur.execute("UPDATE m SET v = 'rotated' WHERE id = %s", (i - 100,))
            cur.execute("INSERT INTO my VALUES (%s)", (i,))
        cur.execute("ALTER TABLE u ADD COLUMN w INT")
        cur.execute("INSERT INTO u VALUES (5000, 'late', 1)")
        cur.execute("INSERT INTO m (id, v, n) VALUES (5000, 'last', 1)")
    tables = [(db, "m"), (other_db, "x")]
    library = _read(mysql_server, tables, start, read_ahead=False, sid=7301)
    ahead = _read(mysql_server, tables, start, read_ahead=True, sid=7302)
    assert ahead == library
    rows = [c for raw in ahead if isinstance(raw, RawRows) for c in raw.changes]
    assert {(c.schema, c.table) for c in rows} == {(db, "m"), (other_db, "x")}
    assert len([c for c in rows if c.table == "m"]) == 60 + 10 + 1 + 30 + 20 + 1
    assert any(c.after is not None and c.after.get("extra") == 7 for c in rows), "the map after the ALTER was read"


def test_events_longer_than_one_packet_read_whole() -> None:
    """A rows event of 17 MB arrives in two protocol packets (16 MB each at most) and one of 3 MB in one: the
    read-ahead's packet reader joins them, and the values are the library's, byte for byte. (A server of its own:
    events this large in the shared server's binlog would make BINLOG_GTID_POS fail for later tests.)"""
    server = start_mariadb(extra_args=("--max-allowed-packet=64M",))
    try:
        mysql = MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb")
        conn = pymysql.connect(host="127.0.0.1", port=server.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE big")
            cur.execute("CREATE TABLE big.big (id INT PRIMARY KEY, b LONGBLOB)")
            start = file_position(conn)
            blobs = {1: bytes(range(256)) * (17 * 4096), 2: b"x" * (3 * 1024 * 1024), 3: b"small"}
            for i, blob in blobs.items():
                cur.execute("INSERT INTO big.big VALUES (%s, %s)", (i, blob))
        conn.close()
        library = _read(mysql, [("big", "big")], start, read_ahead=False, sid=7303)
        ahead = _read(mysql, [("big", "big")], start, read_ahead=True, sid=7304, rows=3)
    finally:
        server.stop()
    assert ahead == library
    rows = {c.after["id"]: c.after["b"] for raw in ahead if isinstance(raw, RawRows) for c in raw.changes if c.after}
    assert rows == blobs
