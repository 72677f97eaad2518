"""``cdc-sync doctor``: every precondition of exact sync, each marked PASS, WARN or FAIL with its fix.

``run`` performs the same checks first and refuses to start on a FAIL that configuration must fix
(connection failures are left to the worker, which retries; a server that refuses the login is a FAIL
that blocks). A check that cannot mean anything behind a root cause (SHOW BINARY LOGS with the binlog
off, SELECT on a table that does not exist) is SKIP, naming the check that holds the cause, so one
problem is reported once. Every detail is a plain sentence, never a driver's exception repr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from cdc_sync.adapters.binlog import REPORT_HOST
from cdc_sync.adapters.mysql import MySQLAdmin, plain_error, translate_error
from cdc_sync.adapters.redis import REDIS_ERRORS, make_client, plain_redis_error, redis_error, sentinel_kwargs
from cdc_sync.config import Config, TableRule, check_against_schema
from cdc_sync.core.events import RedisMemory
from cdc_sync.core.keys import Namespace, templates_overlap
from cdc_sync.core.positions import has_tagged_gtids
from cdc_sync.core.requirements import REFUSED_SETTINGS, REQUIRED_SETTINGS
from cdc_sync.errors import CdcSyncError, ConfigError, ServerRefused, SinkUnavailable

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    blocking: bool = True  # a FAIL that configuration must fix (False: a connection failure, retried by run)

    def line(self) -> str:
        fix = f"\n       fix: {self.fix}" if self.fix and self.status in (WARN, FAIL) else ""
        return f"{self.status}  {self.name}: {self.detail}{fix}"


def run(config: Config) -> list[Check]:
    """Every check; never raises for a server problem (it becomes a FAIL)."""
    return [*_mysql_checks(config), *_redis_checks(config), *_rule_checks(config)]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}


# ---- MySQL ----------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The plain sentence for a translated error: the driver's error it came from, without the step name."""
    cause = exc.__cause__
    return plain_error(cause) if cause is not None else str(exc)


