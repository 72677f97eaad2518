"""TLS end to end: MariaDB with require_secure_transport=ON and Redis on a TLS-only port, certificates made by
openssl here, host names verified, client certificates required on both sides.

The worker (binlog stream, admin queries, the apply step), the reader (its Redis pool and its MySQL loader, sync and
asyncio) and every command run over TLS only: no plain connection is accepted by either server, so each one that
works went over TLS. A CA that did not sign the server's certificate, and a host name the certificate does not hold,
are refused with a clear error (exit 2, never retried forever).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
import redis

from cdc_sync import AsyncCacheReader, CacheReader
from cdc_sync.config import load
from cdc_sync.errors import ServerRefused
from tests.helpers import WorkerProcess, cli, execute, wait_caught_up, wait_for, wait_heartbeat
from tools.devservers import LocalServer, start_mariadb, start_redis

USER, PASSWORD = "cdctls", "Tls-Secret-2291"


@dataclass
class Tls:
    dir: Path
    mariadb: LocalServer
    redis: LocalServer

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def sql(self) -> pymysql.Connection:  # type: ignore[type-arg]
        ctx_args = {"ca": self.path("ca.pem"), "cert": self.path("client.pem"), "key": self.path("client.key")}
        return pymysql.connect(
            host="127.0.0.1", port=self.mariadb.port, user="root", autocommit=True, ssl=ctx_args, database="tlsdb"
        )

    def redis_client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.redis.port,
            ssl=True,
            ssl_ca_certs=self.path("ca.pem"),
            ssl_certfile=self.path("client.pem"),
            ssl_keyfile=self.path("client.key"),
        )

    def config(
        self,
        path: Path,
        *,
        mysql_ca: str = "ca.pem",
        redis_ca: str = "ca.pem",
        mysql_host: str = "127.0.0.1",
        redis_host: str = "127.0.0.1",
    ) -> Path:
        path.write_text(f"""
[mysql]
host = "{mysql_host}"
port = {self.mariadb.port}
user = "{USER}"
password = "{PASSWORD}"
server_id = 5151
heartbeat_s = 0.5
ssl_ca = "{self.path(mysql_ca)}"
ssl_cert = "{self.path("client.pem")}"
ssl_key = "{self.path("client.key")}"
ssl_verify_identity = true

[redis]
url = "rediss://{redis_host}:{self.redis.port}/0"
ssl_ca_certs = "{self.path(redis_ca)}"
ssl_certfile = "{self.path("client.pem")}"
ssl_keyfile = "{self.path("client.key")}"
ssl_verify_identity = true

[worker]
retry_initial_s = 0.05
retry_max_s = 0.5

[log]
format = "json"

[metrics]
listen = "127.0.0.1:0"

[[tables]]
table = "tlsdb.users"
key = "user:{{id}}"
mode = "update"
""")
        return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for IP 127.0.0.1 only (so ``localhost`` is a name mismatch), a client
    certificate, and another CA that signed nothing here."""
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=cdc-sync test {ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=directory)  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=cdc-sync {name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    directory = tmp_path_factory.mktemp("tls")
    make_certificates(directory)
    mariadb = start_mariadb(
        extra_args=(
            f"--ssl-ca={directory / 'ca.pem'}",
            f"--ssl-cert={directory / 'server.pem'}",
            f"--ssl-key={directory / 'server.key'}",
            "--require-secure-transport=ON",
        )
    )
    server = start_redis(tls=(directory / "server.pem", directory / "server.key", directory / "ca.pem"))
    env = Tls(directory, mariadb, server)
    try:
        with pymysql.connect(
            host="127.0.0.1",
            port=mariadb.port,
            user="root",
            autocommit=True,
            ssl={"ca": env.path("ca.pem"), "cert": env.path("client.pem"), "key": env.path("client.key")},
        ) as conn:
            execute(
                conn,
                "CREATE DATABASE tlsdb",
                "CREATE TABLE tlsdb.users (id INT PRIMARY KEY, name VARCHAR(64))",
                f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE X509",
                f"GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR ON *.* TO '{USER}'@'%'",
                f"GRANT SELECT ON tlsdb.users TO '{USER}'@'%'",
            )
        yield env
    finally:
        server.stop()
        mariadb.stop()


def test_neither_server_accepts_a_plain_connection(tls: Tls) -> None:
    """What makes every other test here a TLS test: plain connections are refused by both servers."""
    with pytest.raises(pymysql.OperationalError) as refused:
        pymysql.connect(host="127.0.0.1", port=tls.mariadb.port, user="root", ssl_disabled=True)
    assert refused.value.args[0] in (1045, 3159)  # MariaDB 10.11 answers "access denied"; MySQL 3159
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls.redis.port, socket_timeout=2).ping()


