"""Catch-up throughput: N changes replayed by the real `cdc-sync run` from a checkpoint.

Starts its own MariaDB and Redis, writes N/2 inserts and N/2 updates in 500-row transactions to a
6-column table, then measures, side by side in the same run:
  * raw python-mysql-replication iteration of the same binlog range (same table filter, no work),
  * the worker catching up from the checkpoint taken before the writes (evict and update mode).
Prints a table and writes bench/catchup.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pymysql
import redis
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import RowsEvent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import catch_up, shutdown, write_results  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402


def _load(port: int, n: int) -> tuple[str, str]:
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS b")
        cur.execute(
            "CREATE TABLE b.t (id BIGINT PRIMARY KEY, a VARCHAR(64), c VARCHAR(64), d DECIMAL(12,2), "
            "e DATETIME, f TEXT)"
        )
        cur.execute("SELECT @@gtid_binlog_pos")
        start = cur.fetchone()[0]
        half = n // 2
        for base in range(0, half, 500):
            rows = [
                (i, f"name-{i}", f"mail-{i}@x", i / 100, "2024-01-02 03:04:05", "t" * 40)
                for i in range(base, min(base + 500, half))
            ]
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO b.t VALUES (%s,%s,%s,%s,%s,%s)", rows)
            cur.execute("COMMIT")
        for base in range(0, half, 500):
            cur.execute("UPDATE b.t SET a = CONCAT(a, 'u'), d = d + 1 WHERE id >= %s AND id < %s", (base, base + 500))
        cur.execute("SELECT @@gtid_binlog_pos")
        end = cur.fetchone()[0]
    conn.close()
    return start, end


def _stream(port: int, start: str, server_id: int) -> BinLogStreamReader:
    """The library reading b.t from ``start``, as the worker does (same table filter)."""
    return BinLogStreamReader(
        {"host": "127.0.0.1", "port": port, "user": "root", "passwd": ""},
        server_id=server_id,
        blocking=True,
        is_mariadb=True,
        auto_position=start,
        only_schemas=["b"],
        only_tables=["t"],
        enable_logging=False,
    )


def _raw(port: int, start: str, n: int) -> float:
    stream = _stream(port, start, 77)
    rows = 0
    t0 = time.perf_counter()
    for ev in stream:
        if isinstance(ev, RowsEvent):
            rows += len(ev.rows)
            if rows >= n:
                break
    elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def _naive(port: int, redis_port: int, start: str, limit: int) -> float:
    """The shape of the library's examples/redis_cache.py: one Redis round trip per row, no pipelining."""
    r = redis.Redis(port=redis_port)
    stream = _stream(port, start, 78)
    rows = 0
    t0 = time.perf_counter()
    for ev in stream:
        if isinstance(ev, RowsEvent):
            for row in ev.rows:
                values = row.get("after_values", row.get("values"))
                r.hset(f"naive:{values['id']}", mapping={k: str(v) for k, v in values.items()})
                rows += 1
            if rows >= limit:
                break
    elapsed = time.perf_counter() - t0
    stream.close()
    return rows / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    try:
        start, end = _load(mariadb.port, args.changes)
        results: dict[str, list[float]] = {"raw": [], "evict": [], "update": [], "naive": []}
        rss: dict[str, list[float]] = {"evict": [], "update": []}
        for _ in range(args.runs):  # A/B alternated so drift hits all alike
            results["raw"].append(args.changes / _raw(mariadb.port, start, args.changes))
            for mode in ("evict", "update"):
                seconds, peak = catch_up(mariadb.port, redis_srv.port, "b.t", mode, start, end, workdir)
                results[mode].append(args.changes / seconds)
                rss[mode].append(peak)
            results["naive"].append(_naive(mariadb.port, redis_srv.port, start, min(args.changes, 20_000)))
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
        print(f"{'scenario':<28}{'median rows/s':>16}{'vs raw':>10}{'vs naive':>10}")
        for k in ("raw", "evict", "update", "naive"):
            print(f"{k:<28}{med[k]:>16,.0f}{med[k] / med['raw']:>10.2f}{med[k] / med['naive']:>10.2f}")
        print("peak RSS of the worker (MB): " + ", ".join(f"{m} {max(v):.0f}" for m, v in rss.items()))
        write_results(
            "catchup", {"changes": args.changes, "runs": results, "median_rows_per_s": med, "peak_rss_mb": rss}
        )
    finally:
        shutdown(None, mariadb, redis_srv)


if __name__ == "__main__":
    main()