def _mysql_code(exc: BaseException) -> int | None:
    args = getattr(exc.__cause__, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _mysql_checks(config: Config) -> list[Check]:
    admin = MySQLAdmin(config.mysql)
    where = f"{config.mysql.user}@{config.mysql.host}:{config.mysql.port}"
    try:
        info = admin.server_info()
    except CdcSyncError as exc:
        error = translate_error(exc.__cause__, where) if exc.__cause__ is not None else exc
        if isinstance(error, ServerRefused):  # retrying cannot fix it: the worker must not start
            return [Check("mysql.connect", FAIL, str(error), error.fix)]
        fix = "check [mysql] host/port/user/password and TLS settings, and that the server runs"
        return [Check("mysql.connect", FAIL, str(error), fix, blocking=False)]
    out = [Check("mysql.connect", PASS, f"{info.flavor} {info.version} at {config.mysql.host}:{config.mysql.port}")]
    v = info.variables
    for name, want in REQUIRED_SETTINGS.items():
        have = v.get(name, "(missing)").upper()
        fix = f"set {name}={want} in the server's configuration" + ("" if name == "log_bin" else " (and SET GLOBAL)")
        if name == "log_bin":
            fix = "set log_bin = mysql-bin (a file basename: log_bin = ON names the files ON.000001) and restart"
        if name == "binlog_row_metadata":
            fix += "; it needs MariaDB >= 10.5 or MySQL >= 8.0.14"
        out.append(Check(f"mysql.{name}", PASS if have == want else FAIL, f"{name} is {have}", fix))
    for name, refused, why in REFUSED_SETTINGS:
        have = v.get(name, "")
        status = FAIL if have.upper() == refused else PASS
        out.append(Check(f"mysql.{name}", status, f"{name} is {have or 'not present'}", f"turn it off: {why}"))
    binlog_on = v.get("log_bin", "OFF").upper() == "ON"
    no_binlog = "skipped: binary logging is off (see mysql.log_bin)"
    out.append(_gtid_check(info.flavor, info.gtid_position, v) if binlog_on else Check("mysql.gtid", SKIP, no_binlog))
    out.append(
        _retention_check(admin, info.flavor, config.doctor.max_downtime_s)
        if binlog_on
        else Check("mysql.binlog_retention", SKIP, no_binlog)
    )
    privileges, hidden = _privilege_checks(admin, config, binlog_on)
    out.extend(privileges)
    out.append(_server_id_check(admin, info.flavor, config.mysql.server_id, v))
    out.append(_tables_check(admin, config, hidden))
    out.append(_binlog_bypass_check(admin))
    admin.close()
    return out


def _binlog_bypass_check(admin: MySQLAdmin) -> Check:
    """The accounts that may turn binary logging off for their session (``SET sql_log_bin = 0`` needs SUPER, or
    BINLOG ADMIN on MariaDB): what they change that way the worker never sees. information_schema lists other
    accounts' privileges only to a user who may read the grant tables; otherwise this says it cannot tell."""
    try:
        rows = admin.query(
            "SELECT DISTINCT GRANTEE AS g FROM information_schema.USER_PRIVILEGES "
            "WHERE PRIVILEGE_TYPE IN ('SUPER', 'BINLOG ADMIN') ORDER BY GRANTEE"
        )
        me = admin.query("SELECT CURRENT_USER() AS u")
    except CdcSyncError as exc:
        return Check("mysql.binlog_bypass", SKIP, f"cannot read the accounts' privileges: {_reason(exc)}")
    current = str(me[0]["u"]) if me else ""
    user, _, host = current.partition("@")
    mine = f"'{user}'@'{host}'"
    accounts = [str(r["g"]) for r in rows]
    others = [a for a in accounts if a != mine]
    fix = "after maintenance with sql_log_bin=0, run cdc-sync flush TABLE... for the tables it touched"
    if mine in accounts:
        return Check(
            "mysql.binlog_bypass",
            WARN,
            f"this account ({current}) may turn binary logging off (SUPER or BINLOG ADMIN): more than it needs",
            f"REVOKE SUPER, BINLOG ADMIN ON *.* FROM {mine}",
        )
    if not others:
        return Check(
            "mysql.binlog_bypass",
            SKIP,
            "cannot tell which accounts may turn binary logging off (SUPER, BINLOG ADMIN): information_schema "
            "shows other accounts' privileges only to a user who may read the grant tables",
        )
    return Check(
        "mysql.binlog_bypass",
        PASS,
        f"accounts that may turn binary logging off, whose changes then never reach the cache: {', '.join(others)}",
        fix,
    )


def _tables_check(admin: MySQLAdmin, config: Config, hidden: set[str]) -> Check:
    """Every mapped table exists with every named column; tables the user may not read are the privilege
    checks' finding, not this one's (information_schema hides them, so they would look missing)."""
    visible = tuple(r for r in config.tables if r.name not in hidden)
    try:
        check_against_schema(
            dataclasses.replace(config, tables=visible), admin.table_columns([r.name for r in visible])
        )
    except ConfigError as exc:
        return Check("mysql.tables", FAIL, str(exc), "fix the [[tables]] entry or the table")
    except CdcSyncError as exc:
        fix = "check SELECT on information_schema"
        return Check("mysql.tables", FAIL, f"cannot read the tables: {_reason(exc)}", fix, blocking=False)
    if hidden:
        names = ", ".join(sorted(hidden))
        return Check("mysql.tables", SKIP, f"skipped for {names}: not readable (see mysql.privilege.select.*)")
    return Check("mysql.tables", PASS, f"{len(config.tables)} mapped table(s) exist with every named column")


def _gtid_check(flavor: str, gtid: str, v: dict[str, str]) -> Check:
    if flavor == "mysql" and has_tagged_gtids(gtid):
        return Check(
            "mysql.gtid",
            FAIL,
            "the server's GTID set holds tagged GTIDs (uuid:tag:n, MySQL 8.3+), which cdc-sync cannot follow",
            "stop using gtid_next='AUTOMATIC:<tag>' / tagged GTIDs on this server, or use file positions "
            '(gtid_mode=OFF is not needed: set mysql.position_mode = "file")',
        )
    if flavor == "mariadb" and gtid and v.get("gtid_strict_mode", "").upper() != "ON":
        return Check(
            "mysql.gtid",
            WARN,
            f"GTID position {gtid}; gtid_strict_mode is OFF, so sequence numbers may go backwards "
            "(SET gtid_seq_no, replayed mysqlbinlog output, multi-source rings). cdc-sync orders changes by "
            "binlog position and resumes by file position on the same server, so nothing is skipped; but after a "
            "failover it must resume by GTID, which the server refuses for such a state (the cache is then flushed)",
            "SET GLOBAL gtid_strict_mode=ON (and gtid_strict_mode=1 in the server's configuration)",
            blocking=False,
        )
    if gtid:
        return Check("mysql.gtid", PASS, f"GTID position {gtid}")
    if flavor == "mysql" and v.get("gtid_mode", "OFF").upper() != "ON":
        return Check(
            "mysql.gtid",
            WARN,
            "gtid_mode is OFF: file positions are used (they do not survive a failover)",
            "set gtid_mode=ON and enforce_gtid_consistency=ON",
        )
    return Check("mysql.gtid", WARN, "no GTID written yet: the worker starts with file positions")


def _retention_check(admin: MySQLAdmin, flavor: str, max_downtime_s: int) -> Check:
    try:
        rows = admin.query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('binlog_expire_logs_seconds', 'expire_logs_days')"
        )
    except CdcSyncError as exc:
        return Check("mysql.binlog_retention", WARN, f"cannot read: {_reason(exc)}")
    values = {r["Variable_name"]: float(r["Value"] or 0) for r in rows}
    seconds = values.get("binlog_expire_logs_seconds") or values.get("expire_logs_days", 0) * 86400
    if not seconds:
        return Check("mysql.binlog_retention", PASS, "binlogs never expire (purge them yourself)")
    detail = f"binlogs kept {seconds / 3600:.1f} h; tolerated worker downtime {max_downtime_s / 3600:.1f} h"
    if seconds < max_downtime_s:
        fix = "raise binlog_expire_logs_seconds, or lower doctor.max_downtime_s to what you accept"
        return Check("mysql.binlog_retention", WARN, detail + " (a longer outage flushes the cache)", fix)
    return Check("mysql.binlog_retention", PASS, detail)


