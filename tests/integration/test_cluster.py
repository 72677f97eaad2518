"""A real local Redis Cluster (3 primaries, 3 replicas: tools/devservers.start_cluster) under the real worker.

Each batch is applied per slot, with each slot's own checkpoint; a primary that fails over and loses acknowledged
writes is found by its slots' checkpoints and replayed there, while slots elsewhere skip the replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync import AsyncCacheReader, CacheReader
from cdc_sync.config import load
from cdc_sync.core.keys import Namespace, key_slot, slot_tag
from tests.helpers import (
    AsyncDriven,
    WorkerProcess,
    cli,
    connect,
    query_rows,
    server_position,
    wait_for,
    write_config,
)
from tests.servers import MySQLTarget, RedisTarget
from tools.devservers import RedisClusterSet, cluster_info, cluster_nodes, start_cluster

NS = Namespace("cdc", cluster=True)
TABLES = """
[[tables]]
table = "{db}.users"
key = "user:{{id}}"
mode = "update"

[[tables]]
table = "{db}.orders"
key = "order:{{id}}"
tags = ["user_id"]
"""


@pytest.fixture
def cluster() -> Iterator[RedisClusterSet]:
    started = start_cluster(primaries=3, replicas=1, node_timeout_ms=2000)
    try:
        yield started
    finally:
        for client in _CLIENTS.pop(id(started), []):
            client.close()
        started.stop()


def _start(
    tmp_path: Path, mysql: MySQLTarget, c: RedisClusterSet, db: str, workers: list[WorkerProcess]
) -> WorkerProcess:
    seed = RedisTarget("127.0.0.1", c.ports[0])
    cfg = write_config(tmp_path / "w.toml", mysql, seed, TABLES.format(db=db), redis_extra="cluster = true")
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    workers.append(w)
    wait_for(lambda: "source.connecting" in w.event_names() or not w.alive(), 60, "worker start-up")
    return w


_CLIENTS: dict[int, list[redis.RedisCluster]] = {}  # the test's own clients of each cluster, closed with it


def _client(c: RedisClusterSet) -> redis.RedisCluster:
    """A cluster client of the test's (one per cluster, made again once its seed node is gone)."""
    made = _CLIENTS.setdefault(id(c), [])
    primaries = c.primaries()
    if not made or made[-1].get_default_node().port not in primaries:
        made.append(redis.RedisCluster(host="127.0.0.1", port=primaries[0]))
    return made[-1]


def _caught_up(c: RedisClusterSet, sql: pymysql.Connection, w: WorkerProcess, timeout: float = 60) -> None:  # type: ignore[type-arg]
    target = server_position(sql, "mariadb")

    def done() -> bool:
        assert w.alive(), w.log_text()[-3000:]
        try:
            stored = _client(c).get(NS.checkpoint)
        except (redis.RedisError, IndexError):
            return False
        return stored is not None and stored.decode().partition("@")[0] == target

    wait_for(done, timeout, f"the home checkpoint {target}")


def _names(rc: redis.RedisCluster, ids: range) -> list[object]:
    return [json.loads(v)["name"] if v else None for v in (rc.get(f"user:{i}") for i in ids)]


def _serving(port: int) -> list[tuple[int, int]]:
    """The slot ranges the primary on ``port`` serves, by its own CLUSTER NODES."""
    me = next(n for n in cluster_nodes(port) if n["port"] == port)
    out = []
    for part in me["slots"]:
        if not part.startswith("["):
            low, _, high = part.partition("-")
            out.append((int(low), int(high or low)))
    return out


def _on(port: int, key: str) -> bool:
    return any(low <= key_slot(key) <= high for low, high in _serving(port))


