"""Shared fixture for end-to-end tests: start a worker for a [[tables]] snippet and wait until ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import WorkerProcess, connect, wait_caught_up, wait_for, write_config
from tests.servers import MySQLTarget, RedisTarget

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