def _foreign_key_check(admin: MySQLAdmin, user: str, references: bool) -> Check:
    """Can the worker read the actions of foreign keys? Cascades change mapped rows without binlog events."""
    name, fix = "mysql.privilege.foreign_keys", f"GRANT REFERENCES ON *.* TO '{user}'@'%'"
    try:
        hidden = sorted({e.child for e in admin.hidden_foreign_keys()})
    except CdcSyncError as exc:
        return Check(name, WARN, f"cannot read foreign keys: {_reason(exc)}", fix)
    if hidden:
        return Check(
            name,
            WARN,
            f"the ON DELETE/UPDATE rules of foreign keys on {', '.join(hidden)} are hidden from this user "
            "(information_schema shows them only with a privilege besides SELECT): they are watched as if they "
            "cascaded, so every delete or key update of their parents flushes the mapped children",
            fix,
        )
    if not references:
        return Check(
            name,
            WARN,
            "without REFERENCES on *.*, foreign keys on tables this user may not read are invisible to it: a "
            "cascade through such a table into a mapped one would not be watched",
            fix,
        )
    return Check(name, PASS, "foreign-key actions are readable")


def _privilege_checks(admin: MySQLAdmin, config: Config, binlog_on: bool) -> tuple[list[Check], set[str]]:
    """The privilege checks, and the mapped tables the user may not read."""
    out: list[Check] = []
    try:
        grants = " ".join(str(next(iter(r.values()))) for r in admin.query("SHOW GRANTS FOR CURRENT_USER()")).upper()
    except CdcSyncError as exc:
        grants = ""
        out.append(Check("mysql.grants", WARN, f"cannot read grants: {_reason(exc)}"))
    everything = "ALL PRIVILEGES ON *.*" in grants
    user = config.mysql.user
    ok = everything or bool(re.search(r"REPLICATION (SLAVE|REPLICA)(?! ADMIN)\b", grants))
    # Grants through roles (MySQL 8) are not listed here, and unreadable grants prove nothing: WARN, not FAIL.
    roles = bool(re.search(r"GRANT `[^`]+`@`[^`]+` TO", grants))
    out.append(
        Check(
            "mysql.privilege.replication_slave",
            PASS if ok else (FAIL if grants and not roles else WARN),
            "REPLICATION SLAVE " + ("granted" if ok else "not found in SHOW GRANTS: the binlog cannot be read"),
            f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'%'",
        )
    )
    out.append(_foreign_key_check(admin, user, everything or bool(re.search(r"REFERENCES[^`]* ON \*\.\*", grants))))
    if binlog_on:
        out.append(
            _try(
                "mysql.privilege.binlog_monitor",
                lambda: admin.query("SHOW BINARY LOGS"),
                "SHOW BINARY LOGS allowed",
                f"GRANT REPLICATION CLIENT ON *.* TO '{user}'@'%' (MariaDB >= 10.5: GRANT BINLOG MONITOR)",
            )[0]
        )
    else:  # SHOW BINARY LOGS fails without a binlog whatever the grants: nothing to learn
        out.append(Check("mysql.privilege.binlog_monitor", SKIP, "skipped: binary logging is off (see mysql.log_bin)"))
    hidden: set[str] = set()
    for rule in config.tables:
        schema, table = rule.schema.replace("`", "``"), rule.table.replace("`", "``")
        # every column: the loader, warm and verify read whole rows (a column-level grant passes SELECT 1)
        sql = f"SELECT * FROM `{schema}`.`{table}` LIMIT 0"  # noqa: S608 - identifiers quoted
        check, code = _try(
            f"mysql.privilege.select.{rule.name}",
            lambda sql=sql: admin.query(sql),  # type: ignore[misc]
            f"SELECT on {rule.name} allowed",
            f"GRANT SELECT ON {rule.name} TO '{user}'@'%'",
        )
        if check.status == FAIL and code in _NO_SUCH_TABLE:
            # mysql.tables reports it; no GRANT can help
            check = Check(check.name, SKIP, f"skipped: {rule.name} does not exist (see mysql.tables)")
        elif check.status == FAIL and check.blocking:
            hidden.add(rule.name)
        out.append(check)
    return out, hidden


