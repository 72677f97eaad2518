"""Peak memory of the worker: a catch-up over many changes, and one very large transaction.

Starts its own servers; loads ``--changes`` changes in 500-row transactions and, separately, one transaction
of ``--big`` rows; runs ``cdc-sync run`` (update mode, the heavier one) from a checkpoint taken before each
load until caught up, and reads the worker's peak RSS (VmHWM). Writes bench/memory.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import catch_up, shutdown, write_results  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402


def _position(cur: pymysql.cursors.Cursor) -> str:
    cur.execute("SELECT @@gtid_binlog_pos")
    return str(cur.fetchone()[0])


def _load(cur: pymysql.cursors.Cursor, table: str, rows: int, per_txn: int) -> tuple[str, str]:
    start = _position(cur)
    for base in range(0, rows, per_txn):
        cur.execute("BEGIN")
        stop = min(base + per_txn, rows)
        for chunk in range(base, stop, 5000):
            values = [(i, f"name-{i}", f"mail-{i}@x", i / 100, "t" * 40) for i in range(chunk, min(chunk + 5000, stop))]
            cur.executemany(f"INSERT INTO {table} VALUES (%s,%s,%s,%s,%s)", values)  # noqa: S608 - fixed name
        cur.execute("COMMIT")
    return start, _position(cur)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=500_000)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-memory-"))
    try:
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        results = {}
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE b")
            for table in ("b.many", "b.big"):
                cur.execute(
                    f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, a VARCHAR(64), c VARCHAR(64), "
                    "d DECIMAL(12,2), f TEXT)"
                )
            start, end = _load(cur, "b.many", args.changes, 500)
            seconds, rss = catch_up(mariadb.port, redis_srv.port, "b.many", "update", start, end, workdir)
            results["many"] = {"changes": args.changes, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1)}
            start, end = _load(cur, "b.big", args.big, args.big)
            seconds, rss = catch_up(mariadb.port, redis_srv.port, "b.big", "update", start, end, workdir)
            results["one_transaction"] = {"rows": args.big, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1)}
        for name, res in results.items():
            print(f"{name:<16} {res}")
        write_results("memory", results)
    finally:
        shutdown(None, mariadb, redis_srv)


if __name__ == "__main__":
    main()
