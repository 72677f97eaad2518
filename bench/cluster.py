"""One Redis against a 3-primary Redis Cluster, side by side in one run.

Starts its own MariaDB, one Redis and a local cluster (3 primaries, 3 replicas: tools/devservers.start_cluster),
and measures on both:
  * catch-up throughput: N changes (bench/catchup.py's load) replayed by the real `cdc-sync run` from a checkpoint,
    evict and update mode, runs alternated;
  * commit-to-cache latency: single-row inserts at ``--rate`` tx/s, observed through keyspace notifications (on
    every primary of the cluster);
  * a reader's hit: `CacheReader.get_row` of a cached row, and the Redis round trips it takes (MONITOR-free: the
    pipeline steps the reader runs, counted from the flow).
Prints a table and writes bench/cluster.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.catchup import _load  # noqa: E402
from bench.common import observe_sets, reached_end, shutdown, start_worker, write_results  # noqa: E402
from bench.latency import run_rate  # noqa: E402
from cdc_sync import CacheReader  # noqa: E402
from cdc_sync import config as config_mod  # noqa: E402
from cdc_sync.reader import flow  # noqa: E402
from tools.devservers import RedisClusterSet, start_cluster, start_mariadb, start_redis  # noqa: E402


def _config(path: Path, mysql_port: int, url: str, cluster: bool, tables: str) -> Path:
    path.write_text(f"""
