"""The continuous sampled verifier (worker/verifier.py) against the real worker, MariaDB and Redis."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pymysql
import redis

from cdc_sync.config import load
from cdc_sync.core.planner import Delete, SetJson
from cdc_sync.worker.verifier import SampledVerifier
from tests.helpers import wait_caught_up, wait_for
from tests.integration.conftest import StartWorker
from tests.integration.test_ops import _http_port
from tests.servers import MySQLTarget
from tools.scrape import ANY_LABELS
from tools.scrape import metric as scrape_metric


def _tables(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'


def _users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    """(After the worker started: it writes the rows' keys.)"""
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'n{i}')" for i in range(1, 21)))


def _table(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")


def test_a_wrong_key_is_found_confirmed_and_evicted(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    tmp_path: object,
) -> None:
    """A key holding what no row says (as a lost change would leave it) is reported once confirmed against the
    unchanged row, and evicted; a right key, an absent one and a key of no rule are not reported."""
    _table(sql)
    w = start_worker(_tables(db))
    _users(sql)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    config = load(w.config)
    config = replace(config, verify=replace(config.verify, sample_rate=1.0))
    verifier = SampledVerifier(config)
    verifier.start()
    try:
        assert json.loads(r.get("user:3") or b"") == {"id": 3, "name": "n3"}
        r.set("user:1", json.dumps({"id": 1, "name": "lost change"}))
        verifier.offer([Delete("user:1"), SetJson("user:3", b"", 0), Delete("user:99"), Delete("other:1")])
        wait_for(lambda: verifier.checked >= 3, 30, "the samples checked")
        assert verifier.inconsistent == 1 and r.get("user:1") is None, "the wrong key was evicted"
        assert json.loads(r.get("user:3") or b"") == {"id": 3, "name": "n3"}, "the right one left alone"
        assert verifier.ratio(60) == 1 - 1 / verifier.checked
        # a table being flushed (a DDL, a reset): its keys are on their way out and trusted by no reader
        r.set(f"cdc:flushing:{db}.users", "1", px=60_000)
        r.set("user:4", json.dumps({"id": 4, "name": "stale, being flushed"}))
        checked = verifier.checked
        verifier.offer([Delete("user:4"), Delete("other:2")])
        time.sleep(2)  # (the verifier looks every 0.5 s)
        assert verifier.checked == checked and verifier.inconsistent == 1, "left out while flushing"
        r.delete(f"cdc:flushing:{db}.users")
        r.delete("user:4")
        # the sampled keys of a busy table, all right: nothing more is reported
        with sql.cursor() as cur:
            for i in range(2, 21):
                cur.execute("UPDATE users SET name = %s WHERE id = %s", (f"m{i}", i))
        wait_caught_up(r, sql, mysql_server.flavor, w)
        checked = verifier.checked
        verifier.offer([Delete(f"user:{i}") for i in range(2, 21)])
        wait_for(lambda: verifier.checked >= checked + 19, 30, "the second samples checked")
        assert verifier.inconsistent == 1
    finally:
        verifier.stop()


def test_the_worker_verifies_samples_of_what_it_applies(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """``[verify] sample_rate = 1``: every key the worker writes is checked, at most ``max_checks_per_s`` a second,
    and a consistent cache reports no inconsistency (no false positive while rows keep changing)."""
    _table(sql)
    w = start_worker(_tables(db), extra="[verify]\nsample_rate = 1.0\nmax_checks_per_s = 1000\n")
    _users(sql)
    for n in range(3):
        with sql.cursor() as cur:
            for i in range(1, 21):
                cur.execute("UPDATE users SET name = %s WHERE id = %s", (f"r{n}-{i}", i))
    wait_caught_up(r, sql, mysql_server.flavor, w)
    port = _http_port(w)

    def metric(name: str, labels: str = ANY_LABELS) -> float:
        return scrape_metric(port, name, labels)

    # (a key offered several times while its samples wait is checked once)
    wait_for(lambda: metric("cdc_sync_verify_checks_total") >= 20, 60, "every key verified")
    # a DDL: the verifier reads the table's columns again (else every row would look wrong to it)
    with sql.cursor() as cur:
        cur.execute("ALTER TABLE users ADD COLUMN extra INT DEFAULT 7")
        time.sleep(1.5)  # (past the flush's hold-off: the keys below are checked, not left out)
        for i in range(1, 21):
            cur.execute("UPDATE users SET name = %s WHERE id = %s", (f"after-ddl-{i}", i))
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: metric("cdc_sync_verify_checks_total") >= 40, 60, "the keys after the DDL verified")
    assert metric("cdc_sync_verify_inconsistencies_total") == 0
    assert metric("cdc_sync_verify_consistency_ratio", re.escape('{window="1m"}')) == 1.0
    assert "verify.started" in w.event_names() and "verify.inconsistency" not in w.event_names()
