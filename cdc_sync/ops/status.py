"""``cdc-sync status``: where the worker stands, at a glance (read from Redis and MySQL; no worker needed)."""

from __future__ import annotations

import time
from typing import Any

import redis

from cdc_sync.config import Config
from cdc_sync.errors import CdcSyncError
from cdc_sync.mysql import MySQLAdmin
from cdc_sync.positions import PositionError, kind_of, parse_mariadb, parse_mysql
from cdc_sync.sink import make_client


def behind(checkpoint: str, server: str) -> int | None:
    """Transactions the checkpoint lacks of the server's position (GTID forms), or None when unknown."""
    try:
        kind = kind_of(checkpoint)
        if kind != kind_of(server) or kind == "file":
            return None
    except PositionError:
        return None
    if kind == "mariadb":
        mine, theirs = parse_mariadb(checkpoint), parse_mariadb(server)
        return sum(max(0, seq - mine.get(d, (0, 0))[1]) for d, (_s, seq) in theirs.items())
    have, want = parse_mysql(checkpoint), parse_mysql(server)
    missing = 0
    for uuid, ranges in want.items():
        for lo, hi in ranges:
            for n in range(lo, hi + 1) if hi - lo < 1_000_000 else ():
                if not any(a <= n <= b for a, b in have.get(uuid, [])):
                    missing += 1
    return missing


def collect(config: Config) -> dict[str, Any]:
    """Everything ``status`` shows, as data."""
    ns = config.redis.namespace
    out: dict[str, Any] = {"namespace": ns, "redis": config.redis.safe_url}
    client = make_client(config.redis)
    try:
        pipe = client.pipeline()
        pipe.get(f"{ns}:checkpoint")
        pipe.get(f"{ns}:heartbeat")
        pipe.time()
        pipe.hgetall(f"{ns}:status")
        pipe.hgetall(f"{ns}:stats")
        pipe.get(f"{ns}:leader")
        checkpoint, heartbeat, now, status, stats, leader = pipe.execute()
    except redis.RedisError as exc:
        out["error"] = f"redis: {exc}"
        return out
    finally:
        client.close()
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    out["checkpoint"] = checkpoint.decode() if checkpoint else None
    out["heartbeat_age_s"] = round((now_ms - int(heartbeat)) / 1000, 3) if heartbeat else None
    worker = {k.decode(): v.decode() for k, v in status.items()}
    for key in ("started_at", "last_error_at"):
        if key in worker:
            worker[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(worker[key])))
    out["worker"] = worker
    out["leader"] = leader.decode() if leader else None
    tables: dict[str, dict[str, int]] = {}
    for field, count in stats.items():
        table, _, op = field.decode().rpartition(":")
        tables.setdefault(table, {})[op] = int(count)
    out["applied"] = tables
    admin = MySQLAdmin(config.mysql)
    try:
        info = admin.server_info()
        out["server"] = {
            "flavor": info.flavor,
            "version": info.version,
            "gtid": info.gtid_position,
            "file": info.file_position,
        }
        if out["checkpoint"]:
            server_pos = info.gtid_position if kind_of(out["checkpoint"]) != "file" else info.file_position
            out["behind_transactions"] = behind(out["checkpoint"], server_pos)
    except (CdcSyncError, PositionError) as exc:
        out["server"] = {"error": str(exc)}
    finally:
        admin.close()
    return out


def render(data: dict[str, Any]) -> str:
    lines = [f"namespace    {data['namespace']} on {data['redis']}"]
    if "error" in data:
        return "\n".join([*lines, f"error        {data['error']}"])
    lines.append(f"checkpoint   {data.get('checkpoint') or '(none: the worker has not started here)'}")
    server = data.get("server", {})
    if "error" in server:
        lines.append(f"server       unreachable: {server['error']}")
    else:
        lines.append(
            f"server       {server.get('flavor')} {server.get('version')}  gtid {server.get('gtid') or '-'}  "
            f"file {server.get('file') or '-'}"
        )
    lag = data.get("heartbeat_age_s")
    behind_txn = data.get("behind_transactions")
    lines.append(
        "lag          "
        + (f"heartbeat {lag:.1f} s old" if lag is not None else "no heartbeat (readers bypass the cache)")
        + (f", {behind_txn} transaction(s) behind" if behind_txn is not None else "")
    )
    worker = data.get("worker") or {}
    if worker:
        lines.append(
            f"worker       {worker.get('state', '?')} on {worker.get('host', '?')} pid {worker.get('pid', '?')} "
            f"v{worker.get('version', '?')} since {worker.get('started_at', '?')}"
        )
        if worker.get("last_error"):
            lines.append(f"last error   {worker['last_error']} at {worker.get('last_error_at', '?')}")
    lines.append(f"leader       {data.get('leader') or '(none: HA off, or no worker holds the lease)'}")
    for table, ops in sorted((data.get("applied") or {}).items()):
        counts = "  ".join(f"{op} {n}" for op, n in sorted(ops.items()))
        lines.append(f"applied      {table}: {counts}")
    return "\n".join(lines)
