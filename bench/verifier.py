"""The worker with the sampled verifier on against off, side by side in one run on throwaway servers.

* catch-up: N changes (bench/catchup.py's load) replayed by the real ``cdc-sync run``, update mode, runs
  alternated, with ``[verify] sample_rate`` at ``--rate`` (``max_checks_per_s`` at its default) and off;
* steady load: single-row updates at ``--tps`` for ``--seconds`` with the verifier on: keys it checked a second,
  the SELECTs it added to MariaDB a second (``Com_select``), what it found.
Prints a table and writes bench/verifier.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.catchup import _load  # noqa: E402
from bench.common import catch_up, shutdown, start_worker, worker_config, write_results  # noqa: E402
from tools.devservers import free_port, start_mariadb, start_redis  # noqa: E402
from tools.scrape import metric  # noqa: E402


def _selects(conn: pymysql.Connection) -> int:  # type: ignore[type-arg]
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
        return int(cur.fetchone()[1])


def _steady(mysql_port: int, redis_port: int, workdir: Path, extra: str, args: argparse.Namespace) -> dict[str, float]:
    """Single-row updates at ``args.tps`` for ``args.seconds`` under a worker with ``extra``: keys checked a
    second, MariaDB's SELECTs a second (the worker's own included: its heartbeat prober asks for the position),
    inconsistencies and dropped samples."""
    port = free_port()
    cfg = worker_config(workdir, mysql_port, redis_port, "b.t", "update", name="steady", extra=extra)
    cfg.write_text(cfg.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    worker = start_worker(cfg)
    conn = pymysql.connect(host="127.0.0.1", port=mysql_port, user="root", autocommit=True)
    try:
        time.sleep(3)
        before, t0 = _selects(conn), time.perf_counter()
        checks0 = metric(port, "cdc_sync_verify_checks_total")
        n = 0
        with conn.cursor() as cur:
            while (elapsed := time.perf_counter() - t0) < args.seconds:
                wait = n / args.tps - elapsed
                if wait > 0:
                    time.sleep(wait)
                cur.execute("UPDATE b.t SET a = CONCAT(LEFT(a, 20), %s) WHERE id = %s", (f"-{n}", n % 50_000))
                n += 1
        time.sleep(2)
        seconds = time.perf_counter() - t0
        return {
            "selects_per_s": (_selects(conn) - before - 2) / seconds,  # (less this function's own two)
            "checks_per_s": (metric(port, "cdc_sync_verify_checks_total") - checks0) / seconds,
            "inconsistencies": metric(port, "cdc_sync_verify_inconsistencies_total"),
            "dropped": metric(port, "cdc_sync_verify_samples_dropped_total"),
        }
    finally:
        conn.close()
        shutdown(worker)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.05, help="sample_rate with the verifier on")
    parser.add_argument("--tps", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    mariadb, redis_srv = start_mariadb(), start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-verifier-"))
    on = f"[verify]\nsample_rate = {args.rate}\n"
    try:
        start, end = _load(mariadb.port, args.changes)
        rows: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.runs):  # alternated, so drift hits both alike
            for name, extra in (("off", ""), ("on", on)):
                seconds, _rss = catch_up(
                    mariadb.port, redis_srv.port, "b.t", "update", start, end, workdir, extra=extra
                )
                rows[name].append(args.changes / seconds)
        med = {k: statistics.median(v) for k, v in rows.items()}
        steady = {
            name: _steady(mariadb.port, redis_srv.port, workdir, extra, args)
            for name, extra in (("off", ""), ("on", on))
        }
        checks = steady["on"]["checks_per_s"]
        selects = steady["on"]["selects_per_s"] - steady["off"]["selects_per_s"]
        wrong, dropped = steady["on"]["inconsistencies"], steady["on"]["dropped"]
        ratio = med["on"] / med["off"]
        print(f"{'catch-up, update mode':<34}{'median rows/s':>14}")
        print(f"{'verifier off':<34}{med['off']:>14,.0f}")
        print(f"{f'verifier on (sample_rate {args.rate})':<34}{med['on']:>14,.0f}   {ratio:.2f} x off")
        print(
            f"steady load {args.tps:.0f} tx/s: {checks:.1f} keys checked/s, {selects:.1f} SELECTs/s more than off, "
            f"{wrong:.0f} inconsistencies, {dropped:.0f} samples dropped"
        )
        write_results(
            "verifier",
            {
                "changes": args.changes,
                "sample_rate": args.rate,
                "runs": rows,
                "median_rows_per_s": med,
                "ratio_on_off": ratio,
                "steady": {"tps": args.tps, "off": steady["off"], "on": steady["on"], "selects_added_per_s": selects},
            },
        )
    finally:
        shutdown(None, mariadb, redis_srv)


if __name__ == "__main__":
    main()
