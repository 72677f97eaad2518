"""``cdc-sync status``: where the worker stands, at a glance (read from Redis and MySQL; no worker needed).

What it says is derived from what a running worker keeps refreshing, never from the last state one wrote:

* a worker is **alive** while its record in ``<ns>:workers`` (statusreport.py) was refreshed within
  ``max(3 × its refresh period, 5 s)`` of Redis's clock (the record is stamped with Redis ``TIME``, so no
  host's clock matters), and it has not recorded a clean stop or a failure;
* it is **stuck** when its sync loop has not moved for ``STUCK_S`` although its refresher still runs;
* the cache is **fresh** while ``<ns>:heartbeat`` is within ``reader.max_staleness_ms`` of Redis's clock, the
  bound readers apply (past it they bypass the cache);
* ``<ns>:flushing:<table>`` markers present are listed.

``ok`` is true only when a worker is alive, streaming and not stuck (with HA: the leader), and the cache is
fresh; ``cdc-sync status`` exits 1 otherwise, and ``problems`` says why in plain sentences.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cdc_sync.adapters.mysql import MySQLAdmin, plain_error
from cdc_sync.adapters.redis import REDIS_ERRORS, make_client, plain_redis_error, redis_error
from cdc_sync.config import Config
from cdc_sync.core.positions import kind_of, parse_mariadb, parse_mysql
from cdc_sync.errors import CdcSyncError, PositionError, ServerRefused
from cdc_sync.worker.statusreport import read_records

ALIVE_MIN_MS = 5000  # a record is "recent" within max(3 x refresh, this)
SHOWN_GONE = 3  # the human view lists this many records of workers no longer running (--json has them all)
STUCK_S = 60.0  # the sync loop still for this long, while its refresher runs: stuck (as /healthz judges it)


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


def _iso(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def describe_worker(rec: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A record with what status derives from it: seen how long ago, alive, stuck, and times on Redis's clock."""
    seen_ms = float(rec["last_seen_ms"])
    out = dict(rec)
    out["last_seen_s_ago"] = round(max(0.0, now_ms - seen_ms) / 1000, 1)
    window_ms = max(3 * float(rec.get("refresh_ms") or 1000), ALIVE_MIN_MS)
    out["alive"] = now_ms - seen_ms <= window_ms and rec.get("state") not in ("stopped", "failed")
    out["stuck"] = bool(out["alive"] and float(rec.get("loop_idle_s") or 0) > STUCK_S)
    for name, age in (
        ("started_at", "uptime_s"),
        ("state_since", "state_age_s"),
        ("last_error_at", "last_error_age_s"),
    ):
        if isinstance(rec.get(age), int | float):
            out[name] = _iso(seen_ms - float(rec[age]) * 1000)
    return out


def _who(w: dict[str, Any]) -> str:
    return f"pid {w.get('pid', '?')} on {w.get('host', '?')}"


