"""Reader overhead, measured side by side in one run on throwaway servers with the real worker running.

* hit: ``CacheReader.get_row`` on a cached row vs raw redis-py ``GET`` of the same key;
* miss: ``get_row`` on an uncached row (lease, SELECT, fill) vs a naive ``GET`` → ``SELECT`` → ``SET``;
* herd: 200 threads missing one key at once, with a 50 ms loader: loader calls and wall time, vs naive;
* near cache (``near_cache_size``): a local hit vs raw ``GET``, the share of lookups served locally, the store's
  memory per 10,000 rows (tracemalloc);
* read-your-writes: an UPDATE, then ``get_row`` inside ``reader.after(last_gtid(conn))``: commit to return.
A/B alternated, medians of ``--runs`` rounds. Prints a table and writes bench/reader.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import shutdown, write_results  # noqa: E402
from cdc_sync import CacheReader, last_gtid  # noqa: E402
from cdc_sync.config import load  # noqa: E402
from cdc_sync.reader.nearcache import NearCache  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402

ROWS = 3000


def _per_op_us(fn: Any, keys: list[Any]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t0) / len(keys) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-reader-"))
    worker = None
    try:
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE b")
            cur.execute(
                "CREATE TABLE b.users (id INT PRIMARY KEY, email VARCHAR(64), name VARCHAR(64), "
                "balance DECIMAL(10,2), updated DATETIME)"
            )
            for base in range(0, ROWS * 2, 500):
                cur.executemany(
                    "INSERT INTO b.users VALUES (%s, %s, %s, %s, '2024-01-02 03:04:05')",
                    [(i, f"u{i}@x", f"user {i}", i / 100) for i in range(base, base + 500)],
                )
        cfg_path = workdir / "cdc-sync.toml"
        cfg_path.write_text(f"""
