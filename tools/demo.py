"""`make demo`: live sync on throwaway servers.

Starts a private MariaDB and Redis, creates a small shop schema, runs the real worker
(`python -m cdc_sync run`) and a writer that inserts, updates and deletes, and shows the table and
the Redis keys side by side every second. Ctrl-C stops everything and leaves nothing running.
`--duration N` stops by itself after N seconds (used by the test suite). `--topology sentinel` keeps the cache
on a Sentinel-managed master with a replica and three Sentinels instead, and fails it over half-way through
(with `--duration`; every 20 s without): the worker follows, and the cache stays equal to the table.
`--topology cluster` keeps it on a Redis Cluster of three primaries and three replicas, each slot written with its
own checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import redis
import redis.sentinel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.devservers import (
    LocalServer,
    RedisClusterSet,
    SentinelSet,
    start_cluster,
    start_mariadb,
    start_redis,
    start_sentinel_set,
)
from tools.scrape import metric

NAMES = ["ada", "linus", "grace", "alan", "barbara", "ken", "margaret", "dennis", "edsger", "frances"]


def _config(mysql_port: int, redis_section: str) -> str:
    return f"""
[mysql]
host = "127.0.0.1"
port = {mysql_port}
user = "root"
server_id = 4242
start = "current"

[redis]
{redis_section}
namespace = "cdc"

[[tables]]
table = "shop.users"
key = "user:{{id}}"
also = ["user:email:{{email}}"]
mode = "update"
format = "json"
exclude = ["password_hash"]
ttl = 3600

[[tables]]
table = "shop.orders"
key = "order:{{id}}"
mode = "evict"

[log]
format = "json"

[metrics]
listen = "127.0.0.1:0"

[verify]
sample_rate = 0.5
"""


def _verifier_figures(log_path: Path) -> tuple[float, float]:
    """(keys checked, inconsistencies) from the worker's /metrics (its port from the log)."""
    port = None
    for line in log_path.read_text().splitlines():
        if '"worker.http_listening"' in line:
            port = json.loads(line).get("port")
    if port is None:
        return 0.0, 0.0
    return metric(port, "cdc_sync_verify_checks_total"), metric(port, "cdc_sync_verify_inconsistencies_total")


def _writer(port: int, stop: threading.Event, stats: dict[str, int]) -> None:
    rng = random.Random(42)
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="shop", autocommit=True)
    with conn.cursor() as cur:
        while not stop.is_set():
            uid = rng.randrange(1, 9)
            action = rng.random()
            name = rng.choice(NAMES)
            if action < 0.45:
                cur.execute(
                    "INSERT INTO users (id, email, name, balance, password_hash) VALUES (%s, %s, %s, %s, 'x') "
                    "ON DUPLICATE KEY UPDATE name = VALUES(name), balance = balance + 1",
                    (uid, f"{name}{uid}@example.com", name.title(), f"{rng.randrange(10000) / 100:.2f}"),
                )
                stats["upserts"] += 1
            elif action < 0.75:
                cur.execute("UPDATE users SET balance = balance + %s WHERE id = %s", (rng.randrange(1, 50), uid))
                stats["updates"] += 1
            elif action < 0.85:
                cur.execute("DELETE FROM users WHERE id = %s", (uid,))
                stats["deletes"] += 1
            else:
                cur.execute("INSERT INTO orders (user_id, total) VALUES (%s, %s)", (uid, rng.randrange(100, 9999)))
                stats["orders"] += 1
            stop.wait(0.4)
    conn.close()


def _snapshot(port: int, r: Any) -> tuple[list[str], bool]:
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="shop", autocommit=True)
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT id, email, name, balance FROM users ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    lines = [f"{'MariaDB shop.users':<52} | Redis", "-" * 52 + "-+-" + "-" * 60]
    all_equal = True
    db_keys = set()
    for row in rows:
        key = f"user:{row['id']}"
        db_keys.add(key)
        raw = r.get(key)
        cached = json.loads(raw) if raw else None
        expected = {"id": row["id"], "email": row["email"], "name": row["name"], "balance": str(row["balance"])}
        ok = cached == expected
        all_equal &= ok
        left = f"{row['id']:>2} {row['email']:<28} {row['name']:<9} {row['balance']!s:>9}"
        right = f"{key} = {raw.decode() if raw else '(missing)'}"
        lines.append(f"{left:<52} | {right}  {'in sync' if ok else 'DIFFERENT'}")
    extra = sorted(k.decode() for k in r.scan_iter("user:[0-9]*") if k.decode() not in db_keys)
    for key in extra:
        all_equal = False
        lines.append(f"{'(no row)':<52} | {key} = stale!")
    checkpoint = r.get("cdc:{cdc}:checkpoint" if isinstance(r, redis.RedisCluster) else "cdc:checkpoint")
    lines.append("")
    lines.append(
        f"checkpoint: {checkpoint.decode() if checkpoint else '-'}    "
        f"keys: {_dbsize(r)}    {'cache == database' if all_equal else 'catching up...'}"
    )
    return lines, all_equal


