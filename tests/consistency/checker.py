"""The consistency checker: a seeded random workload, the real worker, readers, and injected faults.

    python -m tests.consistency.checker --profile short|long --seed N

Writers (each owning its own ids) insert, update, delete, change primary keys, run multi-row and rolled-back
transactions, and now and then TRUNCATE or ALTER ADD COLUMN. Readers go through CacheReader: rows in update mode,
rows in evict mode (some frozen between SELECT and fill), and tagged group queries. Faults: kill -9 of the worker,
Redis restart with data loss, MariaDB restart, connection cuts on both sides (TCP proxies), binlog purge while the
worker is down. Checks: no read older than max_staleness_ms, no phantom read, and 0 divergent keys after quiescence.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import redis

from cdc_sync import CacheReader
from cdc_sync.config import load
from cdc_sync.devservers import LocalServer, start_mariadb, start_redis
from cdc_sync.mysql import RowLoader
from tests.consistency.model import History
from tests.consistency.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 2
IDS_PER_WRITER = 40
GROUPS = 4
MAX_STALENESS_MS = 2000
FAULT_KINDS = ("kill9_worker", "redis_restart", "mariadb_restart", "cut_mysql", "cut_redis", "purge_while_down", "ddl")


@dataclass(frozen=True)
class Profile:
    seconds: float
    fault_every_s: float


PROFILES = {"short": Profile(seconds=80, fault_every_s=7.5), "long": Profile(seconds=330, fault_every_s=10)}


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

    @property
    def ok(self) -> bool:
        return not (self.divergent or self.stale or self.phantom or self.worker_crashes)

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
            f"max={max(self.staleness, default=0) * 1000:.0f}"
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


class Checker:
    def __init__(self, profile: Profile, seed: int, workdir: Path) -> None:
        self.profile = profile
        self.seed = seed
        self.workdir = workdir
        self.report = Report(seed)
        self.history = History()
        self.stop = threading.Event()
        self.pause = Pause()
        self.values = itertools.count()
        self.columns_added = 0
        self.mariadb: LocalServer | None = None
        self.redis: LocalServer | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_runs = 0
        self.worker_lock = threading.Lock()  # one worker at a time: the faults thread and the watchdog share it
        self.reads: list[tuple[str, Any, Any, float, float]] = []  # (table or "group", id, value, start, end)

    # ---- set-up -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.mariadb, self.redis = start_mariadb(), start_redis()
        self.mysql_proxy, self.redis_proxy = TcpProxy(self.mariadb.port), TcpProxy(self.redis.port)
        conn = self.sql()
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE c")
            cur.execute("CREATE TABLE c.items (id INT PRIMARY KEY, v VARCHAR(64), grp INT, KEY (grp))")
            cur.execute("CREATE TABLE c.notes (id INT PRIMARY KEY, v VARCHAR(64))")
        conn.close()
        self.config_path = self.workdir / "cdc-sync.toml"
        self.config_path.write_text(f"""
