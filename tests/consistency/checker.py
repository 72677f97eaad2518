"""The consistency checker: a seeded random workload, the real worker, readers, and injected faults.

    python -m tests.consistency.checker --profile short|long --seed N [--faults kind,kind] [--seconds S]
        [--memory POLICY] [--compress]

Writers (each owning its own ids) insert, update, delete, change primary keys, run multi-row and rolled-back
transactions on three mapped tables (``items`` in update mode with a second key on a ``_ci`` column, ``notes``
in evict mode, ``kids`` in update mode) and insert and delete rows of unmapped parent tables. Readers go through
CacheReader with a plain-GET freshness window open most of the time: rows in update mode, rows in evict mode
(some frozen between SELECT and fill), kids, and tagged group queries.

Faults (``--faults`` picks some; each one injected is counted, and one that cannot be injected fails the run):

* ``kill9_worker``, ``redis_restart`` (data loss), ``mariadb_restart``, ``cut_mysql``, ``cut_redis`` (TCP proxies),
  ``purge_while_down``, ``ddl`` (TRUNCATE or ALTER ADD COLUMN of a mapped table);
* ``redis_snapshot``: ``SAVE``, a few seconds of writes, then Redis restarts from that older dump (checkpoint,
  heartbeat and values all go back) while readers are inside their windows;
* ``checkpoint_reset``: the real ``cdc-sync checkpoint reset --yes`` under load, with other data in Redis (so the
  flush takes a while), sometimes while the worker is stalled (SIGSTOP) and lagging;
* ``ddl_fk``: foreign keys with ``ON DELETE CASCADE`` appear while the worker runs (ALTER TABLE kids ADD FOREIGN
  KEY, a cascading grandparent of the parents, a parent table created under a dangling foreign key), and are
  dropped and added again; InnoDB's cascaded deletes have no row events, so writers read back in the deleting
  transaction which kids went and the model records them;
* ``gtid_ooo``: MariaDB GTIDs out of order (``gtid_seq_no`` below the domain's current number, from a gap made
  by one jump, never reused), one writer in a second domain, and a kill -9 of the worker right after such a
  transaction;
* ``noncanonical``: lookups with argument values MySQL matches to a row but that render other keys
  (``id='05'``, ``id=5.0``, ``Decimal('5.0')``, ``code='K5 '``); such reads are dated against the row they match.

Memory pressure (``--memory allkeys-lru|allkeys-random|volatile-lru|volatile-ttl|...``): Redis runs with a small
``maxmemory`` (MAXMEMORY) under that policy, and another application writes bursts of keys with short TTLs into it
every few seconds, so Redis evicts cached values, tag sets, hold-off markers, leases, stamps and (allkeys-*) the
worker's own keys while writers and readers run. Every evicted key is counted by kind from Redis's ``evicted``
keyspace events; the summary line gives them. Without ``--faults`` such a run injects MEMORY_FAULTS.

Compressed binlogs (``--compress``): MariaDB runs with ``log_bin_compress=ON`` and ``log_bin_compress_min_len=10``
(restarts included), so most rows and statement events reach the worker compressed; the summary line counts them
(``compressed_events``, from ``SHOW BINLOG EVENTS``).

Topologies (``--topology``): ``single`` (one Redis behind a TCP proxy, the default), ``cluster`` (a local Redis
Cluster of 3 primaries and 3 replicas) or ``sentinel`` (a master, a replica and three Sentinels). Their faults:

* ``cluster_failover``: ``CLUSTER FAILOVER`` on a replica (planned: nothing lost); ``cluster_kill_primary``: kill -9
  of a primary, its replica promoted, the old one back as a replica; ``cluster_reshard``: ``redis-cli --cluster
  reshard`` of 300 slots under load; ``cluster_lossy_failover``: a primary takes writes its stopped replica never
  gets (a full socket buffer), then dies: the promoted replica lacks them;
* ``sentinel_failover``: ``SENTINEL FAILOVER``; ``sentinel_lossy_failover``: as ``cluster_lossy_failover``, the
  Sentinels promoting the replica.

Checks: no read older than max_staleness_ms, no phantom read, 0 divergent keys after quiescence (every cached key,
whatever its spelling, against the row MySQL matches for it), no worker exit by itself. Stale reads are printed
with the change they missed and their likely cause.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pymysql
import redis
import redis.cluster

from cdc_sync import CacheReader
from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.config import load
from cdc_sync.core.keys import Namespace, slot_tag
from cdc_sync.reader.protocol import stamp_of
from tests.consistency.model import History, Verdict
from tests.consistency.proxy import TcpProxy
from tools.devservers import (
    LocalServer,
    RedisClusterSet,
    SentinelSet,
    cluster_info,
    cluster_nodes,
    start_cluster,
    start_mariadb,
    start_redis,
    start_sentinel_set,
)

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 2
IDS_PER_WRITER = 40
PARENTS_PER_WRITER = 8
GPARENTS_PER_WRITER = 4
GROUPS = 4
MAX_STALENESS_MS = 2000
FRESHNESS_CHECK_MS = 750  # readers' plain-GET window: below the bound, open most of the time
VERIFY_SAMPLE_RATE = 0.2  # the worker's sampled verifier checks this share of the keys it applies (none may fail)
ODD_IDS = range(12)  # rows read with non-canonical spellings (few, so they are read again and again)
FILLER_KEYS = 100_000  # checkpoint_reset: another application's keys in Redis, which the flush has to SCAN past
GTID_JUMP = 10_000_000  # gtid_ooo: each domain jumps here once; lower numbers come from the gap below
FAULT_KINDS = (
    "kill9_worker",
    "redis_restart",
    "mariadb_restart",
    "cut_mysql",
    "cut_redis",
    "purge_while_down",
    "ddl",
    "redis_snapshot",
    "checkpoint_reset",
    "ddl_fk",
    "gtid_ooo",
    "noncanonical",
)
MAXMEMORY = 4 * 1024 * 1024  # --memory: Redis alone takes about 0.9 MB; the cache, a few hundred kB
PRESSURE_VALUE = 2048  # --memory: bytes per key of the other application's bursts
CLUSTER_FAULTS = ("cluster_failover", "cluster_kill_primary", "cluster_reshard", "cluster_lossy_failover")
SENTINEL_FAULTS = ("sentinel_failover", "sentinel_lossy_failover")
# the faults that need one Redis (its proxy, its files): not on the other topologies
SINGLE_ONLY = ("redis_restart", "cut_redis", "redis_snapshot", "checkpoint_reset")
TOPOLOGY_FAULTS = {
    "single": (),
    "cluster": ("kill9_worker", "cut_mysql", "ddl", *CLUSTER_FAULTS),
    "sentinel": ("kill9_worker", "cut_mysql", "ddl", *SENTINEL_FAULTS),
}
FILLER_BYTES = 32 << 20  # lossy failovers: more than a stopped replica's socket buffers take
MEMORY_FAULTS = ("kill9_worker", "cut_redis", "ddl")  # --memory without --faults (no filler, no empty Redis)
MAPPED = {"item": "items", "note": "notes", "kid": "kids"}  # key prefix -> table
_PERCENT = re.compile(r"%([0-9A-F]{2})")


class FaultFailed(Exception):
    """A fault could not be injected (a server refused, a command failed): the run fails, it is never skipped."""


@dataclass(frozen=True)
class Profile:
    seconds: float
    fault_every_s: float


PROFILES = {"short": Profile(seconds=100, fault_every_s=5.0), "long": Profile(seconds=330, fault_every_s=8.0)}


class Change(NamedTuple):
    """One version a statement creates (mapped tables only)."""

    table: str
    row_id: int
    v: str | None
    grp: int | None = None
    via: str = ""


class Read(NamedTuple):
    kind: str  # table, or "group"
    key: int  # row id (the row the lookup matches, whatever its spelling) or group
    result: Any
    rs: float
    re: float
    spelling: str = ""  # a non-canonical lookup: how it was spelled


@dataclass
class Report:
    seed: int
    seconds: float = 0.0
    ops: int = 0
    reads: int = 0
    read_errors: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    divergent: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)
    worker_crashes: int = 0
    errors: list[str] = field(default_factory=list)  # faults that could not be injected, checker failures
    stale_causes: Counter[str] = field(default_factory=Counter)
    stale_after: Counter[str] = field(default_factory=Counter)  # stale reads by the last fault before them
    stale_via: Counter[str] = field(default_factory=Counter)  # stale reads by how the change they missed was made
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # cause -> stale reads
    notes: list[str] = field(default_factory=list)  # what faults saw (GTID resume points, reset timings)
    memory_policy: str = ""  # --memory: the maxmemory-policy of the run
    compress: bool = False  # --compress: MariaDB wrote compressed binlog events
    compressed_events: int = 0  # ... how many (SHOW BINLOG EVENTS, at the end)
    topology: str = "single"  # --topology
    near_cache: int = 0  # --near-cache: the readers' near_cache_size
    near_hits: int = 0  # ... lookups they served from it
    verify_checks: int = 0  # keys the worker's sampled verifier checked (verify.progress; a killed run's tail lost)
    verify_inconsistent: int = 0  # ... and found wrong, confirmed (verify.inconsistency): reported, listed (VERIFY:)
    evicted: Counter[str] = field(default_factory=Counter)  # keys Redis evicted, by kind (evicted_kind)
    pressure_bursts: int = 0
    eviction_flushes: int = 0  # the worker's flushes of every table after evictions (sync.keys_evicted)

    @property
    def ok(self) -> bool:
        return not (self.divergent or self.stale or self.phantom or self.worker_crashes or self.errors)

    def line(self) -> str:
        def pct(p: float) -> float:
            if not self.staleness:
                return 0.0
            values = sorted(self.staleness)
            return values[min(len(values) - 1, int(p * len(values)))] * 1000

        faults = ",".join(f"{k}:{v}" for k, v in sorted(self.faults.items()))
        return (
            f"consistency: seed={self.seed} seconds={self.seconds:.0f} ops={self.ops} reads={self.reads} "
            f"read_errors={self.read_errors} faults={sum(self.faults.values())} ({faults}) "
            f"divergent={len(self.divergent)} stale_reads={len(self.stale)} phantom_reads={len(self.phantom)} "
            f"worker_crashes={self.worker_crashes} staleness_ms p50={pct(0.5):.0f} p99={pct(0.99):.0f} "
            f"max={max(self.staleness, default=0) * 1000:.0f}{self._memory_line()}"
            + (f" compress=on compressed_events={self.compressed_events}" if self.compress else "")
            + (f" topology={self.topology}" if self.topology != "single" else "")
            + (f" near_cache={self.near_cache} near_hits={self.near_hits}" if self.near_cache else "")
            + f" verify_checks={self.verify_checks} verify_inconsistent={self.verify_inconsistent}"
        )

    def _memory_line(self) -> str:
        if not self.memory_policy:
            return ""
        kinds = ",".join(f"{k}:{v}" for k, v in sorted(self.evicted.items()))
        return (
            f" memory={self.memory_policy} bursts={self.pressure_bursts} evicted={sum(self.evicted.values())} "
            f"({kinds}) eviction_flushes={self.eviction_flushes}"
        )


class Pause:
    """Writers run between pauses; pause() waits until none is inside an operation."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._paused = False
        self._active = 0

    def enter(self, stop: threading.Event) -> bool:
        with self._cv:
            while self._paused and not stop.is_set():
                self._cv.wait(0.1)
            if stop.is_set():
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._cv:
            self._active -= 1
            self._cv.notify_all()

    def pause(self) -> None:
        with self._cv:
            self._paused = True
            while self._active:
                self._cv.wait(0.1)

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()


