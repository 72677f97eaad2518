"""Adversarial review (review2): the reader, operations truth, and the worker's fixes after review1.

Each test reproduces one finding end to end against real servers (and the real worker process where it matters)
and asserts the correct behaviour, so it fails on the code it was written against; its docstring says what it
shows. Tests that change global server settings run their own MariaDB or Redis (``start_mariadb()`` /
``start_redis()``), never the session servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync import AsyncCacheReader, CacheReader
from cdc_sync.config import load
from tests.helpers import (
    WorkerProcess,
    cli,
    connect,
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
from tools.devservers import LocalServer, start_mariadb

PROMPT_S = 30


def _check(doctor_json: str, name: str) -> dict[str, Any]:
    data = json.loads(doctor_json)
    return next(c for c in data["checks"] if c["name"] == name)


# ---- 1. the reader: keys and tags rendered from canonical values -------------------------------------------


def test_absence_under_a_pad_space_bin_key_survives_the_insert_of_the_row_it_matches(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """negative_ttl > 0 and a key over a VARCHAR with a `_bin` collation (utf8mb4_bin is PAD SPACE). canonical.py
    calls `'a'` canonical there and it "renders as given", so `get_row(code='a')` caches "absent" under `code:a`.
    But under PAD SPACE `code <=> 'a'` also matches a stored `'a '`, whose key the worker renders as `code:a%20`:
    inserting `'a '` evicts `code:a%20`, never `code:a`. The reader then answers None for a row MySQL (and the
    reader's own loader) matches, for all of negative_ttl, with a fresh heartbeat.

    Correct: a cached absence is evicted by the insert of any row the lookup matches (here: text under a PAD SPACE
    collation is never "as given" for absence, or absences are tagged with the trailing-space-stripped value)."""
    execute(
        sql,
        "CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE)",
    )
    rule = f'[[tables]]\ntable = "{db}.codes"\nkey = "code:{{code}}"\nmode = "evict"\n'
    w = start_worker(rule, extra="[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n")
    wait_heartbeat(r)
    reader = reader_for(negative_ttl=600)
    assert reader.get_row(f"{db}.codes", code="a") is None
    assert r.get("code:a") is None, "under PAD SPACE, 'a' is not a canonical key value: no absence cached"
    execute(sql, "INSERT INTO codes VALUES (1, 'a ')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert query_rows(sql, "SELECT id FROM codes WHERE code = 'a'") == [(1,)], "PAD SPACE: 'a' matches 'a '"
    assert reader.row_loader.load(f"{db}.codes", {"code": "a"}) == {"id": 1, "code": "a "}
    time.sleep(0.5)
    assert reader.get_row(f"{db}.codes", code="a") == {"id": 1, "code": "a "}, (
        f"code:a = {r.get('code:a')!r} still cached after the insert of the row it matches"
    )


def test_a_collation_alter_leaves_precise_tags_on_a_case_insensitive_column_until_the_ttl(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    reader_for: Callable[..., CacheReader],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """A fetch depends on `(orders, {"code": "X"})`; `code` is utf8mb4_bin, so the tag is precise (`code=X`).
    `ALTER TABLE orders MODIFY code ... COLLATE utf8mb4_general_ci`: the worker flushes the table and leaves its
    marker for holdoff_ms; a reader that made no lookup of `orders` in that moment keeps its column info (and its
    remembered FetchLookup) for 30 s. Its next fetch misses, its loader (`WHERE code = 'X'`) now matches the row
    `'x'`, and the result is filled under the precise tag `code=X`. An update of that row evicts `code=x` only:
    the reader serves the old result with a fresh heartbeat until the result's TTL (600 s here), not "up to
    30 s" as the README's known limit suggests.

    Correct: a fill never lands under a tag computed from column info older than the last DDL of the table (e.g.
    the worker bumps a per-table schema epoch that the lookup/fill scripts compare, as they compare rules)."""
    execute(
        sql,
        "CREATE TABLE orders (id INT PRIMARY KEY, code VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin, "
        "amount INT)",
        "INSERT INTO orders VALUES (1, 'x', 5)",
    )
    rule = f'[[tables]]\ntable = "{db}.orders"\ntags = ["code"]\n'
    w = start_worker(rule, extra="[reader]\nholdoff_ms = 200\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n")
    wait_heartbeat(r)
    reader = reader_for()
    table = f"{db}.orders"
    dep = [(table, {"code": "X"})]
    loads = connect(mysql_server, db)

    def load_orders() -> list[list[int]]:
        return [list(row) for row in query_rows(loads, "SELECT id, amount FROM orders WHERE code = %s", ("X",))]

    try:
        assert reader.fetch("orders-by-code:X", load_orders, ttl=600, depends_on=dep) == []
        assert r.sismember(f"cdc:tag:{table}:code=X", "orders-by-code:X"), "precise tag under utf8mb4_bin"
        execute(sql, "ALTER TABLE orders MODIFY code VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        wait_for(lambda: not r.exists(f"cdc:flushing:{table}"), 10, "the flush's hold-off to end")
        assert r.get("orders-by-code:X") is None, "the DDL flush evicted the result"
        assert reader.fetch("orders-by-code:X", load_orders, ttl=600, depends_on=dep) == [[1, 5]]
        execute(sql, "UPDATE orders SET amount = 9 WHERE id = 1")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        time.sleep(0.3)
        assert load_orders() == [[1, 9]]
        got = reader.fetch("orders-by-code:X", load_orders, ttl=600, depends_on=dep)
        assert got == [[1, 9]], (
            f"served {got} after amount became 9; tags holding the key: "
            f"{sorted(k.decode() for k in r.scan_iter('cdc:tag:*') if r.sismember(k, 'orders-by-code:X'))}"
        )
    finally:
        loads.close()


# ---- 2. operations: doctor, refusals, status ------------------------------------------------------------------


USERS = '[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    execute(sql, "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))", "INSERT INTO users VALUES (1, 'a')")


def test_doctor_passes_replication_slave_admin_for_replication_slave(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    mysql_user: Callable[..., tuple[str, str]],
    workers: list[WorkerProcess],
) -> None:
    """A user granted `REPLICATION SLAVE ADMIN` (MariaDB >= 10.5: START/STOP SLAVE, CHANGE MASTER) but not
    `REPLICATION SLAVE`: SHOW GRANTS says `GRANT REPLICATION SLAVE ADMIN, BINLOG MONITOR ON *.*`, and the doctor's
    regex `REPLICATION (SLAVE|REPLICA)` finds "REPLICATION SLAVE" in it: `mysql.privilege.replication_slave` PASS,
    doctor exits 0. The worker started on the same config cannot read the binlog: MariaDB answers the binlog dump
    with error 1045 "Access denied ... (using password: YES)", which the worker classifies as a refused login and
    exits 2 with `fix: check mysql.user and its password ...`, though the password is right. Both views send the
    operator to the wrong place.

    Correct: the doctor FAILs naming REPLICATION SLAVE, and a 1045 on the binlog stream after the same credentials
    logged in for the admin queries is reported as the missing REPLICATION SLAVE privilege."""
    user, password = mysql_user("REPLICATION SLAVE ADMIN, BINLOG MONITOR, REFERENCES ON *.*", f"SELECT ON {db}.*")
    cfg = write_config(
        tmp_path / "w.toml", mysql_server, redis_server, USERS.format(db=db), user=user, password=password
    )
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    code = w.wait(60)
    refused = [e for e in w.events() if e.get("event") == "worker.config_error"]
    doctor = cli(cfg, "doctor", "--json")
    check = _check(doctor.stdout, "mysql.privilege.replication_slave")
    assert check["status"] == "FAIL", (
        f"doctor says {check['status']}: {check['detail']} (exit {doctor.returncode}); the worker exited {code}: "
        f"{[e.get('error') for e in refused[:1]]}"
    )
    assert code == 2 and refused and "REPLICATION SLAVE" in refused[0].get("fix", ""), [
        (e.get("error"), e.get("fix")) for e in refused
    ]


def test_a_redis_acl_that_denies_the_cached_keys_passes_the_doctor_and_the_worker_retries_forever(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """A Redis ACL user limited to the worker's namespace (`~cdc:* +@all`). Every command the doctor tries runs
    on `cdc:doctor:probe*`, so `redis.acl` PASSes and doctor exits 0 (its own fix text says the commands are needed
    "on cdc:* and the cached keys", but only the first is tried). The worker starts, and its first apply step, which
    touches `user:1`, is refused inside the script ("The user executing the script can't access at least one of the
    keys ..."): not a NoPermissionError, so it is `sink.unavailable` and retried forever with backoff; nothing is
    ever applied, no exit 2, no fix line (the README promises exit 2 for "an ACL refusal (NOPERM)").

    Correct: the doctor FAILs (try the commands on a key each template renders, or read the user's key patterns
    with ACL GETUSER), and the ACL refusal inside a script is a ServerRefused (exit 2 with the fix)."""
    user, password = "cdcacl", "Acl-Secret-394"
    r.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~cdc:*", "+@all")
    try:
        cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, USERS.format(db=db))
        cfg.write_text(
            cfg.read_text().replace(
                f'url = "{redis_server.url}"',
                f'url = "redis://{user}:{password}@{redis_server.host}:{redis_server.port}/{redis_server.db}"',
            )
        )
        doctor = cli(cfg, "doctor", "--json")
        w = WorkerProcess(cfg, tmp_path / "w.log").start()
        workers.append(w)
        wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
        time.sleep(1.0)
        execute(sql, "UPDATE users SET name = 'b' WHERE id = 1")
        try:
            code: int | None = w.wait(PROMPT_S)
        except subprocess.TimeoutExpired:
            code = None
        retried = [e.get("error", "") for e in w.events() if e.get("event") == "sink.unavailable"]
        check = _check(doctor.stdout, "redis.acl")
        assert check["status"] == "FAIL" and code == 2, (
            f"doctor: redis.acl {check['status']}: {check['detail']} (exit {doctor.returncode}); the worker "
            f"{'still runs' if code is None else f'exited {code}'} after {len(retried)} retried refusal(s): "
            f"{retried[:1]}"
        )
    finally:
        r.execute_command("ACL", "DELUSER", user)


LEAST = ("REPLICATION SLAVE, BINLOG MONITOR, REFERENCES ON *.*",)


def test_an_expired_mysql_password_is_retried_forever_instead_of_exit_2(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    mysql_user: Callable[..., tuple[str, str]],
    workers: list[WorkerProcess],
) -> None:
    """`ALTER USER cdc PASSWORD EXPIRE` (a password policy, `default_password_lifetime`): the login succeeds in
    sandbox mode and every statement fails with error 1820 "You must SET PASSWORD before executing this
    statement" (1862 with disconnect_on_expired_password). No retry heals that, a person must set a password,
    yet 1820/1862 are not refusals: the worker logs `source.unavailable` and retries with backoff for ever
    (systemd `Restart=on-failure` is never even reached), status says `reconnecting`.

    Correct: exit 2 with a fix line ("the MySQL password has expired: ALTER USER ... IDENTIFIED BY ...")."""
    user, password = mysql_user(*LEAST, f"SELECT ON {db}.*")
    execute(sql, f"ALTER USER '{user}'@'%' PASSWORD EXPIRE")
    cfg = write_config(
        tmp_path / "w.toml", mysql_server, redis_server, USERS.format(db=db), user=user, password=password
    )
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    try:
        code: int | None = w.wait(PROMPT_S)
    except subprocess.TimeoutExpired:
        code = None
    retried = [e.get("error", "") for e in w.events() if e.get("event", "").endswith(".unavailable")]
    assert code == 2, (
        f"the worker {'still runs' if code is None else f'exited {code}'}; retried: {retried[:1]} x{len(retried)}"
    )


@pytest.fixture
def own_mariadb() -> Iterator[tuple[LocalServer, MySQLTarget]]:
    server = start_mariadb()
    try:
        yield server, MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb", pid=server.proc.pid)
    finally:
        server.stop()


def test_status_exits_0_when_mysql_refuses_the_configured_login(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    mysql_user: Callable[..., tuple[str, str]],
    workers: list[WorkerProcess],
) -> None:
    """The worker's password is rotated on the server while it runs (its open connections keep working; it will
    exit 2 at its next reconnect, see test_refusals). `cdc-sync status` on the same config gets error 1045 for its
    own query, files it as `server unreachable: Access denied ...`, and still prints `status OK` and exits 0: the
    refusal that will stop the worker for good is neither a problem nor exit 2 (README: "2 ... a server refusing
    for good (wrong password, missing privilege), with a fix: line").

    Correct: exit 2 with the fix line (or at least NOT OK with the refusal as a problem)."""
    user, password = mysql_user(*LEAST, f"SELECT ON {db}.*")
    cfg = write_config(
        tmp_path / "w.toml", mysql_server, redis_server, USERS.format(db=db), user=user, password=password
    )
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: json.loads(cli(cfg, "status", "--json").stdout)["ok"], 30, "status OK")
    execute(sql, f"ALTER USER '{user}'@'%' IDENTIFIED BY 'Rotated-Secret-208'")
    status = cli(cfg, "status", "--json")
    data = json.loads(status.stdout)
    assert status.returncode == 2 or not data["ok"], (
        f"exit {status.returncode}, ok={data['ok']}, server={data.get('server')}, problems={data['problems']}"
    )


def test_an_async_reader_used_before_a_fork_raises_in_the_child(
    start_worker: StartWorker,
    tmp_path: Path,
    db: str,
    users: None,
    r: redis.Redis,
) -> None:
    """The README's fork safety covers AsyncCacheReader ("does the same, but asyncio loops do not survive a
    fork": each process runs its own loop). But `_after_fork` re-seeds tokens and the window only: the
    redis.asyncio pool (which, unlike the sync pool, never checks the pid) keeps the parent's connection, bound to
    the parent's loop. A reader the parent used once (a warm-up lookup before a pre-fork server forks its workers)
    makes every lookup in the child raise `RuntimeError: Event loop is closed` to the application, even with
    strict = false (not a RedisError, so no bypass to MySQL either).

    Correct: the child gets a fresh Redis pool and its lookups work (the row is returned)."""
    start_worker(USERS.format(db=db), extra="[reader]\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n")
    wait_heartbeat(r)
    reader = AsyncCacheReader(load(tmp_path / "w.toml"))
    assert asyncio.run(reader.get_row(f"{db}.users", id=1)) == {"id": 1, "name": "a"}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                out = {"row": asyncio.run(reader.get_row(f"{db}.users", id=1))}
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 10_000) or b"{}")
    os.close(read)
    # (the parent's connection belongs to its closed loop: dropped here, quietly, not in a later test's GC)
    reader.row_loader.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del reader
        gc.collect()
    assert child == {"row": {"id": 1, "name": "a"}}, child


def test_volatile_lru_evicts_a_readers_tag_set_and_the_result_outlives_the_change(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    own_redis: tuple[LocalServer, RedisTarget],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """`maxmemory-policy volatile-lru` (doctor: WARN, "may evict leases and hold-off markers early", not a
    blocking FAIL like allkeys-*; `run` starts). A fetch result depends on `(orders, {"user_id": 5})`; its tag set
    `cdc:tag:<db>.orders:user_id=5` carries a TTL (ttl + lease_ttl), so it is an eviction candidate, and it is the
    least recently used key: the result itself is read on every hit, the tag set only when a lease is granted.
    Under memory pressure Redis evicts the tag set and keeps the result. The next change of an order of user 5
    finds no members to evict: the reader serves the old result, heartbeat fresh, until the result's TTL. (An
    evicted hold-off marker `cdc:inv:*` is the same hole: a fill of a not yet visible commit.)

    Correct: volatile-* is refused like allkeys-* (doctor FAIL, run refuses to start), or the keys the protocol
    depends on carry no TTL that an eviction policy may act on, or (what the worker does) their loss is found
    before the heartbeat vouches again: Redis counts evictions (INFO evicted_keys), and a new count flushes every
    table first."""
    _server, target = own_redis
    client = redis.Redis(host=target.host, port=target.port)
    client.config_set("maxmemory-policy", "volatile-lru")
    execute(
        sql, "CREATE TABLE orders (id INT PRIMARY KEY, user_id INT, total INT)", "INSERT INTO orders VALUES (1, 5, 10)"
    )
    rule = f'[[tables]]\ntable = "{db}.orders"\ntags = ["user_id"]\n'
    extra = "[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n"
    w = start_on(tmp_path, mysql_server, target, rule, workers, extra=extra)
    wait_for(lambda: client.get("cdc:heartbeat") is not None, 30, "the first heartbeat")
    doctor = _check(cli(tmp_path / "w.toml", "doctor", "--json").stdout, "redis.maxmemory_policy")
    cfg = load(tmp_path / "w.toml")
    reader = CacheReader(cfg)
    loads = connect(mysql_server, db)
    table = f"{db}.orders"
    dep = [(table, {"user_id": 5})]
    tag = f"cdc:tag:{table}:user_id=5"

    def totals() -> list[int]:
        return [int(t) for (t,) in query_rows(loads, "SELECT total FROM orders WHERE user_id = 5 ORDER BY id")]

    try:
        assert reader.fetch("totals:5", totals, ttl=3600, depends_on=dep) == [10]
        assert client.sismember(tag, "totals:5") and client.pttl(tag) > 0
        # Redis's LRU is approximate (sampled keys, a 1 s clock), so the order is made plain: the tag set is the
        # oldest key with a TTL, then come 300 padding keys with a TTL, the result is read last, and the fillers
        # that make the pressure carry no TTL (not candidates). The tag set goes before any padding is used up.
        client.config_set("maxmemory-samples", "64")
        time.sleep(1.5)
        for i in range(300):
            client.set(f"padding:{i}", "p" * 256, ex=3600)
        time.sleep(1.5)
        assert reader.fetch("totals:5", totals, ttl=3600, depends_on=dep) == [10]  # a hit: recently used
        used = int(client.info("memory")["used_memory"])
        assert w.proc is not None
        os.kill(w.proc.pid, signal.SIGSTOP)  # (the worker would flush at the first eviction: it sees them after)
        try:
            client.config_set("maxmemory", str(used + 64 * 1024))
            for i in range(20_000):
                client.set(f"other:{i}", "x" * 128)
                if not client.exists(tag):
                    break
            assert not client.exists(tag) and client.exists("totals:5"), "the tag set was evicted, the result kept"
            client.config_set("maxmemory", "0")
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
        evicted = int(client.info("stats")["evicted_keys"])
        assert evicted > 0, "Redis evicted keys"
        # the worker sees the evictions (INFO), flushes every table and records the count it made whole
        wait_for(lambda: client.get("cdc:evictions") == str(evicted).encode(), 30, "the eviction flush")
        assert "sync.keys_evicted" in w.event_names()
        assert client.exists("totals:5"), "the flush cannot find the result: its tag set is gone"
        execute(sql, "UPDATE orders SET total = 99 WHERE id = 1")
        wait_caught_up(client, sql, mysql_server.flavor, w)
        time.sleep(0.3)
        got = reader.fetch("totals:5", totals, ttl=3600, depends_on=dep)
        assert got == [99], (
            f"doctor {doctor['status']}: {doctor['detail']}; after total became 99 the reader served {got}"
        )
    finally:
        loads.close()
        reader.close()
        client.close()


def test_verify_reports_a_correct_key_over_a_set_column_as_an_orphan_and_repair_evicts_it(
    start_worker: StartWorker,
    tmp_path: Path,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """`also = ["item:flags:{flags}"]` over `flags SET('b','a')`. The worker renders a SET as its members sorted
    by name (`a,b`), MySQL spells the value in definition order (`b,a`) and compares a SET with a string by that
    spelling: verify's `SELECT ... WHERE (flags) IN (('a,b'))` finds no row, so the key the worker itself wrote
    and keeps up to date is reported divergent with database `(absent)` (exit 1), and `verify --repair` evicts it.

    The same for a FLOAT field: the worker renders the FLOAT 1.1 as `1.1`, and `(weight) IN (('1.1'))` compares the
    stored float32 (1.100000023841858) with the double 1.1: no row, another false orphan.

    Correct: verify reports nothing for a key the worker renders from the row (exit 0) and repair evicts nothing
    (match SET fields by FIND_IN_SET/bit value, or skip templates whose columns MySQL cannot compare by the
    rendered text)."""
    execute(
        sql,
        "CREATE TABLE items (id INT PRIMARY KEY, flags SET('b','a'), weight FLOAT, name VARCHAR(10))",
        "INSERT INTO items VALUES (1, 'a,b', 1.1, 'one')",
    )
    rule = (
        f'[[tables]]\ntable = "{db}.items"\nkey = "item:{{id}}"\n'
        'also = ["item:flags:{flags}", "item:weight:{weight}"]\nmode = "update"\n'
    )
    w = start_worker(rule)
    execute(sql, "UPDATE items SET name = 'two' WHERE id = 1")  # the worker writes every key
    wait_caught_up(r, sql, "mariadb", w)
    assert json.loads(r.get("item:flags:a,b") or b"{}") == {"id": 1, "flags": ["a", "b"], "weight": 1.1, "name": "two"}
    assert r.exists("item:weight:1.1")
    cfg = tmp_path / "w.toml"
    verify = cli(cfg, "verify", "--json")
    repair = cli(cfg, "verify", "--repair", "--json")
    assert verify.returncode == 0 and r.exists("item:flags:a,b") and r.exists("item:weight:1.1"), (
        f"verify exit {verify.returncode}: {json.loads(verify.stdout)['tables'][0]['divergent']}; after --repair "
        f"kept {[k for k in ('item:flags:a,b', 'item:weight:1.1') if r.exists(k)]} "
        f"({json.loads(repair.stdout)['tables'][0]['repaired']} evicted)"
    )


def test_verify_calls_a_cached_absence_right_while_mysql_matches_a_row_for_it(
    start_worker: StartWorker,
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """verify treats a cached JSON `null` under a key that no row *renders* as right ("a cached absent for a key no
    row renders is right"). But a reader's `get_row` answers from that key for every row MySQL *matches*: `null`
    under `code:a` while the row `'a '` exists (utf8mb4_bin, PAD SPACE; see the first test of this file), or under
    `user:email:A@X` while `a@x` exists (a `_ci` column; left by an older reader, the README's upgrade note, or a
    foreign client) is a stale answer, and verify reports 0 divergent (exit 0) and repairs nothing.

    Correct: a cached absence is divergent when MySQL matches a row for the key's values."""
    execute(
        sql,
        "CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin UNIQUE, "
        "email VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci UNIQUE)",
        "INSERT INTO codes VALUES (1, 'a ', 'a@x')",
    )
    rule = f'[[tables]]\ntable = "{db}.codes"\nkey = "code:{{code}}"\nalso = ["code:email:{{email}}"]\nmode = "evict"\n'
    start_worker(rule, extra="[reader]\nnegative_ttl = 600\n")
    wait_heartbeat(r)
    r.set("code:a", "null", ex=600)
    r.set("code:email:A@X", "null", ex=600)
    reader = CacheReader(load(tmp_path / "w.toml"))
    try:
        served = (reader.get_row(f"{db}.codes", code="a"), reader.get_row(f"{db}.codes", email="A@X"))
    finally:
        reader.close()
    assert query_rows(sql, "SELECT id FROM codes WHERE code = 'a' AND email = 'A@X'") == [(1,)]
    verify = cli(tmp_path / "w.toml", "verify", "--json")
    divergent = [d["key"] for d in json.loads(verify.stdout)["tables"][0]["divergent"]]
    assert sorted(divergent) == ["code:a", "code:email:A@X"] and verify.returncode == 1, (
        f"the reader serves {served} for rows MySQL matches; verify exit {verify.returncode}, divergent {divergent}"
    )


# ---- 3. the worker's fixes after review1 ----------------------------------------------------------------------


def test_a_statement_logged_under_no_backslash_escapes_shows_its_literals(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """Statements are logged "without literals" (`planner.sql_for_log`: every '...' replaced by '?'), by a regex
    that reads a backslash as an escape. A session with `sql_mode = NO_BACKSLASH_ESCAPES` (common for Windows
    paths, ANSI tools) writes `'C:\\'` as a complete literal; the binlog carries the statement text as sent (statement
    format, or DDL). The regex pairs the quotes wrongly and the next literal is logged in clear: here
    `sync.table_flushed` shows the value `Top-Secret-4417` of the WHERE clause.

    Correct: no literal of the statement appears in the worker's log (honour the event's sql_mode, or redact from
    the first quote on when the quoting is ambiguous)."""
    w = start_worker(USERS.format(db=db))
    with connect(mysql_server, db) as conn:
        execute(
            conn,
            "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
            "SET SESSION binlog_format = 'STATEMENT'",
            "UPDATE users SET name = 'C:\\' WHERE name = 'Top-Secret-4417'",
        )
    wait_caught_up(r, sql, mysql_server.flavor, w)
    flushed = [e.get("detail", "") for e in w.events() if e.get("event") == "sync.table_flushed"]
    assert flushed, "the statement-format UPDATE flushed the table"
    assert "Top-Secret-4417" not in w.log_text(), flushed


class _HoldingProxy:
    """127.0.0.1:<port> -> Redis; when armed, the first client write containing an MGET is forwarded only up to
    that command, and the rest (the MGET) only once ``release`` is set: the moment between two pipelined commands.
    A client connection whose upstream died is dropped (redis-py then reconnects, and retries the pipeline)."""

    def __init__(self, upstream: int) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.armed = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                at = data.find(b"$4\r\nMGET\r\n")
                if self.armed.is_set() and at >= 0:
                    cut = data.rfind(b"*", 0, at)
                    self.armed.clear()
                    dst.sendall(data[:cut])
                    self.held.set()
                    self.release.wait(30)
                    data = data[cut:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with_suppress_close(s)

    def _down(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with_suppress_close(s)

    def close(self) -> None:
        with_suppress_close(self._listener)


def with_suppress_close(s: Any) -> None:
    import contextlib
    import socket

    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


def test_a_hash_plain_read_takes_the_value_and_the_heartbeat_from_two_moments(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    own_redis: tuple[LocalServer, RedisTarget],
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    """For `format = "hash"` the plain read inside the window is a pipeline without MULTI: `HGETALL key`, then
    `MGET heartbeat flushing...`, two commands other clients' commands can run between. Redis restarts from an
    older snapshot (value and heartbeat go back); the reader's plain read (redis-py reconnects and retries it)
    gets the snapshot's value from HGETALL; before its MGET runs, the worker sees the rewind, replays and the
    prober stamps a new heartbeat, above the window's floor. The MGET then shows a heartbeat "not older than
    before" and no flushing marker: the snapshot's value is served, superseded by a commit older than
    max_staleness_ms. (JSON rules read value and heartbeat with one MGET, which is atomic.)

    Correct: the value and its gates are read atomically (MULTI/EXEC, or one script) for hashes too."""
    import signal
    import threading

    server, target = own_redis
    client = redis.Redis(host=target.host, port=target.port)
    rule = USERS.format(db=db) + 'format = "hash"\n'
    extra = "[reader]\nmax_staleness_ms = 4000\nholdoff_ms = 200\nfreshness_check_ms = 4000\n"
    w = start_on(tmp_path, mysql_server, target, rule, workers, extra=extra)
    execute(sql, "UPDATE users SET name = 'in the snapshot' WHERE id = 1")
    wait_caught_up(client, sql, mysql_server.flavor, w)
    client.save()
    saved = tmp_path / "old.rdb"
    saved.write_bytes((server.directory / "dump.rdb").read_bytes())
    execute(sql, "UPDATE users SET name = 'newer' WHERE id = 1")
    committed = time.monotonic()
    wait_caught_up(client, sql, mysql_server.flavor, w)
    time.sleep(4.3)  # 'in the snapshot' is now older than max_staleness_ms

    def hb() -> int:
        return int(client.get("cdc:heartbeat") or 0)

    def now_ms() -> int:
        s, us = client.time()
        return int(s) * 1000 + int(us) // 1000

    wait_for(lambda: hb() > now_ms() - 400, 30, "a fresh heartbeat")
    proxy = _HoldingProxy(target.port)
    cfg = load(tmp_path / "w.toml")
    cfg = replace(cfg, redis=replace(cfg.redis, url=f"redis://127.0.0.1:{proxy.port}/0"))
    reader = CacheReader(cfg)
    out: list[Any] = []
    try:
        assert reader.get_row(f"{db}.users", id=1) == {"id": "1", "name": "newer"}  # checked hit: window open
        floor = reader.window._state[1]
        assert w.proc is not None
        w.proc.send_signal(signal.SIGSTOP)  # so that the plain read's HGETALL runs before the replay
        client.close()
        server.restart(files={"dump.rdb": saved})
        proxy.armed.set()
        t = threading.Thread(target=lambda: out.append(reader.get_row(f"{db}.users", id=1)))
        t.start()
        assert proxy.held.wait(10), "the plain read's MGET is held"
        w.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: hb() >= floor, 30, "the worker's new heartbeat above the window's floor")
        proxy.release.set()
        t.join(30)
        assert out == [{"id": "1", "name": "newer"}], (
            f"{time.monotonic() - committed:.1f} s after 'newer' committed the reader served {out}"
        )
    finally:
        if w.proc is not None:
            w.proc.send_signal(signal.SIGCONT)
        proxy.release.set()
        reader.close()
        proxy.close()
        client.close()


def test_doctor_passes_a_column_level_select_that_the_reader_and_verify_cannot_use(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    db: str,
    users: None,
    mysql_user: Callable[..., tuple[str, str]],
    r: redis.Redis,
) -> None:
    """`GRANT SELECT (id) ON <db>.users`: the doctor's probe `SELECT 1 FROM <db>.users LIMIT 0` succeeds (any column
    privilege allows it), so `mysql.privilege.select.<db>.users` PASSes. But the reader's loader, warm and verify
    read `SELECT * FROM <db>.users ...`, which MySQL refuses (error 1143): `cdc-sync verify` fails, every
    `get_row` miss raises to the application.

    Correct: the doctor FAILs (probe with the statement the readers run, `SELECT * ... LIMIT 0`)."""
    user, password = mysql_user(*LEAST, f"SELECT (id) ON {db}.users")
    cfg = write_config(
        tmp_path / "w.toml", mysql_server, redis_server, USERS.format(db=db), user=user, password=password
    )
    doctor = cli(cfg, "doctor", "--json")
    r.set("user:1", json.dumps({"id": 1, "name": "a"}))  # a cached key for verify to check
    verify = cli(cfg, "verify", "--json")
    check = _check(doctor.stdout, f"mysql.privilege.select.{db}.users")
    assert check["status"] == "FAIL", (
        f"doctor: {check['status']} {check['detail']} (exit {doctor.returncode}); verify exit {verify.returncode}: "
        f"{verify.stderr.strip()[:200]}"
    )


def test_an_operator_command_that_outlives_its_lock_releases_a_hold_of_the_next_one(
    start_worker: StartWorker,
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`<ns>:operator` (review1's fix: one operator command at a time) is a lease without fencing: a command
    frozen past its TTL (SIGSTOP, a VM pause, swap; simulated here in-process by stopping the command and its
    lock keeper, with the TTL cut from 60 s to 1.5 s) loses the lock, the next command takes it, and the frozen one,
    when it thaws, carries on with its flush steps, which never look at the lock. This is review1's interleaving
    again: `flush b` has deleted b's keys and is frozen before releasing b's hold; the worker writes b:1 = 'v2',
    then lags; `checkpoint reset` (the lock has expired) holds every table and jumps past 'v3'; while it flushes
    table a, the old `flush b` thaws and releases b's hold; the worker vouches from the new position and b:1 =
    'v2' is served, 'v3' older than max_staleness_ms.

    Correct: a command that lost the lock stops before its next step (the flush steps check the lock's token, as
    the apply step checks the leader's), so the reset's hold on b stands until the reset flushes b."""
    import signal
    import threading

    from cdc_sync.adapters.redis import RedisSink
    from cdc_sync.errors import OperatorLockLost
    from cdc_sync.ops import maintenance

    execute(sql, *(f"CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(40))" for t in ("a", "b")))
    execute(sql, "INSERT INTO a VALUES (1, 'v0')", "INSERT INTO b VALUES (1, 'v0')")
    rules = "".join(f'[[tables]]\ntable = "{db}.{t}"\nkey = "{t}:{{id}}"\nmode = "update"\n' for t in ("a", "b"))
    extra = "[reader]\nmax_staleness_ms = 1500\nholdoff_ms = 200\nfreshness_check_ms = 0\n"
    w = start_worker(rules, extra=extra)
    cfg = load(tmp_path / "w.toml")
    monkeypatch.setattr(maintenance, "OPERATOR_LOCK_TTL_MS", 1500)
    frozen, thaw = threading.Event(), threading.Event()
    reset_between, reset_go = threading.Event(), threading.Event()

    class Hooked(RedisSink):
        def _step(self, op: str, keys: Any, ms: int = 0) -> int:
            me = threading.current_thread().name
            if me == "flush-cmd" and op == "release":
                frozen.set()  # b's keys are gone; the process freezes before releasing b
                assert thaw.wait(60)
            if me == "reset-cmd" and op == "mark" and any(f"flushing:{db}.b" in str(k) for k in keys):
                reset_between.set()  # a is flushed, b not yet
                assert reset_go.wait(60)
            return super()._step(op, keys, ms)

        def keep_operator_lock(self, token: str, ttl_ms: int) -> bool:
            if token.startswith("flush on") and not thaw.is_set():
                return False  # frozen: its keeper renews nothing either
            return super().keep_operator_lock(token, ttl_ms)

    monkeypatch.setattr(maintenance, "make_sink", Hooked)  # (a one-node sink: its class is the factory)
    stopped: list[Exception] = []

    def flush_b() -> None:
        try:
            maintenance.flush(cfg, [f"{db}.b"])
        except OperatorLockLost as exc:
            stopped.append(exc)  # the thawed command stops with this error, as the CLI reports it (exit 1)

    x = threading.Thread(target=flush_b, name="flush-cmd")
    y = threading.Thread(target=maintenance.reset, args=(cfg,), name="reset-cmd")
    assert w.proc is not None
    reader = CacheReader(cfg)
    try:
        x.start()
        assert frozen.wait(30)
        execute(sql, "UPDATE b SET name = 'v2' WHERE id = 1")
        wait_for(lambda: json.loads(r.get("b:1") or b"{}").get("name") == "v2", 30, "the worker writing b:1 = v2")
        w.proc.send_signal(signal.SIGSTOP)  # the worker lags
        execute(sql, "UPDATE b SET name = 'v3' WHERE id = 1")
        committed = time.monotonic()
        time.sleep(2.0)  # the frozen command's lock expires
        assert r.get("cdc:operator") is None
        y.start()
        assert reset_between.wait(30), "the reset took the lock, held every table, jumped and flushed a"
        thaw.set()
        x.join(30)  # the old flush command released b's hold
        w.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: int(r.get("cdc:heartbeat") or 0) > _now_ms(r) - 800, 30, "the worker vouching again")
        time.sleep(max(0.4, committed + 1.8 - time.monotonic()))  # 'v3' older than max_staleness_ms
        row = reader.get_row(f"{db}.b", id=1)
        assert row == {"id": 1, "name": "v3"}, (
            f"{time.monotonic() - committed:.1f} s after 'v3' committed the reader got {row}; "
            f"b's marker: {r.get(f'cdc:flushing:{db}.b')!r}"
        )
        assert len(stopped) == 1 and "refused" in str(stopped[0]), stopped
    finally:
        w.proc.send_signal(signal.SIGCONT)
        thaw.set()
        reset_go.set()
        x.join(30)
        y.join(30)
        reader.close()


def _now_ms(r: redis.Redis) -> int:
    s, us = r.time()
    return int(s) * 1000 + int(us) // 1000


def test_a_fetch_key_that_a_rule_renders_is_accepted_and_get_row_serves_it(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    db: str,
    users: None,
    r: redis.Redis,
) -> None:
    """Namespace protection refuses `fetch("cdc:...")`, and config/doctor refuse two rules whose templates can
    render one key, but a fetch key that a rule's template renders is accepted: `fetch("user:1", ...)` fills the
    worker-maintained key `user:1` with whatever the loader returned , and
    `get_row("users", id=1)` serves that as the row, with a fresh heartbeat, until the next change of user 1 or the
    TTL. `verify` would call it divergent; the reader never does.

    Correct: fetch refuses keys that a rule's key/also template matches (ValueError, like the namespace)."""
    start_worker(USERS.format(db=db), extra="[reader]\nmax_staleness_ms = 60000\nfreshness_check_ms = 0\n")
    wait_heartbeat(r)
    reader = reader_for()
    with contextlib.suppress(ValueError):
        reader.fetch("user:1", lambda: {"id": 1, "name": "not the row"}, ttl=600)
    assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "a"}, r.get("user:1")


def test_status_is_ok_while_an_interrupted_operator_command_keeps_a_table_bypassed(
    start_worker: StartWorker,
    tmp_path: Path,
    db: str,
    users: None,
    r: redis.Redis,
) -> None:
    """`cdc-sync flush` holds its tables' flushing markers without expiry ("an interrupted command leaves tables
    bypassed, never trusted"). Killed mid-flush (kill -9, an OOM kill, a closed SSH session), it leaves the hold:
    every reader bypasses the table from then on, and nothing but another flush or a worker restart releases it.
    `cdc-sync status` lists the table under `flushing` but says `status OK` and exits 0, for as long as it lasts:
    the operator is not told that a table is out of the cache for good, nor what to run.

    Correct: a hold with no operator command running (no `<ns>:operator`) is a problem (`status` NOT OK, exit 1,
    naming the table and `cdc-sync flush <table>`)."""
    start_worker(USERS.format(db=db), extra="[reader]\nmax_staleness_ms = 60000\n")
    wait_heartbeat(r)
    pipe = r.pipeline(transaction=False)
    for i in range(300_000):  # other keys: the flush's SCAN takes a while
        pipe.set(f"other:{i}", "x")
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    cfg = tmp_path / "w.toml"
    marker = f"cdc:flushing:{db}.users"
    flush = subprocess.Popen([sys.executable, "-m", "cdc_sync", "flush", f"{db}.users", "--config", str(cfg)])
    try:
        wait_for(lambda: r.exists(marker) and r.pttl(marker) == -1, 60, "the flush command's hold")
    finally:
        flush.kill()
        flush.wait(10)
    r.delete("cdc:operator")  # as after its 60 s expiry
    assert r.exists(marker) and r.pttl(marker) == -1, "the hold outlives the command"
    reader = CacheReader(load(cfg))
    try:
        reader.get_row(f"{db}.users", id=1)
        assert reader.stats["bypass:flushing"] == 1
    finally:
        reader.close()
    status = cli(cfg, "status", "--json")
    data = json.loads(status.stdout)
    assert status.returncode == 1 and any(f"{db}.users" in p for p in data["problems"]), (
        f"exit {status.returncode}, ok={data['ok']}, flushing={data['flushing']}, problems={data['problems']}"
    )
