"""``cdc-sync status`` tells the truth about the real worker process: kill -9, SIGTERM, SIGSTOP, FLUSHALL,
MySQL unreachable, a skewed host clock, and a namespace no worker ever ran on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, wait_caught_up, wait_for, write_config
from tests.integration.conftest import StartWorker
from tests.integration.forwarder import Forwarder
from tests.servers import MySQLTarget, RedisTarget


def status(config: Path) -> tuple[int, dict[str, Any]]:
    """(exit code, --json data)."""
    proc = _run("status", "--json", config=config)
    return proc.returncode, json.loads(proc.stdout)


def human(config: Path) -> tuple[int, str]:
    proc = _run("status", config=config)
    return proc.returncode, proc.stdout


def _run(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_sync", *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def _tables(db: str) -> str:
    return f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'


@pytest.fixture
def users(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")


def _ok_soon(config: Path, timeout: float = 30) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        code, data = status(config)
        return data if code == 0 and data["ok"] else None

    result: dict[str, Any] = wait_for(ok, timeout, "status to be OK")
    return result


def _not_ok_soon(config: Path, words: str, timeout: float = 30) -> dict[str, Any]:
    def bad() -> dict[str, Any] | None:
        code, data = status(config)
        return data if code == 1 and not data["ok"] and words in " ".join(data["problems"]) else None

    result: dict[str, Any] = wait_for(bad, timeout, f"status to report {words!r}")
    return result


def test_status_is_ok_only_while_the_worker_streams(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """A running, caught-up worker: exit 0, ok, alive, streaming, the heartbeat within the bound; JSON = human."""
    w = start_worker(_tables(db))
    data = _ok_soon(w.config)
    worker = data["worker"]
    assert worker["alive"] and worker["state"] == "streaming" and worker["pid"] == w.proc.pid  # type: ignore[union-attr]
    assert data["fresh"] and data["heartbeat_age_s"] <= data["max_staleness_s"] and data["problems"] == []
    code, text = human(w.config)
    assert code == 0 and "status       OK" in text and f"pid {w.proc.pid}" in text  # type: ignore[union-attr]


def test_kill9_makes_status_fail_and_say_not_running(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """kill -9: the last state written was 'streaming', yet status exits 1 and says the worker is not running."""
    w = start_worker(_tables(db))
    _ok_soon(w.config)
    w.kill9()
    data = _not_ok_soon(w.config, "no worker is running")
    assert data["worker"]["alive"] is False and data["worker"]["state"] == "streaming"
    assert "while streaming (killed, paused, or cut off from Redis)" in data["problems"][0]
    code, text = human(w.config)
    assert code == 1 and "NOT RUNNING (last state streaming)" in text


def test_sigterm_records_a_clean_stop(start_worker: StartWorker, db: str, users: None, r: redis.Redis) -> None:
    """SIGTERM: exit 0, the record says 'stopped' at once, and status exits 1 saying it stopped cleanly."""
    w = start_worker(_tables(db))
    _ok_soon(w.config)
    assert w.terminate() == 0
    code, data = status(w.config)
    assert code == 1 and data["worker"]["state"] == "stopped" and not data["worker"]["alive"]
    assert "stopped cleanly" in data["problems"][0]


def test_sigstop_a_worker_alive_but_frozen_is_not_running_until_it_resumes(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """SIGSTOP (the process exists but does nothing): not running after the window; SIGCONT: OK again."""
    w = start_worker(_tables(db))
    _ok_soon(w.config)
    assert w.proc is not None
    w.proc.send_signal(19)  # SIGSTOP
    try:
        _not_ok_soon(w.config, "was last seen")
    finally:
        w.proc.send_signal(18)  # SIGCONT
    _ok_soon(w.config)


def test_the_record_comes_back_after_redis_loses_it(
    start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """FLUSHALL (and a DEL of the record alone) while running: the record is rewritten within seconds; OK again."""
    w = start_worker(_tables(db))
    _ok_soon(w.config)
    r.flushall()
    wait_for(lambda: r.hlen("cdc:workers") == 1, 10, "the record to be rewritten")
    _ok_soon(w.config)
    r.delete("cdc:workers")
    wait_for(lambda: r.hlen("cdc:workers") == 1, 10, "the record to be rewritten")
    rec = json.loads(next(iter(r.hvals("cdc:workers"))))
    assert rec["state"] == "streaming" and rec["pid"] == w.proc.pid  # type: ignore[union-attr]


@pytest.fixture
def mysql_forwarder(mysql_server: MySQLTarget) -> Iterator[Forwarder]:
    fwd = Forwarder(mysql_server.port).on()
    try:
        yield fwd
    finally:
        fwd.off()


def test_mysql_unreachable_shows_reconnecting(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    redis_server: RedisTarget,
    mysql_forwarder: Forwarder,
    db: str,
    users: None,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    workers: list[WorkerProcess],
) -> None:
    """MySQL refuses connections: the worker stays alive, status exits 1 and says 'reconnecting' with the reason;
    once MySQL is back, streaming and OK again."""
    via = MySQLTarget("127.0.0.1", mysql_forwarder.port, mysql_server.user, mysql_server.password, mysql_server.flavor)
    cfg = write_config(tmp_path / "w.toml", via, redis_server, _tables(db))
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    _ok_soon(cfg)
    mysql_forwarder.off()
    data = _not_ok_soon(cfg, "is reconnecting, not streaming")
    assert data["worker"]["alive"] and data["worker"]["state"] == "reconnecting" and w.alive()
    # first the cut ("binlog connection lost"), then each retry's reason
    data = _not_ok_soon(cfg, "connection refused")
    assert data["worker"]["state"] == "reconnecting" and "connection refused" in data["worker"]["last_error"]
    assert "worker       reconnecting" in human(cfg)[1]
    mysql_forwarder.on()
    _ok_soon(cfg)


def test_a_skewed_host_clock_does_not_change_the_verdict(
    tmp_path: Path, start_worker: StartWorker, db: str, users: None, r: redis.Redis
) -> None:
    """A worker whose wall clock is 3 hours ahead: alive, and its start time is on Redis's clock."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import time\n_real = time.time\ntime.time = lambda: _real() + 3 * 3600\n")
    w = start_worker(_tables(db), env={"PYTHONPATH": str(site)})
    data = _ok_soon(w.config)
    started = time.mktime(time.strptime(data["worker"]["started_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    redis_now = float(r.time()[0])
    assert 0 <= redis_now - started < 120, (data["worker"]["started_at"], redis_now)


def test_a_namespace_no_worker_ever_ran_on(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, db: str, users: None, r: redis.Redis
) -> None:
    """No record at all: exit 1, 'no worker has ever reported', no heartbeat; the human view says so too."""
    cfg = write_config(tmp_path / "w.toml", mysql_server, redis_server, _tables(db), namespace="never")
    code, data = status(cfg)
    assert code == 1 and data["ok"] is False and data["worker"] is None and data["workers"] == []
    assert "no worker has ever reported" in data["problems"][0]
    code, text = human(cfg)
    assert code == 1 and "(none has reported here)" in text and "status       NOT OK" in text