def _dbsize(r: Any) -> int:
    if isinstance(r, redis.RedisCluster):
        return int(r.dbsize(target_nodes=redis.RedisCluster.PRIMARIES))  # (summed over the primaries)
    return int(r.dbsize())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)")
    parser.add_argument(
        "--topology", choices=("single", "sentinel", "cluster"), default="single", help="the Redis side"
    )
    args = parser.parse_args()
    servers: list[LocalServer] = []
    sentinel_set: SentinelSet | None = None
    cluster: RedisClusterSet | None = None
    worker: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workdir = Path(tempfile.mkdtemp(prefix="cdc-sync-demo-"))
    try:
        print(f"starting a throwaway MariaDB and Redis ({args.topology}) ...", flush=True)
        mariadb = start_mariadb()
        servers.append(mariadb)
        r: Any
        if args.topology == "cluster":
            cluster = start_cluster()
            redis_section = f'url = "{cluster.url}"\ncluster = true'
            r = redis.RedisCluster.from_url(cluster.url)
        elif args.topology == "sentinel":
            sentinel_set = start_sentinel_set()
            addresses = ", ".join(f'"{a}"' for a in sentinel_set.addresses)
            redis_section = f'url = "redis:///0"\nsentinels = [{addresses}]\nmaster_name = "cache"'
            manager = redis.sentinel.Sentinel([("127.0.0.1", int(a.split(":")[1])) for a in sentinel_set.addresses])
            r = manager.master_for("cache", socket_timeout=2)
        else:
            redis_srv = start_redis()
            servers.append(redis_srv)
            redis_section = f'url = "redis://127.0.0.1:{redis_srv.port}/0"'
            r = redis.Redis(port=redis_srv.port)
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE shop")
            cur.execute(
                "CREATE TABLE shop.users (id INT PRIMARY KEY, email VARCHAR(100) UNIQUE, name VARCHAR(50), "
                "balance DECIMAL(10,2), password_hash VARCHAR(100))"
            )
            cur.execute("CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, user_id INT, total INT)")
        conn.close()
        cfg = workdir / "cdc-sync.toml"
        cfg.write_text(_config(mariadb.port, redis_section))
        log_path = workdir / "worker.log"
        print(f"config: {cfg}\nworker log: {log_path}", flush=True)
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "cdc_sync", "run", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ},
                start_new_session=True,  # Ctrl-C reaches only this script, which stops the worker with SIGTERM
            )
        deadline = time.monotonic() + 30
        home = "cdc:{cdc}:checkpoint" if cluster is not None else "cdc:checkpoint"
        while r.get(home) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        stats = {"upserts": 0, "updates": 0, "deletes": 0, "orders": 0}
        writer = threading.Thread(target=_writer, args=(mariadb.port, stop, stats), daemon=True)
        writer.start()
        started = time.monotonic()
        tty = sys.stdout.isatty()
        in_sync_seen = 0
        failover_every = args.duration / 2 if args.duration else 20.0
        next_failover = started + failover_every
        while not stop.is_set():
            if sentinel_set is not None and time.monotonic() >= next_failover:
                next_failover += failover_every
                print(f"failing the master over (it was on port {sentinel_set.master_port()}) ...", flush=True)
                redis.Redis(port=sentinel_set.sentinels[0].port).execute_command("SENTINEL", "FAILOVER", "cache")
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if worker.poll() is not None:
                print("worker exited unexpectedly:\n" + log_path.read_text()[-3000:], file=sys.stderr)
                return 1
            try:
                lines, ok = _snapshot(mariadb.port, r)
            except redis.RedisError as exc:  # (the moment of a failover)
                lines, ok = [f"redis: {exc}"], False
            in_sync_seen += ok
            header = (
                f"cdc-sync demo - writer: {stats['upserts']} upserts, {stats['updates']} updates, "
                f"{stats['deletes']} deletes, {stats['orders']} orders   (Ctrl-C to stop)"
            )
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(header + "\n\n" + "\n".join(lines) + ("" if tty else "\n"), flush=True)
            stop.wait(1.0)
        stop.set()
        writer.join(5)
        # let the worker apply the last writes (after a failover, replay what the old master took), then show
        # the final state
        deadline = time.monotonic() + (30 if sentinel_set is not None else 1.5)
        while True:
            time.sleep(0.5)
            try:
                lines, ok = _snapshot(mariadb.port, r)
            except redis.RedisError as exc:
                lines, ok = [f"redis: {exc}"], False
            if ok or time.monotonic() > deadline:
                break
        print("\nfinal state:\n" + "\n".join(lines), flush=True)
        print(f"snapshots in sync: {in_sync_seen}; final: {'in sync' if ok else 'NOT in sync'}", flush=True)
        checks, wrong = _verifier_figures(log_path)
        print(f"sampled verifier: {checks:.0f} keys checked against MariaDB, {wrong:.0f} inconsistent", flush=True)
        return 0 if ok and wrong == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        for server in reversed(servers):
            server.stop()
        if sentinel_set is not None:
            sentinel_set.stop()
        if cluster is not None:
            cluster.stop()
        print("demo stopped: worker and servers are down", flush=True)


if __name__ == "__main__":
    sys.exit(main())
