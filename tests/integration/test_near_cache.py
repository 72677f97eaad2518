"""The near cache (``[reader] near_cache_size``): values in the reader's memory, kept coherent by the RESP3
tracking connection (reader/tracking.py), served only where a plain GET would be. Each rule forced against the
real worker and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pymysql
import pytest
import redis

from cdc_sync import CacheReader
from tests.helpers import wait_caught_up, wait_for
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget

READER = "[reader]\nmax_staleness_ms = 60000\nfreshness_check_ms = 60000\nholdoff_ms = 0\nnear_cache_size = 100\n"


def _tables(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO users VALUES (1, 'old'), (2, 'two')")


@pytest.fixture(params=["sync", "async"])
def reader_driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _warm(reader: CacheReader, table: str) -> None:
    """A miss (filled), a checked hit (kept near, the window opened)."""
    reader.get_row(table, id=1)
    reader.get_row(table, id=1)


def _inner(reader: CacheReader) -> CacheReader:
    """The reader itself (the async one behind tests.helpers.AsyncDriven)."""
    return reader.__dict__.get("_reader", reader)  # type: ignore[no-any-return]


def test_near_hits_follow_every_change_the_worker_applies(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    mysql_server: MySQLTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    w = start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    reader = reader_for()
    table = f"{db}.users"
    _warm(reader, table)
    assert reader.get_row(table, id=1) == {"id": 1, "name": "old"}
    assert reader.stats["near_hit"] == 1
    for n in range(3):
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = %s WHERE id = 1", (f"new{n}",))
        wait_caught_up(r, sql, mysql_server.flavor, w)
        # the worker's step changed user:1: its invalidation is applied before any local hit
        assert reader.get_row(table, id=1) == {"id": 1, "name": f"new{n}"}
        assert reader.get_row(table, id=1) == {"id": 1, "name": f"new{n}"}
    assert reader.stats["near_hit"] >= 4
    got = reader.get_row(table, id=1)
    assert got is not None
    got["name"] = "mutated by the caller"
    assert reader.get_row(table, id=1) == {"id": 1, "name": "new2"}, "each local hit is a copy"


def test_a_value_read_before_an_invalidation_is_never_kept(
    start_worker: StartWorker, reader_for: Callable[..., CacheReader], db: str, users: None, r: redis.Redis
) -> None:
    """The interleaving the marks exist for: a value read, its key changed and the invalidation applied, then
    the read's value offered to the near cache: refused. Read after the invalidation: kept."""
    start_worker(_tables(db), extra=READER)
    reader = _inner(reader_for())
    near, tracker = reader.near, reader.tracker
    assert near is not None and tracker is not None and tracker.ready()
    r.set("user:9", "old")
    mark = near.mark()
    r.set("user:9", "new")  # (another client: the worker, say)
    wait_for(lambda: tracker.ready() and near.mark() > mark, 10, "the invalidation of user:9")
    assert not near.put("user:9", b'"old"', mark)
    assert near.get("user:9") is None
    fresh = near.mark()
    assert near.put("user:9", b'"new"', fresh) and near.get("user:9") == b'"new"'
    r.delete("user:9")
    wait_for(lambda: tracker.ready() and near.get("user:9") is None, 10, "the eviction pushed")


def test_a_lost_tracking_connection_empties_the_near_cache(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """CLIENT KILL of the tracking connection (a restart, a proxy, a network cut): the next lookup finds it gone,
    empties the near cache and reads Redis; a second later the connection is made again and the near cache
    fills anew."""
    start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    reader = reader_for()
    inner = _inner(reader)
    table = f"{db}.users"
    _warm(reader, table)
    assert inner.near is not None and len(inner.near) == 1
    tracking = [c for c in r.client_list() if "t" in c.get("flags", "") and c.get("resp") == "3"]
    assert len(tracking) == 1, tracking
    r.client_kill_filter(_id=tracking[0]["id"])
    with sql.cursor() as cur:  # (a change it would never hear of)
        cur.execute("UPDATE users SET name = 'unheard' WHERE id = 1")
    r.set("user:1", json.dumps({"id": 1, "name": "unheard"}))
    near_hits = reader.stats["near_hit"]
    assert reader.get_row(table, id=1) == {"id": 1, "name": "unheard"}
    assert reader.stats["near_hit"] == near_hits and len(inner.near) == 0
    wait_for(lambda: inner.tracker is not None and inner.tracker.ready(), 10, "the tracking connection again")
    reader.get_row(table, id=1)
    reader.get_row(table, id=1)
    assert reader.stats["near_hit"] > near_hits


def test_a_flush_marker_or_a_flushall_empties_the_near_cache(
    start_worker: StartWorker, reader_for: Callable[..., CacheReader], db: str, users: None, r: redis.Redis
) -> None:
    """A table's flush begins with its marker (the keys go after it): every value goes at once."""
    start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    reader = reader_for()
    inner = _inner(reader)
    table = f"{db}.users"
    for i in (1, 2, 1, 2):
        reader.get_row(table, id=i)
    near, tracker = inner.near, inner.tracker
    assert near is not None and tracker is not None and len(near) == 2
    r.set(f"cdc:flushing:{table}", "1", px=2000)
    wait_for(lambda: tracker.ready() and len(near) == 0, 10, "the near cache emptied by the marker")

    def refilled() -> bool:  # (once the marker is gone: lookups bypass while it lasts)
        for i in (1, 2, 1, 2):
            reader.get_row(table, id=i)
        return tracker.ready() and len(near) == 2

    wait_for(refilled, 15, "the near cache filled again")
    r.flushdb()
    wait_for(lambda: tracker.ready() and len(near) == 0, 10, "the near cache emptied by FLUSHDB")


def test_an_unreadable_push_or_a_silent_reconnect_never_leaves_a_value_unheard(
    start_worker: StartWorker, reader_for: Callable[..., CacheReader], db: str, users: None, r: redis.Redis
) -> None:
    """A push naming a key that is not UTF-8 still invalidates the others in it; redis-py connecting the socket
    again by itself (a health check, a retry: tracking was on the old socket) counts as a lost connection; a
    connection that has not answered a PING lately does not serve."""
    start_worker(_tables(db), extra=READER)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    inner = _inner(reader_for())
    near, tracker = inner.near, inner.tracker
    assert near is not None and tracker is not None and tracker.ready()
    near.put("user:1", b'"x"', near.mark())
    tracker._pushed([b"invalidate", [b"user:\xff", b"user:1"]])
    assert near.get("user:1") is None, "the readable name in the push was invalidated"
    near.put("user:1", b'"x"', near.mark())
    with tracker._lock:
        tracker._conn.disconnect()
        tracker._conn.connect()  # (as redis-py's health check does when a PING times out)
    assert not tracker.ready() and len(near) == 0
    assert not near.put("user:1", b'"x"', near.mark()), "nothing is kept until tracking is on again"
    wait_for(lambda: tracker.ready(), 10, "tracking again")
    with tracker._lock:  # no PONG heard for a minute, none asked for (a silent network, say)
        tracker._pong_at, tracker._ping_sent, tracker._next_ping = time.monotonic() - 60, None, float("inf")
    assert not tracker.ready(), "not proven lately: no local hit"
    with tracker._lock:
        tracker._next_ping = 0.0
    wait_for(lambda: tracker.ready(), 10, "a PONG again")
