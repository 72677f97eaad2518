"""Helpers for end-to-end tests: config files, the worker process, waiting for catch-up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import redis

from tests.servers import MySQLTarget, RedisTarget


def connect(mysql: MySQLTarget, db: str | None = None, **kwargs: Any) -> pymysql.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=mysql.host,
        port=mysql.port,
        user=mysql.user,
        password=mysql.password,
        database=db,
        autocommit=True,
        charset="utf8mb4",
        **kwargs,
    )


def server_position(conn: pymysql.Connection, flavor: str) -> str:  # type: ignore[type-arg]
    """The server's current GTID position (what a caught-up worker's checkpoint equals)."""
    with conn.cursor() as cur:
        if flavor == "mariadb":
            cur.execute("SELECT @@global.gtid_binlog_pos")
        else:
            cur.execute("SELECT @@global.gtid_executed")
        return str(cur.fetchone()[0]).replace("\n", "")


def file_position(conn: pymysql.Connection) -> str:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
        return f"{row[0]}:{row[1]}"


def write_config(
    path: Path,
    mysql: MySQLTarget,
    redis_t: RedisTarget,
    tables: str,
    *,
    namespace: str = "cdc",
    extra_mysql: str = "",
    extra: str = "",
    user: str | None = None,
    password: str | None = None,
    server_id: int = 4242,
    worker: str = "",
    redis_url: str | None = None,
    redis_extra: str = "",
) -> Path:
    path.write_text(
        f"""
[mysql]
host = "{mysql.host}"
port = {mysql.port}
user = "{user or mysql.user}"
password = "{mysql.password if password is None else password}"
server_id = {server_id}
heartbeat_s = 0.5
{extra_mysql}

[redis]
url = "{redis_url or redis_t.url}"
namespace = "{namespace}"
{redis_extra}

[worker]
retry_initial_s = 0.05
retry_max_s = 0.5
{worker}

[log]
level = "debug"
format = "json"

[metrics]
listen = "127.0.0.1:0"

{extra}

{tables}
""",
        encoding="utf-8",
    )
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class WorkerProcess:
    """``python -m cdc_sync run`` as a child process, its JSON log captured to a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_sync", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]


def checkpoint(r: redis.Redis, namespace: str = "cdc") -> str | None:
    value = r.get(f"{namespace}:checkpoint")
    return value.decode() if value is not None else None


def wait_caught_up(
    r: redis.Redis,
    conn: pymysql.Connection,
    flavor: str,
    worker: WorkerProcess | None = None,  # type: ignore[type-arg]
    namespace: str = "cdc",
    timeout: float = 60.0,
) -> str:
    """Wait until the worker's checkpoint equals the server's current position."""
    target = server_position(conn, flavor)

    def done() -> bool:
        if worker is not None and not worker.alive():
            raise AssertionError(
                f"worker exited with {worker.proc.returncode if worker.proc else None}:\n{worker.log_text()[-4000:]}"
            )
        return (checkpoint(r, namespace) or "").partition("@")[0] == target  # MariaDB: without @server:file:pos

    wait_for(done, timeout, f"checkpoint {target}")
    return target


def cli(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m cdc_sync ARGS --config CFG``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cdc_sync", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def execute(conn: pymysql.Connection, *statements: str) -> None:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        for s in statements:
            cur.execute(s)


def query_rows(conn: pymysql.Connection, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return [tuple(r) for r in cur.fetchall()]


def wait_heartbeat(r: redis.Redis, namespace: str = "cdc") -> None:
    wait_for(lambda: r.get(f"{namespace}:heartbeat") is not None, 30, "the worker's first heartbeat")


def start_on(
    tmp_path: Path,
    mysql: MySQLTarget,
    redis_t: RedisTarget,
    tables: str,
    workers: list[WorkerProcess],
    name: str = "w",
    **kwargs: Any,
) -> WorkerProcess:
    """A worker on tmp_path/<name>.toml for these servers, started and caught up."""
    cfg = write_config(tmp_path / f"{name}.toml", mysql, redis_t, tables, **kwargs)
    w = WorkerProcess(cfg, tmp_path / f"{name}.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    client = redis.Redis(host=redis_t.host, port=redis_t.port, db=redis_t.db)
    with connect(mysql) as conn:
        wait_caught_up(client, conn, mysql.flavor, w)
    client.close()
    return w


class AsyncDriven:
    """An ``AsyncCacheReader`` behind the sync reader's calls, so that one test drives both readers: every call
    runs on one event loop in a thread of its own (tests call from many threads, as with the sync reader). A
    plain ``fetch`` loader runs in a worker thread (``asyncio.to_thread``), as an asyncio application would run
    blocking work; other attributes are the async reader's own."""

    _CALLS = ("get_row", "get_rows", "fetch", "fill_rows", "schema_epochs", "close")

    def __init__(self, reader: Any) -> None:
        import asyncio
        import threading

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True, name="async-reader")
        thread.start()
        object.__setattr__(self, "_reader", reader)
        object.__setattr__(self, "_loop", loop)
        object.__setattr__(self, "_thread", thread)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import asyncio

        coro = getattr(self._reader, name)(*args, **kwargs)
        written = self.__dict__.get("_written")
        if written:  # (the loop's task has its own context: after() is entered inside it)
            gtid, wait_ms = written[-1]

            async def inside() -> Any:
                with self._reader.after(gtid, wait_ms):
                    return await coro

            return asyncio.run_coroutine_threadsafe(inside(), self._loop).result()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @contextlib.contextmanager
    def after(self, gtid: str | None, wait_ms: int | None = None) -> Iterator[None]:
        """The async reader's ``after``, entered around each call of the block (one test thread at a time)."""
        stack = self.__dict__.setdefault("_written", [])
        stack.append((gtid, wait_ms))
        try:
            yield
        finally:
            stack.pop()

    def fetch(self, key: str, loader: Callable[[], Any], ttl: float, depends_on: Any = ()) -> Any:
        import asyncio
        import inspect

        async def off_loop() -> Any:
            return await asyncio.to_thread(loader)

        chosen = loader if inspect.iscoroutinefunction(loader) else off_loop
        return self._call("fetch", key, chosen, ttl, depends_on)

    def close(self) -> None:
        try:
            self._call("close")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __getattr__(self, name: str) -> Any:
        if name in self._CALLS:
            return lambda *args, **kwargs: self._call(name, *args, **kwargs)
        return getattr(self._reader, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._reader, name, value)
