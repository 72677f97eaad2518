"""Single-row transactions on a busy database: the real `cdc-sync run` against raw library iteration.

Starts its own MariaDB and Redis and writes ``--transactions`` autocommit transactions of one row each: for every
write to the mapped table ``b.m`` three go to the unmapped ``b.u`` (the OLTP shape, where most traffic is not
cached). The first half are inserts, the second half updates of the same rows. Then, side by side and
alternated over ``--runs`` rounds:
  * raw python-mysql-replication iteration of the same binlog range with the same table filter (every rows event
    of ``b.m`` decoded, every transaction's events read), until the last transaction;
  * the worker catching up from the checkpoint taken before the writes, in evict and in update mode, timed from
    process start to the checkpoint at the end (start-up included, and measured on its own as well).
Prints tx/s and the ratios, and writes bench/small_txns.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql
import redis
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import XidEvent
from pymysqlreplication.row_event import RowsEvent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import catch_up, reached_end, shutdown, start_up, start_worker, worker_config, write_results  # noqa: E402
from tools.devservers import start_mariadb, start_redis  # noqa: E402

UNMAPPED_PER_MAPPED = 3


def _load(port: int, transactions: int) -> tuple[str, str]:
    """Write the transactions; returns the GTID states before and after."""
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS b")
        for table in ("m", "u"):
            cur.execute(
                f"CREATE TABLE b.{table} (id BIGINT PRIMARY KEY, name VARCHAR(64), n INT, "
                "price DECIMAL(10,2), at DATETIME)"
            )
        cur.execute("SELECT @@gtid_binlog_pos")
        start = cur.fetchone()[0]
        group = UNMAPPED_PER_MAPPED + 1
        mapped = transactions // group
        half = mapped // 2
        u = 0
        for i in range(mapped):
            if i < half:
                cur.execute("INSERT INTO b.m VALUES (%s, %s, %s, %s, NOW())", (i, f"name-{i}", i, i / 100))
            else:
                cur.execute("UPDATE b.m SET n = n + 1, name = CONCAT(name, 'u') WHERE id = %s", (i - half,))
            for _ in range(UNMAPPED_PER_MAPPED):
                if i < half:
                    cur.execute("INSERT INTO b.u VALUES (%s, %s, %s, %s, NOW())", (u, f"u-{u}", u, u / 100))
                else:
                    cur.execute("UPDATE b.u SET n = n + 1 WHERE id = %s", (u - half * UNMAPPED_PER_MAPPED,))
                u += 1
        cur.execute("SELECT @@gtid_binlog_pos")
        end = cur.fetchone()[0]
    conn.close()
    return start, end


def _raw(port: int, start: str, transactions: int) -> float:
    """Seconds for the library to read the range as the worker does (same filter), row images decoded."""
    t0 = time.perf_counter()
    stream = BinLogStreamReader(
        {"host": "127.0.0.1", "port": port, "user": "root", "passwd": ""},
        server_id=77,
        blocking=True,
        is_mariadb=True,
        auto_position=start,
        only_schemas=["b"],
        only_tables=["m"],
        enable_logging=False,
    )
    seen = 0
    for ev in stream:
        if isinstance(ev, RowsEvent):
            ev.rows  # noqa: B018 (the rows are decoded on first access)
        elif isinstance(ev, XidEvent):
            seen += 1
            if seen >= transactions:
                break
    elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def _profile(mysql_port: int, redis_port: int, start: str, end: str, workdir: Path, out: Path) -> float:
    """An update-mode catch-up with py-spy attached (collapsed stacks in ``out``); prints the functions by own
    time and returns the catch-up's seconds (slower than unprofiled)."""
    r = redis.Redis(port=redis_port)
    r.flushall()
    r.set("cdc:checkpoint", start)
    t0 = time.perf_counter()
    worker = start_worker(worker_config(workdir, mysql_port, redis_port, "b.m", "update", name="profiled"))
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--format", "raw", "--rate", "200", "--threads", "--nonblocking"]
    spy = subprocess.Popen([*command, "-o", str(out), "--pid", str(worker.pid)], stdout=subprocess.DEVNULL)
    while not reached_end(r.get("cdc:checkpoint"), end):
        if worker.poll() is not None:
            raise SystemExit(f"worker exited {worker.returncode}")
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    shutdown(worker)
    spy.wait(30)
    print(summarize_profile(out))
    return seconds


