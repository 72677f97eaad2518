"""Commit-to-cache latency under steady load, observed by a separate process.

Starts its own servers and the real worker (update mode). A paced writer inserts single-row transactions at
``--rates`` (default 500 and 2000 tx/s) for ``--seconds`` each, noting when each COMMIT returned; an observer
process subscribed to Redis keyspace notifications notes when each key was set. Latency = set - commit, both
on this machine's clock. Prints p50/p99/max per rate and writes bench/latency.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import observe_sets, shutdown, write_results  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402


def run_rate(conn: pymysql.Connection, rate: float, seconds: float, first_id: int) -> dict[int, float]:  # type: ignore[type-arg]
    """Insert at ``rate`` tx/s; returns id → time the COMMIT returned."""
    committed: dict[int, float] = {}
    start = time.perf_counter()
    n = first_id
    with conn.cursor() as cur:
        while time.perf_counter() - start < seconds:
            wait = start + (n - first_id) / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            cur.execute("INSERT INTO b.l VALUES (%s, %s)", (n, f"v{n}"))
            committed[n] = time.time()
            n += 1
    return committed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[500, 2000])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-latency-"))
    worker = None
    try:
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE b")
            cur.execute("CREATE TABLE b.l (id INT PRIMARY KEY, v VARCHAR(40))")
        r = redis.Redis(port=redis_srv.port)
        r.config_set("notify-keyspace-events", "K$")
        cfg = workdir / "cdc-sync.toml"
        cfg.write_text(f"""
[mysql]
port = {mariadb.port}
[redis]
url = "redis://127.0.0.1:{redis_srv.port}/0"
[[tables]]
table = "b.l"
key = "l:{{id}}"
mode = "update"
[log]
level = "warning"
format = "json"
[metrics]
listen = "127.0.0.1:0"
""")
        worker = subprocess.Popen([sys.executable, "-m", "cdc_sync", "run", "--config", str(cfg)], cwd=ROOT)
        while r.get("cdc:heartbeat") is None:
            time.sleep(0.05)
        results = {}
        first = 1
        for rate in args.rates:
            ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
            observer = mp.Process(target=observe_sets, args=(redis_srv.port, "l:*", ready, stop, out))
            observer.start()
            ready.wait(10)
            committed = run_rate(conn, rate, args.seconds, first)
            time.sleep(1.0)  # let the last changes arrive
            stop.set()
            seen = out.get(timeout=30)
            observer.join(10)
            lat = sorted((seen[n] - t) * 1000 for n, t in committed.items() if n in seen)
            missing = sum(1 for n in committed if n not in seen)
            achieved = len(committed) / args.seconds

            def pct(p: float, lat: list[float] = lat) -> float:
                return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

            results[str(int(rate))] = {
                "achieved_tx_s": round(achieved),
                "samples": len(lat),
                "missing": missing,
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "max_ms": lat[-1] if lat else None,
            }
            first += len(committed)
        print(f"{'target tx/s':>12}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'missing':>9}")
        for rate, res in results.items():
            print(
                f"{rate:>12}{res['achieved_tx_s']:>10}{res['p50_ms']:>9.2f}{res['p99_ms']:>9.2f}"
                f"{res['max_ms']:>9.2f}{res['missing']:>9}"
            )
        write_results("latency", {"latency": results, "seconds_per_rate": args.seconds})
    finally:
        shutdown(worker, mariadb, redis_srv)


if __name__ == "__main__":
    main()
