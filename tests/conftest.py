"""Fixtures: one private MariaDB and Redis for the session (see tests/servers.py), a fresh database,
a clean Redis and a worker process per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import WorkerProcess, connect
from tests.servers import MySQLTarget, RedisTarget, mysql_target, redis_target

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLTarget]:
    target = mysql_target()  # raises when the server cannot start: a failure, never a skip
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisTarget]:
    target = redis_target()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def db(mysql_server: MySQLTarget) -> Iterator[str]:
    """A fresh, empty database for this test."""
    name = f"t{next(_db_counter)}"
    conn = connect(mysql_server)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


@pytest.fixture
def sql(mysql_server: MySQLTarget, db: str) -> Iterator[pymysql.Connection]:  # type: ignore[type-arg]
    conn = connect(mysql_server, db)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def r(redis_server: RedisTarget) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=redis_server.db)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker processes started by the test; any still running at the end are killed."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for w in started:
            w.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
