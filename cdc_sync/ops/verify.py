"""``cdc-sync verify [TABLE...] [--sample N] [--repair]``: compare cached values with MySQL.

Every key a rule can render is found by SCAN (then the exact template match; a set removes the duplicates
SCAN may return). Keys are gathered a window at a time and sorted by the values they hold, so rows are read in
index order, then checked in batches of ``batch``: their cached values in one round trip (MGET, or pipelined
HGETALL), the rows in one ``SELECT ... WHERE (key columns) IN ((...), ...)`` per template, the next batch's
SELECT running in a helper thread while this batch is compared.

Each loaded row is matched back to a key by rendering the key **from the row**, the way the worker does: MySQL's
comparison rules match many spellings to one row (``id = '05'`` finds id 5), but only one spelling is the key
the worker maintains, so a cached key that no row renders (``user:05``) is an orphan, reported divergent
with the database side ``(absent)``. The row is encoded the way the worker encodes it and compared. A cached
absence (``null``) under a key no row renders is right only if MySQL matches no row to its values: a reader's
lookup by them would find one (``code = 'a'`` finds ``'a '`` under PAD SPACE). Fields MySQL cannot compare by
their rendered text are looked up by what they mean: a SET's members in the column's definition order (the
worker sorts them by name), a FLOAT by a range around its printed text (the worker renders it as the server
prints it; MySQL compares the stored float32 as a double).

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
import decimal
import functools
import itertools
import math
import operator
import re
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import pymysql
import pymysql.cursors
import redis

from cdc_sync.adapters.mysql import connection_settings, normalize_row, quote_for_args, translate_error
from cdc_sync.adapters.redis import make_client, redis_errors
from cdc_sync.config import Config, MySQLConfig, TableRule
from cdc_sync.core.codec import encode_hash, encode_json
from cdc_sync.core.keys import KeyTemplate, Namespace
from cdc_sync.ops.maintenance import select_rules
from cdc_sync.reader.client import NEGATIVE

_BINARY = {"binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"}
_INTEGER = {"tinyint", "smallint", "mediumint", "int", "bigint"}
ABSENT = "(absent)"
MATCHED = "(a row matches this key's values, though it renders another key)"
BATCH = 500  # keys per pipelined read and per SELECT ... IN
SCAN_COUNT = 5000  # SCAN's COUNT hint: keys looked at per round trip
WINDOW = 200_000  # keys gathered and sorted before they are checked (rows read in index order; bounded memory)


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


@dataclass(frozen=True)
class _Between:
    """A query value matched as a range, ends excluded: a FLOAT column's field (the stored float32, which MySQL
    compares as a double, is not the double the printed text reads as; see ``_float_between``)."""

    low: float
    high: float


@dataclass
class _Found:
    """A batch's rows by the key each renders, and the items' query values that MySQL matches to some row
    while no row renders the item's key (a cached absence there is wrong: a reader's lookup finds that row)."""

    by_key: dict[str, list[dict[str, Any]]]
    matched: set[tuple[object, ...]] = field(default_factory=set)


class _Rows:
    """Rows by key columns, a batch per query, over one PyMySQL connection (UTC, as the reader's loader)."""

    def __init__(self, cfg: MySQLConfig) -> None:
        self.cfg = cfg
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._kinds: dict[str, dict[str, str]] = {}
        self._members: dict[str, dict[str, list[str]]] = {}
        self._scales: dict[str, dict[str, int]] = {}

    def _run(self, sql: str, args: Sequence[object] | None) -> list[dict[str, Any]]:
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
                "SELECT COLUMN_NAME AS c, DATA_TYPE AS t, COLUMN_TYPE AS ct FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (schema, name),
            )
            self._kinds[table] = {str(r["c"]): str(r["t"]).lower() for r in rows}
            self._scales[table] = {
                str(r["c"]): int(m.group(1))
                for r in rows
                if str(r["t"]).lower() == "float" and (m := _SCALE.search(str(r["ct"]))) is not None
            }
            self._members[table] = {
                str(r["c"]): [_unescape_member(m) for m in _MEMBER.findall(str(r["ct"]))]
                for r in rows
                if str(r["t"]).lower() == "set"
            }
        return self._kinds[table]

    def scale(self, table: str, column: str) -> int | None:
        """A FLOAT(M,D) column's D (None: a plain FLOAT, printed with 6 significant digits)."""
        self.kinds(table)
        return self._scales[table].get(column)

    def members(self, table: str, column: str) -> list[str]:
        """A SET column's members in definition order (the order MySQL spells a value in)."""
        self.kinds(table)
        return self._members[table].get(column, [])

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
        cols = "(" + ", ".join(_quote(c) for c in columns) + ")"
        args: list[object] = [v for tup in values for v in tup]
        if any(isinstance(v, _Between) for v in args):
            conditions = [_condition(columns, tup) for tup in values]
            where = " OR ".join(c for c, _ in conditions)
            args = [a for _, tup_args in conditions for a in tup_args]
            listed_cols = ", ".join(quote_for_args(c) for c in self.kinds(table))
            sql = f"SELECT {listed_cols} FROM {quote_for_args(schema)}.{quote_for_args(name)} WHERE {where}"  # noqa: S608
        else:
            if all(type(v) is int for v in args):  # digits only: written inline, saving PyMySQL's escaping of each
                listed = ", ".join("(" + ", ".join(str(v) for v in tup) + ")" for tup in values)
                args = []
            else:
                listed = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(values))
            every = ", ".join(_quote(c) for c in self.kinds(table))  # (never *: INVISIBLE columns are in the values)
            head = f"SELECT {every} FROM {_quote(schema)}.{_quote(name)} WHERE {cols}"  # noqa: S608 - quoted names
            if args:  # PyMySQL formats the statement: a '%' in a name must not read as a placeholder
                head = head.replace("%", "%%")
            sql = f"{head} IN ({listed})"
        rows = self._run(sql, args or None)
        kinds = self.kinds(table)
        return [normalize_row(r, kinds) for r in rows]

    def matches_any(self, table: str, columns: Sequence[str], values: Sequence[tuple[object, ...]]) -> list[bool]:
        """For each tuple of ``values``: whether MySQL matches some row to it (one statement for all)."""
        if not values:
            return []
        schema, _, name = table.partition(".")
        source = f"{quote_for_args(schema)}.{quote_for_args(name)}"
        conditions = [_condition(columns, tup) for tup in values]
        # (named: MariaDB names a column by its expression cut to 256 characters, so long ones may coincide)
        probes = ", ".join(
            f"EXISTS(SELECT 1 FROM {source} WHERE {c}) AS e{i}"  # noqa: S608
            for i, (c, _) in enumerate(conditions)
        )
        row = self._run(f"SELECT {probes}", [a for _, tup_args in conditions for a in tup_args])
        return [bool(row[0][f"e{i}"]) for i in range(len(values))] if row else [False] * len(values)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.MySQLError, OSError):
                self._conn.close()
            self._conn = None


