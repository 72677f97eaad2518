"""examples/ run against the real worker, MariaDB and Redis: the FastAPI service on AsyncCacheReader and the Flask
app whose writes go through the SQLAlchemy ORM (the ``examples`` extra)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from tests.helpers import wait_caught_up, wait_for
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget

READER = "[reader]\nmax_staleness_ms = 60000\nholdoff_ms = 0\n"


@pytest.fixture
def app_env(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(40))")
        cur.execute("INSERT INTO users VALUES (1, 'ann'), (2, 'bob')")
    tables = f'[[tables]]\ntable = "{db}.users"\nkey = "user:{{id}}"\nmode = "update"\n'
    w = start_worker(tables, extra=READER)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    wait_for(lambda: r.get("cdc:heartbeat"), 30, "a heartbeat")
    host, port = mysql_server.host, mysql_server.port
    user, password = mysql_server.user, mysql_server.password
    monkeypatch.setenv("CDC_SYNC_CONFIG", str(tmp_path / "w.toml"))
    monkeypatch.setenv("APP_USERS_TABLE", f"{db}.users")
    auth = f"{user}:{password}@" if password else f"{user}@"
    monkeypatch.setenv("APP_DATABASE_URL", f"mysql+pymysql://{auth}{host}:{port}/{db}")
    yield


def test_the_fastapi_service(app_env: None, r: redis.Redis) -> None:
    from fastapi.testclient import TestClient

    from examples import fastapi_app

    with TestClient(fastapi_app.app) as client:
        assert client.get("/users/1").json() == {"id": 1, "name": "ann"}
        assert json.loads(r.get("user:1") or b"") == {"id": 1, "name": "ann"}, "filled for the next reader"
        assert client.get("/users/1").json() == {"id": 1, "name": "ann"}
        assert client.get("/users/9").status_code == 404
        renamed = client.put("/users/1", json={"name": "anna"}).json()
        assert renamed["user"] == {"id": 1, "name": "anna"} and renamed["gtid"].count("-") == 2
        assert client.get("/users/1", params={"after": renamed["gtid"]}).json() == {"id": 1, "name": "anna"}
        assert client.put("/users/9", json={"name": "x"}).status_code == 404


def test_the_flask_app_with_orm_writes(app_env: None, r: redis.Redis) -> None:
    from examples.flask_app import create_app

    app = create_app()
    reader = app.extensions["cdc_sync_reader"]
    try:
        client = app.test_client()
        assert client.get("/users/2").get_json() == {"id": 2, "name": "bob"}
        assert client.get("/users/2").get_json() == {"id": 2, "name": "bob"}
        assert reader.stats["hit"] >= 1
        renamed = client.post("/users/2/rename", json={"name": "bobby"}).get_json()
        assert renamed["user"] == {"id": 2, "name": "bobby"}, "the ORM's write, read back through the cache"
        # the worker applied the ORM's commit from the binlog: the cache holds it, no app code wrote it
        wait_for(lambda: json.loads(r.get("user:2") or b"{}").get("name") == "bobby", 30, "the worker's update")
        assert client.post("/users/9/rename", json={"name": "x"}).status_code == 404
    finally:
        reader.close()