# MySQL errors that mean "not allowed" (anything else, e.g. too many connections, is not a verdict)
_DENIED = frozenset({1142, 1227, 1044, 1045, 1143, 1370})
_NO_SUCH_TABLE = frozenset({1146, 1049})  # no such table, no such database


def _try(name: str, fn: Callable[[], object], ok: str, fix: str) -> tuple[Check, int | None]:
    """Run ``fn``: PASS, or FAIL with the MySQL error code (blocking when it means "not allowed")."""
    try:
        fn()
    except CdcSyncError as exc:
        code = _mysql_code(exc)
        return Check(name, FAIL, _reason(exc), fix, blocking=code in _DENIED), code
    return Check(name, PASS, ok), None


def _server_id_check(admin: MySQLAdmin, flavor: str, server_id: int, v: dict[str, str]) -> Check:
    name = "mysql.server_id"
    if v.get("server_id") == str(server_id):
        return Check(name, FAIL, f"server_id {server_id} is the server's own", "pick another mysql.server_id")
    statements = ["SHOW SLAVE HOSTS"] if flavor == "mariadb" else ["SHOW REPLICAS", "SHOW SLAVE HOSTS"]
    rows: list[dict[str, Any]] | None = None
    for sql in statements:
        try:
            rows = admin.query(sql)
            break
        except CdcSyncError:
            continue
    if rows is None:
        return Check(name, WARN, f"cannot list replicas to check that server_id {server_id} is free")
    clash = [r for r in rows if str(r.get("Server_id", r.get("Server_Id", ""))) == str(server_id)]
    if not clash:
        return Check(name, PASS, f"server_id {server_id} is used by no connected replica")
    host = str(clash[0].get("Host", ""))
    if host.startswith("cdc-sync@"):
        detail = f"server_id {server_id} is in use by a cdc-sync worker ({host}); fine if that is this worker"
        if host != REPORT_HOST:
            detail += ", but two workers with one server_id knock each other off"
        return Check(name, WARN, detail, "give each worker its own mysql.server_id")
    return Check(name, FAIL, f"server_id {server_id} is in use by replica {host}", "pick another mysql.server_id")