def assess(
    workers: Sequence[dict[str, Any]],
    heartbeat_age_s: float | None,
    max_staleness_s: float,
    ha: bool,
    checkpoint: str | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The worker that matters (the applying one, else the last seen) and every problem, in plain sentences."""
    problems: list[str] = []
    applying = [w for w in workers if w["alive"] and w.get("role") != "standby" and w.get("state") != "standby"]
    by_seen = sorted(workers, key=lambda w: float(w["last_seen_ms"]), reverse=True)
    candidates = [w for w in applying if w.get("state") == "streaming"] + applying + by_seen
    main = candidates[0] if candidates else None
    if main is None and checkpoint is None:
        problems.append("no worker has ever reported on this namespace (none is running)")
    elif main is None:  # a worker ran here (it left a checkpoint), but Redis holds no record: none runs now
        problems.append(
            f"no worker is running: none has a status record here, though one left checkpoint {checkpoint} "
            "(Redis lost the records, or that worker ran an older cdc-sync)"
        )
    elif not main["alive"]:
        state = main.get("state", "?")
        if state == "stopped":
            problems.append(f"no worker is running: the last one ({_who(main)}) stopped cleanly")
        elif state == "failed":
            problems.append(f"no worker is running: the last one ({_who(main)}) exited on an error")
        else:
            problems.append(
                f"no worker is running: the last one ({_who(main)}) was last seen {main['last_seen_s_ago']} s ago "
                f"while {state} (killed, paused, or cut off from Redis)"
            )
    elif main.get("state") != "streaming":
        why = f": {main['last_error']}" if main.get("state") == "reconnecting" and main.get("last_error") else ""
        if main.get("reconnecting") == "redis":
            why = f": {main.get('detail', '')}"
        problems.append(f"the worker ({_who(main)}) is {main.get('state', '?')}, not streaming{why}")
    elif main["stuck"]:
        problems.append(
            f"the worker ({_who(main)}) is alive but its sync loop has not moved for {main['loop_idle_s']:.0f} s"
        )
    if ha and main is not None and main["alive"] and not applying:
        problems.append("HA: no leader is applying (only standbys are alive)")
    if not ha and len(applying) > 1:
        who = ", ".join(_who(w) for w in applying)
        problems.append(
            f"{len(applying)} workers run on this namespace without [ha] ({who}): they fight over the checkpoint"
        )
    if heartbeat_age_s is None:
        problems.append("no freshness heartbeat: readers bypass the cache")
    elif heartbeat_age_s > max_staleness_s:
        problems.append(
            f"the freshness heartbeat is {heartbeat_age_s:.1f} s old, past reader.max_staleness_ms "
            f"({max_staleness_s:g} s): readers bypass the cache"
        )
    return main, problems


def collect(config: Config) -> dict[str, Any]:
    """Everything ``status`` shows, as data (``ok`` and ``problems`` included)."""
    ns = config.redis.namespace
    max_staleness_s = config.reader.max_staleness_ms / 1000
    out: dict[str, Any] = {"ok": False, "namespace": ns, "redis": config.redis.safe_url}
    client = make_client(config.redis)
    try:
        pipe = client.pipeline()
        keys = config.redis.names
        pipe.get(keys.checkpoint)
        pipe.get(keys.heartbeat)
        if not config.redis.cluster:
            pipe.time()
        pipe.hgetall(keys.workers)
        pipe.hgetall(keys.stats)
        pipe.get(keys.leader)
        pipe.get(keys.operator)
        for rule in config.tables:
            pipe.pttl(keys.flushing(rule.name))
        replies = pipe.execute()
        if config.redis.cluster:  # (TIME is not pipelined on a cluster: the home slot's node, the heartbeat's clock)
            replies.insert(2, client.time(target_nodes=client.get_node_from_key(keys.heartbeat)))  # type: ignore[attr-defined]
        checkpoint, heartbeat, now, records, stats, leader, operator, *flushing = replies
    except REDIS_ERRORS as exc:
        error = redis_error(exc, "status")
        if isinstance(error, ServerRefused):
            raise error from exc
        out["error"] = f"cannot read the status from Redis at {config.redis.safe_url}: {plain_redis_error(exc)}"
        out["problems"] = [out["error"]]
        return out
    finally:
        client.close()
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    out["checkpoint"] = checkpoint.decode() if checkpoint else None
    out["heartbeat_age_s"] = round((now_ms - int(heartbeat)) / 1000, 3) if heartbeat else None
    out["max_staleness_s"] = max_staleness_s
    out["fresh"] = out["heartbeat_age_s"] is not None and out["heartbeat_age_s"] <= max_staleness_s
    out["flushing"] = [rule.name for rule, ttl in zip(config.tables, flushing, strict=True) if ttl != -2]
    out["operator"] = operator.decode(errors="replace") if operator else None
    # held with no expiry and no operator command running: left by a command (or worker) that died; readers bypass
    # the table until someone flushes it
    stranded = [rule.name for rule, ttl in zip(config.tables, flushing, strict=True) if ttl == -1]
    workers = [describe_worker(rec, now_ms) for rec in read_records(records)]
    workers.sort(key=lambda w: (not w["alive"], -float(w["last_seen_ms"])))
    main, problems = assess(workers, out["heartbeat_age_s"], max_staleness_s, config.ha.enabled, out["checkpoint"])
    out["worker"] = main
    out["workers"] = workers
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
        out["server"] = {"error": plain_error(exc.__cause__) if exc.__cause__ is not None else str(exc)}
        if isinstance(exc, ServerRefused):  # the worker will exit 2 at its next connection
            problems.append(f"MySQL refuses the configured login: {out['server']['error']}; fix: {exc.fix}")
    finally:
        admin.close()
    if stranded and out["operator"] is None:
        problems.append(
            f"{', '.join(stranded)} held as flushing with no operator command running (an interrupted command, "
            "unless a worker is catching up after a DDL): readers bypass it; if this persists, run: "
            f"cdc-sync flush {' '.join(stranded)}"
        )
    out["problems"] = problems
    out["ok"] = not problems
    return out


def _worker_line(w: dict[str, Any]) -> str:
    state = str(w.get("state", "?"))
    if not w["alive"]:
        state = f"NOT RUNNING (last state {state})"
    elif w.get("stuck"):
        state += " but STUCK"
    role = f" [{w['role']}{' fence ' + str(w['fence']) if w.get('fence') else ''}]" if w.get("role") else ""
    return (
        f"{state}{role} on {w.get('host', '?')} pid {w.get('pid', '?')} v{w.get('version', '?')}, "
        f"up since {w.get('started_at', '?')}, last seen {w['last_seen_s_ago']} s ago"
    )


def render(data: dict[str, Any]) -> str:
    lines = [f"namespace    {data['namespace']} on {data['redis']}"]
    lines.append("status       " + ("OK" if data.get("ok") else "NOT OK"))
    lines.extend(f"problem      {p}" for p in data.get("problems", []))
    if "error" in data:
        return "\n".join(lines)
    workers: list[dict[str, Any]] = data.get("workers") or []  # alive first, then the most recently seen
    if not workers:
        lines.append("worker       (none has reported here)")
    gone = [w for w in workers if not w["alive"]]
    for w in [w for w in workers if w["alive"]] + gone[:SHOWN_GONE]:
        lines.append(f"worker       {_worker_line(w)}")
        if w.get("last_error") and w is data.get("worker"):
            lines.append(f"last error   {w['last_error']} at {w.get('last_error_at', '?')}")
    if len(gone) > SHOWN_GONE:
        lines.append(f"worker       ... and {len(gone) - SHOWN_GONE} more not running, seen earlier (see --json)")
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
    bound = f" (bound {data.get('max_staleness_s', 0):g} s)"
    lines.append(
        "lag          "
        + (f"heartbeat {lag:.1f} s old{bound}" if lag is not None else "no heartbeat (readers bypass the cache)")
        + (f", {behind_txn} transaction(s) behind" if behind_txn is not None else "")
    )
    flushing = data.get("flushing") or []
    lines.append(f"flushing     {', '.join(flushing) if flushing else '(none)'}")
    lines.append(f"leader       {data.get('leader') or '(none: HA off, or no worker holds the lease)'}")
    for table, ops in sorted((data.get("applied") or {}).items()):
        counts = "  ".join(f"{op} {n}" for op, n in sorted(ops.items()))
        lines.append(f"applied      {table}: {counts}")
    return "\n".join(lines)