class Checker:
    def __init__(
        self,
        profile: Profile,
        seed: int,
        workdir: Path,
        kinds: tuple[str, ...] = FAULT_KINDS,
        memory: str = "",
        compress: bool = False,
        topology: str = "single",
        near_cache: int = 0,
    ) -> None:
        self.topology = topology
        self.near_cache = near_cache
        self.names = Namespace("cdc", cluster=topology == "cluster")
        self.cluster: RedisClusterSet | None = None
        self.sentinel_set: SentinelSet | None = None
        self._client: Any = None
        self.profile = profile
        self.memory = memory
        self.compress = compress
        self.seed = seed
        self.workdir = workdir
        self.kinds = kinds
        self.report = Report(seed, memory_policy=memory, compress=compress, topology=topology, near_cache=near_cache)
        self.history = History()
        self.stop = threading.Event()
        self.round_done = threading.Event()  # every selected fault kind ran at least once
        self.pause = Pause()
        self.values = itertools.count()
        self.columns_added = 0
        self.mariadb: LocalServer | None = None
        self.redis: LocalServer | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_runs = 0
        self.worker_lock = threading.Lock()  # one worker at a time: the faults thread and the watchdog share it
        self.reads: list[Read] = []
        self.readers: list[CacheReader] = []
        self.timeline: list[tuple[float, float, str]] = []  # (start, end, kind) of every fault injected
        # parents the writers own (unmapped tables; only writer w touches parents[w]); which exist, which FK acts
        self.parents: dict[int, dict[str, set[int]]] = {
            w: {"parents": set(), "parents2": set(), "gparents": set()} for w in range(WRITERS)
        }
        self.parent_tables = {"parents"}
        self.fk_kids_pid = False
        self.fk_steps = 0
        # gtid_ooo: next unused sequence number of each domain's gap, and until when writers use them
        self.gap_lock = threading.Lock()
        self.gap_next: dict[int, int] = {}
        self.gap_until = 0.0
        self.domain1 = False  # writer 1's session runs in GTID domain 1 (from the first gtid_ooo on)
        self.odd_until = 0.0  # noncanonical: until when the odd reader reads
        self.snapshots = 0
        self.resets = 0

    # ---- set-up -----------------------------------------------------------------------------------

    def start(self) -> None:
        memory_args: tuple[str, ...] = ()
        if self.memory:
            memory_args = ("--maxmemory", str(MAXMEMORY), "--maxmemory-policy", self.memory)
            memory_args += ("--notify-keyspace-events", "Ee")  # evicted events: what went, by kind
        compress_args = ("--log-bin-compress=ON", "--log-bin-compress-min-len=10") if self.compress else ()
        self.mariadb = start_mariadb(extra_args=compress_args)
        self.mysql_proxy = TcpProxy(self.mariadb.port)
        if self.topology == "cluster":
            self.cluster = start_cluster(node_timeout_ms=2000)
            redis_section = f'url = "{self.cluster.url}"\ncluster = true'
        elif self.topology == "sentinel":
            self.sentinel_set = start_sentinel_set(down_after_ms=1000)
            addresses = ", ".join(f'"{a}"' for a in self.sentinel_set.addresses)
            redis_section = f'url = "redis:///0"\nsentinels = [{addresses}]\nmaster_name = "cache"'
        else:
            self.redis = start_redis(extra_args=memory_args)
            self.redis_proxy = TcpProxy(self.redis.port)
            redis_section = f'url = "redis://127.0.0.1:{self.redis_proxy.port}/0"'
        conn = self.sql()
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE c")
            cur.execute(
                "CREATE TABLE c.items (id INT PRIMARY KEY, v VARCHAR(64), grp INT, "
                "code VARCHAR(32) COLLATE utf8mb4_general_ci, KEY (grp), UNIQUE KEY (code))"
            )
            cur.execute("CREATE TABLE c.notes (id INT PRIMARY KEY, v VARCHAR(64))")
            cur.execute("CREATE TABLE c.parents (id INT PRIMARY KEY, v VARCHAR(64))")
            cur.execute("CREATE TABLE c.pad (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64))")
            # kids.pid2 refers to a parent table that does not exist yet (ddl_fk creates it); kids.pid gets its
            # foreign key from ddl_fk too
            cur.execute("SET SESSION foreign_key_checks = 0")
            cur.execute(
                "CREATE TABLE c.kids (id INT PRIMARY KEY, pid INT NULL, pid2 INT NULL, v VARCHAR(64), "
                "KEY (pid), KEY (pid2), CONSTRAINT fk_kids_pid2 FOREIGN KEY (pid2) REFERENCES c.parents2 (id) "
                "ON DELETE CASCADE)"
            )
        conn.close()
        self.config_path = self.workdir / "cdc-sync.toml"
        self.config_path.write_text(f"""
[mysql]
port = {self.mysql_proxy.port}
heartbeat_s = 0.5
[redis]
{redis_section}
socket_timeout_s = 2
[worker]
retry_initial_s = 0.05
retry_max_s = 0.5
heartbeat_interval_ms = 200
[reader]
max_staleness_ms = {MAX_STALENESS_MS}
freshness_check_ms = {FRESHNESS_CHECK_MS}
near_cache_size = {self.near_cache}
holdoff_ms = 500
lease_wait_ms = 300
[verify]
sample_rate = {VERIFY_SAMPLE_RATE}
max_checks_per_s = 200
[log]
format = "json"
[metrics]
listen = "127.0.0.1:0"
[[tables]]
table = "c.items"
key = "item:{{id}}"
also = ["item:code:{{code}}"]
mode = "update"
tags = ["grp"]
ttl = 600
[[tables]]
table = "c.notes"
key = "note:{{id}}"
mode = "evict"
ttl = 600
[[tables]]
table = "c.kids"
key = "kid:{{id}}"
mode = "update"
ttl = 600
""")
        self.start_worker()
        r = self.redis_client()
        deadline = time.monotonic() + 60
        while r.get(self.names.heartbeat) is None:
            assert time.monotonic() < deadline, "the worker never wrote a heartbeat"
            time.sleep(0.1)

    def sql(self, db: str | None = None) -> pymysql.Connection[Any]:
        assert self.mariadb is not None
        return pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user="root", database=db, autocommit=True)

    def redis_client(self) -> Any:
        """A client of the cache's Redis: the one server, the cluster (one client, made again after a failure), or
        the master the Sentinels name now."""
        if self.cluster is not None:
            if self._client is None:  # (seeded by every node: any that answers will do, a killed one may not)
                nodes = [redis.cluster.ClusterNode("127.0.0.1", p) for p in self.cluster.ports]
                self._client = redis.RedisCluster(startup_nodes=nodes)
            return self._client
        if self.sentinel_set is not None:
            port = self.sentinel_set.master_port()
            assert port is not None, "no Sentinel names a master"
            return redis.Redis(port=port)
        assert self.redis is not None
        return redis.Redis(port=self.redis.port)

    def start_worker(self) -> None:
        self.worker_runs += 1
        log = (self.workdir / f"worker-{self.worker_runs}.log").open("wb")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "cdc_sync", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()

    def kill_worker(self) -> None:
        """kill -9; the caller holds worker_lock until it starts the next one."""
        assert self.worker is not None
        if self.worker.poll() is not None:
            self._crashed()
        self.worker.kill()
        self.worker.wait(10)

    def _crashed(self) -> None:
        assert self.worker is not None
        self.report.worker_crashes += 1
        print(f"worker exited by itself with {self.worker.returncode}; see {self.workdir}", file=sys.stderr)

    def _check_worker_alive(self) -> None:
        with self.worker_lock:
            if self.worker is not None and self.worker.poll() is not None:
                self._crashed()
                self.start_worker()

    def _error(self, where: str, exc: BaseException) -> None:
        """A failure of the checker itself or of a fault: recorded, printed, and the run stops (and fails)."""
        text = f"{where}: {type(exc).__name__}: {exc}"
        self.report.errors.append(text)
        print(f"ERROR: {text}\n{traceback.format_exc()}", file=sys.stderr)
        self.stop.set()

    def checkpoint(self) -> str:
        for attempt in range(50):  # (a cluster or Sentinel failover in progress: asked again)
            try:
                return (self.redis_client().get(self.names.checkpoint) or b"").decode()
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError, AssertionError):
                if attempt == 49:
                    raise
                self._client = None
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def checkpoint_gtid(self) -> str:
        """The checkpoint's GTID state (a MariaDB checkpoint also says where in the binlog: ``@server:file:pos``)."""
        return self.checkpoint().partition("@")[0]

    def checkpoint_or_none(self) -> str | None:
        """The checkpoint, or None while Redis is down (a fault)."""
        try:
            return self.checkpoint()
        except redis.RedisError:
            return None

    def binlog_pos(self) -> str:
        conn = self.sql()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@global.gtid_binlog_pos")
                return str(cur.fetchone()[0])
        finally:
            conn.close()

    def _filler(self, present: bool) -> None:
        """Another application's keys in the same Redis while a reset runs (its flush SCANs past them)."""
        r = self.redis_client()
        pipe = r.pipeline(transaction=False)
        for start in range(0, FILLER_KEYS, 1000):
            names = [f"app:filler:{i}" for i in range(start, start + 1000)]
            if present:
                pipe.mset(dict.fromkeys(names, "x"))
            else:
                pipe.unlink(*names)
        pipe.execute()
        r.close()

    # ---- writers ----------------------------------------------------------------------------------

    def new_value(self, writer: int) -> str:
        return f"w{writer}-{next(self.values)}"

    def writer(self, w: int) -> None:
        rng = random.Random(self.seed * 100 + w)
        conn = self.sql("c")
        domain = 0
        ids = [w + WRITERS * k for k in range(IDS_PER_WRITER)]
        while not self.stop.is_set():
            if not self.pause.enter(self.stop):
                break
            try:
                if w == 1 and self.domain1 and domain != 1:
                    with conn.cursor() as cur:
                        cur.execute("SET SESSION gtid_domain_id = 1")
                    domain = 1
                self._one_op(conn, rng, w, ids, domain)
                self.report.ops += 1
            except pymysql.MySQLError:
                conn = self._reconnect(conn)
                domain = 0
            except Exception as exc:
                self._error(f"writer {w}", exc)
            finally:
                self.pause.leave()
            time.sleep(rng.uniform(0.002, 0.01))
        conn.close()

    def _reconnect(self, conn: pymysql.Connection[Any]) -> pymysql.Connection[Any]:
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()
        while not self.stop.is_set():
            try:
                return self.sql("c")
            except pymysql.MySQLError:
                time.sleep(0.2)
        return conn

    def _record(self, changes: list[Change], t0: float, t1: float, via: str) -> None:
        for c in changes:
            self.history.record(c.table, c.row_id, c.v, c.grp, t0, t1, ",".join(x for x in (c.via, via) if x))

    def _one_op(self, conn: pymysql.Connection[Any], rng: random.Random, w: int, ids: list[int], domain: int) -> None:
        kind = rng.random()
        with conn.cursor() as cur:
            if kind < 0.12:  # a multi-row transaction
                via = self._gap_gtid(cur, rng, domain)
                cur.execute("BEGIN")
                # distinct rows: a second statement on a row would be staged from the model's pre-transaction state
                pending = [c for i in rng.sample(ids, rng.randrange(2, 5)) for c in self._stage(cur, rng, w, i, False)]
                t0 = time.monotonic()
                cur.execute("COMMIT")
                t1 = time.monotonic()
                self._record(pending, t0, t1, via)
            elif kind < 0.16:  # a rolled-back transaction: its values must never be read
                v = self.new_value(w)
                self.history.rollback(v)
                cur.execute("BEGIN")
                cur.execute("UPDATE items SET v = %s WHERE id = %s", (v, rng.choice(ids)))
                cur.execute("ROLLBACK")
            else:
                via = self._gap_gtid(cur, rng, domain)
                t0 = time.monotonic()
                staged = self._stage(cur, rng, w, rng.choice(ids), True)
                t1 = time.monotonic()
                self._record(staged, t0, t1, via)

    def _gap_gtid(self, cur: Any, rng: random.Random, domain: int) -> str:
        """During a gtid_ooo episode, now and then give the next transaction an unused number below the domain's."""
        if time.monotonic() >= self.gap_until or rng.random() >= 0.35:
            return ""
        with self.gap_lock:
            n = self.gap_next[domain]
            self.gap_next[domain] = n - rng.randint(1, 3)
        cur.execute("SET SESSION gtid_seq_no = %s", (n,))
        return f"gtid {domain}-1-{n}"

    def _stage(self, cur: Any, rng: random.Random, w: int, row_id: int, single: bool) -> list[Change]:
        """One statement on a row this writer owns; returns the versions it creates."""
        pick = rng.random()
        if pick >= 0.84 and single:  # parents only in transactions of their own (cascades read back there)
            return self._stage_parent(cur, rng, w)
        if pick >= 0.62:
            return self._stage_kid(cur, rng, w, row_id)
        table = "items" if pick < 0.45 else "notes"
        current = self.history.current(table, row_id)
        v = self.new_value(w)
        action = rng.random()
        if current.v is None:
            if table == "items":
                grp = rng.randrange(GROUPS)
                cur.execute(
                    "INSERT INTO items (id, v, grp, code) VALUES (%s, %s, %s, %s)", (row_id, v, grp, f"k{row_id}")
                )
                return [Change(table, row_id, v, grp)]
            cur.execute("INSERT INTO notes (id, v) VALUES (%s, %s)", (row_id, v))
            return [Change(table, row_id, v)]
        if action < 0.15:
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
            return [Change(table, row_id, None)]
        free = [i for i in range(w, WRITERS * IDS_PER_WRITER * 2, WRITERS) if self.history.current(table, i).v is None]
        if action < 0.25 and table == "items" and free:  # primary-key change to a free id (the code goes along)
            target = rng.choice(free)
            grp = current.grp
            cur.execute("UPDATE items SET id = %s, v = %s, code = %s WHERE id = %s", (target, v, f"k{target}", row_id))
            return [Change("items", row_id, None), Change("items", target, v, grp)]
        if table == "items":
            grp = rng.randrange(GROUPS) if rng.random() < 0.3 else current.grp
            cur.execute("UPDATE items SET v = %s, grp = %s WHERE id = %s", (v, grp, row_id))
            return [Change(table, row_id, v, grp)]
        cur.execute("UPDATE notes SET v = %s WHERE id = %s", (v, row_id))
        return [Change(table, row_id, v)]

    def _stage_kid(self, cur: Any, rng: random.Random, w: int, row_id: int) -> list[Change]:
        current = self.history.current("kids", row_id)
        v = self.new_value(w)
        mine = self.parents[w]
        pid = rng.choice(sorted(mine["parents"])) if mine["parents"] and rng.random() < 0.85 else None
        if current.v is None:
            pid2 = rng.choice(sorted(mine["parents2"])) if mine["parents2"] and rng.random() < 0.5 else None
            cur.execute("INSERT INTO kids (id, pid, pid2, v) VALUES (%s, %s, %s, %s)", (row_id, pid, pid2, v))
        elif rng.random() < 0.1:
            cur.execute("DELETE FROM kids WHERE id = %s", (row_id,))
            return [Change("kids", row_id, None)]
        elif rng.random() < 0.2:
            cur.execute("UPDATE kids SET v = %s, pid = %s WHERE id = %s", (v, pid, row_id))
        else:
            cur.execute("UPDATE kids SET v = %s WHERE id = %s", (v, row_id))
        return [Change("kids", row_id, v)]

    def _stage_parent(self, cur: Any, rng: random.Random, w: int) -> list[Change]:
        """Insert or delete a parent row; a delete returns the kids InnoDB deleted with it (no binlog event)."""
        # parents2 seldom: the worker watches it from the start and flushes all kids on each of its deletes,
        # which would also clear whatever other cascades left stale
        weights = {"parents": 0.6, "gparents": 0.35, "parents2": 0.05}
        tables = sorted(self.parent_tables)
        table = rng.choices(tables, [weights[t] for t in tables])[0]
        mine = self.parents[w][table]
        pid = w + WRITERS * rng.randrange(GPARENTS_PER_WRITER if table == "gparents" else PARENTS_PER_WRITER)
        if pid not in mine:
            gparents = self.parents[w]["gparents"]
            if table == "parents" and gparents and rng.random() < 0.6:
                gid = rng.choice(sorted(gparents))
                cur.execute("INSERT INTO parents (id, v, gid) VALUES (%s, 'p', %s)", (pid, gid))
            else:
                cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, 'p')", (pid,))
            mine.add(pid)
            return []
        kids_q = {
            "parents": "SELECT id FROM kids WHERE pid = %s FOR UPDATE",
            "parents2": "SELECT id FROM kids WHERE pid2 = %s FOR UPDATE",
            "gparents": "SELECT k.id FROM kids k JOIN parents p ON k.pid = p.id WHERE p.gid = %s FOR UPDATE",
        }[table]
        cur.execute("BEGIN")
        cur.execute(kids_q, (pid,))
        kids = {int(r[0]) for r in cur.fetchall()}
        lost_parents: set[int] = set()
        if table == "gparents":
            cur.execute("SELECT id FROM parents WHERE gid = %s FOR UPDATE", (pid,))
            lost_parents = {int(r[0]) for r in cur.fetchall()}
        cur.execute(f"DELETE FROM {table} WHERE id = %s", (pid,))
        kids -= self._still_there(cur, "kids", kids)
        lost_parents -= self._still_there(cur, "parents", lost_parents)
        cur.execute("COMMIT")
        mine.discard(pid)
        self.parents[w]["parents"] -= lost_parents
        for k in kids:
            if self.history.current("kids", k).v is None:
                raise AssertionError(f"InnoDB cascaded a delete to kid {k}, which the model has as absent")
        return [Change("kids", k, None, via=f"cascade from {table}") for k in sorted(kids)]

    @staticmethod
    def _still_there(cur: Any, table: str, ids: set[int]) -> set[int]:
        if not ids:
            return set()
        cur.execute(f"SELECT id FROM {table} WHERE id IN ({', '.join(['%s'] * len(ids))})", sorted(ids))
        return {int(r[0]) for r in cur.fetchall()}

    # ---- readers ----------------------------------------------------------------------------------

    def reader(self, kind: str, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        reader = CacheReader(load(self.config_path))
        self.readers.append(reader)
        if kind == "frozen":
            reader.row_loader = FrozenLoader(reader.config.mysql, 2, rng)
        all_ids = list(range(WRITERS * IDS_PER_WRITER * 2))
        while not self.stop.is_set():
            if kind == "odd" and time.monotonic() >= self.odd_until:
                time.sleep(0.05)
                continue
            rs = time.monotonic()
            try:
                if kind == "group":
                    grp = rng.randrange(GROUPS)
                    deps = [("c.items", {"grp": grp})]
                    result = reader.fetch(f"grp:{grp}", lambda grp=grp: self._group(grp), ttl=60, depends_on=deps)
                    self.reads.append(Read("group", grp, [tuple(x) for x in result], rs, time.monotonic()))
                elif kind == "odd":
                    row_id = rng.choice(ODD_IDS)
                    table, where, spelling = odd_lookup(rng, row_id)
                    row = reader.get_row(f"c.{table}", **where)
                    value = None if row is None else row["v"]
                    self.reads.append(Read(table, row_id, value, rs, time.monotonic(), spelling))
                else:
                    table = {"items": "items", "kids": "kids"}.get(kind, "notes")  # frozen readers read notes
                    row_id = rng.choice(all_ids)
                    if table == "items" and rng.random() < 0.2:  # the second key, spelled as the worker renders it
                        row = reader.get_row("c.items", code=f"k{row_id}")
                    else:
                        row = reader.get_row(f"c.{table}", id=row_id)
                    value = None if row is None else row["v"]
                    self.reads.append(Read(table, row_id, value, rs, time.monotonic()))
            except Exception:  # MySQL down (restart): the app would see this error too
                self.report.read_errors += 1
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(0.001, 0.005))
        reader.close()

    def judge_reads(self) -> None:
        """Date every read against the full history (judged at the end, when every commit is recorded)."""
        bound = MAX_STALENESS_MS / 1000
        for read in self.reads:
            kind, key, result, rs, re_ = read[:5]
            if kind == "group":
                verdict = self.history.judge_group(key, result, rs, re_, bound)
            else:
                verdict = self.history.judge_row(kind, key, result, rs, re_, bound)
            self.report.reads += 1
            self.report.staleness.append(verdict.staleness_s)
            spelled = f" ({read.spelling})" if read.spelling else ""
            what = f"{kind} {key}{spelled} -> {result} at {rs:.3f}..{re_:.3f}"
            if verdict.kind == "stale":
                cause, context = self._cause(read, verdict)
                self.report.stale_after[context.partition(" after ")[2].removesuffix(" began") or "no fault"] += 1
                missed = verdict.missed
                if missed is not None:
                    via = f" via {missed.via}" if missed.via else ""
                    if missed.via:  # a gtid is unique: count its kind only
                        self.report.stale_via[re.sub(r"gtid \d+-\d+-\d+", "gtid out of order", missed.via)] += 1
                    what += f" missed {missed.v} committed {missed.t_start:.3f}..{missed.t_end:.3f}{via}"
                text = f"{what} staleness={verdict.staleness_s:.3f}s [{cause}; {context}]"
                self.report.stale.append(text)
                self.report.stale_causes[cause] += 1
                if len(self.report.examples[cause]) < 5:
                    self.report.examples[cause].append(text)
            elif verdict.kind == "phantom":
                self.report.phantom.append(what)

    def _cause(self, read: Read, verdict: Verdict) -> tuple[str, str]:
        """The likely cause of a stale read: how it was spelled or what it missed, else the last fault before it."""
        last = [(t0, kind) for t0, _t1, kind in self.timeline if t0 <= read.rs]
        if last:
            nth = sum(1 for _t0, kind in last if kind == last[-1][1])
            context = f"{read.rs - last[-1][0]:.1f}s after {last[-1][1]} #{nth} began"
        else:
            context = "before any fault"
        missed = verdict.missed
        if read.spelling:
            return "noncanonical", context
        if missed is not None and "cascade" in missed.via:
            return "ddl_fk", context
        if missed is not None and "gtid" in missed.via:
            return "gtid_ooo", context
        return (last[-1][1] if last else "none"), context

    def _group(self, grp: int) -> list[list[Any]]:
        conn = self.sql("c")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, v FROM items WHERE grp = %s ORDER BY id", (grp,))
                return [[row_id, v] for row_id, v in cur.fetchall()]
        finally:
            conn.close()

    # ---- memory pressure ----------------------------------------------------------------------------

    def pressure(self) -> None:
        """Another application's bursts: keys with TTLs of 1 to 4 s until Redis evicted 200 keys (or 8 MB were
        written), every 2 to 5 s. Between bursts the keys expire, memory frees up and the cache fills again."""
        rng = random.Random(self.seed * 7 + 1)
        value = b"x" * PRESSURE_VALUE
        n = 0
        while not self.stop.wait(rng.uniform(2.0, 5.0)):
            try:
                r = self.redis_client()
                start = int(r.info("stats")["evicted_keys"])
                written = 0
                while written < 8 * 1024 * 1024 and int(r.info("stats")["evicted_keys"]) < start + 200:
                    pipe = r.pipeline(transaction=False)
                    for _ in range(50):
                        n += 1
                        pipe.set(f"app:pressure:{n}", value, px=rng.randint(1000, 4000))
                    pipe.execute()
                    written += 50 * PRESSURE_VALUE
                r.close()
                self.report.pressure_bursts += 1
            except redis.RedisError:  # Redis cut (a fault), or out of memory with nothing to evict: next burst
                time.sleep(0.2)

    def watch_evictions(self) -> None:
        """Count every key Redis evicts, by kind (its ``evicted`` keyspace events, on Redis's own port)."""
        while not self.stop.is_set():
            try:
                r = self.redis_client()
                sub = r.pubsub(ignore_subscribe_messages=True)
                sub.subscribe("__keyevent@0__:evicted")
                while not self.stop.is_set():
                    message = sub.get_message(timeout=0.5)
                    if message is not None:
                        self.report.evicted[evicted_kind(message["data"].decode(errors="replace"))] += 1
                sub.close()
                r.close()
            except redis.RedisError:
                time.sleep(0.2)

    # ---- faults -----------------------------------------------------------------------------------

    def faults(self) -> None:
        rng = random.Random(self.seed)
        order: list[str] = []
        if not self.kinds:
            self.round_done.set()
            return
        while not self.stop.wait(self.profile.fault_every_s * rng.uniform(0.7, 1.3)):
            if not order:
                order = list(self.kinds)
                rng.shuffle(order)
            kind = order.pop()
            t0 = time.monotonic()
            try:
                getattr(self, f"fault_{kind}")(rng)
            except Exception as exc:
                self._error(f"fault {kind} could not be injected", exc)
                return
            self.report.faults[kind] += 1
            self.timeline.append((t0, time.monotonic(), kind))
            wall = time.strftime("%H:%M:%S", time.gmtime(time.time() - (time.monotonic() - t0)))
            took = time.monotonic() - t0
            self.report.notes.append(f"fault {kind} #{self.report.faults[kind]} began {wall}Z, took {took:.1f}s")
            if not order:
                self.round_done.set()

    def fault_kill9_worker(self, rng: random.Random) -> None:
        with self.worker_lock:
            self.kill_worker()
            time.sleep(rng.uniform(1.0, 4.0))  # often longer than max_staleness_ms: readers must notice
            self.start_worker()

    def fault_redis_restart(self, rng: random.Random) -> None:
        assert self.redis is not None
        self.redis.restart()  # nothing on disk: Redis comes back empty

    def fault_mariadb_restart(self, rng: random.Random) -> None:
        assert self.mariadb is not None
        with self.pause.paused():  # a COMMIT cut by the restart would leave its outcome unknown to the model
            self.mariadb.restart()

    def fault_cut_mysql(self, rng: random.Random) -> None:
        self.mysql_proxy.cut()

    def fault_cut_redis(self, rng: random.Random) -> None:
        self.redis_proxy.cut()

    def fault_purge_while_down(self, rng: random.Random) -> None:
        with self.worker_lock:
            self.kill_worker()
            time.sleep(rng.uniform(0.5, 1.5))
            self._purge()
            self.start_worker()

    def _purge(self) -> None:
        conn = self.sql()
        with conn.cursor() as cur:
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW MASTER STATUS")
            current = cur.fetchone()[0]
            for _ in range(50):
                cur.execute(f"PURGE BINARY LOGS TO '{current}'")
                cur.execute("SHOW BINARY LOGS")
                if len(cur.fetchall()) == 1:
                    break
                time.sleep(0.2)
        conn.close()

    def fault_ddl(self, rng: random.Random) -> None:
        with self.pause.paused():
            conn = self.sql("c")
            with conn.cursor() as cur:
                if rng.random() < 0.5 or self.columns_added >= 3:
                    ids = self.history.ids("items")
                    t0 = time.monotonic()
                    cur.execute("TRUNCATE TABLE items")
                    t1 = time.monotonic()
                    for row_id in ids:
                        if self.history.current("items", row_id).v is not None:
                            self.history.record("items", row_id, None, None, t0, t1)
                else:
                    self.columns_added += 1
                    cur.execute(f"ALTER TABLE items ADD COLUMN extra{self.columns_added} INT DEFAULT 0")
            conn.close()

    def fault_redis_snapshot(self, rng: random.Random) -> None:
        """SAVE, let writers and the worker go on past max_staleness_ms, then restart Redis from that dump."""
        assert self.redis is not None
        self.snapshots += 1
        n = self.snapshots
        r = self.redis_client()
        r.set(f"checker:snapshot:{n}", "in")
        r.save()
        dump, older = self.redis.directory / "dump.rdb", self.workdir / f"redis-snapshot-{n}.rdb"
        shutil.move(dump, older)  # out of the way: a plain restart (redis_restart) still comes back empty
        r.set(f"checker:after-snapshot:{n}", "out")
        saved = (r.get("cdc:checkpoint") or b"").decode()
        r.close()
        time.sleep(rng.uniform(2.5, 4.0))
        live = self.checkpoint()
        t0 = time.monotonic()
        in_window = sum(reader.in_window() for reader in self.readers)
        self.redis.restart(files={"dump.rdb": older})
        down = time.monotonic() - t0
        in_window_after = sum(reader.in_window() for reader in self.readers)
        dump.unlink(missing_ok=True)
        r = self.redis_client()
        try:
            deadline = time.monotonic() + 10
            while True:  # the port answers while Redis still loads the file (LOADING)
                try:
                    before, after = r.get(f"checker:snapshot:{n}"), r.exists(f"checker:after-snapshot:{n}")
                    break
                except redis.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if before != b"in" or after:
                raise FaultFailed(f"Redis did not come back from the older snapshot (marker {before!r}, after {after})")
        finally:
            r.close()
        self.report.notes.append(
            f"redis_snapshot {n}: checkpoint {live} went back to ~{saved}; down {down:.2f}s; readers inside their "
            f"window {in_window}/{len(self.readers)} before the restart, {in_window_after} after it"
        )

    def fault_checkpoint_reset(self, rng: random.Random) -> None:
        """The real CLI under load; two times in three while the worker is stalled (SIGSTOP) and falls behind."""
        self._filler(True)
        try:
            self._reset(rng)
        finally:
            self._filler(False)

    def _reset(self, rng: random.Random) -> None:
        self.resets += 1
        log = self.workdir / f"reset-{self.resets}.log"
        cmd = [sys.executable, "-m", "cdc_sync", "checkpoint", "reset", "--yes", "--config", str(self.config_path)]
        stall, moved, before = rng.random() < 2 / 3, 0.0, ""
        assert self.redis is not None
        watch = FlushWatch(self.redis.port, ["c.items", "c.notes", "c.kids"])
        with self.worker_lock, log.open("wb") as out, watch:
            worker = self.worker
            assert worker is not None
            if stall:
                worker.send_signal(signal.SIGSTOP)
            try:
                if stall:
                    time.sleep(rng.uniform(2.5, 3.5))  # writers go on: the worker is seconds behind
                    before = self.checkpoint()
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
                if stall:  # let the worker go on once the checkpoint moved, while the flush is under way
                    deadline = time.monotonic() + 30
                    while self.checkpoint() == before and proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                    moved = time.monotonic() - t0
            finally:
                if stall:
                    worker.send_signal(signal.SIGCONT)
            try:
                rc = proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise FaultFailed("cdc-sync checkpoint reset did not finish within 120 s") from None
            took = time.monotonic() - t0
        text = log.read_text(errors="replace").strip()
        if rc != 0:
            raise FaultFailed(f"cdc-sync checkpoint reset exited with {rc}: {text[-1000:]}")
        stalled = f", worker stalled, checkpoint moved after {moved:.2f}s" if stall else ""
        self.report.notes.append(
            f"checkpoint_reset {self.resets}: {took:.2f}s{stalled}: {text.splitlines()[-1]}; {watch.summary()}"
        )

    def fault_ddl_fk(self, rng: random.Random) -> None:
        """Cascading foreign keys appear (and go and come back) while the worker runs."""
        with self.pause.paused():
            conn = self.sql("c")
            step, self.fk_steps = self.fk_steps, self.fk_steps + 1
            with conn.cursor() as cur:
                cur.execute("SET SESSION foreign_key_checks = 0")  # kids left dangling before stay as they are
                if step == 2:  # the parent kids.pid2 has referred to all along
                    cur.execute("CREATE TABLE parents2 (id INT PRIMARY KEY, v VARCHAR(64))")
                    self.parent_tables.add("parents2")
                    what = "CREATE TABLE parents2 (kids.pid2 ON DELETE CASCADE comes alive)"
                elif step == 1:  # a cascading grandparent: DDL on unmapped tables only
                    cur.execute("CREATE TABLE gparents (id INT PRIMARY KEY, v VARCHAR(64))")
                    cur.execute(
                        "ALTER TABLE parents ADD COLUMN gid INT NULL, ADD KEY (gid), ADD CONSTRAINT fk_parents_gid "
                        "FOREIGN KEY (gid) REFERENCES gparents (id) ON DELETE CASCADE"
                    )
                    self.parent_tables.add("gparents")
                    what = f"gparents -> parents ON DELETE CASCADE (kids.pid cascading: {self.fk_kids_pid})"
                elif self.fk_kids_pid:
                    cur.execute("ALTER TABLE kids DROP FOREIGN KEY fk_kids_pid")
                    self.fk_kids_pid, what = False, "ALTER TABLE kids DROP FOREIGN KEY"
                else:
                    cur.execute(
                        "ALTER TABLE kids ADD CONSTRAINT fk_kids_pid FOREIGN KEY (pid) REFERENCES parents (id) "
                        "ON DELETE CASCADE"
                    )
                    self.fk_kids_pid, what = True, "ALTER TABLE kids ADD FOREIGN KEY (pid) ... ON DELETE CASCADE"
            conn.close()
        self.report.notes.append(f"ddl_fk {step + 1}: {what}")

    def fault_gtid_ooo(self, rng: random.Random) -> None:
        """A few seconds of GTIDs out of order, then kill -9 of the worker right after such a transaction."""
        if not self.gap_next:
            self._gtid_jump()
            self.domain1 = True
        self.gap_until = time.monotonic() + rng.uniform(3.0, 5.0)
        while time.monotonic() < self.gap_until and not self.stop.is_set():
            time.sleep(0.05)
        hold = rng.random() < 0.5  # writers wait until the new worker asked for its position: the binlog still ends
        with self.worker_lock, self.pause.paused():  # on the lower number then
            domain = rng.randrange(2)
            gtid = self._gap_txn(domain, rng)
            deadline = time.monotonic() + 1.5
            while gtid not in self.checkpoint_gtid().split(",") and time.monotonic() < deadline:
                time.sleep(0.02)
            at_kill, pos = self.checkpoint(), self.binlog_pos()
            self.kill_worker()
            time.sleep(rng.uniform(0.5, 2.0))
            self.start_worker()
            log = self.workdir / f"worker-{self.worker_runs}.log"
            deadline = time.monotonic() + 10
            while hold and time.monotonic() < deadline and b"source.connecting" not in log.read_bytes():
                time.sleep(0.05)
            time.sleep(0.5 if hold else 0)
        self.report.notes.append(
            f"gtid_ooo: kill -9 after {gtid} (worker run {self.worker_runs - 1}): checkpoint {at_kill}, "
            f"binlog {pos}; restarted as worker run {self.worker_runs}{', writers held' if hold else ''}"
        )

    def _gtid_jump(self) -> None:
        for domain in (0, 1):
            self._pad_txn(domain, GTID_JUMP)
            self.gap_next[domain] = GTID_JUMP - 1000

    def _gap_txn(self, domain: int, rng: random.Random) -> str:
        with self.gap_lock:
            n = self.gap_next[domain]
            self.gap_next[domain] = n - rng.randint(1, 3)
        return self._pad_txn(domain, n)

    def _pad_txn(self, domain: int, seq_no: int) -> str:
        """A transaction on an unmapped table with GTID ``domain-1-seq_no``, or FaultFailed."""
        conn = self.sql("c")
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION gtid_domain_id = %s", (domain,))
                cur.execute("SET SESSION gtid_seq_no = %s", (seq_no,))
                cur.execute("INSERT INTO pad (note) VALUES ('gtid')")
                cur.execute("SELECT @@last_gtid")
                got = str(cur.fetchone()[0])
        finally:
            conn.close()
        if got != f"{domain}-1-{seq_no}":
            raise FaultFailed(f"MariaDB did not take gtid_seq_no {seq_no} in domain {domain}: last_gtid {got}")
        return got

    # ---- Redis Cluster and Sentinel faults ---------------------------------------------------------------

    def _cluster_ok(self, timeout: float = 60) -> None:
        """Every node answers cluster_state ok, every primary has its replica synced."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = cluster_nodes(self.cluster.primaries()[0])
                up = [n for n in nodes if "fail" not in ",".join(n["flags"])]
                if (
                    len(up) == len(self.cluster.servers)
                    and all(cluster_info(n["port"]).get("cluster_state") == "ok" for n in up)
                    and sum("slave" in n["flags"] for n in up) == len(up) // 2
                ):
                    self._client = None
                    return
            except (OSError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise FaultFailed("the cluster did not come back whole")
            time.sleep(0.2)

    def _replica_of(self, port: int) -> int:
        assert self.cluster is not None
        nodes = cluster_nodes(port)
        me = next(n for n in nodes if n["port"] == port)
        return int(next(n["port"] for n in nodes if n["primary"] == me["id"]))

    def _promoted(self, port: int, timeout: float = 60) -> None:
        assert self.cluster is not None
        deadline = time.monotonic() + timeout
        while port not in self.cluster.primaries():
            if time.monotonic() > deadline:
                raise FaultFailed(f"the replica on {port} was not promoted")
            time.sleep(0.2)

    def fault_cluster_failover(self, rng: random.Random) -> None:
        assert self.cluster is not None
        replica = self._replica_of(rng.choice(self.cluster.primaries()))
        with redis.Redis(port=replica) as node:
            node.execute_command("CLUSTER FAILOVER")
        self._promoted(replica)
        self._cluster_ok()

    def fault_cluster_kill_primary(self, rng: random.Random) -> None:
        assert self.cluster is not None
        victim = rng.choice(self.cluster.primaries())
        replica = self._replica_of(victim)
        server = self.cluster.server(victim)
        server.proc.kill()
        server.proc.wait(10)
        self._promoted(replica)
        time.sleep(rng.uniform(0.5, 2.0))
        server.restart()  # (its nodes.conf: it comes back as the new primary's replica, empty, and syncs)
        self._cluster_ok()

    def fault_cluster_reshard(self, rng: random.Random) -> None:
        assert self.cluster is not None
        source, target = rng.sample(self.cluster.primaries(), 2)
        ids = {n["port"]: n["id"] for n in cluster_nodes(source)}
        moved = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{source}",
                "--cluster-from",
                ids[source],
                "--cluster-to",
                ids[target],
                "--cluster-slots",
                "300",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if moved.returncode != 0:
            raise FaultFailed(f"reshard failed: {moved.stdout[-500:]}{moved.stderr[-500:]}")
        self._cluster_ok()

    def fault_cluster_lossy_failover(self, rng: random.Random) -> None:
        assert self.cluster is not None
        victim = rng.choice(self.cluster.primaries())
        replica = self._replica_of(victim)
        me = next(n for n in cluster_nodes(victim) if n["port"] == victim)
        low = int(next(p for p in me["slots"] if not p.startswith("[")).split("-")[0])
        self._lossy(self.cluster.server(victim), self.cluster.server(replica), f"{{{slot_tag(low)}}}filler", rng)
        self._promoted(replica)
        self.cluster.server(victim).restart()
        self._cluster_ok()

    def fault_sentinel_failover(self, rng: random.Random) -> None:
        assert self.sentinel_set is not None
        before = self.sentinel_set.master_port()
        with redis.Redis(port=self.sentinel_set.sentinels[0].port) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", "cache")
        self._new_master(before)

    def fault_sentinel_lossy_failover(self, rng: random.Random) -> None:
        s = self.sentinel_set
        assert s is not None
        before = s.master_port()
        assert before is not None
        replica = next(x for x in s.servers if x.port != before)
        self._lossy(s.server(before), replica, "filler", rng)
        self._new_master(before)
        s.server(before).restart()  # (the Sentinels make it a replica of the new master)

    def _new_master(self, before: int | None, timeout: float = 60) -> None:
        assert self.sentinel_set is not None
        deadline = time.monotonic() + timeout
        while self.sentinel_set.master_port() in (before, None):
            if time.monotonic() > deadline:
                raise FaultFailed("the Sentinels named no new master")
            time.sleep(0.2)
        time.sleep(1.0)

    def _lossy(self, primary: LocalServer, replica: LocalServer, filler: str, rng: random.Random) -> None:
        """The primary takes the writers' changes (applied by the worker) that its stopped replica never gets,
        then dies with kill -9."""
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            with redis.Redis(port=primary.port) as node:
                node.set(filler, b"x" * FILLER_BYTES)
            time.sleep(rng.uniform(1.0, 3.0))  # the worker applies (and Redis acknowledges) changes meanwhile
            primary.proc.kill()
            primary.proc.wait(10)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)

    def fault_noncanonical(self, rng: random.Random) -> None:
        """A few seconds of lookups spelled the way MySQL matches but the worker never renders."""
        self.odd_until = time.monotonic() + rng.uniform(4.0, 6.0)
        while time.monotonic() < self.odd_until and not self.stop.is_set():
            time.sleep(0.05)

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        self.start()
        threads = [threading.Thread(target=self.writer, args=(w,), daemon=True) for w in range(WRITERS)]
        kinds = ["items", "items", "notes", "frozen", "group", "kids"]
        if "noncanonical" in self.kinds:
            kinds.append("odd")
        threads += [threading.Thread(target=self.reader, args=(k, i), daemon=True) for i, k in enumerate(kinds)]
        if self.memory:
            threads += [threading.Thread(target=t, daemon=True) for t in (self.pressure, self.watch_evictions)]
        faults = threading.Thread(target=self.faults, daemon=True)
        for t in [*threads, faults]:
            t.start()
        deadline = started + self.profile.seconds
        last, moved_at, noted = "", time.monotonic(), False
        while not self.stop.is_set():  # run the profile's time, and until every fault kind ran (within a minute)
            now = time.monotonic()
            if now >= deadline and (self.round_done.is_set() or now >= deadline + 60):
                break
            time.sleep(0.5)
            self._check_worker_alive()
            checkpoint = self.checkpoint_or_none()
            if checkpoint != last:
                last, moved_at, noted = checkpoint or "", now, False
            elif now - moved_at > 15 and not noted:  # a liveness problem (not judged): say so
                noted = True
                self.report.notes.append(f"the checkpoint stayed at {last!r} for 15 s from +{moved_at - started:.0f}s")
        if not self.round_done.is_set():
            self.report.errors.append(f"not every fault kind ran: {sorted(set(self.kinds) - set(self.report.faults))}")
        self.stop.set()
        faults.join(120)
        for t in threads:
            t.join(60)
        self._check_worker_alive()
        self.quiesce_and_compare()
        self.judge_reads()
        if self.compress:
            self.report.compressed_events = self.count_compressed_events()
        self.report.near_hits = sum(reader.stats["near_hit"] for reader in self.readers)
        self.report.seconds = time.monotonic() - started
        return self.report

    def count_compressed_events(self) -> int:
        """Compressed events in the binlogs still on the server (``SHOW BINLOG EVENTS`` types ``*_compressed*``)."""
        conn = self.sql()
        total = 0
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            for name, *_rest in cur.fetchall():
                cur.execute(f"SHOW BINLOG EVENTS IN '{name}'")
                total += sum(1 for row in cur.fetchall() if "compressed" in str(row[2]).lower())
        conn.close()
        return total

    def quiesce_and_compare(self) -> None:
        conn = self.sql("c")
        with conn.cursor() as cur:  # one ordinary transaction in each domain: the binlog ends in order
            cur.execute("SELECT @@global.gtid_binlog_pos")
            for domain in sorted({int(p.split("-")[0]) for p in str(cur.fetchone()[0]).split(",") if p}):
                cur.execute("SET SESSION gtid_domain_id = %s", (domain,))
                cur.execute("INSERT INTO pad (note) VALUES ('end')")
        r = self.redis_client()
        deadline, last, moved_at = time.monotonic() + 120, "", time.monotonic()
        while True:  # up to 2 minutes, but not 30 s without the checkpoint moving (a wedged worker)
            target, checkpoint = self.binlog_pos(), self.checkpoint_gtid()
            if checkpoint == target:
                break
            now = time.monotonic()
            if checkpoint != last:
                last, moved_at = checkpoint, now
            if now > deadline or now - moved_at > 30:
                self.report.divergent.append(f"checkpoint {checkpoint!r} never reached the binlog's end {target!r}")
                break
            time.sleep(0.1)
        for key in r.scan_iter():
            name = key.decode(errors="replace")
            prefix, _, rest = name.partition(":")
            table = MAPPED.get(prefix)
            if table is None:
                continue
            column, text = ("code", rest[5:]) if table == "items" and rest.startswith("code:") else ("id", rest)
            with conn.cursor(pymysql.cursors.DictCursor) as cur:  # the row MySQL matches for this key's value
                cur.execute(f"SELECT id, v FROM {table} WHERE {column} = %s", (unescape(text),))
                expected = cur.fetchone()
            cached = json.loads(r.get(key) or b"null")
            if cached is None or expected is None or any(cached.get(c) != expected[c] for c in ("id", "v")):
                self.report.divergent.append(f"{name}: cached {cached} db {expected}")
        for grp in range(GROUPS):
            raw = r.get(f"grp:{grp}")
            # a result is a hit only while its stamp is c.items's schema epoch (an eviction flush bumps it when its
            # tag set may be gone): one with another stamp is never served, whatever it holds
            ns = self.names
            if r.get(ns.stamp(f"grp:{grp}")) != stamp_of([r.get(ns.schema("c.items"))]).encode():
                continue
            if raw is not None and json.loads(raw) != self._group(grp):
                self.report.divergent.append(f"grp:{grp}: cached {json.loads(raw)} db {self._group(grp)}")
        conn.close()

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGCONT)
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        for proxy in (getattr(self, "mysql_proxy", None), getattr(self, "redis_proxy", None)):
            if proxy is not None:
                proxy.close()
        for server in (self.mariadb, self.redis):
            if server is not None:
                server.stop()
        for servers in (self.cluster, self.sentinel_set):
            if servers is not None:
                servers.stop()


def odd_lookup(rng: random.Random, row_id: int) -> tuple[str, dict[str, object], str]:
    """(table, lookup arguments, spelling) for a lookup of row ``row_id`` that renders a key the worker never writes.

    MySQL matches every one of these to the row: ``id = '05'`` and ``id = 5.0`` by numeric conversion,
    ``code = 'K5 '`` by the ``_ci`` collation and PAD SPACE.
    """
    spellings: list[tuple[str, str, object]] = [
        ("items", "id", f"0{row_id}"),
        ("items", "id", float(row_id)),
        ("items", "id", Decimal(f"{row_id}.0")),
        ("items", "id", Decimal(row_id)),
        ("items", "code", f"K{row_id}"),
        ("items", "code", f"k{row_id} "),
        ("items", "code", f"K{row_id}  "),
        ("notes", "id", f"0{row_id}"),
        ("notes", "id", float(row_id)),
    ]
    table, column, value = rng.choice(spellings)
    return table, {column: value}, f"{column}={value!r}"


def evicted_kind(key: str) -> str:
    """What an evicted key was: the worker's or the protocol's own (``cdc:<kind>:...``: tag, inv and tinv
    hold-offs, lease, stamp, flushing, schema, checkpoint, heartbeat, rules, status...), a cached row, a fetch
    result, another application's key."""
    head, _, rest = key.partition(":")
    if head == "cdc":
        return rest.partition(":")[0]
    if head in MAPPED:
        return "row"
    return {"grp": "fetch_result", "app": "other_app"}.get(head, "other")