[mysql]
port = {mariadb.port}
[redis]
url = "redis://127.0.0.1:{redis_srv.port}/0"
[reader]
max_staleness_ms = 600000
[[tables]]
table = "b.users"
key = "user:{{id}}"
[log]
level = "warning"
format = "json"
[metrics]
listen = "127.0.0.1:0"
""")
        worker = subprocess.Popen([sys.executable, "-m", "cdc_sync", "run", "--config", str(cfg_path)], cwd=ROOT)
        r = redis.Redis(connection_pool=redis.BlockingConnectionPool(port=redis_srv.port, max_connections=64))
        while r.get("cdc:heartbeat") is None:
            time.sleep(0.05)
        reader = CacheReader(load(cfg_path))
        naive_db = pymysql.connect(
            host="127.0.0.1",
            port=mariadb.port,
            user="root",
            database="b",
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )

        def naive_get(i: int) -> Any:
            raw = r.get(f"naive:{i}")
            if raw is not None:
                return orjson.loads(raw)
            with naive_db.cursor() as cur:
                cur.execute("SELECT * FROM users WHERE id = %s", (i,))
                row = cur.fetchone()
            r.set(f"naive:{i}", orjson.dumps(row, default=str), ex=3600)
            return row

        hot = list(range(200))
        for i in hot:  # warm both caches
            reader.get_row("b.users", id=i)
            naive_get(i)
        results: dict[str, list[float]] = {"hit": [], "raw_get": [], "miss": [], "naive_miss": []}
        for run in range(args.runs):
            keys = hot * 10
            results["raw_get"].append(_per_op_us(lambda i: r.get(f"user:{i}"), keys))
            results["hit"].append(_per_op_us(lambda i: reader.get_row("b.users", id=i), keys))
            lo = 200 + run * 900
            cold = list(range(lo, lo + 400))
            results["naive_miss"].append(_per_op_us(naive_get, cold))
            results["miss"].append(_per_op_us(lambda i: reader.get_row("b.users", id=i), [c + 400 for c in cold]))

        def herd(use_reader: bool, key_id: int) -> tuple[int, float]:
            calls: list[int] = []

            def slow_loader() -> dict[str, int]:
                calls.append(1)
                time.sleep(0.05)
                return {"id": key_id}

            def naive() -> None:
                if r.get(f"naive-herd:{key_id}") is None:
                    r.set(f"naive-herd:{key_id}", orjson.dumps(slow_loader()))

            def via_reader() -> None:
                reader.fetch(f"herd:{key_id}", slow_loader, ttl=60)

            threads = [threading.Thread(target=via_reader if use_reader else naive) for _ in range(200)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return len(calls), time.perf_counter() - t0

        cfg = load(cfg_path)
        near_reader = CacheReader(replace(cfg, reader=replace(cfg.reader, near_cache_size=20_000)))
        for i in hot:
            near_reader.get_row("b.users", id=i)
            near_reader.get_row("b.users", id=i)
        results["near_hit"] = []
        lookups = 0
        before = near_reader.stats["near_hit"]
        for _ in range(args.runs):  # (the default window: 100 ms after each checked hit)
            keys = hot * 10
            results["near_hit"].append(_per_op_us(lambda i: near_reader.get_row("b.users", id=i), keys))
            lookups += len(keys)
        near_share = (near_reader.stats["near_hit"] - before) / lookups
        values = [r.get(f"user:{i}") or b"" for i in range(10_000)]
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        store = NearCache(20_000)
        store.clear(live=True)
        for i, v in enumerate(values):
            store.put(f"user:{i}", bytes(v), store.mark())
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(first, "filename"))
        tracemalloc.stop()
        del store
        ryw: list[float] = []
        writer = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database="b", autocommit=True)
        for n in range(200):
            with writer.cursor() as cur:
                cur.execute("UPDATE users SET name = %s WHERE id = 7", (f"ryw {n}",))
            t0 = time.perf_counter()
            with near_reader.after(last_gtid(writer)):
                row = near_reader.get_row("b.users", id=7)
            ryw.append((time.perf_counter() - t0) * 1000)
            assert row is not None and row["name"] == f"ryw {n}", row
        writer.close()
        ryw.sort()
        near_reader.close()

        herd_reader = [herd(True, k) for k in range(args.runs)]
        herd_naive = [herd(False, k) for k in range(args.runs)]
        med = {k: statistics.median(v) for k, v in results.items()}
        table = [
            ("hit: get_row", med["hit"], med["hit"] / med["raw_get"], "vs raw GET"),
            ("raw redis-py GET", med["raw_get"], 1.0, ""),
            ("miss: get_row (lease+SELECT+fill)", med["miss"], med["miss"] / med["naive_miss"], "vs naive"),
            ("naive GET->SELECT->SET", med["naive_miss"], 1.0, ""),
            ("near-cache hit: get_row", med["near_hit"], med["near_hit"] / med["raw_get"], "vs raw GET"),
        ]
        print(f"{'scenario':<36}{'median us/op':>14}{'ratio':>8}")
        for name, us, ratio, what in table:
            print(f"{name:<36}{us:>14.1f}{ratio:>8.2f} {what}")
        rc = statistics.median(c for c, _ in herd_reader)
        nc = statistics.median(c for c, _ in herd_naive)
        rw = statistics.median(w for _, w in herd_reader)
        nw = statistics.median(w for _, w in herd_naive)
        print(
            f"herd of 200 on one key: reader {rc:.0f} loader call(s) in {rw * 1000:.0f} ms; "
            f"naive {nc:.0f} calls in {nw * 1000:.0f} ms"
        )
        print(
            f"near cache: {near_share:.0%} of hot lookups served locally; {grown / 1e6:.2f} MB per 10,000 rows; "
            f"read-your-writes (UPDATE, then get_row inside after()): p50 {ryw[len(ryw) // 2]:.2f} ms, "
            f"p99 {ryw[int(len(ryw) * 0.99)]:.2f} ms"
        )
        ratios = {
            "hit_vs_raw_get": med["hit"] / med["raw_get"],
            "miss_vs_naive": med["miss"] / med["naive_miss"],
            "near_hit_vs_raw_get": med["near_hit"] / med["raw_get"],
        }
        herd_runs = {"reader": herd_reader, "naive": herd_naive}
        near = {"share_served_locally": near_share, "bytes_per_10k_rows": grown}
        ryw_ms = {"p50": ryw[len(ryw) // 2], "p99": ryw[int(len(ryw) * 0.99)], "all": ryw}
        write_results(
            "reader",
            {
                "per_op_us": results,
                "median_us": med,
                "herd": herd_runs,
                "ratios": ratios,
                "near_cache": near,
                "read_your_writes_ms": ryw_ms,
            },
        )
        reader.close()
    finally:
        shutdown(worker, mariadb, redis_srv)


if __name__ == "__main__":
    main()
