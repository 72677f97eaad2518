"""Shared by the benchmark scripts: result files and clean-up."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from tools.devservers import LocalServer

BENCH = Path(__file__).resolve().parent


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reached_end(checkpoint: bytes | None, end: str) -> bool:
    """Whether a stored checkpoint is at the GTID state ``end`` (the checkpoint may add ``@server:file:pos``)."""
    return (checkpoint or b"").decode().partition("@")[0] == end


def worker_config(
    workdir: Path, mysql_port: int, redis_port: int, table: str, mode: str, name: str = "", extra: str = ""
) -> Path:
    """A worker configuration for one mapped table (key ``k:{id}``), quiet logs, no metrics port; ``extra``: more
    TOML sections."""
    path = workdir / f"{name or mode}.toml"
    return tables_config(path, mysql_port, redis_port, [(table, "k:{id}", mode)], extra)


def tables_config(
    path: Path, mysql_port: int, redis_port: int, tables: list[tuple[str, str, str]], extra: str = ""
) -> Path:
    """A worker configuration for ``tables`` ((table, key template, mode) each), quiet logs, no metrics port."""
    rules = "".join(f'[[tables]]\ntable = "{t}"\nkey = "{k}"\nmode = "{m}"\n' for t, k, m in tables)
    path.write_text(f"""
[mysql]
port = {mysql_port}
server_id = 4243
[redis]
url = "redis://127.0.0.1:{redis_port}/0"
{rules}[log]
level = "warning"
format = "json"
[metrics]
listen = ""
{extra}""")
    return path


def observe_sets(port: int, pattern: str, ready: Any, stop: Any, out: Any) -> None:
    """Separate process: when each key matching ``pattern`` (``prefix:<n>``) was first set (time.time()), put on
    ``out`` once ``stop`` is set; ``ready`` is set once subscribed."""
    r = redis.Redis(port=port)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"__keyspace@0__:{pattern}")
    seen: dict[int, float] = {}
    ready.set()
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message and message["data"] == b"set":
            n = int(message["channel"].decode().rsplit(":", 1)[1])
            seen.setdefault(n, time.time())
    out.put(seen)


def start_worker(cfg: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """``cdc-sync run`` on ``cfg``, optionally under a profiler (``prefix``: its command line)."""
    command = [*prefix, sys.executable, "-m", "cdc_sync", "run", "--config", str(cfg)]
    return subprocess.Popen(command, cwd=BENCH.parent)


def catch_up(
    mysql_port: int,
    redis_port: int,
    table: str,
    mode: str,
    start: str,
    end: str,
    workdir: Path,
    prefix: tuple[str, ...] = (),
    extra: str = "",
) -> tuple[float, float]:
    """``cdc-sync run`` from checkpoint ``start`` until it reaches ``end``: (seconds, peak RSS in MB); ``extra``:
    more TOML sections for the worker's configuration.

    The time includes the process start-up; the worker is stopped afterwards.
    """
    r = redis.Redis(port=redis_port)
    r.flushall()
    r.set("cdc:checkpoint", start)
    cfg = worker_config(workdir, mysql_port, redis_port, table, mode, name=f"{mode}{len(extra)}", extra=extra)
    t0 = time.perf_counter()
    proc = start_worker(cfg, prefix)
    while not reached_end(r.get("cdc:checkpoint"), end):
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}")
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mb(proc.pid) if not prefix else 0.0
    shutdown(proc)
    return seconds, rss


def start_up(mysql_port: int, redis_port: int, table: str, workdir: Path) -> float:
    """Seconds from ``cdc-sync run`` to its first heartbeat, resuming from the checkpoint a catch-up left (with
    its stream position, so the server does not scan its binlog for a GTID): the start-up cost."""
    r = redis.Redis(port=redis_port)
    checkpoint = r.get("cdc:checkpoint")
    assert checkpoint and b"@" in checkpoint, "start_up() follows a catch_up()"
    r.flushall()
    r.set("cdc:checkpoint", checkpoint)
    cfg = worker_config(workdir, mysql_port, redis_port, table, "update", name="startup")
    t0 = time.perf_counter()
    proc = start_worker(cfg)
    while r.get("cdc:heartbeat") is None:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}")
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    shutdown(proc)
    return seconds


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((line.split()[1] for line in _lines("/proc/meminfo") if line.startswith("MemTotal:")), "0")
    versions = {}
    for name, cmd in (("mariadbd", ["mariadbd", "--version"]), ("redis-server", ["redis-server", "--version"])):
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            versions[name] = ""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "mysql-replication": version("mysql-replication"),
        **versions,
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write bench/<name>.json, and merge it into bench/results.json (every scenario, the machine, the date)."""
    stamp, host = time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine()
    path = BENCH / f"{name}.json"
    path.write_text(json.dumps({**data, "date": stamp, "machine": host}, indent=2))
    combined_path = BENCH / "results.json"
    combined: dict[str, Any] = {}
    if combined_path.exists():
        try:
            combined = json.loads(combined_path.read_text())
        except ValueError:
            combined = {}
    combined.setdefault("scenarios", {})[name] = {**data, "date": stamp}
    combined["machine"] = host
    combined["date"] = stamp
    combined_path.write_text(json.dumps(combined, indent=2))
    return path


def shutdown(worker: subprocess.Popen[bytes] | None, *servers: LocalServer) -> None:
    """Stop the worker (SIGTERM) and the throwaway servers."""
    if worker is not None and worker.poll() is None:
        worker.terminate()
        worker.wait(30)
    for server in servers:
        server.stop()