def unescape(text: str) -> str:
    """A rendered key value back to text (keys.escape writes ':', '%', space and the like as %XX)."""
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text)


class FlushWatch:
    """While a reset runs: when the heartbeat was dropped and vouched again, and when each table was flushing.

    The reset drops the heartbeat with the checkpoint jump; a heartbeat fresh again while a table still waits for
    its flush vouches for keys the jump skipped.
    """

    def __init__(self, port: int, tables: list[str]) -> None:
        self.client = redis.Redis(port=port, socket_timeout=2)
        self.tables = tables
        self.t0 = time.monotonic()
        self.dropped: float | None = None
        self.fresh: float | None = None
        self.flushing: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FlushWatch:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            pipe = self.client.pipeline(transaction=True)
            pipe.time()
            pipe.get(Namespace("cdc").heartbeat)
            for table in self.tables:
                pipe.exists(f"cdc:flushing:{table}")
            try:
                (seconds, micros), heartbeat, *marks = pipe.execute()
            except redis.RedisError:
                continue
            t = time.monotonic() - self.t0
            if heartbeat is None and self.dropped is None:
                self.dropped = t
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            vouches = heartbeat is not None and now_ms - int(heartbeat) <= MAX_STALENESS_MS
            if self.dropped is not None and self.fresh is None and vouches:
                self.fresh = t
            for table, mark in zip(self.tables, marks, strict=True):
                if mark:
                    first, _ = self.flushing.get(table, (t, t))
                    self.flushing[table] = (first, t)

    def summary(self) -> str:
        def at(t: float | None) -> str:
            return "never" if t is None else f"+{t:.2f}s"

        spans = ", ".join(f"{t} +{a:.2f}..+{b:.2f}s" for t, (a, b) in self.flushing.items()) or "no flush seen"
        late = [t for t, (_a, b) in self.flushing.items() if self.fresh is not None and b > self.fresh]
        race = f"; vouched again while {', '.join(late)} still flushing or to be flushed" if late else ""
        return f"heartbeat dropped {at(self.dropped)}, fresh again {at(self.fresh)}; flushing {spans}{race}"


