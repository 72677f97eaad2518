"""The reader's guarantees, each forced by a deterministic interleaving against the real worker."""

from __future__ import annotations

import inspect
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync import CacheReader, CacheUnavailable
from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.config import load
from tests.helpers import WorkerProcess, connect, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget


class GatedLoader(RowLoader):
    """Loads the row, then blocks until released: the interleaving point of a racing fill."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.loaded = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def load(self, table: str, where: dict[str, object]) -> dict[str, Any] | None:
        row = super().load(table, where)
        self.calls += 1
        self.loaded.set()
        assert self.release.wait(30), "the test never released the loader"
        return row


READER_DEFAULTS = "[reader]\nholdoff_ms = 60000\nmax_staleness_ms = 60000\nlease_wait_ms = 200\n"


def _tables(db: str, mode: str = "evict", extra: str = "") -> str:
    return f"""
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "{mode}"
{extra}

[[tables]]
table = "{db}.orders"
tags = ["user_id"]
"""


@pytest.fixture
def schema(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT, total INT)")
        cur.execute("INSERT INTO users VALUES (1, 'old')")
        cur.execute("INSERT INTO orders VALUES (1, 5, 10)")


@pytest.fixture(params=["sync", "async"])
def reader_driver(request: pytest.FixtureRequest) -> str:
    """Every test here runs with CacheReader and with AsyncCacheReader (conftest.reader_for)."""
    return str(request.param)


@pytest.fixture
def make_reader(reader_for: Callable[..., CacheReader]) -> Callable[..., CacheReader]:
    return reader_for


def _heartbeat(r: redis.Redis) -> None:
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "the worker's first heartbeat")


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def test_miss_fills_and_next_read_hits(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """A miss loads from MySQL and fills; the next read is a hit with the same value."""
    start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert json.loads(r.get("user:1") or b"") == {"id": 1, "name": "old"}
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert (reader.stats["miss"], reader.stats["hit"], reader.stats["fill:stored"]) == (1, 1, 1)


@pytest.mark.parametrize("mode", ["evict", "update"])
def test_fill_started_before_a_change_never_lands_after_it(
    mode: str,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Reader loads the old row, the change commits and is applied, then the fill is refused."""
    w = start_worker(_tables(db, mode), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    gated = GatedLoader(reader.config.mysql, 2)
    reader.row_loader = gated
    t, out = _in_thread(lambda: reader.get_row(f"{db}.users", id=1))
    assert gated.loaded.wait(30)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'new' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    gated.release.set()
    t.join(30)
    assert out == [{"id": 1, "name": "old"}], "the racing read returns what it read"
    assert reader.stats["fill:lost"] == 1
    cached = r.get("user:1")
    if mode == "evict":
        assert cached is None
    else:
        assert json.loads(cached or b"") == {"id": 1, "name": "new"}


def test_fill_through_tags_never_lands_after_a_dependency_changes(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """fetch() with a column dependency: a change to a matching row refuses a fill that loaded before it."""
    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    loaded, release = threading.Event(), threading.Event()

    def orders_of_5() -> list[int]:
        with sql.cursor() as cur:
            cur.execute("SELECT total FROM orders WHERE user_id = 5 ORDER BY id")
            totals = [row[0] for row in cur.fetchall()]
        loaded.set()
        assert release.wait(30)
        return totals

    other = connect(mysql_server, db)
    deps = [(f"{db}.orders", {"user_id": 5})]
    t, out = _in_thread(lambda: reader.fetch("orders-of:5", orders_of_5, ttl=60, depends_on=deps))
    assert loaded.wait(30)
    with other.cursor() as cur:
        cur.execute("INSERT INTO orders VALUES (2, 5, 20)")
    wait_caught_up(r, other, mysql_server.flavor, w)
    release.set()
    t.join(30)
    assert out == [[10]]
    assert r.get("orders-of:5") is None, "the fill that loaded before the insert was refused"
    # after the hold-off, a fill lands and a later matching change evicts it; other users' changes do not
    r.delete("cdc:tinv:" + f"{db}.orders:user_id=5", "cdc:inv:orders-of:5")  # the hold-off markers' expiry
    assert reader.fetch("orders-of:5", lambda: [10, 20], ttl=60, depends_on=deps) == [10, 20]
    assert json.loads(r.get("orders-of:5") or b"") == [10, 20]
    with other.cursor() as cur:
        cur.execute("INSERT INTO orders VALUES (3, 6, 30)")
    wait_caught_up(r, other, mysql_server.flavor, w)
    assert r.get("orders-of:5") is not None, "user 6's order does not touch orders-of:5"
    with other.cursor() as cur:
        cur.execute("UPDATE orders SET total = 21 WHERE id = 2")
    wait_caught_up(r, other, mysql_server.flavor, w)
    assert r.get("orders-of:5") is None
    other.close()


def test_whole_table_dependency_is_evicted_by_any_change(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """depends_on=["schema.table"]: any row change of the table evicts the result."""
    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    assert reader.fetch("order-count", lambda: 1, ttl=0, depends_on=[f"{db}.orders"]) == 1
    assert r.get("order-count") == b"1"
    with sql.cursor() as cur:
        cur.execute("DELETE FROM orders WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("order-count") is None
    assert reader.fetch("order-count", lambda: 0, ttl=0, depends_on=[f"{db}.orders"]) == 0
    assert reader.stats["bypass:holdoff"] == 1, "within holdoff_ms of the change the result is not filled"
    assert r.get("order-count") is None


def test_no_fill_within_holdoff_after_an_invalidation(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,
    r: redis.Redis,
) -> None:  # type: ignore[type-arg]
    """Right after an eviction readers read MySQL and do not fill; once the marker expires they fill again."""
    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'new' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert 0 < r.pttl("cdc:inv:user:1") <= 60000
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "new"}
    assert reader.stats["bypass:holdoff"] == 1
    assert r.exists("user:1") == 0
    r.delete("cdc:inv:user:1")  # the marker's expiry
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "new"}
    assert r.exists("user:1") == 1


def test_herd_of_200_misses_calls_the_loader_once(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """200 concurrent misses on one key: exactly one loader call; everyone gets the filled value."""
    start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader(lease_wait_ms=30000, lease_ttl_ms=60000)  # the lease outlives 200 threads starting
    calls: list[int] = []
    release = threading.Event()

    def loader() -> dict[str, int]:
        calls.append(1)
        assert release.wait(30)
        return {"answer": 42}

    threads = [threading.Thread(target=lambda: results.append(reader.fetch("hot", loader, ttl=60))) for _ in range(200)]
    results: list[Any] = []
    for t in threads:
        t.start()
    wait_for(lambda: reader.stats["lease_wait"] == 199, 60, "199 readers waiting on the lease")
    release.set()
    for t in threads:
        t.join(60)
    assert len(calls) == 1, reader.stats.counts
    assert results == [{"answer": 42}] * 200


def test_stopped_worker_stops_being_trusted_within_max_staleness(
    start_worker: StartWorker,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Worker killed, row updated: once the heartbeat is max_staleness_ms old, get_row returns the new row."""
    w = start_worker(_tables(db), extra="[reader]\nmax_staleness_ms = 1500\n")
    _heartbeat(r)
    reader = make_reader()
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    w.kill9()
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'new' WHERE id = 1")
    beat = int(r.get("cdc:heartbeat") or 0)

    def redis_now() -> int:
        s, us = r.time()
        return int(s) * 1000 + int(us) // 1000

    wait_for(lambda: redis_now() - beat > 1500, 10, "the heartbeat to age past max_staleness_ms")
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "new"}
    assert reader.stats["bypass:stale"] == 1


def test_worker_never_started_means_every_read_goes_to_mysql(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    r: redis.Redis,
) -> None:
    """No heartbeat at all: reads bypass the cache and fill nothing."""
    write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db))
    reader = make_reader()
    for _ in range(2):
        assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert reader.stats["bypass:no_heartbeat"] == 2
    assert r.exists("user:1") == 0


def test_redis_down_falls_back_to_mysql_unless_strict(
    tmp_path: Path, mysql_server: MySQLTarget, make_reader: Callable[..., CacheReader], db: str, schema: None
) -> None:
    """Redis unreachable: the row comes from MySQL, counted and logged; strict mode raises CacheUnavailable."""
    from structlog.testing import capture_logs

    from tools.devservers import free_port

    write_config(tmp_path / "w.toml", mysql_server, RedisTarget("127.0.0.1", free_port()), _tables(db))
    reader = make_reader()
    with capture_logs() as logs:
        assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert reader.stats["redis_error"] >= 1 and reader.stats["bypass:redis_error"] == 1
    assert any(e["event"] == "reader.redis_error" for e in logs)
    strict = make_reader(strict=True)
    with pytest.raises(CacheUnavailable):
        strict.get_row(f"{db}.users", id=1)


def test_negative_caching_only_when_configured(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,
    r: redis.Redis,
) -> None:  # type: ignore[type-arg]
    """negative_ttl caches 'absent' as JSON null; the insert's eviction removes it."""
    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    assert make_reader().get_row(f"{db}.users", id=9) is None
    assert r.exists("user:9") == 0, "negative_ttl = 0: absence is not cached"
    reader = make_reader(negative_ttl=60)
    assert reader.get_row(f"{db}.users", id=9) is None
    assert r.get("user:9") == b"null" and 0 < r.ttl("user:9") <= 60
    assert reader.get_row(f"{db}.users", id=9) is None
    assert reader.stats["hit"] == 1
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (9, 'nine')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.exists("user:9") == 0
    assert reader.get_row(f"{db}.users", id=9) == {"id": 9, "name": "nine"}


def test_reader_fills_exactly_what_the_worker_writes(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,
    r: redis.Redis,
) -> None:  # type: ignore[type-arg]
    """For every documented type, a reader fill is byte-for-byte the worker's update-mode value."""
    from tests.integration.test_types import INSERT, TABLE

    with sql.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(TABLE)
    w = start_worker(
        f'[[tables]]\ntable = "{db}.alltypes"\nkey = "t:{{id}}"\nmode = "update"\n',
        extra="[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\n",
    )
    _heartbeat(r)
    with sql.cursor() as cur:
        cur.execute(INSERT)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    key = "t:18446744073709551615"
    written = r.get(key)
    assert written is not None
    r.delete(key)
    reader = make_reader()
    row = reader.get_row(f"{db}.alltypes", id=18446744073709551615)
    assert r.get(key) == written
    assert row == json.loads(written)


def test_async_reader_has_the_same_semantics(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    """AsyncCacheReader: miss fills, hit returns it, and a fill that raced a change is refused."""
    import asyncio

    from cdc_sync import AsyncCacheReader

    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)

    async def scenario() -> None:
        reader = AsyncCacheReader(load(tmp_path / "w.toml"))
        assert await reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
        assert await reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
        loaded, release = asyncio.Event(), asyncio.Event()

        async def orders() -> int:
            loaded.set()
            await release.wait()
            return 1

        task = asyncio.create_task(reader.fetch("n-orders", orders, ttl=60, depends_on=[f"{db}.orders"]))
        await loaded.wait()
        await asyncio.to_thread(_insert_and_wait)
        release.set()
        assert await task == 1
        assert r.get("n-orders") is None
        assert (reader.stats["hit"], reader.stats["fill:stored"], reader.stats["fill:lost"]) == (1, 1, 1)
        await reader.close()

    def _insert_and_wait() -> None:
        with sql.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (7, 7, 7)")
        wait_caught_up(r, sql, mysql_server.flavor, w)

    asyncio.run(scenario())


_ = WorkerProcess


def test_script_cache_flushed_lookups_reload_and_still_hit(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """SCRIPT FLUSH (a Redis restart or failover) answers NOSCRIPT once; the script is reloaded transparently."""
    start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    r.script_flush()
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert (reader.stats["hit"], reader.stats["redis_error"]) == (1, 0)


def test_readers_bypass_while_a_table_is_flushed(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """While <ns>:flushing:<table> exists (a DDL flush in progress), reads go to MySQL and fill nothing."""
    start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    r.set(f"cdc:flushing:{db}.users", "1")
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert reader.stats["bypass:flushing"] == 1 and r.exists("user:1") == 0
    r.delete(f"cdc:flushing:{db}.users")
    reader.get_row(f"{db}.users", id=1)
    assert r.exists("user:1") == 1


def test_hash_format_rows_fill_and_hit_as_text_fields(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """A hash-format table: a miss fills one field per column, and hit and miss return the same dict."""
    start_worker(_tables(db, "evict", extra='format = "hash"'), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    missed = reader.get_row(f"{db}.users", id=1)
    assert missed == {"id": "1", "name": "old"}
    assert {k.decode(): v.decode() for k, v in r.hgetall("user:1").items()} == {"id": "1", "name": "old"}
    assert reader.get_row(f"{db}.users", id=1) == missed
    assert reader.stats["hit"] == 1


def test_negative_result_does_not_outlive_its_dependency_tag(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A cached 'absent' lives negative_ttl; its tag set lives at least as long, so a matching insert evicts it."""
    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader(negative_ttl=60)
    deps = [(f"{db}.orders", {"user_id": 9})]
    assert reader.fetch("orders-of:9", lambda: None, ttl=1, depends_on=deps) is None
    assert r.get("orders-of:9") == b"null"
    assert r.pttl(f"cdc:tag:{db}.orders:user_id=9") > 50_000
    with sql.cursor() as cur:
        cur.execute("INSERT INTO orders VALUES (99, 9, 1)")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert r.get("orders-of:9") is None


@pytest.fixture
def no_worker_reader(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    r: redis.Redis,
) -> Callable[..., CacheReader]:
    """no_worker_reader(fresh_for_ms, **reader overrides): a reader and no worker; the heartbeat is set by hand
    to keep the cache trusted for ``fresh_for_ms`` more, and user:1 is cached as "cached"."""

    def make(fresh_for_ms: int, **overrides: Any) -> CacheReader:
        extra = "[reader]\nmax_staleness_ms = 60000\n"
        write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), extra=extra)
        s, us = r.time()
        r.set("cdc:heartbeat", int(s) * 1000 + int(us) // 1000 - (60000 - fresh_for_ms))
        r.set("user:1", json.dumps({"id": 1, "name": "cached"}))
        return make_reader(**overrides)

    return make


def test_hits_in_the_freshness_window_skip_the_script_but_never_outlive_the_heartbeat(
    no_worker_reader: Callable[..., CacheReader], db: str, r: redis.Redis
) -> None:
    """After a checked hit, hits are plain reads (no script runs), but only for as long as the heartbeat it saw
    keeps the cache within max_staleness_ms, however long freshness_check_ms is."""
    reader = no_worker_reader(4000, freshness_check_ms=60000)
    beat = int(r.get("cdc:heartbeat") or 0)
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}  # the script: hit, window opens
    scripts = _script_calls(r)
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}  # in the window: plain read
    assert reader.stats["hit"] == 2 and _script_calls(r) == scripts

    def redis_now() -> int:
        s, us = r.time()
        return int(s) * 1000 + int(us) // 1000

    wait_for(lambda: redis_now() - beat > 60000, 10, "the heartbeat to age past max_staleness_ms")
    assert not reader.in_window(), "the window ended no later than the heartbeat's freshness"
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}  # the script again
    assert reader.stats["bypass:stale"] == 1


def test_freshness_check_zero_runs_the_script_for_every_lookup(
    no_worker_reader: Callable[..., CacheReader], db: str, r: redis.Redis
) -> None:
    """freshness_check_ms = 0: a heartbeat that vanished right after a hit is seen by the very next lookup."""
    reader = no_worker_reader(50000, freshness_check_ms=0)
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}
    assert not reader.in_window()
    r.delete("cdc:heartbeat")
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert reader.stats["bypass:no_heartbeat"] == 1


def _script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def test_a_flush_is_seen_at_once_inside_the_window(
    no_worker_reader: Callable[..., CacheReader], db: str, r: redis.Redis
) -> None:
    """A flushing marker set during the window is obeyed by the very next lookup: the plain read reads the
    lookup's flushing markers with the value (the window may have been opened by another table's lookup)."""
    reader = no_worker_reader(50000, freshness_check_ms=60000)
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}
    assert reader.in_window()
    r.set(f"cdc:flushing:{db}.users", "1")
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert reader.stats["bypass:flushing"] == 1


def test_async_reader_hits_in_the_window_too(
    no_worker_reader: Callable[..., CacheReader], tmp_path: Path, db: str, r: redis.Redis
) -> None:
    """AsyncCacheReader: a checked hit opens the window, and the next hit is a plain GET."""
    import asyncio

    from cdc_sync import AsyncCacheReader

    no_worker_reader(50000)  # writes the config, the heartbeat and user:1

    async def scenario() -> None:
        reader = AsyncCacheReader(load(tmp_path / "w.toml"))
        assert await reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}
        assert reader.in_window()
        scripts = _script_calls(r)
        assert await reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "cached"}
        assert reader.stats["hit"] == 2 and _script_calls(r) == scripts, "a plain read, no script"
        r.set(f"cdc:flushing:{db}.users", "1")  # seen by the plain read
        assert await reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
        await reader.close()

    asyncio.run(scenario())


def test_a_get_row_fill_is_refused_when_the_schema_epoch_moved_while_it_loaded(
    start_worker: StartWorker, make_reader: Callable[..., CacheReader], db: str, schema: None, r: redis.Redis
) -> None:
    """The row was normalized with column info read at the lease's schema epoch; the epoch moves (the worker
    marked the table flushing, as after DDL) before the fill: nothing is filled, and the next read fills."""
    start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    gated = GatedLoader(reader.config.mysql, 2)
    reader.row_loader = gated
    t, out = _in_thread(lambda: reader.get_row(f"{db}.users", id=1))
    assert gated.loaded.wait(30)
    r.incr(f"cdc:schema:{db}.users")
    gated.release.set()
    t.join(30)
    assert out == [{"id": 1, "name": "old"}]
    assert reader.stats["fill:schema_changed"] == 1
    assert r.get("user:1") is None
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "old"}
    assert r.get("user:1") is not None, "column info read again at the new epoch: filled"


def test_async_fetch_after_a_collation_alter_never_fills_a_precise_tag(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    """AsyncCacheReader: a lookup remembered with utf8mb4_bin column info is refused after the ALTER to a _ci
    collation (bypass schema_changed); the next fetch reads the info again and widens to the table's tag."""
    import asyncio

    from cdc_sync import AsyncCacheReader

    with sql.cursor() as cur:
        cur.execute("CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(10) COLLATE utf8mb4_bin, amount INT)")
        cur.execute("INSERT INTO codes VALUES (1, 'x', 5)")
    rule = f'[[tables]]\ntable = "{db}.codes"\ntags = ["code"]\n'
    w = start_worker(rule, extra="[reader]\nholdoff_ms = 200\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n")
    _heartbeat(r)
    dep = [(f"{db}.codes", {"code": "X"})]

    def amounts() -> list[int]:
        with sql.cursor() as cur:
            cur.execute("SELECT amount FROM codes WHERE code = 'X'")
            return [int(row[0]) for row in cur.fetchall()]

    def run(*statements: str) -> None:
        with sql.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        wait_caught_up(r, sql, mysql_server.flavor, w)

    async def scenario() -> None:
        reader = AsyncCacheReader(load(tmp_path / "w.toml"))
        try:
            assert await reader.fetch("codes:X", amounts, ttl=600, depends_on=dep) == []
            assert r.sismember(f"cdc:tag:{db}.codes:code=X", "codes:X")
            await asyncio.to_thread(run, "ALTER TABLE codes MODIFY code VARCHAR(10) COLLATE utf8mb4_general_ci")
            await asyncio.to_thread(
                wait_for, lambda: not r.exists(f"cdc:flushing:{db}.codes"), 10, "the flush's hold-off to end"
            )
            assert await reader.fetch("codes:X", amounts, ttl=600, depends_on=dep) == [5]
            assert reader.stats["bypass:schema_changed"] == 1
            assert await reader.fetch("codes:X", amounts, ttl=600, depends_on=dep) == [5]
            assert r.sismember(f"cdc:tag:{db}.codes", "codes:X"), "widened: a _ci value is not canonical"
            await asyncio.to_thread(run, "UPDATE codes SET amount = 9 WHERE id = 1")
            await asyncio.sleep(0.3)
            assert await reader.fetch("codes:X", amounts, ttl=600, depends_on=dep) == [9]
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_read_your_writes_sees_a_write_the_worker_has_not_applied_yet(
    start_worker: StartWorker,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The worker stopped (SIGSTOP), a row updated: a plain lookup still serves the cached row (inside its
    staleness bound), one inside ``after(last_gtid(sql))`` waits, then reads MySQL; once the worker runs again,
    the same block's lookup waits for the checkpoint and is a hit with the new row."""
    from cdc_sync import last_gtid

    w = start_worker(_tables(db, mode="update"), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = make_reader()
    users = f"{db}.users"
    assert reader.get_row(users, id=1) == {"id": 1, "name": "old"}
    w.proc.send_signal(signal.SIGSTOP)
    try:
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = 'new' WHERE id = 1")
        gtid = last_gtid(sql)
        assert gtid.count("-") == 2, gtid  # (MariaDB: domain-server-sequence)
        assert reader.get_row(users, id=1) == {"id": 1, "name": "old"}  # (cached, and the bound allows it)
        with reader.after(gtid, wait_ms=300):
            assert reader.get_row(users, id=1) == {"id": 1, "name": "new"}
        assert reader.stats["bypass:behind_write"] == 1 and reader.stats["write_wait"] == 1
        assert json.loads(r.get("user:1") or b"")["name"] == "old", "the bypass filled nothing"
    finally:
        w.proc.send_signal(signal.SIGCONT)
    hits = reader.stats["hit"]
    with reader.after(gtid, wait_ms=30_000):
        assert reader.get_row(users, id=1) == {"id": 1, "name": "new"}
    assert reader.stats["hit"] == hits + 1 and reader.stats["bypass:behind_write"] == 1
    with sql.cursor() as cur:
        cur.execute("SELECT 1")
    assert last_gtid(sql) == gtid  # (a read writes nothing: the session's last GTID stays)


def test_the_cached_decorator_keys_by_arguments_and_follows_dependencies(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    """``@reader.cached``: one load per distinct arguments, the result evicted when a row it depends on (chosen
    from the arguments) changes; the same with AsyncCacheReader on a coroutine function."""
    import asyncio

    from cdc_sync import AsyncCacheReader

    w = start_worker(_tables(db), extra=READER_DEFAULTS)
    _heartbeat(r)
    reader = CacheReader(load(tmp_path / "w.toml"))
    calls: list[int] = []
    loader_db = connect(mysql_server, db)

    def orders_total(user_id: int) -> int:
        with loader_db.cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(total), 0) FROM orders WHERE user_id = %s", (user_id,))
            return int(cur.fetchone()[0])

    with pytest.raises(ValueError, match="pass key="):  # (closures of one factory would share results)

        @reader.cached(ttl=60)
        def nested() -> int:
            return 1

    @reader.cached(ttl=60, depends_on=lambda user_id: [(f"{db}.orders", {"user_id": user_id})], key="total")
    def total(user_id: int) -> int:
        calls.append(user_id)
        return orders_total(user_id)

    try:
        assert (total(5), total(5), total(6)) == (10, 10, 0) and calls == [5, 6]
        assert total.__name__ == "total"
        with sql.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (2, 5, 7), (3, 8, 1)")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        assert (total(5), total(6)) == (17, 0) and calls == [5, 6, 5], "only user 5's result was evicted"
        with pytest.raises(TypeError, match="JSON-serialisable"):
            total(object())  # type: ignore[arg-type]

        async def scenario() -> None:
            areader = AsyncCacheReader(load(tmp_path / "w.toml"))
            acalls: list[int] = []

            @areader.cached(ttl=60, depends_on=lambda user_id: [(f"{db}.orders", {"user_id": user_id})], key="t")
            async def atotal(user_id: int) -> int:
                acalls.append(user_id)
                return await asyncio.to_thread(orders_total, user_id)

            # (user 5's tag is held off for holdoff_ms after the change above: user 9 instead)
            assert (await atotal(9), await atotal(9)) == (0, 0) and acalls == [9], dict(areader.stats.counts)
            assert [k for k in r.scan_iter("t:*")], "stored under the given key prefix"
            await asyncio.to_thread(_insert_more)
            assert await atotal(9) == 3 and acalls == [9, 9]
            await areader.close()

        def _insert_more() -> None:
            with sql.cursor() as cur:
                cur.execute("INSERT INTO orders VALUES (4, 9, 3)")
            wait_caught_up(r, sql, mysql_server.flavor, w)

        asyncio.run(scenario())
    finally:
        reader.close()
        loader_db.close()


def test_get_rows_looks_up_many_rows_in_one_round_trip(
    start_worker: StartWorker,
    make_reader: Callable[..., CacheReader],
    db: str,
    schema: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Cached rows are hits, a missing one is loaded and filled, an absent one is None, in the order asked; the
    lookup scripts of all go in one pipeline (Redis counts one EVALSHA per row, and no other command)."""
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES (2, 'two'), (3, 'three')")
    start_worker(_tables(db, mode="update"), extra="[reader]\nfreshness_check_ms = 0\n")
    _heartbeat(r)
    reader = make_reader()
    users = f"{db}.users"
    assert reader.get_row(users, id=1) == {"id": 1, "name": "old"}
    assert reader.get_row(users, id=2) == {"id": 2, "name": "two"}
    inner: Any = reader.__dict__.get("_reader", reader)  # (the async reader behind AsyncDriven)
    steps: list[str] = []
    perform = inner._perform

    if inspect.iscoroutinefunction(perform):

        async def counted(step: Any) -> Any:
            steps.append(type(step).__name__)
            return await perform(step)
    else:

        def counted(step: Any) -> Any:
            steps.append(type(step).__name__)
            return perform(step)

    inner._perform = counted
    rows = reader.get_rows(users, [{"id": 2}, {"id": 3}, {"id": 9}, {"id": 1}])
    assert rows == [{"id": 2, "name": "two"}, {"id": 3, "name": "three"}, None, {"id": 1, "name": "old"}]
    # one pipeline of the four lookups; then user:3's fill, and user:9's lease given back (nothing to fill)
    assert steps == ["Batch", "Script", "Script"], steps
    assert json.loads(r.get("user:3") or b"") == {"id": 3, "name": "three"}
    assert reader.get_rows(users, []) == []