def _condition(columns: Sequence[str], values: tuple[object, ...]) -> tuple[str, list[object]]:
    """``columns`` equal to ``values`` (a _Between: inside its range), as SQL with %s placeholders for PyMySQL
    (a '%' in a name doubled, so that it does not read as one)."""
    parts: list[str] = []
    args: list[object] = []
    for column, value in zip(columns, values, strict=True):
        name = quote_for_args(column)
        if isinstance(value, _Between):
            parts.append(f"{name} > %s AND {name} < %s")
            args += [value.low, value.high]
        else:
            parts.append(f"{name} = %s")
            args.append(value)
    return "(" + " AND ".join(parts) + ")", args


class _Checker:
    """Compares batches of one rule's keys with the database."""

    def __init__(self, client: redis.Redis, rows: _Rows, rule: TableRule) -> None:
        self.client = client
        self.rows = rows
        self.rule = rule
        self.hash = rule.format == "hash"
        self.kinds = rows.kinds(rule.name)
        self._match = [_matcher(t) for t in rule.templates]
        self._convert = [tuple(self._converter(c) for c in t.fields) for t in rule.templates]

    def _cached(self, keys: Sequence[str]) -> list[Any]:
        """Cached values in one round trip: raw bytes (JSON, one MGET), a field dict (hash, pipelined), or None."""
        if not self.hash:
            if isinstance(self.client, redis.RedisCluster):  # (keys of many slots: one MGET per node)
                return list(self.client.mget_nonatomic(keys))
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

    def params(self, i: int, key: str) -> tuple[object, ...] | None:
        """The query values key ``key`` holds for template ``i`` (None: not a key of that template)."""
        m = self._match[i](key)
        if m is None:
            return None
        return tuple(convert(_unescape(raw)) for convert, raw in zip(self._convert[i], m.groups(), strict=True))

    def compare(self, template: KeyTemplate, items: Sequence[Item]) -> list[Divergence]:
        """The keys (all rendered by ``template``, each with its query values) whose cached value differs from
        what the worker would write."""
        return self.judge(template, items, self.rows_for(template, items))

    def rows_for(self, template: KeyTemplate, items: Sequence[Item]) -> _Found:
        """The rows MySQL matches to the items' values, by the key each row renders (the key the worker keeps),
        and which values of the items no row renders MySQL still matches to a row (one more statement, for
        those items only: orphans and cached absences, rare)."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        rows = self.rows.matching(self.rule.name, template.fields, list(dict.fromkeys(p for _, p in items)))
        for row in rows:
            rendered = template.render(row)
            if rendered is not None:
                by_key.setdefault(rendered, []).append(row)
        found = _Found(by_key)
        if rows:
            unrendered = list(dict.fromkeys(p for key, p in items if key not in by_key))
            answers = self.rows.matches_any(self.rule.name, template.fields, unrendered)
            found.matched = {p for p, yes in zip(unrendered, answers, strict=True) if yes}
        return found

    def judge(self, template: KeyTemplate, items: Sequence[Item], found_rows: _Found) -> list[Divergence]:
        """Read the items' cached values and compare each with the row that renders its key."""
        by_key = found_rows.by_key
        params = dict(items)
        cached = self._cached([key for key, _ in items])
        # evicted meanwhile: nothing to compare
        present = [(key, value) for (key, _), value in zip(items, cached, strict=True) if value is not None]
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
                if value != NEGATIVE:
                    out.append(Divergence(key, self._shown(value), ABSENT))
                elif params[key] in found_rows.matched:  # a lookup by these values finds a row: not absent
                    out.append(Divergence(key, ABSENT, MATCHED))
                continue  # (a cached absence for values no row matches is right)
            encoded = encode_json(found[0], self._columns(found[0]))
            if value != encoded and self._shown(value) != orjson.loads(encoded):
                out.append(Divergence(key, self._shown(value), orjson.loads(encoded)))
        return out

    def _converter(self, column: str) -> Callable[[str], object]:
        """How a key's field becomes a query value: bytes for a binary column, an int for an integer column when
        it reads as one (MySQL then compares without converting), else the text as it is. Whatever MySQL matches
        it to, the row must render this very key to count (see the module docstring)."""
        kind = self.kinds.get(column)
        if kind in _BINARY:
            return _latin1
        if kind == "set":  # the worker sorts the members by name; MySQL compares a set by its own spelling
            # (members as defined, exactly: the binlog names them so, and a _bin set may hold 'a' and 'A')
            order = {m: i for i, m in enumerate(self.rows.members(self.rule.name, column))}
            return lambda text: ",".join(sorted(text.split(","), key=lambda m: order.get(m, len(order))))
        if kind == "float":
            return functools.partial(_float_between, scale=self.rows.scale(self.rule.name, column))
        return _int_or_text if kind in _INTEGER else str

    def _shown(self, value: Any) -> Any:
        if isinstance(value, bytes):
            return ABSENT if value == NEGATIVE else orjson.loads(value)
        return value


