"""Sentinels and a Redis master/replica that all require TLS with client certificates and ACL passwords.

tools/devservers.start_sentinel_set(tls=..., user=..., password=..., sentinel_user=..., sentinel_password=...):
every data server and Sentinel listens on a TLS-only port and requires a client certificate; the data servers
accept only the ACL user ``app`` (the default user off), the Sentinels only their own ACL user ``sadmin`` (Redis 7.0
Sentinel takes ``user`` lines in sentinel.conf); replication and the Sentinels' links run over TLS and log in too.
The worker, a reader and the commands reach the master through the Sentinels (``sentinel_tls``,
``sentinel_username``, ``sentinel_password``), follow a failover, and never show either password.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import redis

from cdc_sync import config as config_mod
from cdc_sync.reader.client import CacheReader
from tests.helpers import WorkerProcess, cli, server_position, wait_for, write_config
from tests.integration.test_tls import make_certificates
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import SentinelSet, start_sentinel_set

DATA_USER, DATA_PASSWORD = "app", "Data-Secret-5521"
SENTINEL_USER, SENTINEL_PASSWORD = "sadmin", "Sentinel-Secret-8834"
WRONG_PASSWORD = "Wrong-Sentinel-Secret-1177"
SECRETS = (DATA_PASSWORD, SENTINEL_PASSWORD, WRONG_PASSWORD)

TABLES = """
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "update"
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sentinel-tls")
    make_certificates(directory)
    return directory


@pytest.fixture
def secure_set(certs: Path) -> Iterator[SentinelSet]:
    # the servers' certificate (IP 127.0.0.1, no extendedKeyUsage: fit for client auth too) is also what the
    # replicas and Sentinels present when they connect out
    started = start_sentinel_set(
        replicas=1,
        sentinels=3,
        down_after_ms=1000,
        tls=(certs / "server.pem", certs / "server.key", certs / "ca.pem"),
        user=DATA_USER,
        password=DATA_PASSWORD,
        sentinel_user=SENTINEL_USER,
        sentinel_password=SENTINEL_PASSWORD,
    )
    try:
        yield started
    finally:
        started.stop()


def _config(
    tmp_path: Path, mysql: MySQLTarget, s: SentinelSet, db: str, certs: Path, sentinel_password: str = SENTINEL_PASSWORD
) -> Path:
    extra = f"""sentinels = {json.dumps(s.addresses)}
master_name = "{s.master_name}"
sentinel_username = "{SENTINEL_USER}"
sentinel_password = "{sentinel_password}"
sentinel_tls = true
ssl_ca_certs = "{certs / "ca.pem"}"
ssl_certfile = "{certs / "client.pem"}"
ssl_keyfile = "{certs / "client.key"}"
"""
    unused = RedisTarget("127.0.0.1", 1)  # (with Sentinels the url names no address)
    url = f"rediss://{DATA_USER}:{DATA_PASSWORD}@/0"
    return write_config(tmp_path / "w.toml", mysql, unused, TABLES.format(db=db), redis_url=url, redis_extra=extra)


def _master(s: SentinelSet) -> redis.Redis:
    port = s.master_port()
    assert port is not None, "no Sentinel names a master"
    client: redis.Redis = s.client(port)
    return client


def _start(cfg: Path, tmp_path: Path, workers: list[WorkerProcess]) -> WorkerProcess:
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    assert w.alive(), w.log_text()[-3000:]
    return w


def _caught_up(s: SentinelSet, sql: pymysql.Connection, w: WorkerProcess, timeout: float = 60) -> None:  # type: ignore[type-arg]
    target = server_position(sql, "mariadb")

    def done() -> bool:
        assert w.alive(), w.log_text()[-3000:]
        try:
            stored = _master(s).get("cdc:checkpoint")
        except (redis.RedisError, AssertionError):
            return False
        text = stored.decode() if isinstance(stored, bytes) else stored
        return text is not None and text.partition("@")[0] == target

    wait_for(done, timeout, f"the checkpoint {target} on the master the Sentinels name")


def _values(s: SentinelSet, ids: range) -> list[object]:
    master = _master(s)
    return [json.loads(v)["name"] if v else None for v in (master.get(f"user:{i}") for i in ids)]


def _no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password shows in {where}"


def test_servers_refuse_plain_and_anonymous_connections(secure_set: SentinelSet, certs: Path) -> None:
    """What makes the next test a TLS + ACL test: no plain connection, and no login without the password, is
    accepted by a data server or a Sentinel."""
    for port in (secure_set.servers[0].port, secure_set.sentinels[0].port):
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_timeout=2).ping()
        with pytest.raises(redis.AuthenticationError):  # TLS and a client certificate, but no login
            secure_set.client(port, username=None, password=None, socket_timeout=2).ping()
        assert secure_set.client(port, socket_timeout=2).ping()