# ---- Redis ----------------------------------------------------------------------------------------


def _redis_checks(config: Config) -> list[Check]:
    client = make_client(config.redis)
    where = config.redis.safe_url
    try:
        client.ping()
        server = client.info("server")
    except REDIS_ERRORS as exc:
        client.close()
        error = redis_error(exc, "connect")
        if isinstance(error, ServerRefused):  # a wrong password: retrying cannot fix it
            return [
                Check("redis.connect", FAIL, f"{where}: {_refused_because(error)}: {plain_redis_error(exc)}", error.fix)
            ]
        fix = "check [redis] url and TLS settings, and that the server runs"
        return [Check("redis.connect", FAIL, f"{where}: {plain_redis_error(exc)}", fix, blocking=False)]
    out = [Check("redis.connect", PASS, f"Redis {server.get('redis_version', '?')} at {where}")]
    out.append(_eviction_check(client))
    out.append(_cluster_check(client, config) if config.redis.cluster else _replication_check(client, config))
    out.append(_acl_check(client, config.redis.namespace, config.tables))
    client.close()
    return out


def _cluster_check(client: redis.Redis, config: Config) -> Check:
    """A cluster: every primary answers with cluster_state ok and every slot is served."""
    name = "redis.cluster"
    try:
        states = client.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER INFO", target_nodes=redis.RedisCluster.PRIMARIES
        )
    except REDIS_ERRORS as exc:
        return Check(name, FAIL, f"cannot read CLUSTER INFO: {plain_redis_error(exc)}", "check that every node runs")
    replies = states.values() if isinstance(states, dict) and "cluster_state" not in states else [states]
    fields = [_info_fields(r) for r in replies]
    bad = [f for f in fields if f.get("cluster_state") != "ok" or f.get("cluster_slots_ok") != "16384"]
    facts = f"{len(fields)} primaries, cluster_state ok, all 16384 slots served"
    if bad:
        detail = (
            f"a primary reports cluster_state {bad[0].get('cluster_state')}, {bad[0].get('cluster_slots_ok')} slots ok"
        )
        return Check(name, FAIL, detail, "fix the cluster (redis-cli --cluster check) before the worker writes to it")
    return Check(name, PASS, facts + "; every template can be served: each step touches one slot (Scaling out)")


def _info_fields(reply: object) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def _replication_check(client: redis.Redis, config: Config) -> Check:
    """With Sentinels: every Sentinel answers and names the same master, which is a master; with
    ``wait_replicas``: the master has that many replicas connected (else every step waits out its timeout)."""
    name, cfg = "redis.replication", config.redis
    named: dict[str, list[str]] = {}
    for host, port in cfg.sentinels:
        sentinel = redis.Redis(host=host, port=port, **sentinel_kwargs(cfg))
        try:
            master = sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL GET-MASTER-ADDR-BY-NAME", cfg.master_name
            )
            where = ":".join(x.decode() if isinstance(x, bytes) else str(x) for x in master) if master else "none"
            named.setdefault(where, []).append(f"{host}:{port}")
        except REDIS_ERRORS as exc:
            named.setdefault(f"no answer ({plain_redis_error(exc)})", []).append(f"{host}:{port}")
        finally:
            sentinel.close()
    try:
        info = client.info("replication")
    except REDIS_ERRORS as exc:
        return Check(name, WARN, f"cannot read INFO replication: {plain_redis_error(exc)}")
    replicas = int(info.get("connected_slaves", 0))
    facts = f"role {info.get('role')}, {replicas} replica(s) connected"
    if cfg.sentinels:
        views = "; ".join(f"{', '.join(who)} name {what}" for what, who in named.items())
        if len(named) != 1 or next(iter(named)).startswith(("none", "no answer")):
            fix = f"check that every Sentinel in redis.sentinels runs and monitors {cfg.master_name!r}"
            return Check(name, WARN, f"the Sentinels disagree or do not answer: {views}", fix)
        facts = f"{len(cfg.sentinels)} Sentinel(s) name master {next(iter(named))} ({cfg.master_name}); {facts}"
    if cfg.wait_replicas > replicas:
        fix = "lower redis.wait_replicas, or attach replicas"
        detail = f"{facts}, fewer than redis.wait_replicas = {cfg.wait_replicas}: every step waits out the timeout"
        return Check(name, WARN, detail, fix)
    return Check(name, PASS, facts)