[mysql]
port = {mysql_port}
server_id = 4244
[redis]
url = "{url}"
cluster = {"true" if cluster else "false"}
{tables}
[log]
level = "warning"
format = "json"
[metrics]
listen = ""
""")
    return path


def _client(url: str, cluster: bool) -> Any:
    return redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def _catch_up(mysql_port: int, url: str, cluster: bool, mode: str, start: str, end: str, workdir: Path) -> float:
    r = _client(url, cluster)
    checkpoint = "cdc:{cdc}:checkpoint" if cluster else "cdc:checkpoint"
    if cluster:
        r.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        r.flushall()
    r.set(checkpoint, start)
    rule = f'[[tables]]\ntable = "b.t"\nkey = "k:{{id}}"\nmode = "{mode}"\n'
    cfg = _config(workdir / f"{mode}-{cluster}.toml", mysql_port, url, cluster, rule)
    t0 = time.perf_counter()
    proc = start_worker(cfg)
    while not reached_end(r.get(checkpoint), end):
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}")
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    shutdown(proc)
    r.close()
    return seconds


def _latency(
    mysql_port: int, url: str, ports: list[int], cluster: bool, rate: float, seconds: float, base: int, workdir: Path
) -> dict[str, float]:
    """Commit-to-cache latency (ms) of single-row inserts, update mode, observed on every node that holds keys."""
    for port in ports:
        with redis.Redis(port=port) as node:
            node.config_set("notify-keyspace-events", "K$")
    rule = '[[tables]]\ntable = "b.l"\nkey = "l:{id}"\nmode = "update"\n'
    cfg = _config(workdir / f"latency-{cluster}.toml", mysql_port, url, cluster, rule)
    worker = start_worker(cfg)
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    observers = []
    for port in ports:
        ready = ctx.Event()
        p = ctx.Process(target=observe_sets, args=(port, "l:*", ready, stop, out), daemon=True)
        p.start()
        ready.wait(10)
        observers.append(p)
    conn = pymysql.connect(host="127.0.0.1", port=mysql_port, user="root", autocommit=True)
    try:
        time.sleep(2.0)  # the worker streaming
        committed = run_rate(conn, rate, seconds, base)
        time.sleep(2.0)
        stop.set()
        seen: dict[int, float] = {}
        for _ in observers:
            seen.update(out.get(timeout=30))
    finally:
        conn.close()
        for p in observers:
            p.join(10)
        shutdown(worker)
    lat = sorted((seen[n] - t) * 1000 for n, t in committed.items() if n in seen)
    return {
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[int(len(lat) * 0.99)],
        "seen": len(lat) / max(1, len(committed)),
    }


class _Counting(CacheReader):
    """A reader that counts the Redis round trips its flow takes (each Script, Batch or PlainGet is one)."""

    trips = 0

    def _perform(self, step: Any) -> flow.Reply:
        _Counting.trips += 1
        return super()._perform(step)


def _hits(mysql_port: int, url: str, cluster: bool, n: int, workdir: Path) -> dict[str, float]:
    rule = '[[tables]]\ntable = "b.t"\nkey = "k:{id}"\nmode = "update"\n'
    cfg = _config(workdir / f"reader-{cluster}.toml", mysql_port, url, cluster, rule)
    worker = start_worker(cfg)
    r = _client(url, cluster)
    try:
        heartbeat = "cdc:{cdc}:heartbeat" if cluster else "cdc:heartbeat"
        while r.get(heartbeat) is None:
            time.sleep(0.05)
        config = config_mod.load(cfg)
        # a checked lookup every time: freshness_check_ms 0 (a cluster has no plain-GET window anyway)
        reader = _Counting(replace(config, reader=replace(config.reader, freshness_check_ms=0)))
        reader.get_row("b.t", id=1)
        _Counting.trips = 0
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            reader.get_row("b.t", id=1 + i % 1000)
            times.append(time.perf_counter() - t0)
        trips = _Counting.trips / n
        reader.close()
    finally:
        shutdown(worker)
        r.close()
    return {"median_us": statistics.median(times) * 1e6, "round_trips": trips}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--lookups", type=int, default=3000)
    args = parser.parse_args()
    mariadb, single = start_mariadb(), start_redis()
    cluster: RedisClusterSet = start_cluster()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-cluster-"))
    topologies = {
        "single": (single_url := f"redis://127.0.0.1:{single.port}/0", False, [single.port]),
        "cluster": (cluster.url, True, cluster.primaries()),
    }
    try:
        start, end = _load(mariadb.port, args.changes)
        with pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True) as conn:
            conn.cursor().execute("CREATE TABLE b.l (id INT PRIMARY KEY, v VARCHAR(40))")
            cur = conn.cursor()
            cur.execute("SELECT @@gtid_binlog_pos")
            end = str(cur.fetchone()[0])  # (the catch-ups run to here: the table above is in the binlog too)
        rows: dict[str, list[float]] = {f"{t} {m}": [] for t in topologies for m in ("evict", "update")}
        for _ in range(args.runs):  # alternated, so drift hits both alike
            for name, (url, is_cluster, _ports) in topologies.items():
                for mode in ("evict", "update"):
                    rows[f"{name} {mode}"].append(
                        args.changes / _catch_up(mariadb.port, url, is_cluster, mode, start, end, workdir)
                    )
        med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
        latency = {}
        hits = {}
        for i, (name, (url, is_cluster, ports)) in enumerate(topologies.items()):
            latency[name] = _latency(
                mariadb.port, url, ports, is_cluster, args.rate, args.seconds, 10_000_000 * (i + 1), workdir
            )
            hits[name] = _hits(mariadb.port, url, is_cluster, args.lookups, workdir)
        print(f"{'catch-up':<22}{'median rows/s':>16}{'cluster/single':>16}")
        for mode in ("evict", "update"):
            for name in topologies:
                ratio = med[f"{name} {mode}"] / med[f"single {mode}"]
                print(f"{name + ' ' + mode:<22}{med[f'{name} {mode}']:>16,.0f}{ratio:>16.2f}")
        print(
            f"\ncommit-to-cache at {args.rate:.0f} tx/s: "
            + "; ".join(f"{n} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms" for n, v in latency.items())
        )
        print(
            "reader hit (checked, get_row): "
            + "; ".join(f"{n} {v['median_us']:.0f} us, {v['round_trips']:.1f} round trips" for n, v in hits.items())
        )
        write_results(
            "cluster",
            {
                "changes": args.changes,
                "runs": rows,
                "median_rows_per_s": med,
                "ratio_evict": med["cluster evict"] / med["single evict"],
                "ratio_update": med["cluster update"] / med["single update"],
                "latency": latency,
                "reader_hit": hits,
                "single_url": single_url,
            },
        )
    finally:
        shutdown(None, mariadb, single)
        cluster.stop()


if __name__ == "__main__":
    main()
