"""The reader's trust holes, each forced against the real worker, MariaDB and Redis: keys and tags from the
database's values, the window's end on a heartbeat that went back, rule agreement, fork safety, and the
worker's namespace."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from structlog.testing import capture_logs

from cdc_sync import AsyncCacheReader, CacheReader
from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.config import Config, from_dict, load, rule_fingerprint
from tests.helpers import wait_caught_up, wait_for, wait_heartbeat, write_config
from tests.integration.conftest import StartWorker
from tests.integration.test_reader import GatedLoader
from tests.servers import MySQLTarget, RedisTarget

READER = "[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\nlease_wait_ms = 200\nfreshness_check_ms = 0\n"
USERS_DDL = (
    "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci "
    "UNIQUE, name VARCHAR(40), password_hash VARCHAR(64))"
)
ORDERS_DDL = (
    "CREATE TABLE orders (id INT PRIMARY KEY, email VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci, "
    "amount DECIMAL(10,2), code VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)"
)


def users_rule(db: str, extra: str = "", mode: str = "evict") -> str:
    head = f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nalso = ["user:email:{{email}}"]\n'
    return f'{head}mode = "{mode}"\n{extra}\n'


def orders_rule(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.orders"\ntags = ["email", "amount", "code"]\n'


@pytest.fixture(params=["sync", "async"])
def reader_driver(request: pytest.FixtureRequest) -> str:
    """Every test here runs with CacheReader and with AsyncCacheReader (conftest.reader_for)."""
    return str(request.param)


@pytest.fixture
def tables(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute(USERS_DDL)
        cur.execute(ORDERS_DDL)
        cur.execute("INSERT INTO users VALUES (5, 'a@x', 'old', 'secret-hash')")
        cur.execute("INSERT INTO orders VALUES (1, 'abc', 5.00, 'x '), (2, 'def', 6.00, 'y')")


def _change(sql: Any, mysql_server: MySQLTarget, r: redis.Redis, w: Any, statement: str) -> None:
    with sql.cursor() as cur:
        cur.execute(statement)
    wait_caught_up(r, sql, mysql_server.flavor, w)


# ---- 1. keys and tags from the database's values ------------------------------------------------------


NONCANONICAL = [
    ({"id": "05"}, "user:05"),
    ({"id": 5.0}, "user:5.0"),
    ({"email": "A@X"}, "user:email:A@X"),
    ({"email": "a@x "}, "user:email:a@x%20"),
]


def test_get_row_never_fills_a_key_the_worker_does_not_render(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """id='05', id=5.0, email='A@X' (_ci) and email='a@x ' (PAD SPACE) load the row id=5 but fill nothing;
    Decimal('5') renders user:5 and fills it. After an UPDATE no spelling ever returns the old row."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    with capture_logs() as logs:
        for where, key in NONCANONICAL:
            for _ in range(2):
                assert reader.get_row(f"{db}.users", **where)["name"] == "old"  # type: ignore[index]
            assert r.exists(key) == 0, f"{key} is not a key the worker maintains"
    assert reader.get_row(f"{db}.users", id=Decimal("5"))["name"] == "old"  # type: ignore[index]
    assert r.exists("user:5") == 1
    assert reader.stats["fill:noncanonical"] == 2 * len(NONCANONICAL)
    events = [(e["event"], e["template"]) for e in logs if e["event"] == "reader.noncanonical_key"]
    assert sorted(events) == [
        ("reader.noncanonical_key", "user:email:{email}"),
        ("reader.noncanonical_key", "user:{id}"),
    ], "logged once per table and template, not per lookup"
    _change(sql, mysql_server, r, w, "UPDATE users SET name = 'new' WHERE id = 5")
    for where, _key in [*NONCANONICAL, ({"id": Decimal("5")}, "user:5"), ({"id": 5}, "user:5")]:
        for _ in range(2):
            assert reader.get_row(f"{db}.users", **where)["name"] == "new", where  # type: ignore[index]