def _refused_because(error: ServerRefused) -> str:
    if error.kind == "redis_tls":
        return "the Redis server's TLS certificate is not trusted"
    return "Redis refused the login"


def _eviction_check(client: redis.Redis) -> Check:
    """Redis's eviction settings, from INFO (CONFIG may be disabled on managed Redis). No policy is unsafe: the
    worker counts evictions and flushes every table at each new one before the heartbeat vouches again, so an
    evicted tag set or marker never leads to a stale read. What a policy costs is flushes."""
    try:
        memory = RedisMemory.from_info(client.info("memory"))
    except REDIS_ERRORS as exc:
        return Check("redis.maxmemory_policy", WARN, f"cannot read INFO memory: {plain_redis_error(exc)}")
    policy, limit = memory.policy, memory.maxmemory
    if not memory.may_evict:
        return Check("redis.maxmemory_policy", PASS, f"maxmemory-policy {policy}, maxmemory {limit or 'unlimited'}")
    what = "any key, the checkpoint too" if policy.startswith("allkeys-") else "keys with a TTL (tag sets, markers)"
    return Check(
        "redis.maxmemory_policy",
        WARN,
        f"maxmemory-policy {policy} with maxmemory {limit} may evict {what}: the worker then flushes every table at "
        "each eviction it sees (safe, but under steady memory pressure the cache stays empty)",
        "prefer noeviction, or give Redis headroom above the cache's size (watch cdc_sync_eviction_flushes)",
    )


