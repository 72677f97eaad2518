"""Test backends for MySQL/MariaDB and Redis.

Choice, per server kind:
* ``CDC_SYNC_TEST_MYSQL_URL`` / ``CDC_SYNC_TEST_REDIS_URL``: use that existing server
  (``mysql://user:password@host:port``, ``redis://host:port/db``);
* ``CDC_SYNC_TEST_BACKEND=docker`` (or ``auto`` where a Docker engine answers and testcontainers is
  installed): MySQL 8.4 and Redis 7 containers;
* otherwise local binaries: a private ``mariadbd`` and ``redis-server`` in temp dirs on free ports.

A server that cannot be started fails the run; nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tools.devservers import start_mariadb, start_redis


@dataclass
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    flavor: str  # "mariadb" | "mysql"
    pid: int | None = None  # the server process, when it runs on this machine under our control
    stop: Callable[[], None] = field(default=lambda: None, repr=False)


@dataclass
class RedisTarget:
    host: str
    port: int
    db: int = 0
    stop: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-not-found]
        import testcontainers  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    try:
        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def backend() -> str:
    choice = os.environ.get("CDC_SYNC_TEST_BACKEND", "auto")
    if choice == "auto":
        return "docker" if _docker_answers() else "local"
    return choice


def mysql_target() -> MySQLTarget:
    url = os.environ.get("CDC_SYNC_TEST_MYSQL_URL")
    if url:
        parts = urlsplit(url)
        flavor = os.environ.get("CDC_SYNC_TEST_MYSQL_FLAVOR", "mariadb")
        return MySQLTarget(
            parts.hostname or "127.0.0.1", parts.port or 3306, parts.username or "root", parts.password or "", flavor
        )
    if backend() == "docker":
        from testcontainers.mysql import MySqlContainer  # type: ignore[import-not-found]

        container = MySqlContainer("mysql:8.4", root_password="root").with_command(
            "--log-bin=bin --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL "
            "--server-id=1 --gtid-mode=ON --enforce-gtid-consistency=ON"
        )
        container.start()
        return MySQLTarget(
            container.get_container_host_ip(),
            int(container.get_exposed_port(3306)),
            "root",
            "root",
            "mysql",
            stop=container.stop,
        )
    server = start_mariadb()
    return MySQLTarget("127.0.0.1", server.port, "root", "", "mariadb", pid=server.proc.pid, stop=server.stop)


def redis_target() -> RedisTarget:
    url = os.environ.get("CDC_SYNC_TEST_REDIS_URL")
    if url:
        parts = urlsplit(url)
        return RedisTarget(parts.hostname or "127.0.0.1", parts.port or 6379, int((parts.path or "/0")[1:] or 0))
    if backend() == "docker":
        from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

        container = RedisContainer("redis:7")
        container.start()
        return RedisTarget(
            container.get_container_host_ip(), int(container.get_exposed_port(6379)), stop=container.stop
        )
    server = start_redis()
    return RedisTarget("127.0.0.1", server.port, stop=server.stop)
