"""Adversarial review (review3) of the changes after 8916c30: schema epochs, fetch keys a rule renders, verify's
cached absences / SET / FLOAT fields, doctor's key probes and the operator lock's fencing.

Each test reproduces one finding end to end against real servers (and the real worker process where it matters)
and asserts the correct behaviour, so it fails on the code it was written against; its docstring says the
scenario, what happens and what is correct. Tests that restart a server run their own (``start_redis()``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync import CacheReader
from cdc_sync.config import load
from tests.helpers import (
    WorkerProcess,
    cli,
    execute,
    query_rows,
    start_on,
    wait_caught_up,
    wait_for,
    wait_heartbeat,
    write_config,
)
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer

READER = "[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n"


def _verify(cfg: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    proc = cli(cfg, "verify", "--json")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    return proc, data


def _divergent(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [d for t in (data or {}).get("tables", []) for d in t["divergent"]]


# ---- 1. fetch keys a rule renders ----------------------------------------------------------------------------


def test_a_fetch_key_a_template_renders_for_an_empty_value_is_not_refused(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The rule `code:{code}` (evict mode) and a row whose `code` is the empty string: the worker renders and
    maintains the key `code:` for it (an empty value renders as nothing; keys.renders_with_prefix even says so).
    fetch() now refuses a key a template matches, but KeyTemplate.matches() uses `_VALUE_RE` (one or more
    characters), so `fetch("code:", ...)` is accepted: the fetch result `{"report": 1}` is filled under the
    worker's key, and `get_row(code="")` then answers that JSON as the row (HIT) with a fresh heartbeat.

    Correct: fetch refuses every key a template can render, the empty field value included (ValueError), and
    get_row(code="") answers the row."""
    table = f"{db}.codes"
    execute(
        sql,
        "CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE)",
        "INSERT INTO codes VALUES (1, '')",
    )
    start_worker(f'[[tables]]\ntable = "{table}"\nkey = "code:{{code}}"\nmode = "evict"\n', extra=READER)
    wait_heartbeat(r)
    reader = reader_for()
    refused = False
    try:
        reader.fetch("code:", lambda: {"report": 1}, ttl=600)
    except ValueError:
        refused = True
    got = reader.get_row(table, code="")
    assert refused and got == {"id": 1, "code": ""}, (
        f"fetch('code:') refused: {refused}; get_row(code='') = {got!r} (code: holds {r.get('code:')!r})"
    )


def test_a_flush_deletes_the_key_an_empty_value_renders(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Path,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """(Found while fixing the finding above.) A flush SCANs the template's glob and keeps only the keys
    `KeyTemplate.matches` accepts, which took no empty field value: `code:`, the key of the row whose code is '',
    survived every wholesale flush (DDL, TRUNCATE, `cdc-sync flush`) with the old row.

    Correct: the flush deletes it."""
    table = f"{db}.codes"
    execute(
        sql,
        "CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE, "
        "v VARCHAR(10))",
        "INSERT INTO codes VALUES (1, '', 'old')",
    )
    w = start_worker(f'[[tables]]\ntable = "{table}"\nkey = "code:{{code}}"\nmode = "update"\n')
    execute(sql, "UPDATE codes SET v = 'cached' WHERE id = 1")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("code:") or b"{}") == {"id": 1, "code": "", "v": "cached"}
    assert cli(tmp_path / "w.toml", "flush", table).returncode == 0
    assert r.get("code:") is None, "the flush left the empty value's key"


# ---- 2. verify: FLOAT and SET fields, cached absences -----------------------------------------------------------