def _in_multi(client: redis.Redis, key: str) -> object:
    """A GET inside MULTI ... EXEC (the transaction pipelines of the CLI and readers)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(key)
    return pipe.execute()


def _acl_steps(client: redis.Redis, ns: str) -> list[tuple[str, Callable[[], object]]]:
    """One step per command the worker, the readers and the CLI send (commands inside scripts included:
    the ACL applies to those too). Each works on throwaway keys under ``<ns>:doctor:probe``."""
    probe = Namespace(ns).doctor_probe
    script = "return redis.call('TIME')[1]"
    script_sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    return [
        ("SET", lambda: client.set(probe, "1", px=10000)),
        ("GET", lambda: client.get(probe)),
        ("MGET", lambda: client.mget([probe])),
        ("EXISTS", lambda: client.exists(probe)),
        ("PEXPIRE", lambda: client.pexpire(probe, 10000)),
        ("PTTL", lambda: client.pttl(probe)),
        ("PERSIST", lambda: client.persist(probe)),
        ("HSET", lambda: client.hset(f"{probe}:h", "f", "1")),
        ("HINCRBY", lambda: client.hincrby(f"{probe}:h", "f", 1)),
        # redis-py incr() sends INCRBY: the scripts send INCR
        ("INCR", lambda: client.execute_command("INCR", f"{probe}:n")),  # type: ignore[no-untyped-call]
        ("HGETALL", lambda: client.hgetall(f"{probe}:h")),
        ("HLEN", lambda: client.hlen(f"{probe}:h")),
        ("HDEL", lambda: client.hdel(f"{probe}:h", "none")),
        ("SADD", lambda: client.sadd(f"{probe}:s", "m")),
        ("SMEMBERS", lambda: client.smembers(f"{probe}:s")),
        ("SCAN", lambda: client.scan(0, match=f"{probe}*", count=10)),
        ("TIME", lambda: client.time()),
        ("MULTI", lambda: _in_multi(client, probe)),  # (and EXEC: a user denied either fails this step)
        ("HGET", lambda: client.hget(f"{probe}:h", "f")),
        ("PING", lambda: client.ping()),
        ("INFO", lambda: client.info("server")),
        ("SCRIPT LOAD", lambda: client.script_load(script)),
        ("SCRIPT EXISTS", lambda: client.script_exists(script_sha)),  # (a pipeline of scripts asks it first)
        ("EVALSHA", lambda: client.evalsha(client.script_load(script), 0)),
        ("UNLINK", lambda: client.unlink(f"{probe}:h", f"{probe}:s")),
        ("DEL", lambda: client.delete(probe, f"{probe}:h", f"{probe}:s", f"{probe}:n")),
    ]


# The field value of the probe keys of the cached key space: digits, which any column type may render, so a key
# pattern written for the real keys (``~user:[0-9]*``) admits it too. A probe key is read, then deleted: deleting
# a cached key is always safe (the next read fills it again), even if a row renders it.
_PROBE_VALUE = "4242424242"


def _acl_check(client: redis.Redis, ns: str, rules: Sequence[TableRule] = ()) -> Check:
    """Try every command, then reading and deleting a key each template renders (an ACL limits keys too: a
    user confined to ``<ns>:*`` can run every command and still write no cached key); list every refusal, in
    one check."""
    denied: list[str] = []
    for command, step in _acl_steps(client, ns):
        try:
            step()
        except redis.exceptions.NoPermissionError:
            denied.append(command)
        except REDIS_ERRORS as exc:
            detail = f"{command} failed: {plain_redis_error(exc)}"
            return Check("redis.acl", FAIL, detail, "check the Redis user's ACL", blocking=False)
    patterns: list[str] = []
    for rule in [] if {"EXISTS", "UNLINK"} & set(denied) else rules:  # (the commands themselves denied: said above)
        for template in rule.templates:
            key = template.render(dict.fromkeys(template.fields, _PROBE_VALUE))
            if key is None or template.pattern() in patterns:
                continue
            try:
                client.exists(key)
                client.unlink(key)
            except redis.exceptions.NoPermissionError:
                patterns.append(template.pattern())
            except REDIS_ERRORS as exc:
                detail = f"reading and deleting {key!r} failed: {plain_redis_error(exc)}"
                return Check("redis.acl", FAIL, detail, "check the Redis user's ACL", blocking=False)
    if denied or patterns:
        rules_text = " ".join(f"+{c}" for c in dict.fromkeys(c.split()[0].lower() for c in denied))
        parts = [f"may not run {', '.join(denied)}"] if denied else []
        if patterns:
            parts.append(f"may not read and write the cached keys {', '.join(patterns)}")
            rules_text = " ".join([*(f"~{p}" for p in patterns), rules_text]).strip()
        return Check(
            "redis.acl",
            FAIL,
            f"the Redis user {' and '.join(parts)}",
            f"allow them on {ns}:* and the cached keys, e.g. ACL SETUSER <user> {rules_text}",
            # a probe key is one key of a pattern: an ACL may admit the real keys and not it, so a refusal of
            # keys alone does not block the start (the worker exits 2 on the first key it is really refused)
            blocking=bool(denied),
        )
    return Check("redis.acl", PASS, "the commands the worker and readers use are allowed, on its and the cached keys")


# ---- rules ----------------------------------------------------------------------------------------


def _rule_checks(config: Config) -> list[Check]:
    out: list[Check] = []
    templates = [(rule, i, t) for rule in config.tables for i, t in enumerate(rule.templates)]
    for n, (ra, ia, ta) in enumerate(templates):
        for rb, ib, tb in templates[n + 1 :]:
            if not templates_overlap(ta, tb):
                continue
            field_a = ra.where("key" if ia == 0 else f"also[{ia - 1}]")
            field_b = rb.where("key" if ib == 0 else f"also[{ib - 1}]")
            out.append(
                Check(
                    "rules.overlap",
                    WARN if ra is rb else FAIL,  # two tables sharing keys is wrong data; one row's two keys, a risk
                    f"{field_a} {ta.source!r} and {field_b} {tb.source!r} can render the same key",
                    "give each template a distinct literal prefix (e.g. 'user:email:{email}')",
                )
            )
    if not out:
        out.append(Check("rules.overlap", PASS, "no two key templates can render the same key"))
    return out


def blocking_failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL and c.blocking]


__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Check", "SinkUnavailable", "as_json", "blocking_failures", "run"]