_PERCENT = re.compile(r"%([0-9A-F]{2})")
# One member of a COLUMN_TYPE "set('a','b')": a quote doubled, a backslash and \0 \n \r \Z escaped by one
_SCALE = re.compile(r"^float\(\d+,(\d+)\)")  # a COLUMN_TYPE "float(10,4)"
_MEMBER = re.compile(r"'((?:[^'\\]|''|\\.)*)'", re.S)
_MEMBER_ESCAPE = re.compile(r"''|\\(.)", re.S)
_MEMBER_CHARS = {"0": "\0", "n": "\n", "r": "\r", "Z": "\x1a"}


def _unescape_member(text: str) -> str:
    return _MEMBER_ESCAPE.sub(lambda e: "'" if e.group(1) is None else _MEMBER_CHARS.get(e.group(1), e.group(1)), text)


Item = tuple[str, tuple[object, ...]]  # a key, and the query values it holds
_VALUES = operator.itemgetter(1)
_MATCHERS: dict[KeyTemplate, Callable[[str], re.Match[str] | None]] = {}


def _matcher(template: KeyTemplate) -> Callable[[str], re.Match[str] | None]:
    """``template``'s exact match, compiled once (KeyTemplate.matches/parse_key rebuild it on every call,
    which costs more than everything else verify does per key)."""
    found = _MATCHERS.get(template)
    if found is None:
        found = _MATCHERS[template] = template._regex(groups=True).fullmatch
    return found


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