def test_verify_on_a_float_key_at_the_float32_limit_fails_instead_of_checking_it(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A FLOAT key field holding the largest float32 (3.402823466e38, and its negative): the worker renders
    `f:3.4028235e+38`. verify now looks FLOAT fields up by the range between the value's float32 neighbours,
    but the neighbour above the largest float32 is +inf (below the most negative: -inf), and PyMySQL refuses to
    send inf ("inf can not be used with MySQL"): verify stops with an error instead of checking the table.

    Correct: a consistent cache verifies clean (exit 0, nothing divergent); an open end of the range is left
    out (`f > low` alone)."""
    table = f"{db}.floats"
    execute(
        sql,
        "CREATE TABLE floats (id INT PRIMARY KEY, f FLOAT UNIQUE)",
    )
    w = start_worker(f'[[tables]]\ntable = "{table}"\nkey = "f:{{f}}"\nmode = "update"\n', extra=READER)
    wait_heartbeat(r)
    execute(sql, "INSERT INTO floats VALUES (1, 3.402823466e38), (2, -3.402823466e38), (3, 1.5)")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    keys = sorted(k.decode() for k in r.scan_iter("f:*"))
    assert len(keys) == 3, keys
    proc, data = _verify(w.config)
    assert proc.returncode == 0 and data is not None and _divergent(data) == [], (
        f"keys {keys}: verify exit {proc.returncode}: {proc.stdout[-800:]} {proc.stderr[-800:]}"
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("SET('b\\\\c','a')", "a,b\\\\c", id="member-with-a-backslash"),
        pytest.param("SET('a','A') CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", "a,A", id="members-differing-in-case"),
    ],
)
def test_verify_reports_a_consistent_set_key_as_an_orphan(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    column: str,
    value: str,
) -> None:
    """A SET key field. The worker renders the members sorted by name; verify re-spells them in the column's
    definition order, read from COLUMN_TYPE with `_MEMBER` and matched by `m.lower()`. Two members defeat it:
    (a) information_schema shows a backslash doubled (`set('b\\\\c','a')`), so the parsed member `b\\\\c` is
    not the value's `b\\c`, which sorts last: `a,b\\c`, not MySQL's `b\\c,a`; (b) under a case-sensitive
    collation `'a'` and `'A'` are two members, which `lower()` folds into one index, so the worker's `A,a`
    stays as it is, not MySQL's `a,A`. Either way `WHERE v = ...` finds no row and the key the worker just
    wrote (value equal to the row) is reported divergent with the database side `(absent)`.

    Correct: verify finds the row of a key the worker maintains: nothing divergent."""
    table = f"{db}.sets"
    execute(
        sql,
        f"CREATE TABLE sets (id INT PRIMARY KEY, v {column}, UNIQUE KEY (v))",
    )
    w = start_worker(f'[[tables]]\ntable = "{table}"\nkey = "s:{{v}}"\nmode = "update"\n', extra=READER)
    wait_heartbeat(r)
    execute(sql, f"INSERT INTO sets VALUES (1, '{value}')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    keys = wait_for(lambda: sorted(k.decode() for k in r.scan_iter("s:*")), 30, "the worker's key")
    proc, data = _verify(w.config)
    assert proc.returncode == 0 and _divergent(data) == [], (
        f"keys {keys} ({r.get(keys[0])!r}): verify exit {proc.returncode}: {proc.stdout[-800:]}"
    )


def test_verify_crashes_on_three_cached_absences_of_long_urls(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A table keyed by a long text (`url:{url}`, NO PAD collation, so absence is cacheable) with negative_ttl:
    a reader caches "absent" for three URLs no row has, all sharing a long prefix; one URL exists. verify now
    asks MySQL whether any row matches each cached absence with one `SELECT EXISTS(...), EXISTS(...), ...` read
    through a DictCursor. MariaDB names each column after its expression, cut to 256 characters: the three
    names are equal, PyMySQL's DictCursor keeps two of them (`name`, `.name`), and `zip(..., strict=True)`
    raises ValueError: verify dies with a traceback on a healthy cache.

    Correct: verify checks the four keys and finds nothing divergent (exit 0)."""
    table = f"{db}.urls"
    execute(
        sql,
        "CREATE TABLE urls (id INT PRIMARY KEY, "
        "url VARCHAR(400) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin UNIQUE)",
    )
    prefix = "https://shop.example.com/catalogue/" + "a" * 260 + "/item-"
    execute(sql, f"INSERT INTO urls VALUES (1, '{prefix}0')")
    w = start_worker(f'[[tables]]\ntable = "{table}"\nkey = "url:{{url}}"\nmode = "update"\n', extra=READER)
    wait_heartbeat(r)
    reader = reader_for(negative_ttl=600)
    assert reader.get_row(table, url=f"{prefix}0") == {"id": 1, "url": f"{prefix}0"}
    for i in (1, 2, 3):
        assert reader.get_row(table, url=f"{prefix}{i}") is None
    nulls = [k for k in r.scan_iter("url:*") if r.get(k) == b"null"]
    assert len(nulls) == 3, "three cached absences"
    proc, data = _verify(w.config)
    assert proc.returncode == 0 and data is not None and _divergent(data) == [], (
        f"verify exit {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-1200:]}"
    )


# ---- 3. schema epochs ------------------------------------------------------------------------------------------


def test_a_schema_epoch_repeats_after_redis_comes_back_from_an_older_snapshot(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    own_redis: tuple[LocalServer, RedisTarget],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """`code` is utf8mb4_nopad_bin (absence cacheable), negative_ttl > 0, holdoff_ms = 0. `cdc-sync flush`
    bumps the table's schema epoch to E (a new epoch starts at Redis's clock in µs); Redis saves a snapshot. A
    second `cdc-sync flush` bumps it to E+k (INCR; k = 2: its hold and its flush); a reader's get_row then reads
    (and stamps) the column info at E+k. Redis restarts from the snapshot: the epoch is E again, and the
    checkpoint is the worker's (operator flushes are not in the binlog), so the worker just goes on.
    `ALTER TABLE ... COLLATE utf8mb4_general_ci` and a comment ALTER: each flush of the worker INCRs the epoch,
    back to E+k, an epoch the reader already saw, for column info from before the ALTERs. get_row(code='A')
    leases with epoch E+k, judges absence with the remembered nopad_bin info ('A' renders as given) and the
    fill script accepts E+k: "absent" is cached under code:A. INSERT 'a' evicts code:a only; under the new
    collation MySQL matches 'A' to that row, and the reader answers None with a fresh heartbeat for all of
    negative_ttl.

    Correct: an epoch never repeats one a reader may have seen, whatever Redis lost (e.g. every bump sets
    max(old + 1, Redis time in µs)), so the fill is refused and the reader answers the row."""
    server, target = own_redis
    client = redis.Redis(host=target.host, port=target.port)
    table = f"{db}.codes"
    execute(
        sql,
        "CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin)",
    )
    rule = f'[[tables]]\ntable = "{table}"\nkey = "code:{{code}}"\nmode = "evict"\n'
    w = start_on(tmp_path, mysql_server, target, rule, workers, extra=READER + "negative_ttl = 600\n")
    wait_heartbeat(client)
    epoch_key = f"cdc:schema:{table}"
    assert cli(w.config, "flush", table).returncode == 0
    first = client.get(epoch_key)
    client.save()
    snapshot = tmp_path / "older.rdb"
    shutil.copyfile(server.directory / "dump.rdb", snapshot)
    assert cli(w.config, "flush", table).returncode == 0
    seen = client.get(epoch_key)
    assert first is not None and seen is not None and int(seen) > int(first)
    reader = CacheReader(load(w.config))
    try:
        assert reader.get_row(table, code="z") is None  # column info read and stamped at E+1
        client.close()
        server.restart(files={"dump.rdb": snapshot})
        client = redis.Redis(host=target.host, port=target.port)
        assert client.get(epoch_key) == first, "Redis is back at the older snapshot"
        wait_heartbeat(client)
        execute(sql, "ALTER TABLE codes MODIFY code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        for n in range(10):  # more DDL of the table (comments), each flushed by the worker, until E+k is reached
            wait_caught_up(client, sql, mysql_server.flavor, w)
            wait_for(lambda: not client.exists(f"cdc:flushing:{table}"), 10, "the DDL flush to end")
            if int(client.get(epoch_key) or 0) >= int(seen):
                break
            execute(sql, f"ALTER TABLE codes COMMENT = 'n{n}'")
        now = client.get(epoch_key)
        assert now != seen, "the worker's DDL flushes bring the epoch back to one the reader saw"
        for _ in range(2):  # (the first call after the restart may find its connection gone: a bypass)
            reader.get_row(table, code="A")
        cached_a = client.get("code:A")
        execute(sql, "INSERT INTO codes VALUES (1, 'a')")
        wait_caught_up(client, sql, mysql_server.flavor, w)
        time.sleep(0.3)
        assert query_rows(sql, "SELECT id FROM codes WHERE code = 'A'") == [(1,)], "general_ci: 'A' matches 'a'"
        got = reader.get_row(table, code="A")
        assert got == {"id": 1, "code": "a"}, (
            f"epochs: seen by the reader {seen!r}, after the ALTER {now!r}; code:A cached {cached_a!r}; "
            f"get_row(code='A') = {got!r} while MySQL matches row 1"
        )
    finally:
        reader.close()
        client.close()


# ---- 4. doctor's key probes ------------------------------------------------------------------------------------


def test_a_redis_acl_that_allows_every_key_the_rule_renders_now_stops_the_worker(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    own_redis: tuple[LocalServer, RedisTarget],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """The rule `user:{id}` over an INT id, and a Redis user confined to `~cdc:* ~user:[0-9]*` (every key the
    worker and the readers use: ids render as digits). doctor now probes each template with the field value
    "\\x00cdc-sync-doctor", i.e. the key `user:%00cdc-sync-doctor`, which the ACL refuses: redis.acl FAILs
    (blocking) and `run`, which runs the doctor's blocking checks first, exits with a configuration error: a
    deployment that synced fine before no longer starts. (Likewise a user with `-unlink` and `~*` is told that
    its cached keys `user:*` are refused too.)

    Correct: the probe uses a value the column can hold (or a refusal of the probe key alone is a WARN), and the
    worker starts and syncs the row."""
    _server, target = own_redis
    admin = redis.Redis(host=target.host, port=target.port)
    admin.execute_command("ACL", "SETUSER", "cdcw", "on", ">Review-Pw-3", "~cdc:*", "~user:[0-9]*", "+@all")
    execute(sql, "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
    cfg = write_config(
        tmp_path / "w.toml",
        mysql_server,
        target,
        f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n',
    )
    cfg.write_text(cfg.read_text().replace(target.url, f"redis://cdcw:Review-Pw-3@{target.host}:{target.port}/0"))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    try:
        wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
        started = w.alive()
        if started:
            execute(sql, "INSERT INTO users VALUES (5, 'e')")
            wait_for(lambda: admin.get("user:5") is not None or not w.alive(), 30, "user:5 written")
        errors = [e for e in w.events() if e.get("event") == "worker.config_error"]
        assert started and admin.get("user:5") is not None, f"worker alive: {w.alive()}; config errors: {errors}"
    finally:
        admin.close()