def test_worker_reader_and_every_command_run_over_tls(tls: Tls, tmp_path: Path) -> None:
    cfg = tls.config(tmp_path / "w.toml")
    sql, r = tls.sql(), tls.redis_client()
    execute(sql, "DELETE FROM users", "INSERT INTO users VALUES (1, 'before')")
    r.flushdb()
    check = cli(cfg, "check-config")
    assert check.returncode == 0, check.stdout + check.stderr
    doctor = cli(cfg, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert checks["mysql.connect"]["status"] == "PASS" and checks["redis.connect"]["status"] == "PASS"
    assert checks["redis.acl"]["status"] == "PASS"
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    try:
        wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
        assert w.alive(), w.log_text()[-3000:]
        execute(sql, "UPDATE users SET name = 'streamed' WHERE id = 1", "INSERT INTO users VALUES (2, 'two')")
        wait_caught_up(r, sql, "mariadb", w)
        wait_heartbeat(r)
        assert json.loads(r.get("user:1") or b"null") == {"id": 1, "name": "streamed"}  # the binlog stream
        reader = CacheReader(load(cfg))
        try:
            r.delete("user:2")
            assert reader.get_row("tlsdb.users", id=2) == {"id": 2, "name": "two"}  # the loader, then a fill
            assert json.loads(r.get("user:2") or b"null") == {"id": 2, "name": "two"}, reader.stats
            assert reader.get_row("tlsdb.users", id=1) == {"id": 1, "name": "streamed"}  # a hit
        finally:
            reader.close()

        async def read_async() -> object:
            aio = AsyncCacheReader(load(cfg))
            try:
                r.delete("user:2")
                return await aio.get_row("tlsdb.users", id=2)
            finally:
                await aio.close()

        assert asyncio.run(read_async()) == {"id": 2, "name": "two"}
        for args in (
            ("status",),
            ("checkpoint", "show"),
            ("warm",),
            ("verify",),
            ("flush", "tlsdb.users"),
            ("checkpoint", "reset", "--yes"),
        ):
            done = cli(cfg, *args)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert r.get("user:1") is None  # the flush went through
        execute(sql, "UPDATE users SET name = 'after flush' WHERE id = 1")
        wait_caught_up(r, sql, "mariadb", w)
        assert json.loads(r.get("user:1") or b"null") == {"id": 1, "name": "after flush"}
        assert PASSWORD not in w.log_text()
    finally:
        w.stop()
        sql.close()
        r.close()


@pytest.mark.parametrize(
    ("side", "settings", "expected"),
    [
        ("mysql", {"mysql_ca": "other.pem"}, "the MySQL server's TLS certificate is not trusted"),
        ("mysql", {"mysql_host": "localhost"}, "the MySQL server's TLS certificate is not trusted"),
        ("redis", {"redis_ca": "other.pem"}, "the Redis server's TLS certificate is not trusted"),
        ("redis", {"redis_host": "localhost"}, "the Redis server's TLS certificate is not trusted"),
    ],
    ids=["mysql-wrong-ca", "mysql-wrong-name", "redis-wrong-ca", "redis-wrong-name"],
)
def test_an_untrusted_server_certificate_is_refused_with_a_clear_error(
    tls: Tls, tmp_path: Path, side: str, settings: dict[str, str], expected: str
) -> None:
    """A CA that did not sign the server's certificate, or a host name it does not hold: doctor FAILs with the
    fix, `run` exits 2 at once (a refusal, not retried), the reader raises the same refusal."""
    cfg = tls.config(tmp_path / "bad.toml", **settings)
    doctor = cli(cfg, "doctor", "--json")
    assert doctor.returncode != 0
    failed = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == f"{side}.connect"]
    assert failed and failed[0]["status"] == "FAIL", doctor.stdout
    assert expected in failed[0]["detail"] and "ssl" in failed[0]["fix"], failed[0]
    assert failed[0]["blocking"], failed[0]  # not left to run's retries
    w = WorkerProcess(cfg, tmp_path / "bad.log").start()
    try:
        assert w.wait(60) == 2, w.log_text()[-3000:]
    finally:
        w.stop()
    refusal = [e for e in w.events() if e.get("event") == "worker.config_error"]
    assert refusal and expected in refusal[0]["error"], w.log_text()[-3000:]
    assert "ssl" in refusal[0]["fix"]
    if side == "mysql":
        with tls.redis_client() as r:
            r.flushdb()  # a miss: the reader goes to MySQL
        reader = CacheReader(load(cfg))
        try:
            with pytest.raises(ServerRefused, match="not trusted"):
                reader.get_row("tlsdb.users", id=1)
        finally:
            reader.close()
