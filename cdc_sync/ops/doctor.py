"""``cdc-sync doctor``: every precondition of exact sync, each marked PASS, WARN or FAIL with its fix.

``run`` performs the same checks first and refuses to start on a FAIL that configuration must fix
(connection failures are left to the worker, which retries).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from cdc_sync.config import Config, check_against_schema
from cdc_sync.errors import CdcSyncError, ConfigError, SinkUnavailable
from cdc_sync.keys import templates_overlap
from cdc_sync.mysql import MySQLAdmin
from cdc_sync.positions import has_tagged_gtids
from cdc_sync.sink import make_client
from cdc_sync.source import REPORT_HOST
from cdc_sync.sync import REFUSED_SETTINGS, REQUIRED_SETTINGS

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    blocking: bool = True  # a FAIL that configuration must fix (False: a connection failure, retried by run)

    def line(self) -> str:
        fix = f"\n       fix: {self.fix}" if self.fix and self.status != PASS else ""
        return f"{self.status}  {self.name}: {self.detail}{fix}"


def run(config: Config) -> list[Check]:
    """Every check; never raises for a server problem (it becomes a FAIL)."""
    return [*_mysql_checks(config), *_redis_checks(config), *_rule_checks(config)]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}


# ---- MySQL ----------------------------------------------------------------------------------------


def _mysql_checks(config: Config) -> list[Check]:
    admin = MySQLAdmin(config.mysql)
    try:
        info = admin.server_info()
    except CdcSyncError as exc:
        where = f"{config.mysql.user}@{config.mysql.host}:{config.mysql.port}"
        fix = "check [mysql] host/port/user/password and TLS settings, and that the server runs"
        return [Check("mysql.connect", FAIL, f"{where}: {exc}", fix, blocking=False)]
    out = [Check("mysql.connect", PASS, f"{info.flavor} {info.version} at {config.mysql.host}:{config.mysql.port}")]
    v = info.variables
    for name, want in REQUIRED_SETTINGS.items():
        have = v.get(name, "(missing)").upper()
        fix = f"set {name}={want} in the server's configuration" + ("" if name == "log_bin" else " (and SET GLOBAL)")
        if name == "binlog_row_metadata":
            fix += "; it needs MariaDB >= 10.5 or MySQL >= 8.0.14"
        out.append(Check(f"mysql.{name}", PASS if have == want else FAIL, f"{name} is {have}", fix))
    for name, refused, why in REFUSED_SETTINGS:
        have = v.get(name, "")
        status = FAIL if have.upper() == refused else PASS
        out.append(Check(f"mysql.{name}", status, f"{name} is {have or 'not present'}", f"turn it off: {why}"))
    out.append(_gtid_check(info.flavor, info.gtid_position, v))
    out.append(_retention_check(admin, info.flavor, config.doctor.max_downtime_s))
    out.extend(_privilege_checks(admin, config))
    out.append(_server_id_check(admin, info.flavor, config.mysql.server_id, v))
    try:
        check_against_schema(config, admin.table_columns([r.name for r in config.tables]))
        out.append(Check("mysql.tables", PASS, f"{len(config.tables)} mapped table(s) exist with every named column"))
    except ConfigError as exc:
        out.append(Check("mysql.tables", FAIL, str(exc), "fix the [[tables]] entry or the table"))
    except CdcSyncError as exc:
        fix = "check SELECT on information_schema"
        out.append(Check("mysql.tables", FAIL, f"cannot read the tables: {exc}", fix, blocking=False))
    admin.close()
    return out


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
        return Check("mysql.binlog_retention", WARN, f"cannot read: {exc}")
    values = {r["Variable_name"]: float(r["Value"] or 0) for r in rows}
    seconds = values.get("binlog_expire_logs_seconds") or values.get("expire_logs_days", 0) * 86400
    if not seconds:
        return Check("mysql.binlog_retention", PASS, "binlogs never expire (purge them yourself)")
    detail = f"binlogs kept {seconds / 3600:.1f} h; tolerated worker downtime {max_downtime_s / 3600:.1f} h"
    if seconds < max_downtime_s:
        fix = "raise binlog_expire_logs_seconds, or lower doctor.max_downtime_s to what you accept"
        return Check("mysql.binlog_retention", WARN, detail + " (a longer outage flushes the cache)", fix)
    return Check("mysql.binlog_retention", PASS, detail)


def _privilege_checks(admin: MySQLAdmin, config: Config) -> list[Check]:
    out: list[Check] = []
    try:
        grants = " ".join(str(next(iter(r.values()))) for r in admin.query("SHOW GRANTS FOR CURRENT_USER()")).upper()
    except CdcSyncError as exc:
        grants = ""
        out.append(Check("mysql.grants", WARN, f"cannot read grants: {exc}"))
    everything = "ALL PRIVILEGES ON *.*" in grants
    user = config.mysql.user
    ok = everything or bool(re.search(r"REPLICATION (SLAVE|REPLICA)", grants))
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
    out.append(
        _try(
            "mysql.privilege.binlog_monitor",
            lambda: admin.query("SHOW BINARY LOGS"),
            "SHOW BINARY LOGS allowed",
            f"GRANT REPLICATION CLIENT ON *.* TO '{user}'@'%' (MariaDB >= 10.5: GRANT BINLOG MONITOR)",
        )
    )
    for rule in config.tables:
        schema, table = rule.schema.replace("`", "``"), rule.table.replace("`", "``")
        sql = f"SELECT 1 FROM `{schema}`.`{table}` LIMIT 0"  # noqa: S608 - identifiers quoted
        out.append(
            _try(
                f"mysql.privilege.select.{rule.name}",
                lambda sql=sql: admin.query(sql),  # type: ignore[misc]
                f"SELECT on {rule.name} allowed",
                f"GRANT SELECT ON {rule.name} TO '{user}'@'%'",
            )
        )
    return out


# MySQL errors that mean "not allowed" (anything else, e.g. too many connections, is not a verdict)
_DENIED = ("error 1142", "error 1227", "error 1044", "error 1045", "error 1143", "error 1370")


def _try(name: str, fn: Callable[[], object], ok: str, fix: str) -> Check:
    try:
        fn()
    except CdcSyncError as exc:
        denied = any(code in str(exc).lower() for code in _DENIED)
        return Check(name, FAIL, str(exc), fix, blocking=denied)
    return Check(name, PASS, ok)


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
    except redis.RedisError as exc:
        return [Check("redis.connect", FAIL, f"{where}: {exc}", "check [redis] url and TLS settings", blocking=False)]
    out = [Check("redis.connect", PASS, f"Redis {server.get('redis_version', '?')} at {where}")]
    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except redis.RedisError as exc:
        policy = ""
        out.append(Check("redis.maxmemory_policy", WARN, f"cannot read (CONFIG GET denied?): {exc}"))
    if policy.startswith("allkeys-"):
        out.append(
            Check(
                "redis.maxmemory_policy",
                FAIL,
                f"maxmemory-policy {policy} can evict the checkpoint, leases and hold-off markers",
                "use noeviction, or a volatile-* policy with care",
            )
        )
    elif policy.startswith("volatile-"):
        out.append(
            Check(
                "redis.maxmemory_policy",
                WARN,
                f"maxmemory-policy {policy} may evict leases and hold-off markers early (they carry TTLs)",
                "prefer noeviction",
            )
        )
    elif policy:
        out.append(Check("redis.maxmemory_policy", PASS, f"maxmemory-policy {policy}"))
    out.append(_acl_check(client, config.redis.namespace))
    client.close()
    return out


def _acl_check(client: redis.Redis, ns: str) -> Check:
    probe = f"{ns}:doctor:probe"
    steps: list[tuple[str, Callable[[], object]]] = [
        ("SET", lambda: client.set(probe, "1", px=10000)),
        ("GET", lambda: client.get(probe)),
        ("HSET", lambda: client.hset(f"{probe}:h", "f", "v")),
        ("SADD", lambda: client.sadd(f"{probe}:s", "m")),
        ("SCAN", lambda: client.scan(0, match=f"{probe}*", count=10)),
        # as the worker and readers run scripts: EVALSHA, and SCRIPT LOAD on NOSCRIPT
        ("EVALSHA", lambda: client.register_script("return redis.call('TIME')[1]")(keys=[], args=[])),
        ("UNLINK", lambda: client.unlink(f"{probe}:h", f"{probe}:s")),
        ("DEL", lambda: client.delete(probe)),
    ]
    for command, step in steps:
        try:
            step()
        except redis.exceptions.NoPermissionError as exc:
            return Check(
                "redis.acl", FAIL, f"{command} refused: {exc}", f"allow {command} on {ns}:* and the cached keys"
            )
        except redis.RedisError as exc:
            return Check("redis.acl", FAIL, f"{command} failed: {exc}", "check the Redis user's ACL", blocking=False)
    return Check("redis.acl", PASS, "the commands the worker and readers use are allowed")


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


__all__ = ["FAIL", "PASS", "WARN", "Check", "SinkUnavailable", "as_json", "blocking_failures", "run"]