def test_worker_reader_and_commands_follow_a_failover_over_tls_with_acl(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    secure_set: SentinelSet,
    certs: Path,
    workers: list[WorkerProcess],
) -> None:
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("INSERT INTO users VALUES (1, 'a'), (2, 'b')")
    cfg = _config(tmp_path, mysql_server, secure_set, db, certs)
    loaded = config_mod.load(cfg)
    assert loaded.redis.sentinel_tls and loaded.redis.sentinel_username == SENTINEL_USER
    assert loaded.redis.sentinel_password == SENTINEL_PASSWORD
    _no_secret("the repr of the loaded config", repr(loaded))
    _no_secret("the repr of the Redis config", repr(loaded.redis))
    w = _start(cfg, tmp_path, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = CONCAT(name, '1')")
        cur.execute("INSERT INTO users VALUES (3, 'c')")
    _caught_up(secure_set, sql, w)
    assert _values(secure_set, range(1, 4)) == ["a1", "b1", "c"]
    reader = CacheReader(config_mod.load(cfg))
    try:
        wait_for(lambda: _master(secure_set).get("cdc:heartbeat"), 30, "a heartbeat")
        assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "a1"}
        before = secure_set.master_port()
        replica = next(x.port for x in secure_set.servers if x.port != before)
        # over TLS, as the Sentinels' ACL user: a failover needs the Sentinels to talk to each other and to log
        # in to the replica (REPLICAOF NO ONE) and the old master (REPLICAOF the new one), all over TLS
        assert secure_set.ask(secure_set.sentinels[0].port, "SENTINEL", "FAILOVER", secure_set.master_name) == "OK"
        wait_for(lambda: secure_set.master_port() == replica, 60, f"the Sentinels to name the replica on {replica}")
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = CONCAT(name, '2')")
        _caught_up(secure_set, sql, w)  # on the new master
        # a key is current or gone (see test_sentinel.py), never an older value
        assert set(_values(secure_set, range(1, 4))) <= {"a12", "b12", "c2", None}
        wait_for(lambda: "redis.master_changed" in w.event_names(), 30, "the worker to log the new master")
        got = wait_for(
            lambda: (reader.get_row(f"{db}.users", id=2) or {}).get("name") == "b12" or None, 30, "the reader"
        )
        assert got
        # the old master came back as a replica of the new one: it logged in over TLS as the ACL user
        assert before is not None
        wait_for(lambda: secure_set.client(before).info("replication").get("role") == "slave", 30, "old master demoted")
    finally:
        reader.close()
    status = cli(cfg, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    shown = json.loads(status.stdout)
    assert shown["redis"].startswith("redis+sentinel://") and shown["checkpoint"]
    doctor = cli(cfg, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    replication = checks["redis.replication"]
    assert replication["status"] == "PASS", replication
    assert f"3 Sentinel(s) name master 127.0.0.1:{replica}" in replication["detail"]
    assert checks["redis.connect"]["status"] == "PASS", checks["redis.connect"]
    w.terminate()
    for where, text in (
        ("status", status.stdout + status.stderr),
        ("doctor", doctor.stdout + doctor.stderr),
        ("the worker log", w.log_text()),
    ):
        _no_secret(where, text)


def test_a_wrong_sentinel_password_is_a_clear_doctor_failure(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    secure_set: SentinelSet,
    certs: Path,
) -> None:
    cfg = _config(tmp_path, mysql_server, secure_set, db, certs, sentinel_password=WRONG_PASSWORD)
    doctor = cli(cfg, "doctor", "--json")
    output = doctor.stdout + doctor.stderr
    _no_secret("doctor", output)
    assert doctor.returncode != 0, output
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    connect = checks["redis.connect"]
    assert connect["status"] == "FAIL", connect
    for address in secure_set.addresses:  # (the url shown names every Sentinel; each one's refusal follows)
        assert address in connect["detail"], connect
    assert "invalid username-password pair" in connect["detail"], connect


def test_a_wrong_sentinel_password_is_refused_not_retried(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    secure_set: SentinelSet,
    certs: Path,
    workers: list[WorkerProcess],
) -> None:
    """As with a wrong master password (redis_error: a refused login cannot heal by retrying): the worker exits
    with 2, and doctor says the login was refused."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
    cfg = _config(tmp_path, mysql_server, secure_set, db, certs, sentinel_password=WRONG_PASSWORD)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    try:
        wait_for(lambda: not w.alive(), 20, "the worker to give up on a refused login")
    finally:
        w.stop()
        _no_secret("the worker log", w.log_text())
    assert w.proc is not None and w.proc.returncode == 2, w.log_text()[-2000:]
    doctor = cli(cfg, "doctor", "--json")
    connect = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["redis.connect"]
    assert "refused the login" in connect["detail"], connect