def _float_between(text: str, scale: int | None = None) -> object:
    """A FLOAT field: the worker renders a FLOAT as the server prints it (6 significant digits, or the column's
    decimals), so the stored float32 lies within half a unit of the text's last digit, or of its sixth
    significant one: a range around it (the row's own rendering then decides). Text that is no finite number
    stays text: no row renders it."""
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return text
    if not number.is_finite():
        return text
    value = float(number)
    if not math.isfinite(value):
        return text
    if scale is not None:  # FLOAT(M,D): printed with D decimals
        slack = 10.0**-scale / 2
    else:
        exponent = number.as_tuple().exponent
        slack = max(10.0**exponent / 2 if isinstance(exponent, int) else 0.0, abs(value) * 5e-6)
    slack = slack * (1 + 1e-6) + abs(value) * 1e-12 + _TINY_FLOAT32  # (and a little more than doubles round)
    return _Between(max(value - slack, -sys.float_info.max), min(value + slack, sys.float_info.max))


_TINY_FLOAT32 = float(struct.unpack("<f", struct.pack("<I", 1))[0])


def _int_or_text(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text


def _unescape(raw: str) -> str:
    """A key's field value as KeyTemplate.parse_key returns it (``%XX`` back to its character)."""
    return _PERCENT.sub(lambda e: chr(int(e.group(1), 16)), raw) if "%" in raw else raw


def _scan(
    client: redis.Redis, rule: TableRule, limit: int, params: Callable[[int, str], tuple[object, ...] | None]
) -> Iterator[tuple[int, list[Item]]]:
    """(template index, new keys with their query values) per SCAN page: each key once (a set: SCAN may repeat
    keys), only keys the template renders (``params`` says, None: not one), at most ``limit`` keys (0: all)."""
    seen: set[str] = set()
    for i, template in enumerate(rule.templates):
        for page in _scan_pages(client, template.pattern()):
            fresh: list[Item] = []
            for raw in page:
                key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                if key in seen:
                    continue
                values = params(i, key)
                if values is not None:
                    seen.add(key)
                    fresh.append((key, values))
            if limit and len(seen) >= limit:
                yield i, fresh[: len(fresh) - (len(seen) - limit)]
                return
            if fresh:
                yield i, fresh


def _scan_pages(client: redis.Redis, pattern: str) -> Iterator[list[Any]]:
    """SCAN in pages (a cluster: every primary's keys, in pages of SCAN_COUNT)."""
    if isinstance(client, redis.RedisCluster):
        keys = client.scan_iter(match=pattern, count=SCAN_COUNT)
        while page := list(itertools.islice(keys, SCAN_COUNT)):
            yield page
        return
    cursor = 0
    while True:
        cursor, page = client.scan(cursor, match=pattern, count=SCAN_COUNT)
        yield page
        if cursor == 0:
            return


def _batches(pages: Iterator[tuple[int, list[Item]]], size: int, window: int = 0) -> Iterator[tuple[int, list[Item]]]:
    """Regroup SCAN pages into batches of ``size`` keys of one template.

    With ``window``, keys are gathered ``window`` at a time and sorted by the values they hold first: SCAN returns
    keys in hash order, so rows would be read in random index order; sorted, a window's rows are read in index
    order and share pages (a table larger than the server's buffer pool is otherwise read from disk once per key).
    Memory stays bounded by the window.
    """
    pending: dict[int, list[Item]] = {}
    hold = max(window, size)
    for i, items in pages:
        buf = pending.setdefault(i, [])
        buf.extend(items)
        if len(buf) >= hold:
            ready = _sorted(buf) if window else buf
            full = len(ready) - len(ready) % size
            yield from _cut(i, ready[:full], size)
            pending[i] = ready[full:]
    for i, buf in pending.items():
        if buf:
            yield from _cut(i, _sorted(buf) if window else buf, size)


def _cut(i: int, items: list[Item], size: int) -> Iterator[tuple[int, list[Item]]]:
    for start in range(0, len(items), size):
        yield i, items[start : start + size]


def _sorted(items: list[Item]) -> list[Item]:
    try:
        return sorted(items, key=_VALUES)  # the usual case: values of one type per column, compared in C
    except TypeError:
        return sorted(items, key=_row_order)


def _row_order(item: Item) -> tuple[tuple[int, Any], ...]:
    """Order keys by their values as the index does (near enough: texts by code point, not by collation; this
    only decides the order rows are read in). A column's values may be ints and texts (a stray spelling)."""
    return tuple((0, v) if isinstance(v, int) else (1, v) if isinstance(v, bytes) else (2, str(v)) for v in item[1])


def _redis_ms(client: redis.Redis, ns: Namespace) -> int:
    """Redis's clock (a cluster: the home slot's node, whose clock the heartbeat is on)."""
    if isinstance(client, redis.RedisCluster):
        s, us = client.time(target_nodes=client.get_node_from_key(ns.heartbeat))
        return int(s) * 1000 + int(us) // 1000
    s, us = client.time()
    return int(s) * 1000 + int(us) // 1000


def _wait_for_heartbeat(client: redis.Redis, ns: Namespace, past_ms: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beat = client.get(ns.heartbeat)
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
    results: list[VerifyResult] = []
    confirmed = True
    try:
        with redis_errors("verify"):
            for rule in select_rules(config, tables):
                if on_start is not None:
                    estimate = rows.estimate(rule.name) * len(rule.templates)
                    on_start(rule.name, min(estimate, sample) if sample else estimate)
                checker = _Checker(client, rows, rule)
                result = VerifyResult(rule.name)
                suspects: dict[str, int] = {}  # key -> template index
                for i, keys, divergences in _pipelined(
                    checker, _batches(_scan(client, rule, sample, checker.params), batch, WINDOW)
                ):
                    result.checked += len(keys)
                    suspects.update((d.key, i) for d in divergences)
                    if on_progress is not None:
                        on_progress(len(keys))
                divergent: list[Divergence] = []
                if suspects:
                    # A change not yet applied is not divergence. For each suspect: read the row (d1), note Redis's
                    # time, wait until the worker has applied everything committed before it, read the cache, read
                    # the row again (d2): divergent only if the row did not move (d1 == d2) and the cache differs.
                    first = {d.key: d.database for d in _compare(checker, rule, suspects, batch)}
                    at = _redis_ms(client, config.redis.names)
                    confirmed = _wait_for_heartbeat(client, config.redis.names, at, recheck_timeout_s) and confirmed
                    again = _compare(checker, rule, {k: suspects[k] for k in first}, batch)
                    divergent = [d for d in again if first.get(d.key) == d.database]
                result.divergent = divergent
                if repair and divergent:
                    result.repaired = _evict(
                        client, config.redis.names, config.reader.holdoff_ms, [d.key for d in divergent]
                    )
                results.append(result)
    finally:
        rows.close()
        client.close()
    return results, confirmed


def _pipelined(
    checker: _Checker, batches: Iterator[tuple[int, list[Item]]]
) -> Iterator[tuple[int, list[Item], list[Divergence]]]:
    """Check batches with the next batch's SELECT already running in a helper thread, so MySQL works on it
    while this thread reads the cache and compares (the connection is used by the helper thread only)."""
    templates = checker.rule.templates
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-sync-verify") as pool:
        ahead: deque[tuple[int, list[Item], Future[_Found]]] = deque()
        for i, items in batches:
            ahead.append((i, items, pool.submit(checker.rows_for, templates[i], items)))
            if len(ahead) > 1:
                j, done, rows = ahead.popleft()
                yield j, done, checker.judge(templates[j], done, rows.result())
        while ahead:
            j, done, rows = ahead.popleft()
            yield j, done, checker.judge(templates[j], done, rows.result())


def _compare(checker: _Checker, rule: TableRule, keys: dict[str, int], batch: int) -> list[Divergence]:
    """Compare again the keys given with their template index (the re-check of suspects)."""
    by_template: dict[int, list[Item]] = {}
    for key, i in keys.items():
        values = checker.params(i, key)
        if values is not None:
            by_template.setdefault(i, []).append((key, values))
    out: list[Divergence] = []
    for i, group in by_template.items():
        for start in range(0, len(group), batch):
            out.extend(checker.compare(rule.templates[i], group[start : start + batch]))
    return out


def _evict(client: redis.Redis, names: Namespace, holdoff: int, keys: Sequence[str]) -> int:
    """Delete the keys with their leases, holding fills off (in one transaction; a cluster: each key's commands in
    its slot)."""
    pipe = client.pipeline(transaction=not isinstance(client, redis.RedisCluster))
    for key in keys:
        pipe.execute_command("DEL", key, names.lease(key))  # type: ignore[no-untyped-call]
        if holdoff > 0:
            pipe.set(names.inv(key), "1", px=holdoff)
    pipe.execute()
    return len(keys)


class KeyChecker:
    """Given keys of any mapped tables, compared with MySQL as ``verify`` compares them (the worker's sampled
    verifier, worker/verifier.py): each key's rule and template found from its shape, the rows read in batches,
    and a mismatch confirmed only if, after the heartbeat passed, the row read again is unchanged and the cache
    still differs. Keys of a table being flushed (its marker set, at the check or at the re-check) are left out:
    no reader trusts them, and the flush is deleting them. A table's columns are read again when its schema epoch
    moved (every DDL flushes and bumps it), and every ``refresh_s``; a suspect whose table's epoch moved between the
    check and the re-check is left to later samples."""

    def __init__(self, config: Config, client: redis.Redis, refresh_s: float = 60.0) -> None:
        self.config = config
        self.client = client
        self.rows = _Rows(config.mysql)
        self._refresh_s = refresh_s
        self._checkers: dict[str, _Checker] = {}
        self._made = 0.0
        self._seen_epochs: dict[str, str | None] = {}  # table → the schema epoch its columns were read at

    def _checker(self, rule: TableRule) -> _Checker:
        if time.monotonic() - self._made > self._refresh_s:
            self._checkers.clear()
            self._made = time.monotonic()
        checker = self._checkers.get(rule.name)
        if checker is None:
            checker = self._checkers[rule.name] = _Checker(self.client, self.rows, rule)
        return checker

    def locate(self, keys: Sequence[str]) -> dict[str, dict[str, int]]:
        """Table → {key: template index} for the keys a rule renders (others are left out)."""
        out: dict[str, dict[str, int]] = {}
        for key in dict.fromkeys(keys):
            for rule in self.config.tables:
                checker = self._checker(rule)
                index = next((i for i in range(len(rule.templates)) if checker.params(i, key) is not None), None)
                if index is not None:
                    out.setdefault(rule.name, {})[key] = index
                    break
        return out

    def check(
        self, keys: Sequence[str], recheck_timeout_s: float = 30.0
    ) -> tuple[dict[str, int], list[tuple[str, Divergence]], bool]:
        """(keys checked per table, the confirmed divergences with their table, whether the re-check waited for
        the heartbeat: False when the worker was not fresh, and then nothing is confirmed)."""
        counts: dict[str, int] = {}
        suspects: dict[str, tuple[TableRule, dict[str, int]]] = {}
        rules = {r.name: r for r in self.config.tables}
        located = self.locate(keys)
        flushing, epochs = self._table_state(list(located))
        for table in located:
            if self._seen_epochs.get(table, epochs[table]) != epochs[table]:  # a DDL, say: columns read again
                self.rows._kinds.pop(table, None)
                self._checkers.pop(table, None)
            self._seen_epochs[table] = epochs[table]
        for table, keyed in located.items():
            if table in flushing:
                continue  # (being flushed: readers trust none of its keys, and they are on their way out)
            rule = rules[table]
            counts[table] = len(keyed)
            found = _compare(self._checker(rule), rule, keyed, BATCH)
            if found:
                suspects[table] = (rule, {d.key: keyed[d.key] for d in found})
        if not suspects:
            return counts, [], True
        first = {
            table: {d.key: d.database for d in _compare(self._checker(rule), rule, keyed, BATCH)}
            for table, (rule, keyed) in suspects.items()
        }
        at = _redis_ms(self.client, self.config.redis.names)
        if not _wait_for_heartbeat(self.client, self.config.redis.names, at, recheck_timeout_s):
            return counts, [], False
        divergent: list[tuple[str, Divergence]] = []
        flushing, now_epochs = self._table_state(list(suspects))
        for table, (rule, keyed) in suspects.items():
            if table in flushing or now_epochs[table] != epochs[table]:
                continue  # (a flush began meanwhile, or is over: a DDL, a reset; judged again by later samples)
            again = _compare(self._checker(rule), rule, {k: keyed[k] for k in first[table]}, BATCH)
            divergent += [(table, d) for d in again if first[table].get(d.key) == d.database]
        return counts, divergent, True

    def _table_state(self, tables: Sequence[str]) -> tuple[set[str], dict[str, str | None]]:
        """In one round trip: the tables whose flush marker is set (readers bypass them; their keys are being
        deleted), and each table's schema epoch (``ns:schema:<table>``: bumped whenever the worker marks it as
        flushing)."""
        if not tables:
            return set(), {}
        names = self.config.redis.names
        pipe = self.client.pipeline(transaction=False)
        for table in tables:
            pipe.exists(names.flushing(table))
            pipe.get(names.schema(table))
        replies = pipe.execute()
        flushing = {t for t, n in zip(tables, replies[0::2], strict=True) if int(n)}
        epochs = {t: (v.decode() if isinstance(v, bytes) else v) for t, v in zip(tables, replies[1::2], strict=True)}
        return flushing, epochs

    def evict(self, keys: Sequence[str]) -> int:
        return _evict(self.client, self.config.redis.names, self.config.reader.holdoff_ms, keys)

    def close(self) -> None:
        self.rows.close()