def test_the_worker_keeps_a_cluster_in_step(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """Inserts, updates and deletes over 100 keys in many slots (each slot written with its own checkpoint), and
    a tag whose set sits in one slot and whose members in others: every member is evicted."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    rc = _client(cluster)
    members = [f"view:{i}" for i in range(20)]
    rc.sadd(NS.tag(f"{db}.orders:user_id=5"), *members)
    for m in members:
        rc.set(m, "cached")
    assert len({key_slot(m) for m in members}) > 10
    with sql.cursor() as cur:
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'a{i}')" for i in range(1, 101)))
        cur.execute("UPDATE users SET name = CONCAT(name, 'b') WHERE id % 2 = 0")
        cur.execute("DELETE FROM users WHERE id > 90")
        cur.execute("INSERT INTO orders VALUES (1, 5)")
    _caught_up(cluster, sql, w)
    want = [f"a{i}b" if i % 2 == 0 else f"a{i}" for i in range(1, 91)] + [None] * 10
    assert _names(rc, range(1, 101)) == want
    assert all(rc.get(m) is None for m in members) and rc.exists(NS.tag(f"{db}.orders:user_id=5")) == 0
    assert all(rc.exists(NS.inv(m)) for m in members)  # (each held off in its own slot)
    slots = {key_slot(f"user:{i}") for i in range(1, 101)}
    stored = {s: rc.get(NS.slot_checkpoint(s)) for s in slots}
    assert all(v is not None for v in stored.values())
    wait_for(lambda: rc.hlen(NS.slots) >= len(slots), 30, "the heartbeat to record the slots' checkpoints")
    assert rc.get(NS.heartbeat) is not None


def test_a_primary_failover_that_loses_writes_is_replayed_in_its_slots(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """One primary (not the home slot's) takes writes its replica never gets (stopped behind a full socket buffer),
    then dies (kill -9) and the replica is promoted. The worker finds those slots' checkpoints older than it wrote
    (the epoch moved), resumes from the oldest, and replays into them; a key of another primary's slot, changed by
    hand since, shows that slots which had the changes skipped the replay."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'v0')" for i in range(1, 61)))
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'v1'")
    _caught_up(cluster, sql, w)
    victim = next(p for p in cluster.primaries() if not _on(p, NS.checkpoint))
    victim_id = next(n["id"] for n in cluster_nodes(victim) if n["port"] == victim)
    replica = next(n["port"] for n in cluster_nodes(victim) if n["primary"] == victim_id)
    lost = [i for i in range(1, 61) if _on(victim, f"user:{i}")]
    kept = next(i for i in range(1, 61) if not _on(victim, f"user:{i}"))
    assert lost

    def replica_synced() -> bool:
        with redis.Redis(port=victim) as p, redis.Redis(port=replica) as q:
            return bool(q.info("replication")["slave_repl_offset"] >= p.info("replication")["master_repl_offset"])

    wait_for(replica_synced, 30, "the replica to hold v1")
    stopped = cluster.server(replica).proc.pid
    os.kill(stopped, signal.SIGSTOP)
    try:
        low = _serving(victim)[0][0]
        with redis.Redis(port=victim) as node:  # more than the stopped replica's socket buffers take
            node.set(f"{{{slot_tag(low)}}}filler", b"x" * (32 << 20))
        with sql.cursor() as cur:
            cur.execute("UPDATE users SET name = 'v2'")
        _caught_up(cluster, sql, w)
        rc = _client(cluster)
        assert set(_names(rc, range(1, 61))) == {"v2"}  # acknowledged, the victim's too
        rc.set(f"user:{kept}", json.dumps({"id": kept, "name": "by hand"}))
        cluster.server(victim).proc.kill()  # kill -9: what the replica never got is lost
    finally:
        os.kill(stopped, signal.SIGCONT)

    def promoted() -> bool:
        try:
            return replica in cluster.primaries() and cluster_info(replica).get("cluster_state") == "ok"
        except OSError:
            return False

    wait_for(promoted, 60, f"the replica on {replica} to take over")
    wait_for(lambda: "sync.rewind" in w.event_names(), 60, "the worker to find the lost writes")
    checked = [e for e in w.events() if e.get("event") == "redis.slots_checked" and e.get("lost")]
    assert checked, "found by reading the slots' checkpoints again, with no change touching those slots"
    wait_for(lambda: _names(_client(cluster), range(1, 61)).count("v2") == 59, 60, "the replay into the lost slots")
    rc = _client(cluster)
    assert [_names(rc, range(i, i + 1))[0] for i in lost] == ["v2"] * len(lost)
    assert _names(rc, range(kept, kept + 1)) == ["by hand"], "a slot that had the changes was not replayed into"


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _reader(cfg: Path, driver: str) -> Any:
    config = load(cfg)
    if driver == "sync":
        return CacheReader(config)
    return AsyncDriven(AsyncCacheReader(config))