class FrozenLoader(RowLoader):
    """A reader frozen between its SELECT and its fill for a random while."""

    def __init__(self, cfg: Any, pool_size: int, rng: random.Random) -> None:
        super().__init__(cfg, pool_size)
        self.rng = rng

    def load(self, table: str, where: dict[str, object]) -> dict[str, Any] | None:
        row = super().load(table, where)
        time.sleep(self.rng.uniform(0.0, 1.5))
        return row


def worker_events(workdir: Path, wanted: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(worker run, log entry) of every entry the workers logged with one of these events, in run order."""
    out = []
    for log in sorted(workdir.glob("worker-*.log"), key=lambda p: int(p.stem.split("-")[1])):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") in wanted:
                out.append((log.stem, entry))
    return out


def resume_notes(workdir: Path) -> list[str]:
    """What each worker run after the first logged about where it resumed (for gtid_ooo and redis_snapshot)."""
    wanted = ("sync.resume", "source.position_lost", "source.lineage_changed", "sync.rewind", "sync.fresh_start")
    out = []
    for run, entry in worker_events(workdir, wanted):
        fields = {k: v for k, v in entry.items() if k not in ("timestamp", "level", "logger")}
        out.append(f"{run} {str(entry.get('timestamp', ''))[11:23]}Z: {fields}")
    return out


def parse_faults(text: str | None, topology: str = "single") -> tuple[str, ...]:
    if text is None or text == "all":
        return TOPOLOGY_FAULTS[topology] or FAULT_KINDS
    if text in ("", "none"):
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    known = (*FAULT_KINDS, *CLUSTER_FAULTS, *SENTINEL_FAULTS)
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise SystemExit(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(known)}")
    allowed = TOPOLOGY_FAULTS[topology] or tuple(k for k in FAULT_KINDS)
    wrong = [k for k in kinds if k not in allowed]
    if wrong:
        raise SystemExit(f"fault kind(s) {', '.join(wrong)} do not apply to --topology {topology}")
    return kinds


def run(
    profile: str,
    seed: int,
    kinds: tuple[str, ...] = FAULT_KINDS,
    seconds: float | None = None,
    memory: str = "",
    compress: bool = False,
    topology: str = "single",
    near_cache: int = 0,
) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-consistency-"))
    chosen = PROFILES[profile]
    if seconds is not None:
        chosen = Profile(seconds=seconds, fault_every_s=chosen.fault_every_s)
    checker = Checker(chosen, seed, workdir, kinds, memory, compress, topology, near_cache)
    try:
        report = checker.run()
    finally:
        checker.close()
    report.eviction_flushes = len(worker_events(workdir, ("sync.keys_evicted",)))
    report.verify_checks = sum(int(e.get("checked", 0)) for _, e in worker_events(workdir, ("verify.progress",)))
    found = worker_events(workdir, ("verify.inconsistency",))
    report.verify_inconsistent = len(found)
    for run_name, entry in found[:20]:
        print(f"VERIFY: {run_name}: {entry}", file=sys.stderr)
    for note in [*report.notes, *resume_notes(workdir)]:
        print(f"NOTE: {note}", file=sys.stderr)
    for label, items in (("DIVERGENT", report.divergent), ("PHANTOM", report.phantom), ("ERROR", report.errors)):
        for item in items[:20]:
            print(f"{label}: {item}", file=sys.stderr)
    if report.stale:
        causes = " ".join(f"{k}={v}" for k, v in report.stale_causes.most_common())
        print(f"stale reads by likely cause: {causes}", file=sys.stderr)
        after = " ".join(f"{k.replace(' ', '')}={v}" for k, v in sorted(report.stale_after.items()))
        print(f"stale reads by the last fault before them: {after}", file=sys.stderr)
        if report.stale_via:
            via = ", ".join(f"{k}={v}" for k, v in report.stale_via.most_common())
            print(f"stale reads that missed a change made by: {via}", file=sys.stderr)
        for _cause, examples in sorted(report.examples.items()):
            for item in examples:
                print(f"STALE: {item}", file=sys.stderr)
    print(f"(worker logs in {workdir})", file=sys.stderr)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=1)
    kinds = ",".join(FAULT_KINDS)
    parser.add_argument("--faults", help=f"comma-separated fault kinds to inject (default: all of {kinds})")
    parser.add_argument("--seconds", type=float, help="run this long instead of the profile's time")
    parser.add_argument(
        "--memory",
        metavar="POLICY",
        default="",
        help=f"run Redis with maxmemory {MAXMEMORY} and this maxmemory-policy, under bursts of another app's keys "
        f"(default faults then: {','.join(MEMORY_FAULTS)})",
    )
    parser.add_argument("--compress", action="store_true", help="MariaDB writes compressed binlog events")
    parser.add_argument("--topology", choices=sorted(TOPOLOGY_FAULTS), default="single", help="the Redis side")
    parser.add_argument("--near-cache", type=int, default=0, metavar="N", help="readers keep N values in memory")
    args = parser.parse_args()
    if args.near_cache and args.topology == "cluster":
        parser.error("--near-cache: not on a cluster")
    if args.topology != "single" and args.memory:
        parser.error("--memory runs on --topology single")
    memory_default = args.faults is None and bool(args.memory)
    kinds = MEMORY_FAULTS if memory_default else parse_faults(args.faults, args.topology)
    report = run(
        args.profile, args.seed, kinds, args.seconds, args.memory, args.compress, args.topology, args.near_cache
    )
    print(report.line(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
