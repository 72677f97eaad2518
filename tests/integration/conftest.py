"""Shared fixtures for end-to-end tests: start a worker for a [[tables]] snippet and wait until ready; readers on
its config; a Redis server of the test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync import CacheReader
from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.config import load
from tests.helpers import AsyncDriven, WorkerProcess, connect, execute, wait_caught_up, wait_for, write_config
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import LocalServer, start_redis

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(
    tmp_path: Path, mysql_server: MySQLTarget, redis_server: RedisTarget, workers: list[WorkerProcess]
) -> StartWorker:
    """start_worker(tables, wait=True, name="w", **write_config kwargs) -> a running WorkerProcess."""

    def start(
        tables: str, *, wait: bool = True, name: str = "w", env: dict[str, str] | None = None, **kwargs: Any
    ) -> WorkerProcess:
        cfg = tmp_path / f"{name}.toml"
        if not cfg.exists() or kwargs or tables:
            write_config(cfg, mysql_server, redis_server, tables, **kwargs)
        w = WorkerProcess(cfg, tmp_path / f"{name}.log", env=env).start()
        workers.append(w)
        if wait:
            # ready = past start-up (rules reconciled, checkpoint recorded), then caught up
            wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
            r = redis.Redis(host=redis_server.host, port=redis_server.port, db=redis_server.db)
            with connect(mysql_server) as conn:
                wait_caught_up(r, conn, mysql_server.flavor, w, namespace=kwargs.get("namespace", "cdc"))
            r.close()
        return w

    return start


@pytest.fixture
def reader_driver() -> str:
    """Which reader ``reader_for`` makes: "sync" here; the reader's own test modules run every test with both
    (they override this fixture with params ["sync", "async"])."""
    return "sync"


@pytest.fixture
def reader_for(tmp_path: Path, reader_driver: str) -> Iterator[Callable[..., CacheReader]]:
    """reader_for(config name, loader=None, **reader overrides): a CacheReader on tmp_path/<name>.toml, or with
    ``reader_driver`` "async" an AsyncCacheReader driven through the same calls (tests.helpers.AsyncDriven);
    closed at the end."""
    made: list[Any] = []

    def make(name: str = "w", loader: RowLoader | None = None, **overrides: Any) -> CacheReader:
        cfg = load(tmp_path / f"{name}.toml")
        if overrides:
            cfg = replace(cfg, reader=replace(cfg.reader, **overrides))
        reader: Any
        if reader_driver == "sync":
            reader = CacheReader(cfg, loader=loader)
        else:
            from cdc_sync import AsyncCacheReader

            reader = AsyncDriven(AsyncCacheReader(cfg, loader=loader))
        made.append(reader)
        return reader  # type: ignore[no-any-return]

    yield make
    for reader in made:
        reader.close()


@pytest.fixture
def own_redis() -> Iterator[tuple[LocalServer, RedisTarget]]:
    """A Redis server of the test's own (to restart, reconfigure or snapshot)."""
    server = start_redis()
    try:
        yield server, RedisTarget("127.0.0.1", server.port)
    finally:
        server.stop()


@pytest.fixture
def mysql_user(sql: pymysql.Connection) -> Iterator[Callable[..., tuple[str, str]]]:  # type: ignore[type-arg]
    """mysql_user(grants...): a MySQL user with a password and exactly these grants: (user, password)."""
    made: list[str] = []

    def make(*grants: str, name: str = "cdcrev") -> tuple[str, str]:
        password = "Review-Secret-771"
        execute(sql, f"DROP USER IF EXISTS '{name}'@'%'", f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'")
        for grant in grants:
            execute(sql, f"GRANT {grant} TO '{name}'@'%'")
        made.append(name)
        return name, password

    yield make
    for name in made:
        execute(sql, f"DROP USER IF EXISTS '{name}'@'%'")