def test_the_reader_on_a_cluster(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
    driver: str,
) -> None:
    """Hits, a miss filled under its lease, a dependency tag evicted by the worker, and a slot whose checkpoint is
    behind what the heartbeat recorded (its keys bypass): the reader's gate and slot scripts on a real cluster."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'v0')" for i in range(1, 11)))
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'v1'")
    _caught_up(cluster, sql, w)
    rc = _client(cluster)
    wait_for(lambda: rc.hget(NS.slots, key_slot("user:1")), 30, "the heartbeat to record user:1's slot")
    reader = _reader(tmp_path / "w.toml", driver)
    try:
        assert reader.get_row(f"{db}.users", id=1) == {"id": 1, "name": "v1"}
        assert reader.stats["hit"] == 1
        rc.delete("user:2")
        assert reader.get_row(f"{db}.users", id=2) == {"id": 2, "name": "v1"}  # a miss, filled
        assert reader.stats["fill:stored"] == 1 and json.loads(rc.get("user:2"))["name"] == "v1"
        assert reader.get_row(f"{db}.users", id=2) == {"id": 2, "name": "v1"} and reader.stats["hit"] == 2

        calls: list[int] = []

        def orders_of_5() -> list[int]:
            calls.append(1)
            return [len(calls)]

        dep = [(f"{db}.orders", {"user_id": 5})]
        assert reader.fetch("view:orders:5", orders_of_5, ttl=60, depends_on=dep) == [1]
        assert reader.fetch("view:orders:5", orders_of_5, ttl=60, depends_on=dep) == [1]  # a hit
        with sql.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES (1, 5)")
        _caught_up(cluster, sql, w)
        wait_for(lambda: rc.get("view:orders:5") is None, 30, "the tag's member evicted in its slot")
        wait_for(lambda: rc.get(NS.tinv(f"{db}.orders:user_id=5")) is None, 30, "the tag's hold-off to end")
        assert reader.fetch("view:orders:5", orders_of_5, ttl=60, depends_on=dep) == [2]

        # the slot of user:3 lost writes (as after a failover): the heartbeat recorded a later checkpoint there
        slot = key_slot("user:3")
        recorded = rc.hget(NS.slots, slot) or rc.get(NS.slot_checkpoint(slot))
        assert recorded is not None
        rc.set(NS.slot_checkpoint(slot), "0-1-1")
        before = reader.stats["bypass:slot_behind"]
        assert reader.get_row(f"{db}.users", id=3) == {"id": 3, "name": "v1"}  # from MySQL
        assert reader.stats["bypass:slot_behind"] == before + 1
        assert reader.stats["hit"] == 3  # (not a hit)

        # many rows at once: the gates and slot scripts of all in one pipeline, user:3 still behind, user:6 absent
        rc.delete("user:6")
        rows = reader.get_rows(f"{db}.users", [{"id": 1}, {"id": 3}, {"id": 6}, {"id": 99}])
        assert rows == [{"id": 1, "name": "v1"}, {"id": 3, "name": "v1"}, {"id": 6, "name": "v1"}, None]
        assert reader.stats["hit"] == 4 and reader.stats["bypass:slot_behind"] == before + 2
        assert json.loads(rc.get("user:6"))["name"] == "v1", "the miss filled in its slot"
    finally:
        reader.close()


def test_a_fill_races_a_tag_eviction_on_a_cluster(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """The tag set sits in one slot, the member in another. The reader holds its lease and has joined the tag; the
    change that evicts the tag commits and is applied while the loader runs (after it read the old value): the
    worker deletes the member's lease in the member's slot, so the old value is never stored."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    _caught_up(cluster, sql, w)
    rc = _client(cluster)
    key, tag = "view:race", f"{db}.orders:user_id=7"
    assert key_slot(NS.tag(tag)) != key_slot(key)
    reader = CacheReader(load(tmp_path / "w.toml"))
    try:
        wait_for(lambda: rc.get(NS.heartbeat), 30, "a heartbeat")

        def stale_loader() -> str:
            old = "before the insert"
            assert rc.sismember(NS.tag(tag), key), "joined the tag before loading"
            with sql.cursor() as cur:
                cur.execute("INSERT INTO orders VALUES (1, 7)")
            wait_for(lambda: rc.get(NS.lease(key)) is None, 30, "the worker to evict the member and its lease")
            return old

        assert reader.fetch(key, stale_loader, ttl=60, depends_on=[(f"{db}.orders", {"user_id": 7})]) == (
            "before the insert"
        )
        assert rc.get(key) is None, "the old value was not stored"
        assert reader.stats["fill:lost"] == 1
    finally:
        reader.close()


