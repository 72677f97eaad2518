"""``cdc-sync verify [TABLE...] [--sample N] [--repair]``: compare cached values with MySQL.

Every key a rule can render is found by SCAN (then the exact template match; a set removes the duplicates
SCAN may return). Keys are checked in batches of ``batch``: their cached values are read in one pipelined
round trip, and the rows in one ``SELECT ... WHERE (key columns) IN ((...), ...)`` per template. Each loaded
row is matched back to a key by rendering the key **from the row**, the way the worker does: MySQL's
comparison rules match many spellings to one row (``id = '05'`` finds id 5), but only one spelling is the key
the worker maintains, so a cached key that no row renders (``user:05``) is an orphan, reported divergent
with the database side ``(absent)``. The row is encoded the way the worker encodes it and compared.

A mismatch may only mean the worker has not applied that change yet, so mismatches are checked again once the
freshness heartbeat has passed the time of a second read; only what still differs, with the row unchanged
between the two reads, is divergent. Excluded columns never appear in a report (the cached value does not hold
them; the database side is encoded with the rule's columns). ``repair`` evicts divergent keys (with a hold-off
marker, as the worker does).

``sample`` stops the SCAN after the first N keys of each table: first-N in SCAN order, which follows Redis's
hash table and so is spread over the keyspace, not sorted by key, but it is not a uniform random sample.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymysql
import pymysql.cursors
import redis

from cdc_sync.codec import encode_hash, encode_json
from cdc_sync.config import Config, MySQLConfig, TableRule
from cdc_sync.keys import KeyTemplate
from cdc_sync.mysql import connection_settings, normalize_row, translate_error
from cdc_sync.ops.maintenance import select_rules
from cdc_sync.reader import NEGATIVE
from cdc_sync.sink import make_client, redis_error

_BINARY = {"binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"}
ABSENT = "(absent)"
BATCH = 500  # keys per pipelined read and per SELECT ... IN
SCAN_COUNT = 5000  # SCAN's COUNT hint: keys looked at per round trip


@dataclass
class Divergence:
    key: str
    cached: Any
    database: Any


@dataclass
class VerifyResult:
    table: str
    checked: int = 0
    divergent: list[Divergence] = field(default_factory=list)
    repaired: int = 0


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


class _Rows:
    """Rows by key columns, a batch per query, over one PyMySQL connection (UTC, as the reader's loader)."""

    def __init__(self, cfg: MySQLConfig) -> None:
        self.cfg = cfg
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._kinds: dict[str, dict[str, str]] = {}

    def _run(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        try:
            if self._conn is None:
                self._conn = pymysql.connect(
                    **connection_settings(self.cfg),
                    cursorclass=pymysql.cursors.DictCursor,
                    autocommit=True,
                    init_command="SET time_zone = '+00:00'",
                )
            with self._conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            self.close()
            raise translate_error(exc, "verify") from exc

    def kinds(self, table: str) -> dict[str, str]:
        """Column -> DATA_TYPE (cached)."""
        if table not in self._kinds:
            schema, _, name = table.partition(".")
            rows = self._run(
                "SELECT COLUMN_NAME AS c, DATA_TYPE AS t FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (schema, name),
            )
            self._kinds[table] = {str(r["c"]): str(r["t"]).lower() for r in rows}
        return self._kinds[table]

    def estimate(self, table: str) -> int:
        schema, _, name = table.partition(".")
        rows = self._run(
            "SELECT TABLE_ROWS AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, name),
        )
        return int(rows[0]["n"] or 0) if rows else 0

    def matching(
        self, table: str, columns: Sequence[str], values: Sequence[tuple[object, ...]]
    ) -> list[dict[str, Any]]:
        """Every row whose ``columns`` equal one of ``values`` by MySQL's comparison rules, normalized."""
        if not values:
            return []
        schema, _, name = table.partition(".")
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        cols = "(" + ", ".join(_quote(c) for c in columns) + ")"
        sql = f"SELECT * FROM {_quote(schema)}.{_quote(name)} WHERE {cols} IN ({', '.join([one] * len(values))})"  # noqa: S608 - quoted names
        rows = self._run(sql, [v for tup in values for v in tup])
        kinds = self.kinds(table)
        return [normalize_row(r, kinds) for r in rows]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.MySQLError, OSError):
                self._conn.close()
            self._conn = None


class _Checker:
    """Compares batches of one rule's keys with the database."""

    def __init__(self, client: redis.Redis, rows: _Rows, rule: TableRule) -> None:
        self.client = client
        self.rows = rows
        self.rule = rule
        self.hash = rule.format == "hash"
        self.kinds = rows.kinds(rule.name)

    def _cached(self, keys: Sequence[str]) -> list[Any]:
        """Cached values in one round trip: raw bytes (JSON, one MGET), a field dict (hash, pipelined), or None."""
        if not self.hash:
            values: list[Any] = self.client.mget(keys)
            return values
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): v.decode() for k, v in r.items()} if r else None for r in pipe.execute()]

    def _columns(self, row: dict[str, Any]) -> list[str] | None:
        """The value's columns (None: the whole row, as it comes)."""
        if self.rule.columns is None and not self.rule.exclude:
            return None
        return self.rule.value_columns(list(row))

    def compare(self, template: KeyTemplate, keys: Sequence[str]) -> list[Divergence]:
        """The keys (all rendered by ``template``) whose cached value differs from what the worker would write."""
        cached = self._cached(keys)
        present = [(k, c) for k, c in zip(keys, cached, strict=True) if c is not None]  # evicted meanwhile: skip
        values: dict[tuple[object, ...], None] = {}
        for key, _ in present:
            parsed = _parse(template, key)
            if parsed is None:
                continue
            values[tuple(self._value(c, v) for c, v in zip(template.fields, parsed, strict=True))] = None
        by_key: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows.matching(self.rule.name, template.fields, list(values)):
            rendered = template.render(row)  # the key the worker maintains for this row
            if rendered is not None:
                by_key.setdefault(rendered, []).append(row)
        out: list[Divergence] = []
        for key, value in present:
            found = by_key.get(key, [])
            if len(found) > 1:
                out.append(Divergence(key, self._shown(value), f"(ambiguous: {len(found)} rows render this key)"))
                continue
            if self.hash:
                expected: Any = ABSENT
                if found:
                    flat = encode_hash(found[0], self._columns(found[0]) or list(found[0]))
                    expected = dict(zip(flat[::2], flat[1::2], strict=True))
                if value != expected:
                    out.append(Divergence(key, value, expected))
                continue
            if not found:
                if value != NEGATIVE:  # a cached "absent" for a key no row renders is right
                    out.append(Divergence(key, self._shown(value), ABSENT))
                continue
            encoded = encode_json(found[0], self._columns(found[0]))
            if value != encoded and self._shown(value) != orjson.loads(encoded):
                out.append(Divergence(key, self._shown(value), orjson.loads(encoded)))
        return out

    def _value(self, column: str, text: str) -> object:
        return text.encode("latin-1") if self.kinds.get(column) in _BINARY else text

    def _shown(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return ABSENT if value == NEGATIVE else orjson.loads(value)
        return value


_PERCENT = re.compile(r"%([0-9A-F]{2})")
_MATCHERS: dict[KeyTemplate, Callable[[str], re.Match[str] | None]] = {}


def _matcher(template: KeyTemplate) -> Callable[[str], re.Match[str] | None]:
    """``template``'s exact match, compiled once (KeyTemplate.matches/parse_key rebuild it on every call,
    which costs more than everything else verify does per key)."""
    found = _MATCHERS.get(template)
    if found is None:
        found = _MATCHERS[template] = template._regex(groups=True).fullmatch
    return found


def _parse(template: KeyTemplate, key: str) -> tuple[str, ...] | None:
    """The field values of a key, unescaped, as KeyTemplate.parse_key returns them (None: not this template's)."""
    m = _matcher(template)(key)
    if m is None:
        return None
    return tuple(_PERCENT.sub(lambda e: chr(int(e.group(1), 16)), raw) if "%" in raw else raw for raw in m.groups())


def _scan(client: redis.Redis, rule: TableRule, limit: int) -> Iterator[tuple[int, list[str]]]:
    """(template index, new keys) per SCAN page, each key once, at most ``limit`` keys (0: all)."""
    seen: set[str] = set()
    for i, template in enumerate(rule.templates):
        match = _matcher(template)
        cursor = 0
        while True:
            cursor, page = client.scan(cursor, match=template.pattern(), count=SCAN_COUNT)
            fresh: list[str] = []
            for raw in page:
                key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                if key not in seen and match(key):
                    seen.add(key)
                    fresh.append(key)
            if limit and len(seen) >= limit:
                yield i, fresh[: len(fresh) - (len(seen) - limit)]
                return
            if fresh:
                yield i, fresh
            if cursor == 0:
                break


def _batches(pages: Iterator[tuple[int, list[str]]], size: int) -> Iterator[tuple[int, list[str]]]:
    """Regroup SCAN pages into batches of ``size`` keys of one template."""
    pending: dict[int, list[str]] = {}
    for i, keys in pages:
        buf = pending.setdefault(i, [])
        buf.extend(keys)
        while len(buf) >= size:
            yield i, buf[:size]
            del buf[:size]
    for i, buf in pending.items():
        if buf:
            yield i, buf


def _redis_ms(client: redis.Redis) -> int:
    s, us = client.time()
    return int(s) * 1000 + int(us) // 1000


def _wait_for_heartbeat(client: redis.Redis, ns: str, past_ms: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beat = client.get(f"{ns}:heartbeat")
        if beat is not None and int(beat) >= past_ms:
            return True
        time.sleep(0.1)
    return False


def verify(
    config: Config,
    tables: Sequence[str],
    *,
    sample: int = 0,
    repair: bool = False,
    recheck_timeout_s: float = 30.0,
    batch: int = BATCH,
    on_start: Callable[[str, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[VerifyResult], bool]:
    """Results per table, and whether mismatches were re-checked after the heartbeat (False: worker not fresh).

    ``on_start(table, estimated keys)`` and ``on_progress(keys checked)`` drive a progress bar.
    """
    client = make_client(config.redis)
    rows = _Rows(config.mysql)
    ns = config.redis.namespace
    results: list[VerifyResult] = []
    confirmed = True
    try:
        for rule in select_rules(config, tables):
            if on_start is not None:
                estimate = rows.estimate(rule.name) * len(rule.templates)
                on_start(rule.name, min(estimate, sample) if sample else estimate)
            checker = _Checker(client, rows, rule)
            result = VerifyResult(rule.name)
            suspects: dict[str, int] = {}  # key -> template index
            for i, keys in _batches(_scan(client, rule, sample), batch):
                result.checked += len(keys)
                suspects.update((d.key, i) for d in checker.compare(rule.templates[i], keys))
                if on_progress is not None:
                    on_progress(len(keys))
            divergent: list[Divergence] = []
            if suspects:
                # A change not yet applied is not divergence. For each suspect: read the row (d1), note Redis's
                # time, wait until the worker has applied everything committed before it, read the cache, read
                # the row again (d2): divergent only if the row did not move (d1 == d2) and the cache differs.
                first = {d.key: d.database for d in _compare(checker, rule, suspects, batch)}
                at = _redis_ms(client)
                confirmed = _wait_for_heartbeat(client, ns, at, recheck_timeout_s) and confirmed
                again = _compare(checker, rule, {k: suspects[k] for k in first}, batch)
                divergent = [d for d in again if first.get(d.key) == d.database]
            result.divergent = divergent
            if repair and divergent:
                result.repaired = _evict(client, ns, config.reader.holdoff_ms, [d.key for d in divergent])
            results.append(result)
    except redis.RedisError as exc:
        raise redis_error(exc, "verify") from exc
    finally:
        rows.close()
        client.close()
    return results, confirmed


def _compare(checker: _Checker, rule: TableRule, keys: dict[str, int], batch: int) -> list[Divergence]:
    by_template: dict[int, list[str]] = {}
    for key, i in keys.items():
        by_template.setdefault(i, []).append(key)
    out: list[Divergence] = []
    for i, group in by_template.items():
        for start in range(0, len(group), batch):
            out.extend(checker.compare(rule.templates[i], group[start : start + batch]))
    return out


def _evict(client: redis.Redis, ns: str, holdoff: int, keys: Sequence[str]) -> int:
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.delete(key, f"{ns}:lease:{key}")
        if holdoff > 0:
            pipe.set(f"{ns}:inv:{key}", "1", px=holdoff)
    pipe.execute()
    return len(keys)
