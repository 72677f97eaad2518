"""``cdc-sync verify`` at scale: batched reads, keys matched back by rendering them from the loaded row, orphan
spellings reported, ``--sample`` stopping the SCAN early, composite/binary keys and hashes, a progress bar only
in the human view. (The 1M-key figure is in ``make bench``: bench/verify.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.helpers import wait_for
from tests.integration.conftest import StartWorker

ROWS = 3000


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_sync", *args, "--config", str(config)], capture_output=True, text=True, timeout=300
    )


def verify_json(*args: str, config: Path) -> tuple[int, dict[str, Any]]:
    proc = cli("verify", "--json", *args, config=config)
    return proc.returncode, json.loads(proc.stdout)


def _divergent(data: dict[str, Any]) -> dict[str, Any]:
    return {d["key"]: d for t in data["tables"] for d in t["divergent"]}


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(60), name VARCHAR(40))")
        cur.executemany(
            "INSERT INTO users VALUES (%s, %s, %s)", [(i, f"u{i}@x", f"user {i}") for i in range(1, ROWS + 1)]
        )


def _started(start_worker: StartWorker, db: str, r: redis.Redis, rules: str) -> Path:
    w = start_worker(rules)
    wait_for(lambda: r.get("cdc:heartbeat") is not None, 30, "a heartbeat")
    assert cli("warm", config=w.config).returncode == 0
    return w.config


def _users_rule(db: str, extra: str = "") -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n{extra}'


def test_verify_checks_every_key_in_batches_and_finds_nothing_on_a_consistent_cache(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """3000 rows with two templates each: 6000 keys checked, no divergence; --json prints JSON only."""
    cfg = _started(start_worker, db, r, _users_rule(db, 'also = ["user:email:{email}"]\n'))
    proc = cli("verify", "--json", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["tables"][0]["checked"] == 2 * ROWS and data["tables"][0]["divergent"] == []
    assert proc.stderr == "", "no progress bar with --json"
    human = cli("verify", config=cfg)
    assert human.returncode == 0 and f"{2 * ROWS} key(s) checked, 0 divergent" in human.stdout
    assert "users" in human.stderr, "the progress bar (its label) goes to stderr"


def test_a_key_spelling_no_row_renders_is_an_orphan(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """``user:05`` holding row 5's value: MySQL finds row 5 for id = '05', but the worker maintains ``user:5``
    only, so the orphan is divergent (database side absent); so is the key of a row deleted under the cache."""
    cfg = _started(start_worker, db, r, _users_rule(db))
    r.set("user:05", r.get("user:5") or b"")
    r.set("user:email:U7@X", b"{}")  # not a key of this rule: never looked at
    with sql.cursor() as cur:
        cur.execute("SET sql_log_bin = 0")  # a delete the worker never sees, as if its event had been lost
        cur.execute("DELETE FROM users WHERE id = 9")
        cur.execute("SET sql_log_bin = 1")
    code, data = verify_json(config=cfg)
    divergent = _divergent(data)
    assert code == 1 and set(divergent) == {"user:05", "user:9"}
    assert divergent["user:05"]["database"] == "(absent)" and divergent["user:05"]["cached"]["id"] == 5
    assert divergent["user:9"]["database"] == "(absent)"
    code, data = verify_json("--repair", config=cfg)
    assert code == 1 and r.exists("user:05", "user:9") == 0
    assert verify_json(config=cfg)[0] == 0


def test_sample_stops_the_scan_after_n_keys(start_worker: StartWorker, db: str, users: None, r: redis.Redis) -> None:
    """--sample 100: exactly 100 keys are checked (first in SCAN order), not all 3000."""
    cfg = _started(start_worker, db, r, _users_rule(db))
    code, data = verify_json("--sample", "100", config=cfg)
    assert code == 0 and data["tables"][0]["checked"] == 100


def test_composite_binary_keys_and_hashes_are_matched_from_the_row(
    start_worker: StartWorker, db: str, r: redis.Redis, sql: pymysql.Connection
) -> None:  # type: ignore[type-arg]
    """A (shop, sku VARBINARY) key in hash format: every key matched back; a tampered field found."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE items (shop INT, sku VARBINARY(8), qty INT, PRIMARY KEY (shop, sku))")
        cur.executemany(
            "INSERT INTO items VALUES (%s, %s, %s)", [(i % 7, bytes([i % 256, 0x3A, 0xFF]), i) for i in range(700)]
        )
    rule = f'[[tables]]\ntable = "{db}.items"\nkey = "item:{{shop}}:{{sku}}"\nmode = "update"\nformat = "hash"\n'
    cfg = _started(start_worker, db, r, rule)
    code, data = verify_json(config=cfg)
    assert code == 0 and data["tables"][0]["checked"] == 700, data
    key = next(k for k in r.scan_iter("item:*"))
    r.hset(key, "qty", "-1")
    code, data = verify_json(config=cfg)
    divergent = _divergent(data)
    assert code == 1 and list(divergent) == [key.decode()] and divergent[key.decode()]["cached"]["qty"] == "-1"