[mysql]
port = {self.mysql_proxy.port}
heartbeat_s = 0.5
[redis]
url = "redis://127.0.0.1:{self.redis_proxy.port}/0"
socket_timeout_s = 2
[worker]
retry_initial_s = 0.05
retry_max_s = 0.5
heartbeat_interval_ms = 200
[reader]
max_staleness_ms = {MAX_STALENESS_MS}
holdoff_ms = 500
lease_wait_ms = 300
[log]
format = "json"
[metrics]
listen = "127.0.0.1:0"
[[tables]]
table = "c.items"
key = "item:{{id}}"
mode = "update"
tags = ["grp"]
ttl = 600
[[tables]]
table = "c.notes"
key = "note:{{id}}"
mode = "evict"
ttl = 600
""")
        self.start_worker()
        r = self.redis_client()
        deadline = time.monotonic() + 60
        while r.get("cdc:heartbeat") is None:
            assert time.monotonic() < deadline, "the worker never wrote a heartbeat"
            time.sleep(0.1)

    def sql(self, db: str | None = None) -> pymysql.Connection[Any]:
        assert self.mariadb is not None
        return pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user="root", database=db, autocommit=True)

    def redis_client(self) -> redis.Redis:
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

    # ---- writers ----------------------------------------------------------------------------------

    def new_value(self, writer: int) -> str:
        return f"w{writer}-{next(self.values)}"

    def writer(self, w: int) -> None:
        rng = random.Random(self.seed * 100 + w)
        conn = self.sql("c")
        ids = [w + WRITERS * k for k in range(IDS_PER_WRITER)]
        while not self.stop.is_set():
            if not self.pause.enter(self.stop):
                break
            try:
                self._one_op(conn, rng, w, ids)
                self.report.ops += 1
            except pymysql.MySQLError:
                conn = self._reconnect(conn)
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

    def _one_op(self, conn: pymysql.Connection[Any], rng: random.Random, w: int, ids: list[int]) -> None:
        kind = rng.random()
        with conn.cursor() as cur:
            if kind < 0.12:  # a multi-row transaction
                cur.execute("BEGIN")
                # distinct rows: a second statement on a row would be staged from the model's pre-transaction state
                pending = [self._stage(cur, rng, w, i) for i in rng.sample(ids, rng.randrange(2, 5))]
                t0 = time.monotonic()
                cur.execute("COMMIT")
                t1 = time.monotonic()
                for table, row_id, v, grp in (p for batch in pending for p in batch):
                    self.history.record(table, row_id, v, grp, t0, t1)
            elif kind < 0.16:  # a rolled-back transaction: its values must never be read
                v = self.new_value(w)
                self.history.rollback(v)
                cur.execute("BEGIN")
                cur.execute("UPDATE items SET v = %s WHERE id = %s", (v, rng.choice(ids)))
                cur.execute("ROLLBACK")
            else:
                t0 = time.monotonic()
                staged = self._stage(cur, rng, w, rng.choice(ids))
                t1 = time.monotonic()
                for table, row_id, v, grp in staged:
                    self.history.record(table, row_id, v, grp, t0, t1)

    def _stage(
        self, cur: Any, rng: random.Random, w: int, row_id: int
    ) -> list[tuple[str, int, str | None, int | None]]:
        """One statement on a row this writer owns; returns the versions it creates."""
        table = "items" if rng.random() < 0.7 else "notes"
        current = self.history.current(table, row_id)
        v = self.new_value(w)
        action = rng.random()
        if current.v is None:
            if table == "items":
                grp = rng.randrange(GROUPS)
                cur.execute("INSERT INTO items (id, v, grp) VALUES (%s, %s, %s)", (row_id, v, grp))
                return [(table, row_id, v, grp)]
            cur.execute("INSERT INTO notes (id, v) VALUES (%s, %s)", (row_id, v))
            return [(table, row_id, v, None)]
        if action < 0.15:
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
            return [(table, row_id, None, None)]
        free = [i for i in range(w, WRITERS * IDS_PER_WRITER * 2, WRITERS) if self.history.current(table, i).v is None]
        if action < 0.25 and table == "items" and free:  # primary-key change to a free id of this writer
            target = rng.choice(free)
            grp = current.grp
            cur.execute("UPDATE items SET id = %s, v = %s WHERE id = %s", (target, v, row_id))
            return [("items", row_id, None, None), ("items", target, v, grp)]
        if table == "items":
            grp = rng.randrange(GROUPS) if rng.random() < 0.3 else current.grp
            cur.execute("UPDATE items SET v = %s, grp = %s WHERE id = %s", (v, grp, row_id))
            return [(table, row_id, v, grp)]
        cur.execute("UPDATE notes SET v = %s WHERE id = %s", (v, row_id))
        return [(table, row_id, v, None)]

    # ---- readers ----------------------------------------------------------------------------------

    def reader(self, kind: str, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        reader = CacheReader(load(self.config_path))
        if kind == "frozen":
            reader.row_loader = FrozenLoader(reader.config.mysql, 2, rng)
        all_ids = list(range(WRITERS * IDS_PER_WRITER * 2))
        while not self.stop.is_set():
            rs = time.monotonic()
            try:
                if kind == "group":
                    grp = rng.randrange(GROUPS)
                    deps = [("c.items", {"grp": grp})]
                    result = reader.fetch(f"grp:{grp}", lambda grp=grp: self._group(grp), ttl=60, depends_on=deps)
                    self.reads.append(("group", grp, [tuple(x) for x in result], rs, time.monotonic()))
                else:
                    table = "items" if kind == "items" else "notes"
                    row_id = rng.choice(all_ids)
                    row = reader.get_row(f"c.{table}", id=row_id)
                    value = None if row is None else row["v"]
                    self.reads.append((table, row_id, value, rs, time.monotonic()))
            except Exception:  # MySQL down (restart): the app would see this error too
                self.report.read_errors += 1
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(0.001, 0.005))
        reader.close()

    def judge_reads(self) -> None:
        """Date every read against the full history (judged at the end, when every commit is recorded)."""
        bound = MAX_STALENESS_MS / 1000
        for kind, key, result, rs, re in self.reads:
            if kind == "group":
                verdict = self.history.judge_group(key, result, rs, re, bound)
            else:
                verdict = self.history.judge_row(kind, key, result, rs, re, bound)
            self.report.reads += 1
            self.report.staleness.append(verdict.staleness_s)
            what = f"{kind} {key} -> {result} at {rs:.3f}..{re:.3f}"
            if verdict.kind == "stale":
                self.report.stale.append(f"{what} staleness={verdict.staleness_s:.3f}s")
            elif verdict.kind == "phantom":
                self.report.phantom.append(what)

    def _group(self, grp: int) -> list[list[Any]]:
        conn = self.sql("c")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, v FROM items WHERE grp = %s ORDER BY id", (grp,))
                return [[row_id, v] for row_id, v in cur.fetchall()]
        finally:
            conn.close()

    # ---- faults -----------------------------------------------------------------------------------

    def faults(self) -> None:
        rng = random.Random(self.seed)
        order: list[str] = []
        while not self.stop.wait(self.profile.fault_every_s * rng.uniform(0.7, 1.3)):
            if not order:
                order = list(FAULT_KINDS)
                rng.shuffle(order)
            kind = order.pop()
            getattr(self, f"fault_{kind}")(rng)
            self.report.faults[kind] += 1

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
        self.pause.pause()  # a COMMIT cut by the restart would leave its outcome unknown to the model
        try:
            self.mariadb.restart()
        finally:
            self.pause.resume()

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
        self.pause.pause()
        try:
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
        finally:
            self.pause.resume()

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        self.start()
        threads = [threading.Thread(target=self.writer, args=(w,), daemon=True) for w in range(WRITERS)]
        kinds = ["items", "items", "notes", "frozen", "group"]
        threads += [threading.Thread(target=self.reader, args=(k, i), daemon=True) for i, k in enumerate(kinds)]
        faults = threading.Thread(target=self.faults, daemon=True)
        for t in [*threads, faults]:
            t.start()
        deadline = started + self.profile.seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
            self._check_worker_alive()
        self.stop.set()
        faults.join(120)
        for t in threads:
            t.join(60)
        self._check_worker_alive()
        self.quiesce_and_compare()
        self.judge_reads()
        self.report.seconds = time.monotonic() - started
        return self.report

    def quiesce_and_compare(self) -> None:
        conn = self.sql("c")
        r = self.redis_client()
        deadline = time.monotonic() + 120
        while True:
            with conn.cursor() as cur:
                cur.execute("SELECT @@global.gtid_binlog_pos")
                target = cur.fetchone()[0]
            if (r.get("cdc:checkpoint") or b"").decode() == target:
                break
            assert time.monotonic() < deadline, f"worker did not catch up to {target}"
            time.sleep(0.1)
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SELECT * FROM items")
            items = {f"item:{row['id']}": row for row in cur.fetchall()}
            cur.execute("SELECT * FROM notes")
            notes = {f"note:{row['id']}": row for row in cur.fetchall()}
        for pattern, rows in (("item:*", items), ("note:*", notes)):
            for key in r.scan_iter(pattern):
                name = key.decode()
                cached = json.loads(r.get(key) or b"null")
                expected = rows.get(name)
                if cached is None or expected is None or any(cached.get(c) != expected[c] for c in ("id", "v")):
                    self.report.divergent.append(f"{name}: cached {cached} db {expected}")
        for grp in range(GROUPS):
            raw = r.get(f"grp:{grp}")
            if raw is not None and json.loads(raw) != self._group(grp):
                self.report.divergent.append(f"grp:{grp}: cached {json.loads(raw)} db {self._group(grp)}")
        conn.close()

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
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


class FrozenLoader(RowLoader):
    """A reader frozen between its SELECT and its fill for a random while."""

    def __init__(self, cfg: Any, pool_size: int, rng: random.Random) -> None:
        super().__init__(cfg, pool_size)
        self.rng = rng

    def load(self, table: str, where: dict[str, object]) -> dict[str, Any] | None:
        row = super().load(table, where)
        time.sleep(self.rng.uniform(0.0, 1.5))
        return row


def run(profile: str, seed: int) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-consistency-"))
    checker = Checker(PROFILES[profile], seed, workdir)
    try:
        report = checker.run()
    finally:
        checker.close()
    for label, items in (("DIVERGENT", report.divergent), ("STALE", report.stale), ("PHANTOM", report.phantom)):
        for item in items[:20]:
            print(f"{label}: {item}", file=sys.stderr)
    print(f"(worker logs in {workdir})", file=sys.stderr)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = run(args.profile, args.seed)
    print(report.line(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