def test_the_commands_on_a_cluster(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """status, doctor, checkpoint show, verify (SCAN every primary; --repair evicts in each key's slot), warm and
    flush, across the nodes."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'v0')" for i in range(1, 41)))
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    with sql.cursor() as cur:
        cur.execute("UPDATE users SET name = 'v1'")
    _caught_up(cluster, sql, w)
    cfg = tmp_path / "w.toml"
    rc = _client(cluster)
    wait_for(lambda: rc.get(NS.heartbeat), 30, "a heartbeat")
    status = json.loads(cli(cfg, "status", "--json").stdout)
    assert status["ok"] and status["checkpoint"], status
    doctor = {c["name"]: c for c in json.loads(cli(cfg, "doctor", "--json").stdout)["checks"]}
    assert doctor["redis.cluster"]["status"] == "PASS", doctor["redis.cluster"]
    assert cli(cfg, "checkpoint", "show").stdout.strip()
    rc.set("user:7", json.dumps({"id": 7, "name": "wrong"}))
    verified = cli(cfg, "verify", "--json", "--repair")
    assert verified.stdout.lstrip().startswith("{"), verified.stdout[-2000:] + verified.stderr[-3000:]
    report = json.loads(verified.stdout)
    table = next(t for t in report["tables"] if t["table"] == f"{db}.users")
    assert table["checked"] == 40 and [d["key"] for d in table["divergent"]] == ["user:7"], report
    assert rc.get("user:7") is None and rc.exists(NS.inv("user:7"))
    rc.sadd(NS.tag(f"{db}.users"), "view:all")  # a reader key depending on the table, in another slot
    rc.set("view:all", "cached")
    assert cli(cfg, "flush", f"{db}.users").returncode == 0
    assert all(rc.get(f"user:{i}") is None for i in range(1, 41))
    assert rc.get("view:all") is None and not rc.exists(NS.tag(f"{db}.users"))
    wait_for(lambda: not rc.exists(NS.flushing(f"{db}.users")), 10, "the flush's hold-off to end")
    warmed = cli(cfg, "warm", f"{db}.users", "--json")
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert json.loads(rc.get("user:9"))["name"] == "v1"


def test_slots_move_while_the_worker_applies(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """``redis-cli --cluster reshard`` moves a third of the slots (keys, leases and slot checkpoints with them)
    while a writer keeps changing rows: MOVED, ASK and TRYAGAIN are followed, and the cache ends equal to the
    table, no change lost or applied out of order."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
        cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'v0')" for i in range(1, 301)))
    w = _start(tmp_path, mysql_server, cluster, db, workers)
    _caught_up(cluster, sql, w)
    primaries = cluster.primaries()
    ids = {n["port"]: n["id"] for n in cluster_nodes(primaries[0])}
    served = sum(high - low + 1 for low, high in _serving(primaries[1]))
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        conn = connect(mysql_server, db)
        with conn.cursor() as cur:
            while not stop.is_set():
                written[0] += 1
                cur.execute("UPDATE users SET name = %s WHERE id %% 7 = %s", (f"w{written[0]}", written[0] % 7))
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        moved = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{primaries[0]}",
                "--cluster-from",
                ids[primaries[0]],
                "--cluster-to",
                ids[primaries[1]],
                "--cluster-slots",
                "2000",
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr[-2000:]
    finally:
        stop.set()
        thread.join(10)
    assert written[0] > 20, "changes kept coming while the slots moved"
    _caught_up(cluster, sql, w, timeout=120)
    rows = dict(query_rows(sql, "SELECT id, name FROM users"))
    rc = _client(cluster)
    assert _names(rc, range(1, 301)) == [rows[i] for i in range(1, 301)]
    assert sum(high - low + 1 for low, high in _serving(primaries[1])) == served + 2000, "the slots moved"