def summarize_profile(path: Path, top: int = 30) -> str:
    """Per thread, the functions with the most samples: own (on top of the stack) and total (anywhere on it),
    from py-spy's raw output (one line per stack: frames separated by ';', then a count)."""
    own: dict[tuple[str, str], int] = {}
    total: dict[tuple[str, str], int] = {}
    threads: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        n = int(count)
        thread = re.sub(r"^thread \(\d+\):? ?", "", thread) or "(start-up)"
        threads[thread] = threads.get(thread, 0) + n
        if frames:
            own[(thread, frames[-1])] = own.get((thread, frames[-1]), 0) + n
        for frame in set(frames):
            total[(thread, frame)] = total.get((thread, frame), 0) + n
    lines = ["samples by thread: " + ", ".join(f"{t} {n}" for t, n in sorted(threads.items(), key=lambda kv: -kv[1]))]
    lines.append(f"{'own':>7} {'total':>7}  {'thread':<18} function")
    for (thread, frame), n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(
            f"{n / threads[thread]:>7.1%} {total[(thread, frame)] / threads[thread]:>7.1%}  {thread[:18]:<18} {frame}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also profile an update-mode catch-up with py-spy, to this file")
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-small-"))
    try:
        t0 = time.perf_counter()
        start, end = _load(mariadb.port, args.transactions)
        print(f"wrote {args.transactions:,} single-row transactions in {time.perf_counter() - t0:.1f} s")
        tx = args.transactions // (UNMAPPED_PER_MAPPED + 1) * (UNMAPPED_PER_MAPPED + 1)
        results: dict[str, list[float]] = {"raw": [], "evict": [], "update": []}
        rss: dict[str, list[float]] = {"evict": [], "update": []}
        startup: list[float] = []
        for _ in range(args.runs):  # alternated so drift hits all alike
            results["raw"].append(tx / _raw(mariadb.port, start, tx))
            for mode in ("evict", "update"):
                seconds, peak = catch_up(mariadb.port, redis_srv.port, "b.m", mode, start, end, workdir)
                results[mode].append(tx / seconds)
                rss[mode].append(peak)
            startup.append(start_up(mariadb.port, redis_srv.port, "b.m", workdir))
        profile: dict[str, Any] = {}
        if args.profile:
            profiled_s = _profile(mariadb.port, redis_srv.port, start, end, workdir, args.profile)
            print(f"profiled catch-up: {tx / profiled_s:,.0f} tx/s")
            profile = {
                "file": str(args.profile),
                "tx_per_s": tx / profiled_s,
                "summary": summarize_profile(args.profile),
            }
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
        start_s = sorted(startup)[len(startup) // 2]
        print(f"{'scenario':<24}{'median tx/s':>14}{'vs raw':>10}")
        for k in ("raw", "evict", "update"):
            print(f"{k:<24}{med[k]:>14,.0f}{med[k] / med['raw']:>10.2f}")
        print(f"worker start-up to first heartbeat: {start_s:.2f} s (included above)")
        write_results(
            "small_txns",
            {
                "transactions": tx,
                "unmapped_per_mapped": UNMAPPED_PER_MAPPED,
                "runs": results,
                "median_tx_per_s": med,
                "ratios": {mode: med[mode] / med["raw"] for mode in ("evict", "update")},
                "startup_s": startup,
                "peak_rss_mb": rss,
                "profile": profile,
            },
        )
    finally:
        shutdown(None, mariadb, redis_srv)


if __name__ == "__main__":
    main()
