"""The documented least privileges, proven: a Redis ACL user with exactly the README's commands runs the worker,
the readers and the operator commands (every command a script calls counts too: the ACL applies inside Lua)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pymysql
import redis

from cdc_sync import CacheReader
from cdc_sync.config import load
from tests.helpers import WorkerProcess, cli, execute, start_on, wait_caught_up, wait_heartbeat
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_commands() -> list[str]:
    """The Redis commands the README's MySQL-requirements section lists for the worker, readers and the CLI."""
    text = " ".join(README.read_text().split())
    found = re.search(r"On Redis the worker, readers and the CLI need `([A-Z ]+)` on their keys", text)
    assert found, "the README lists the Redis commands"
    words = found.group(1).split()
    out: list[str] = []
    i = 0
    while i < len(words):  # two-word commands: SCRIPT LOAD
        if words[i] == "SCRIPT" and i + 1 < len(words):
            out.append(f"script|{words[i + 1].lower()}")
            i += 2
        else:
            out.append(words[i].lower())
            i += 1
    return out


def test_the_documented_redis_commands_are_enough_for_worker_readers_and_cli(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    own_redis: tuple[LocalServer, RedisTarget],
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    workers: list[WorkerProcess],
) -> None:
    _server, target = own_redis
    admin = redis.Redis(host=target.host, port=target.port)
    allowed = documented_commands()
    admin.execute_command(
        "ACL", "SETUSER", "cdcleast", "reset", "on", ">Least-Pw-1", "~*", "-@all", *(f"+{c}" for c in allowed)
    )
    execute(
        sql,
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20), team INT)",
        "INSERT INTO users VALUES (1, 'a', 7), (2, 'b', 7)",
    )
    rules = f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\ntags = ["team"]\n'
    limited = RedisTarget(target.host, target.port)
    w = start_on(tmp_path, mysql_server, limited, rules, workers, extra="[reader]\nfreshness_check_ms = 0\n")
    cfg = tmp_path / "w.toml"
    cfg.write_text(cfg.read_text().replace(target.url, f"redis://cdcleast:Least-Pw-1@{target.host}:{target.port}/0"))
    w.terminate()
    w = WorkerProcess(cfg, tmp_path / "w2.log").start()
    workers.append(w)
    execute(sql, "UPDATE users SET name = 'a2' WHERE id = 1")
    wait_caught_up(admin, sql, mysql_server.flavor, w)
    assert json.loads(admin.get("user:1") or b"{}") == {"id": 1, "name": "a2", "team": 7}
    reader = CacheReader(load(cfg))
    try:
        assert reader.get_row(f"{db}.users", id=2) == {"id": 2, "name": "b", "team": 7}
        got: Any = reader.fetch("team:7", lambda: ["a2", "b"], ttl=60, depends_on=[(f"{db}.users", {"team": 7})])
        assert got == ["a2", "b"]
        errors = {k: v for k, v in reader.stats.counts.items() if "redis" in k}
        assert not errors, errors
    finally:
        reader.close()
    wait_heartbeat(admin)
    for args in (("status",), ("verify",), ("flush", f"{db}.users"), ("checkpoint", "show"), ("warm", f"{db}.users")):
        proc = cli(cfg, *args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert w.alive() and "sink.unavailable" not in w.event_names()
    admin.close()
