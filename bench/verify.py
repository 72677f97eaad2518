"""``cdc-sync verify`` over a million cached keys.

Starts its own servers; loads ``--keys`` rows (BIGINT id, two VARCHARs, an INT) into MariaDB and the same rows
into Redis as the worker writes them in update mode (MSET, not through the worker: the figure is verify's,
not the fill's), tampers ``--tampered`` keys so the divergence path (re-check after the heartbeat) runs too,
then times ``cdc-sync verify --json`` end to end (process start-up included) and ``--sample 10000``.
Writes bench/verify.json (and bench/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import shutdown, write_results  # noqa: E402
from cdc_sync.core.codec import encode_json  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402

CHUNK = 10_000


def _row(i: int) -> dict[str, object]:
    return {"id": i, "email": f"user{i}@example.com", "name": f"user {i}", "score": i % 1000}


def _fill(conn: pymysql.Connection, r: redis.Redis, keys: int) -> float:  # type: ignore[type-arg]
    """Rows into MySQL and the same rows' values into Redis; returns the seconds it took."""
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("CREATE DATABASE b")
        cur.execute("CREATE TABLE b.users (id BIGINT PRIMARY KEY, email VARCHAR(64), name VARCHAR(64), score INT)")
        for start in range(1, keys + 1, CHUNK):
            rows = [_row(i) for i in range(start, min(start + CHUNK, keys + 1))]
            cur.executemany("INSERT INTO b.users VALUES (%s, %s, %s, %s)", [tuple(x.values()) for x in rows])
            r.mset({f"user:{x['id']}": encode_json(x, None) for x in rows})
    return time.perf_counter() - t0


def _verify(cfg: Path, *args: str) -> tuple[float, dict[str, object], float, float]:
    """(seconds, the --json result, peak RSS of the verify process in MB, CPU seconds it used)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cdc_sync", "verify", "--json", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"verify exited {proc.returncode}: {proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the servers are children too, but still running
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, json.loads(proc.stdout), after.ru_maxrss / 1024, cpu  # maxrss: the largest child so far


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--tampered", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-verify-"))
    try:
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        r = redis.Redis(port=redis_srv.port)
        fill_s = _fill(conn, r, args.keys)
        for i in range(1, args.tampered + 1):
            r.set(f"user:{i * (args.keys // max(args.tampered, 1))}", b'{"id":0,"tampered":true}')
        # No worker runs: a heartbeat far ahead lets the re-check of the tampered keys confirm at once.
        seconds, micros = r.time()
        r.set("cdc:heartbeat", int(seconds) * 1000 + int(micros) // 1000 + 10**9)
        cfg = workdir / "verify.toml"
        cfg.write_text(f"""
[mysql]
port = {mariadb.port}
[redis]
url = "redis://127.0.0.1:{redis_srv.port}/0"
[[tables]]
table = "b.users"
key = "user:{{id}}"
mode = "update"
[log]
level = "warning"
[metrics]
listen = ""
""")
        full: list[float] = []
        cpus: list[float] = []
        result: dict[str, object] = {}
        rss = 0.0
        for _ in range(args.rounds):
            t, result, rss, cpu = _verify(cfg)
            full.append(t)
            cpus.append(cpu)
        table = result["tables"][0]  # type: ignore[index]
        checked, divergent = table["checked"], len(table["divergent"])
        sampled, sample_result, _, _ = _verify(cfg, "--sample", "10000")
        median = statistics.median(full)
        results = {
            "keys": args.keys,
            "fill_seconds": round(fill_s, 1),
            "seconds": [round(t, 2) for t in full],
            "median_seconds": round(median, 2),
            "keys_per_s": round(checked / median),
            "checked": checked,
            "divergent_found": divergent,
            "tampered": args.tampered,
            "peak_rss_mb": round(rss, 1),
            "cpu_seconds": [round(c, 1) for c in cpus],  # of the verify process; the rest is waiting on servers/CPU
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "sample_10000_seconds": round(sampled, 2),
            "sample_10000_checked": sample_result["tables"][0]["checked"],  # type: ignore[index]
        }
        for name, value in results.items():
            print(f"{name:<24} {value}")
        if checked != args.keys or divergent != args.tampered:
            raise SystemExit(f"verify checked {checked} keys and found {divergent} divergent")
        write_results("verify", results)
    finally:
        shutdown(None, mariadb, redis_srv)


if __name__ == "__main__":
    main()
