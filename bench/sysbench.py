"""The real worker under sysbench's ``oltp_read_write`` (Debian's sysbench 1.0.20): freshness, latency and CPU.

Starts its own MariaDB and Redis, prepares ``--tables``=3 sysbench tables of ``--table-size`` rows, and starts
the worker with all three mapped (update mode, keys ``sb<n>:{id}``). Then, for each of ``--rates`` (tx/s; 0 =
unpaced), sysbench runs ``--threads`` clients for ``--seconds`` while the bench measures:
  * the heartbeat age, every 50 ms: Redis ``TIME`` minus ``cdc:heartbeat`` (one MULTI, one clock);
  * commit-to-cache latency with a probe: every 20 ms a separate connection inserts (autocommit) a row of its own
    into sbtest1, ids from 10,000,000 up (sysbench only touches ids 1..table size, its DELETE+INSERT reuses the
    id it deleted), noting when the COMMIT returned; an observer process subscribed to keyspace notifications
    notes when each ``sb1:<id>`` was set. Latency = set - commit, on this machine's clock. After the run the
    bench waits until the heartbeat passes the end of the run (so every probe must be in Redis), then counts
    the probes never seen (missing) and those not in Redis either. That wait is ``drain_s``: a backlog, plus up
    to one idle heartbeat interval (an idle worker samples only every ``heartbeat_interval_ms``);
  * CPU, as a percentage of one core over the run: mariadbd, the worker, redis-server and sysbench, from
    /proc/<pid>/stat (sysbench: its rusage once reaped), plus the machine's busy share from /proc/stat;
  * sysbench's own figures: achieved tx/s and queries/s, ignored errors (deadlocks), its latency avg/p95.
Prints a table and writes bench/sysbench.json. Fails (SystemExit) when the worker exits or sysbench fails.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import observe_sets, shutdown, start_worker, tables_config, write_results  # noqa: E402
from cdc_sync.config import WorkerConfig  # noqa: E402
from tools.devservers import LocalServer, start_mariadb, start_redis  # noqa: E402

TABLES = 3
PROBE_FIRST_ID = 10_000_000  # 8 digits: the observer's pattern sb1:???????? matches no sysbench row
PROBE_LAST_ID = 99_999_999
PROBE_INTERVAL_S = 0.020
SAMPLE_INTERVAL_S = 0.050
DRAIN_TIMEOUT_S = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sysbench_command(port: int, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        "sysbench",
        "oltp_read_write",
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        "--mysql-user=root",
        "--mysql-db=sbtest",
        f"--tables={TABLES}",
        f"--table-size={args.table_size}",
        *extra,
    ]


def run_sysbench(command: list[str], out: Path, worker: subprocess.Popen[bytes] | None, timeout: float) -> str:
    """Run sysbench to its end (output to ``out``), watching the worker; its output, or SystemExit."""
    with out.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if worker is not None and worker.poll() is not None:
                    raise SystemExit(f"the worker exited ({worker.returncode}) during sysbench")
                if time.monotonic() > deadline:
                    raise SystemExit(f"sysbench did not finish within {timeout:.0f} s")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = out.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"sysbench failed ({proc.returncode}): {' '.join(command)}\n{text[-3000:]}")
    return text


def parse_sysbench(text: str) -> dict[str, Any]:
    """The figures of sysbench's final report."""

    def grab(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text)
        if match is None:
            raise SystemExit(f"sysbench output without {pattern!r}:\n{text[-3000:]}")
        return match

    tx = grab(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec\.\)")
    queries = grab(r"queries:\s+(\d+)\s+\(([\d.]+) per sec\.\)")
    ignored = grab(r"ignored errors:\s+(\d+)")
    return {
        "transactions": int(tx.group(1)),
        "achieved_tx_s": float(tx.group(2)),
        "queries_per_s": float(queries.group(2)),
        "ignored_errors": int(ignored.group(1)),
        "sysbench_latency_ms": {
            "avg": float(grab(r"avg:\s+([\d.]+)").group(1)),
            "p95": float(grab(r"95th percentile:\s+([\d.]+)").group(1)),
            "max": float(grab(r"max:\s+([\d.]+)").group(1)),
        },
    }


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces; fields[0] is the state
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> list[int]:
    """Clock ticks of all CPUs since boot, from /proc/stat: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def machine_share(before: list[int], after: list[int], ours_ticks: int) -> dict[str, Any]:
    """Busy (not idle, iowait or steal) and steal time in % of all the machine's CPUs over the interval, and
    what processes other than the measured ones used (other load on the machine), in % of one core."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = max(1, sum(delta))
    busy = total - delta[3] - delta[4] - delta[7]
    cpus = os.cpu_count() or 1
    return {
        "busy_pct": round(busy / total * 100, 1),
        "steal_pct": round(delta[7] / total * 100, 1),
        "others_pct_of_one_core": round(max(0, busy - ours_ticks) / total * cpus * 100, 1),
        "cpus": cpus,
    }


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Loop(threading.Thread):
    """A paced loop in a daemon thread: ``step()`` every ``interval`` s (missed slots are skipped, not made up);
    an exception stops it and is kept in ``error``."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            next_at = time.perf_counter()
            while not self.halt.is_set():
                self.step()
                next_at = max(next_at + self.interval, time.perf_counter())
                self.halt.wait(next_at - time.perf_counter())
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        if self.error is not None:
            raise SystemExit(f"{type(self).__name__} failed: {self.error!r}")


class HeartbeatSampler(Loop):
    """Heartbeat age = Redis TIME - cdc:heartbeat (ms), both read in one MULTI."""

    def __init__(self, port: int) -> None:
        super().__init__(SAMPLE_INTERVAL_S)
        self.redis = redis.Redis(port=port)
        self.ages: list[float] = []
        self.absent = 0

    def step(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.time()
        pipe.get("cdc:heartbeat")
        (seconds, micros), beat = pipe.execute()
        if beat is None:
            self.absent += 1
        else:
            self.ages.append(seconds * 1000 + micros / 1000 - int(beat))


class Probe(Loop):
    """Autocommit INSERTs of rows of its own into sbtest1; id → time.time() when the COMMIT returned."""

    def __init__(self, port: int, first_id: int) -> None:
        super().__init__(PROBE_INTERVAL_S)
        self.conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
        self.next_id = first_id
        self.committed: dict[int, float] = {}
        self.errors = 0  # deadlocks / lock wait timeouts against sysbench (the id is skipped)

    def step(self) -> None:
        n = self.next_id
        if n > PROBE_LAST_ID:
            raise RuntimeError("probe ids exhausted")
        self.next_id += 1
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO sbtest.sbtest1 (id, k, c, pad) VALUES (%s, %s, %s, %s)",
                    (n, n % 100_000, f"probe-{n}", "probe"),
                )
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1205, 1213):
                self.errors += 1
                return
            raise
        self.committed[n] = time.time()


def pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, int(p * len(values)))] if values else None


def stats(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    rounded = {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "max": values[-1] if values else None}
    return {k: None if v is None else round(v, 2) for k, v in rounded.items()}


def redis_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds * 1000 + micros // 1000)


def wait_heartbeat_past(r: redis.Redis, ms: int, worker: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Seconds until cdc:heartbeat >= ms (the worker applied everything committed before), None on timeout."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited {worker.returncode}")
        beat = r.get("cdc:heartbeat")
        if beat is not None and int(beat) >= ms:
            return time.perf_counter() - t0
        time.sleep(0.01)
    return None


def run_rate(
    rate: int,
    args: argparse.Namespace,
    mariadb: LocalServer,
    redis_srv: LocalServer,
    worker: subprocess.Popen[bytes],
    first_probe: int,
    workdir: Path,
) -> tuple[dict[str, Any], int]:
    """One sysbench run at ``rate`` tx/s with the samplers; (figures, next free probe id)."""
    r = redis.Redis(port=redis_srv.port)
    ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
    observer = mp.Process(target=observe_sets, args=(redis_srv.port, "sb1:????????", ready, stop, out), daemon=True)
    observer.start()
    sampler: HeartbeatSampler | None = None
    probe: Probe | None = None
    try:
        if not ready.wait(10):
            raise SystemExit("the keyspace observer did not start")
        sampler, probe = HeartbeatSampler(redis_srv.port), Probe(mariadb.port, first_probe)
        pids = {"mariadbd": mariadb.proc.pid, "worker": worker.pid, "redis": redis_srv.proc.pid}
        pids |= {"bench": os.getpid(), "observer": observer.pid or 0}
        before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        machine0 = machine_ticks()
        children0 = children_cpu_s()
        t0 = time.perf_counter()
        sampler.start()
        probe.start()
        command = sysbench_command(
            mariadb.port,
            args,
            f"--threads={args.threads}",
            f"--time={args.seconds}",
            f"--rate={rate}",
            "--report-interval=0",
            "run",
        )
        text = run_sysbench(command, workdir / f"sysbench-{rate}.out", worker, args.seconds + 120)
        wall = time.perf_counter() - t0
        after = {name: cpu_ticks(pid) for name, pid in pids.items()}
        machine1 = machine_ticks()
        sysbench_cpu_s = children_cpu_s() - children0
        probe.stop()
        probe.conn.close()
        sampler.stop()
        end_ms = redis_ms(r)  # after the last probe commit
        drain_s = wait_heartbeat_past(r, end_ms, worker, DRAIN_TIMEOUT_S)
        time.sleep(0.2)  # let the last notifications reach the observer
        stop.set()
        seen: dict[int, float] = out.get(timeout=30)
        observer.join(10)
    finally:
        for loop in (probe, sampler):
            if loop is not None:
                loop.halt.set()
        stop.set()
        if observer.is_alive():
            observer.terminate()
            observer.join(5)
    committed = probe.committed
    lat = [(seen[n] - t) * 1000 for n, t in committed.items() if n in seen]
    missing = [n for n in committed if n not in seen]
    pipe = r.pipeline(transaction=False)
    for n in missing:
        pipe.exists(f"sb1:{n}")
    not_in_redis = sum(1 for present in pipe.execute() if not present) if missing else 0
    cpu = {name: round((after[name] - before[name]) / CLK_TCK / wall * 100, 1) for name in pids}
    ours = sum(after[name] - before[name] for name in pids) + round(sysbench_cpu_s * CLK_TCK)
    cpu["sysbench"] = round(sysbench_cpu_s / wall * 100, 1)
    figures = {
        "target_tx_s": rate,
        **parse_sysbench(text),
        "wall_s": round(wall, 2),
        "heartbeat_age_ms": {**stats(sampler.ages), "samples": len(sampler.ages), "absent": sampler.absent},
        "commit_to_cache_ms": {
            **stats(lat),
            "probes": len(committed),
            "arrived": len(lat),
            "missing": len(missing),
            "missing_not_in_redis": not_in_redis,
            "probe_errors": probe.errors,
        },
        "drain_s": None if drain_s is None else round(drain_s, 3),
        "cpu_pct_of_one_core": cpu,
        "machine": machine_share(machine0, machine1, ours),
    }
    return figures, probe.next_id


def write_config(workdir: Path, mysql_port: int, redis_port: int) -> Path:
    tables = [(f"sbtest.sbtest{n}", f"sb{n}:{{id}}", "update") for n in range(1, TABLES + 1)]
    return tables_config(workdir / "cdc-sync.toml", mysql_port, redis_port, tables)


def git_state() -> str:
    """The commit measured, ``-dirty`` when the work tree had changes (the package may differ from the commit)."""
    try:
        command = ["git", "describe", "--always", "--dirty"]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'rate':>8}{'tx/s':>8} | {'heartbeat age ms':^23} | {'commit-to-cache ms':^23} |{'missing':>8}"
        f"{'drain s':>8} | {'CPU % of a core':^26} |{'machine':>8}{'others':>8}"
    )
    print(
        f"{'':>8}{'':>8} | {'p50':>7}{'p99':>8}{'max':>8} | {'p50':>7}{'p99':>8}{'max':>8} |{'':>8}{'':>8} | "
        f"{'mariadbd':>9}{'worker':>8}{'sysb':>8}  |{'busy %':>8}{'core %':>8}"
    )
    for name, res in results.items():
        hb, lat, cpu = res["heartbeat_age_ms"], res["commit_to_cache_ms"], res["cpu_pct_of_one_core"]
        print(
            f"{name:>8}{res['achieved_tx_s']:>8.0f} | {fmt(hb['p50'], 7)}{fmt(hb['p99'], 8)}{fmt(hb['max'], 8)} | "
            f"{fmt(lat['p50'], 7)}{fmt(lat['p99'], 8)}{fmt(lat['max'], 8)} |{lat['missing']:>8}"
            f"{fmt(res['drain_s'], 8, 2)} | {cpu['mariadbd']:>9.1f}{cpu['worker']:>8.1f}{cpu['sysbench']:>8.1f}  |"
            f"{res['machine']['busy_pct']:>8.1f}{res['machine']['others_pct_of_one_core']:>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[300, 1000, 0], help="tx/s; 0 = unpaced")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--table-size", type=int, default=20_000)
    args = parser.parse_args()
    if not 1 <= args.table_size < PROBE_FIRST_ID:
        parser.error(f"--table-size must be below {PROBE_FIRST_ID:,} (the probe's ids)")
    try:
        version = subprocess.run(["sysbench", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"sysbench is not usable ({exc}): run 'make sysbench'") from exc
    workdir = Path(tempfile.mkdtemp(prefix="cdc-bench-sysbench-"))
    mariadb: LocalServer | None = None
    redis_srv: LocalServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        mariadb = start_mariadb()
        redis_srv = start_redis()
        conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE sbtest")
        conn.close()
        t0 = time.perf_counter()
        run_sysbench(sysbench_command(mariadb.port, args, "prepare"), workdir / "prepare.out", None, 600)
        print(f"sysbench prepare: {TABLES} tables of {args.table_size:,} rows in {time.perf_counter() - t0:.1f} s")
        r = redis.Redis(port=redis_srv.port)
        r.config_set("notify-keyspace-events", "K$")
        worker = start_worker(write_config(workdir, mariadb.port, redis_srv.port))
        t0 = time.perf_counter()
        if wait_heartbeat_past(r, 0, worker, 60) is None:
            raise SystemExit("the worker wrote no heartbeat within 60 s")
        print(f"worker up (first heartbeat) in {time.perf_counter() - t0:.1f} s")
        results: dict[str, dict[str, Any]] = {}
        probe_id = PROBE_FIRST_ID
        for rate in args.rates:
            name = str(rate) if rate > 0 else "unpaced"
            print(f"sysbench oltp_read_write at {name} tx/s for {args.seconds} s ...", flush=True)
            results[name], probe_id = run_rate(rate, args, mariadb, redis_srv, worker, probe_id, workdir)
        print_table(results)
        write_results(
            "sysbench",
            {
                "runs": results,
                "seconds_per_rate": args.seconds,
                "threads": args.threads,
                "tables": TABLES,
                "table_size": args.table_size,
                "probe_interval_ms": PROBE_INTERVAL_S * 1000,
                "heartbeat_sample_ms": SAMPLE_INTERVAL_S * 1000,
                "worker_heartbeat": {k: v for k, v in asdict(WorkerConfig()).items() if k.startswith("heartbeat")},
                "git": git_state(),
                "sysbench": version.strip(),
            },
        )
    finally:
        try:
            shutdown(worker)
        finally:
            shutdown(None, *(s for s in (mariadb, redis_srv) if s is not None))
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