def test_ha_on_a_cluster_fences_a_paused_leader_in_every_slot(
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    cluster: RedisClusterSet,
    workers: list[WorkerProcess],
) -> None:
    """Two workers with [ha] on a cluster. The leader is paused past its lease; the standby takes over, claims
    every slot with its fence number and applies. The old leader wakes with changes in hand: every slot refuses
    them (FENCED), it steps down, and the cache equals the table."""
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT)")
    seed = RedisTarget("127.0.0.1", cluster.ports[0])
    ha = "[ha]\nenabled = true\nlease_ttl_ms = 1500\n"
    made = []
    for name, server_id in (("a", 5101), ("b", 5102)):
        cfg = write_config(
            tmp_path / f"{name}.toml",
            mysql_server,
            seed,
            TABLES.format(db=db),
            extra=ha,
            server_id=server_id,
            redis_extra="cluster = true",
        )
        made.append(WorkerProcess(cfg, tmp_path / f"{name}.log").start())
        workers.append(made[-1])
        if name == "a":
            wait_for(lambda: "ha.acquired" in made[0].event_names(), 30, "a leader")
    a, b = made
    wait_for(lambda: "ha.standby" in b.event_names(), 30, "the standby")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "redis.slots_fenced" in b.event_names(), 30, "the standby to take over and claim the slots")
        with sql.cursor() as cur:
            cur.execute("INSERT INTO users VALUES " + ", ".join(f"({i}, 'during the pause')" for i in range(1, 51)))
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    wait_for(lambda: "ha.stepped_down" in a.event_names(), 30, "the old leader to step down")
    assert "ha.fenced" in a.event_names() or "ha.lease_lost" in a.event_names()
    _caught_up(cluster, sql, b)
    rc = _client(cluster)
    assert _names(rc, range(1, 51)) == ["during the pause"] * 50
    fence = int(next(e for e in b.events() if e.get("event") == "redis.slots_fenced")["fence"])
    assert {int(rc.get(NS.slot_fence(s)) or 0) for s in (0, 5000, 16383)} == {fence}


def test_a_replayed_tag_eviction_keeps_members_its_slot_already_has(cluster: RedisClusterSet) -> None:
    """A crash between a step's slot scripts and its home step: the member's slot has the step, the home checkpoint
    does not. A reader fills the member again and joins the tag. The replay skips the member's slot (it has the
    step), so it must leave the member in the tag set: the next change of the tag still evicts it (found by the
    cluster checker after kill -9: a cached group kept forever)."""
    from dataclasses import replace

    from cdc_sync.adapters.redis_cluster import ClusterSink
    from cdc_sync.config import RedisConfig
    from cdc_sync.core.planner import EvictTag

    cfg = replace(RedisConfig(url=f"redis://127.0.0.1:{cluster.ports[0]}"), cluster=True)
    rc = _client(cluster)
    tag, member = "db.orders:user_id=1", "grp:1"
    assert key_slot(NS.tag(tag)) != key_slot(member)
    p0, p1, p2 = "bin.000001:100", "bin.000001:200", "bin.000001:300"
    sink = ClusterSink(cfg, holdoff_ms=0)
    try:
        assert sink.apply([], None, p0)
        rc.sadd(NS.tag(tag), member)
        rc.set(member, "old")
        rc.set(NS.slot_checkpoint(key_slot(member)), p1)  # (the slot script of p1 ran; then kill -9)
        rc.delete(member)
    finally:
        sink.close()
    rc.set(member, "filled after p1")  # (a reader's fill, after it joined the tag again)
    rc.sadd(NS.tag(tag), member)
    for port in cluster.primaries():  # (and the restarted worker meets NOSCRIPT)
        with redis.Redis(port=port) as node:
            node.script_flush()
    sink = ClusterSink(cfg, holdoff_ms=0)
    try:
        assert sink.load_checkpoint() == p0
        assert sink.apply([EvictTag(tag)], p0, p1)  # the replay: the member's slot has p1 already
        assert rc.get(member) == b"filled after p1"
        assert rc.sismember(NS.tag(tag), member), "a member whose slot skipped the step stays in the tag"
        assert sink.apply([EvictTag(tag)], p1, p2)
        assert rc.get(member) is None, "the next change of the tag evicts it"
    finally:
        sink.close()