def test_absence_is_cached_only_under_canonical_keys(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """negative_ttl: "absent" is cached for id=9 (the insert evicts user:9) but not for id='09', nor for an
    email on a _ci column, whose later insert as 'b@x' would never evict user:email:B@X."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for(negative_ttl=600)
    for where in ({"id": 9}, {"id": "09"}, {"email": "B@X"}, {"email": "b@x"}):
        assert reader.get_row(f"{db}.users", **where) is None
    assert r.get("user:9") == b"null"
    assert [k for k in r.scan_iter("user:*")] == [b"user:9"]
    assert reader.stats["fill:noncanonical"] == 3
    _change(sql, mysql_server, r, w, "INSERT INTO users VALUES (9, 'b@x', 'nine', 'h')")
    for where in ({"id": 9}, {"id": "09"}, {"email": "B@X"}, {"email": "b@x"}):
        assert reader.get_row(f"{db}.users", **where) is not None, where


def test_fetch_dependencies_render_as_the_worker_renders_the_row(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """email='ABC' on a _ci column (stored 'abc') widens to the whole-table tag; Decimal('5') on DECIMAL(10,2)
    depends on amount=5.00; code='x' on a _bin column depends on the stored 'x ' (PAD SPACE). A change of the
    matching row evicts each result; the precise ones survive a change of another row."""
    w = start_worker(users_rule(db) + orders_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    orders = f"{db}.orders"
    deps: dict[str, Any] = {
        "by-email": [(orders, {"email": "ABC"})],
        "by-amount": [(orders, {"amount": Decimal("5")})],
        "by-code": [(orders, {"code": "x"})],
    }
    with capture_logs() as logs:
        for key, dep in deps.items():
            for _ in range(2):
                assert reader.fetch(key, lambda: [1], ttl=600, depends_on=dep) == [1]
            assert r.get(key) == b"[1]"
    assert reader.stats["widened:" + orders] == 2, "counted per call"
    assert [e["columns"] for e in logs if e["event"] == "reader.dependency_widened"] == [["email"]], "logged once"
    assert r.sismember(f"cdc:tag:{orders}", "by-email")
    assert r.sismember(f"cdc:tag:{orders}:amount=5.00", "by-amount")
    assert r.sismember(f"cdc:tag:{orders}:code=x", "by-code")
    _change(sql, mysql_server, r, w, "UPDATE orders SET email = 'ghi' WHERE id = 2")
    assert r.get("by-email") is None, "the widened dependency is evicted by any change of the table"
    assert r.get("by-amount") == b"[1]" and r.get("by-code") == b"[1]", "precise tags: another row's change"
    _change(sql, mysql_server, r, w, "UPDATE orders SET email = 'abd' WHERE id = 1")
    assert r.get("by-amount") is None and r.get("by-code") is None


TYPED_DDL = (
    "CREATE TABLE typed (id INT PRIMARY KEY, i BIGINT UNSIGNED, d DECIMAL(10,2), dz DECIMAL(65,30), "
    "s VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, b VARBINARY(10), dt DATE, ts DATETIME(3), "
    "e ENUM('x','y') CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, note VARCHAR(10))"
)
TYPED_ROW = "(1, 18446744073709551615, -0.50, 0.5, 'abc ', 0x00ff20, '2024-01-02', '2024-01-02 03:04:05.120', 'y', 'n')"
CALLER_VALUES: dict[str, object] = {
    "i": 18446744073709551615,
    "d": Decimal("-0.5"),
    "dz": Decimal("0.5"),
    "s": "abc",
    "b": b"\x00\xff ",
    "dt": dt.date(2024, 1, 2),
    "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 120000),
    "e": "y",
}


def test_canonical_values_render_the_workers_tags_for_every_type(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """For each canonicalizable type, a caller's spelling of the stored value gives a precise tag that the
    worker's change of that row hits (and a change of another row does not)."""
    with sql.cursor() as cur:
        cur.execute(TYPED_DDL)
        cur.execute(f"INSERT INTO typed VALUES {TYPED_ROW}, (2, 1, 1, 1, 'q', 0x01, '2020-01-01', NULL, 'x', 'n')")
    tags = ", ".join(f'"{c}"' for c in CALLER_VALUES)
    w = start_worker(f'[[tables]]\ntable = "{db}.typed"\ntags = [{tags}]\n', extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    for col, value in CALLER_VALUES.items():
        reader.fetch(f"by-{col}", lambda: 1, ttl=600, depends_on=[(f"{db}.typed", {col: value})])
    assert reader.stats[f"widened:{db}.typed"] == 0
    assert all(not r.sismember(f"cdc:tag:{db}.typed", f"by-{c}") for c in CALLER_VALUES)
    _change(sql, mysql_server, r, w, "UPDATE typed SET note = 'm' WHERE id = 2")
    assert [c for c in CALLER_VALUES if r.get(f"by-{c}") is None] == [], "another row's change evicts none"
    _change(sql, mysql_server, r, w, "UPDATE typed SET note = 'm' WHERE id = 1")
    assert [c for c in CALLER_VALUES if r.get(f"by-{c}") is not None] == [], "the row's change evicts every one"


def test_dependencies_follow_a_collation_change(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """code='X' on a _bin column is a precise tag; after ALTER ... COLLATE utf8mb4_general_ci (the worker
    flushes the table; a reader that sees it flushing reads the column info again) the same dependency widens,
    so a change of the row 'x ', which 'X' now matches, evicts the result."""
    w = start_worker(users_rule(db) + orders_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    orders = f"{db}.orders"
    dep = [(orders, {"code": "X"})]
    assert reader.fetch("by-code", lambda: [], ttl=600, depends_on=dep) == []
    assert r.sismember(f"cdc:tag:{orders}:code=X", "by-code")
    ddl = "ALTER TABLE orders MODIFY code VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    _change(sql, mysql_server, r, w, ddl)
    assert r.get("by-code") is None, "the worker's flush evicted it"
    r.set(f"cdc:flushing:{orders}", "1")  # what a reader sees while the worker flushes (a marker it keeps a while)
    assert reader.fetch("by-code", lambda: [1], ttl=600, depends_on=dep) == [1]
    assert reader.stats["bypass:flushing"] == 1
    r.delete(f"cdc:flushing:{orders}")
    assert reader.fetch("by-code", lambda: [1], ttl=600, depends_on=dep) == [1]
    assert r.sismember(f"cdc:tag:{orders}", "by-code"), "widened: the column is case-insensitive now"
    _change(sql, mysql_server, r, w, "UPDATE orders SET amount = 8 WHERE id = 1")
    assert r.get("by-code") is None


def test_async_reader_keys_and_tags_come_from_the_database(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Path,
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """AsyncCacheReader: a non-canonical get_row fills nothing and a _ci dependency is widened."""
    w = start_worker(users_rule(db) + orders_rule(db), extra=READER)
    wait_heartbeat(r)

    async def scenario() -> None:
        reader = AsyncCacheReader(load(tmp_path / "w.toml"))
        assert (await reader.get_row(f"{db}.users", email="A@X"))["name"] == "old"  # type: ignore[index]
        assert r.exists("user:email:A@X") == 0 and reader.stats["fill:noncanonical"] == 1
        dep = [(f"{db}.orders", {"email": "ABC"})]
        assert await reader.fetch("by-email", lambda: 1, ttl=600, depends_on=dep) == 1
        assert r.sismember(f"cdc:tag:{db}.orders", "by-email")
        await asyncio.to_thread(_change, sql, mysql_server, r, w, "UPDATE orders SET amount = 7 WHERE id = 1")
        assert r.get("by-email") is None
        assert (await reader.get_row(f"{db}.users", email="A@X"))["name"] == "old"  # type: ignore[index]
        await reader.close()

    asyncio.run(scenario())


# ---- 2. the window ends when the heartbeat goes back -----------------------------------------------------


def _now_ms(r: redis.Redis) -> int:
    s, us = r.time()
    return int(s) * 1000 + int(us) // 1000


def _restore_snapshot(r: redis.Redis, snapshot: dict[str, bytes | None], heartbeat_ms: int) -> None:
    """What Redis holds after a restart from an older snapshot: its checkpoint, its values, and a heartbeat
    from then (older than max_staleness_ms: the snapshot is minutes old)."""
    for key, value in snapshot.items():
        if value is None:
            r.delete(key)
        else:
            r.set(key, value)
    r.set("cdc:heartbeat", heartbeat_ms)


@pytest.mark.parametrize("fmt", ["json", "hash"])
def test_window_ends_when_the_heartbeat_goes_back(
    fmt: str,
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A window opened by a checked hit (freshness_check_ms = 60 s); Redis then goes back to an older
    snapshot (older value, checkpoint and heartbeat): the next read sees the heartbeat below the window's
    and checks; the stale snapshot is bypassed and the new row read."""
    w = start_worker(users_rule(db, f'format = "{fmt}"', mode="update"), extra=READER)
    wait_heartbeat(r)
    reader = reader_for(freshness_check_ms=60000)
    assert reader.get_row(f"{db}.users", id=5)["name"] == "old"  # type: ignore[index]
    snapshot_value = r.dump("user:5")
    snapshot = {"cdc:checkpoint": r.get("cdc:checkpoint")}
    _change(sql, mysql_server, r, w, "UPDATE users SET name = 'new' WHERE id = 5")
    wait_for(lambda: reader.get_row(f"{db}.users", id=5)["name"] == "new", 10, "the update")  # type: ignore[index]
    assert reader.get_row(f"{db}.users", id=5)["name"] == "new"  # type: ignore[index]
    assert reader.in_window()
    _restore_snapshot(r, snapshot, _now_ms(r) - 120_000)
    r.restore("user:5", 0, snapshot_value, replace=True)
    with capture_logs() as logs:
        assert reader.get_row(f"{db}.users", id=5)["name"] == "new"  # type: ignore[index]
    assert not reader.in_window()
    assert reader.stats["bypass:stale"] == 1 and reader.stats["heartbeat_regression"] == 1
    assert any(e["event"] == "reader.heartbeat_went_back" for e in logs)


def test_window_ends_when_the_heartbeat_vanishes_and_on_any_bypass(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    r: redis.Redis,
) -> None:
    """A heartbeat deleted (the checkpoint moved by hand, an emptied Redis) ends the window at the next
    read; so does any bypass reply."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for(freshness_check_ms=60000)
    reader.get_row(f"{db}.users", id=5)
    assert reader.get_row(f"{db}.users", id=5)["name"] == "old"  # type: ignore[index]
    assert reader.in_window()
    w.kill9()  # nobody writes the heartbeat again
    r.delete("cdc:heartbeat")
    assert reader.get_row(f"{db}.users", id=5)["name"] == "old"  # type: ignore[index]
    assert reader.stats["bypass:no_heartbeat"] == 1 and not reader.in_window()
    r.set("cdc:heartbeat", _now_ms(r))
    assert reader.get_row(f"{db}.users", id=5)["name"] == "old"  # type: ignore[index]
    assert reader.in_window()
    r.set(f"cdc:flushing:{db}.users", "1")
    assert reader.get_row(f"{db}.users", id=6) is None  # a miss in the window: the script, a bypass
    assert reader.stats["bypass:flushing"] == 1 and not reader.in_window()


def test_async_window_ends_when_the_heartbeat_goes_back(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Path,
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """AsyncCacheReader: the same rollback is noticed inside the window."""
    w = start_worker(users_rule(db, mode="update"), extra=READER)
    wait_heartbeat(r)
    cfg = load(tmp_path / "w.toml")
    cfg = replace(cfg, reader=replace(cfg.reader, freshness_check_ms=60000))

    async def scenario() -> None:
        reader = AsyncCacheReader(cfg)
        assert (await reader.get_row(f"{db}.users", id=5))["name"] == "old"  # type: ignore[index]
        old = r.get("user:5")
        snapshot = {"cdc:checkpoint": r.get("cdc:checkpoint"), "user:5": old}
        await asyncio.to_thread(_change, sql, mysql_server, r, w, "UPDATE users SET name = 'new' WHERE id = 5")
        assert (await reader.get_row(f"{db}.users", id=5))["name"] == "new"  # type: ignore[index]
        assert reader.in_window()
        _restore_snapshot(r, snapshot, _now_ms(r) - 120_000)
        assert (await reader.get_row(f"{db}.users", id=5))["name"] == "new"  # type: ignore[index]
        assert reader.stats["bypass:stale"] == 1 and not reader.in_window()
        await reader.close()

    asyncio.run(scenario())


# ---- 3. reader and worker agree on rules -------------------------------------------------------------------


def _reader_config(tmp_path: Path, mysql: MySQLTarget, redis_t: RedisTarget, tables: str, name: str = "app") -> None:
    write_config(tmp_path / f"{name}.toml", mysql, redis_t, tables, extra=READER)


def test_reader_with_another_exclude_never_caches_the_excluded_column(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    reader_for: Callable[..., CacheReader],
    tmp_path: Path,
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The worker excludes password_hash, an app's reader excludes nothing: its misses read MySQL and fill
    nothing (rule_mismatch), its hits serve the worker's values, and password_hash never reaches Redis."""
    w = start_worker(users_rule(db, 'exclude = ["password_hash"]', mode="update"), extra=READER)
    wait_heartbeat(r)
    _reader_config(tmp_path, mysql_server, redis_server, users_rule(db, mode="update"))
    reader = reader_for("app")
    with capture_logs() as logs:
        for _ in range(3):
            assert reader.get_row(f"{db}.users", id=5)["password_hash"] == "secret-hash"  # type: ignore[index]
    assert r.exists("user:5") == 0
    assert reader.stats["bypass:rule_mismatch"] == 3
    assert [e["table"] for e in logs if e["event"] == "reader.rule_mismatch"] == [f"{db}.users"], "logged once"
    _change(sql, mysql_server, r, w, "UPDATE users SET name = 'new' WHERE id = 5")
    assert reader.get_row(f"{db}.users", id=5) == {"id": 5, "email": "a@x", "name": "new"}, "the worker's value"
    assert all(b"secret-hash" not in (r.dump(k) or b"") for k in r.scan_iter("*"))


def test_reader_with_another_also_template_never_fills(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    reader_for: Callable[..., CacheReader],
    tmp_path: Path,
    db: str,
    tables: None,
    r: redis.Redis,
) -> None:
    """A reader whose also template differs from the running worker's fills neither that key nor the
    shared key template (both belong to a rule the worker does not run), nor through warm (fill_rows)."""
    start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    other = users_rule(db).replace("user:email:{email}", "user:mail:{email}")
    _reader_config(tmp_path, mysql_server, redis_server, other)
    reader = reader_for("app")
    assert reader.get_row(f"{db}.users", email="a@x")["id"] == 5  # type: ignore[index]
    assert reader.get_row(f"{db}.users", id=5)["id"] == 5  # type: ignore[index]
    rows = reader.row_loader.scan(f"{db}.users", ["id"], None, 10)
    filled, skipped, bypassed = reader.fill_rows(f"{db}.users", rows, time.monotonic())
    assert (filled, skipped, bypassed) == (0, 2, {"rule_mismatch": 2})
    assert list(r.scan_iter("user:*")) == []
    assert reader.stats["bypass:rule_mismatch"] == 2
    same = reader_for()  # the worker's own rule fills
    assert same.get_row(f"{db}.users", email="a@x")["id"] == 5  # type: ignore[index]
    assert r.exists("user:email:a@x") == 1


def test_fill_racing_a_rule_change_is_refused(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    r: redis.Redis,
) -> None:
    """A reader takes the lease under the worker's rule; before it fills, a worker with another rule has
    recorded it in <ns>:rules (after its flush): the fill is refused, and so is the next lease."""
    start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    gated = GatedLoader(reader.config.mysql, 2)
    reader.row_loader = gated
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(reader.get_row(f"{db}.users", id=5)))
    t.start()
    assert gated.loaded.wait(30)
    changed = _rule_with(reader.config, exclude=["password_hash"])
    r.hset("cdc:rules", f"{db}.users", changed)
    gated.release.set()
    t.join(30)
    assert out[0]["password_hash"] == "secret-hash"
    assert reader.stats["fill:rule_mismatch"] == 1 and r.exists("user:5") == 0
    reader.row_loader = RowLoader(reader.config.mysql, 2)
    reader.get_row(f"{db}.users", id=5)
    assert reader.stats["bypass:rule_mismatch"] == 1 and r.exists("user:5") == 0


def test_readers_fill_again_after_redis_lost_everything(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Redis emptied (restarted without its data) under a running worker: once the worker has noticed (its
    next change finds no checkpoint) and flushed, it records its rules again, and readers fill again."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    r.flushdb()
    _change(sql, mysql_server, r, w, "UPDATE users SET name = 'new' WHERE id = 5")
    wait_heartbeat(r)
    reader = reader_for()
    assert reader.get_row(f"{db}.users", id=5)["name"] == "new"  # type: ignore[index]
    assert r.exists("user:5") == 1 and reader.stats["fill:stored"] == 1


def _rule_with(config: Config, **settings: Any) -> str:
    """The fingerprint of the config's first rule with other settings (what such a worker records)."""
    changed = from_dict({"tables": [{**config.tables[0].raw, **settings}]}, env={})
    return rule_fingerprint(changed.tables[0])


def test_async_reader_refuses_to_fill_under_another_rule(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    tmp_path: Path,
    db: str,
    tables: None,
    r: redis.Redis,
) -> None:
    """AsyncCacheReader: the same rule check (the worker excludes password_hash, the reader does not)."""
    start_worker(users_rule(db, 'exclude = ["password_hash"]'), extra=READER)
    wait_heartbeat(r)
    _reader_config(tmp_path, mysql_server, redis_server, users_rule(db))

    async def scenario() -> None:
        reader = AsyncCacheReader(load(tmp_path / "app.toml"))
        assert (await reader.get_row(f"{db}.users", id=5))["password_hash"] == "secret-hash"  # type: ignore[index]
        assert reader.stats["bypass:rule_mismatch"] == 1 and r.exists("user:5") == 0
        await reader.close()

    asyncio.run(scenario())


# ---- 4. fork safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader_driver", ["sync"])  # (test_forked_async_reader_uses_new_tokens: the async one)
def test_forked_reader_uses_new_tokens_and_its_own_connections(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A reader shared across os.fork(): the child's lease tokens differ from the parent's, its loads run on
    its own MySQL connection, and closing the child's reader leaves the parent's pool working."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    _change(sql, mysql_server, r, w, "INSERT INTO users VALUES (6, 'b@x', 'six', 'h'), (7, 'c@x', 'seven', 'h')")
    reader = reader_for()
    reader.get_row(f"{db}.users", id=5)  # the pool now holds an open connection
    parent_conn = _connection_id(reader.row_loader)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any of pytest's teardown
        code = 1
        try:
            row = reader.get_row(f"{db}.users", id=6)
            report = {"token": reader.token(), "conn": _connection_id(reader.row_loader), "row": row}
            reader.close()  # closes the child's own connections (with the bug: the parent's)
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 10_000) or b"{}")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's lookup and load worked"
    assert child["row"]["name"] == "six" and r.exists("user:6") == 1
    assert child["token"][:12] != reader.token()[:12], "the child's token prefix is its own"
    assert child["conn"] != parent_conn, "the child never uses the parent's socket"
    assert reader.get_row(f"{db}.users", id=7)["name"] == "seven"  # type: ignore[index]
    assert _connection_id(reader.row_loader) == parent_conn, "the parent's pooled connection survived"


def test_forked_async_reader_uses_new_tokens(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Path,
    db: str,
    tables: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """AsyncCacheReader built before a fork: the child's tokens are its own and its lookups and loads work
    (each process runs its own event loop); a fetch key in the namespace is refused there too."""
    w = start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    _change(sql, mysql_server, r, w, "INSERT INTO users VALUES (6, 'b@x', 'six', 'h')")
    reader = AsyncCacheReader(load(tmp_path / "w.toml"))
    reader.row_loader.column_info(f"{db}.users")  # the pool now holds an open MySQL connection
    parent_token = reader.token()

    async def lookup(row_id: int) -> tuple[str, Any]:
        row = await reader.get_row(f"{db}.users", id=row_id)
        with pytest.raises(ValueError, match="namespace"):
            await reader.fetch("cdc:heartbeat", lambda: 1, ttl=60)
        token = reader.token()
        await reader.close()
        return token, row

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            token, row = asyncio.run(lookup(6))
            os.write(write, json.dumps({"token": token, "row": row}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 10_000) or b"{}")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child["row"]["name"] == "six" and r.exists("user:6") == 1
    token, row = asyncio.run(lookup(5))
    assert row is not None and row["name"] == "old"
    assert child["token"][:12] != token[:12] and token[:12] == parent_token[:12]


def _connection_id(loader: RowLoader) -> int:
    return int(loader._run("SELECT CONNECTION_ID() AS c", ())[0]["c"])


# ---- 5. the worker's namespace ------------------------------------------------------------------------------


def test_templates_and_fetch_keys_in_the_namespace_are_refused(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    tmp_path: Path,
    db: str,
    tables: None,
    r: redis.Redis,
) -> None:
    """A worker whose key template can render cdc:heartbeat exits with a config error naming the field; a
    fetch under cdc:... raises ValueError and leaves the worker's keys alone."""
    bad = start_worker(
        f'[[tables]]\ntable = "{db}.users"\nkey = "{{email}}:heartbeat"\n', wait=False, name="bad", extra=READER
    )
    assert bad.wait(30) == 2
    assert "tables[0].key: template '{email}:heartbeat' can render keys starting with 'cdc:'" in bad.log_text()
    start_worker(users_rule(db), extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    beat = r.get("cdc:heartbeat")
    with pytest.raises(ValueError, match="namespace"):
        reader.fetch("cdc:heartbeat", lambda: 1, ttl=60)
    assert r.get("cdc:heartbeat") is not None and int(r.get("cdc:heartbeat") or 0) >= int(beat or 0)
