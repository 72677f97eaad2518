"""Pure planning: row changes × table rules → Redis operations. No I/O.

Evict mode deletes every key of the before and the after image. Update mode writes the after image
under its keys and deletes the keys that only the before image had (a changed primary key or ``also``
column leaves no orphan). Deletes, and every change of a rolled-back group, only evict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cdc_sync.config import TableRule
from cdc_sync.core.codec import encode_hash, encode_json
from cdc_sync.core.events import Flush, Op, Row, RowChange
from cdc_sync.core.keys import tag_suffix


@dataclass(frozen=True, slots=True)
class Delete:
    """DEL the key (and its lease) and leave a hold-off marker."""

    key: str


@dataclass(frozen=True, slots=True)
class SetJson:
    """SET the key to a JSON value (PX ttl when ttl_ms > 0) and drop its lease."""

    key: str
    value: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class SetHash:
    """Replace the key with a hash of the given fields (PEXPIRE when ttl_ms > 0) and drop its lease."""

    key: str
    fields: tuple[str, ...]
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class EvictTag:
    """Evict every key that depends on the tag ``<ns>:tag:<suffix>`` (as Delete does), drop the tag, and
    leave a hold-off marker on the tag itself (``<ns>:tinv:<suffix>``) for readers about to depend on it."""

    suffix: str


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``n`` to field ``name`` of ``<ns>:stats`` (applied changes per table and op, for ``status``)."""

    name: str
    n: int


RedisOp = Delete | SetJson | SetHash | EvictTag | Count


class MissingColumn(Exception):
    """A row lacks a column that a key template or the value needs (e.g. after a DROP COLUMN)."""


def keys_of(rule: TableRule, row: Row) -> list[str]:
    """Every key the row renders under the rule (NULL fields render none)."""
    out: list[str] = []
    try:
        for template in rule.templates:
            key = template.render(row)
            if key is not None and key not in out:
                out.append(key)
    except KeyError as exc:
        raise MissingColumn(f"{rule.name} row has no column {exc.args[0]!r}") from None
    return out


def tags_of(rule: TableRule, change: RowChange) -> list[str]:
    """The dependency tags a change hits: the whole table, and each tag's values in either image."""
    out = [rule.name]
    for image in (change.before, change.after):
        if image is None:
            continue
        for cols in rule.tags:
            try:
                suffix = tag_suffix(rule.name, cols, image)
            except KeyError as exc:
                raise MissingColumn(f"{rule.name} row has no column {exc.args[0]!r}") from None
            if suffix not in out:
                out.append(suffix)
    return out


def plan_change(change: RowChange, rule: TableRule, evict_only: bool = False) -> list[RedisOp]:
    """Operations for one row change. Raises MissingColumn when a needed column is absent."""
    before = keys_of(rule, change.before) if change.before is not None else []
    after = keys_of(rule, change.after) if change.after is not None else []
    if rule.mode == "evict" or evict_only or change.op is Op.DELETE or change.after is None:
        return [Delete(k) for k in (before if before == after or not after else _union(before, after))]
    row = change.after
    ops: list[RedisOp] = [Delete(k) for k in before if k not in after]
    ttl_ms = rule.ttl * 1000
    if rule.format == "json" and rule.columns is None and not rule.exclude:  # the whole row, as decoded
        value = encode_json(row, None)
        ops.extend(SetJson(k, value, ttl_ms) for k in after)
        return ops
    columns = rule.value_columns(list(row))
    missing = [c for c in columns if c not in row]
    if missing:
        raise MissingColumn(f"{rule.name} row has no column {missing[0]!r}")
    if rule.format == "json":
        value = encode_json(row, columns)
        ops.extend(SetJson(k, value, ttl_ms) for k in after)
    else:
        fields = tuple(encode_hash(row, columns))
        if not fields:  # an empty hash cannot exist in Redis: evict instead
            ops.extend(Delete(k) for k in after)
        else:
            ops.extend(SetHash(k, fields, ttl_ms) for k in after)
    return ops


def needed_columns(
    rules: Iterable[TableRule], watched: Iterable[tuple[tuple[str, str], Sequence[str] | None]]
) -> dict[tuple[str, str], frozenset[str] | None]:
    """Per table, the columns some rule or cascade watch reads (None: every column, e.g. update mode).

    ``watched``: (cascade parent, the columns its watch compares, None: every column) pairs.
    """
    out: dict[tuple[str, str], frozenset[str] | None] = {}

    def add(table: tuple[str, str], cols: frozenset[str] | None) -> None:
        if table in out and out[table] is None:
            return  # already every column
        out[table] = None if cols is None else (out.get(table) or frozenset()) | cols

    for rule in rules:
        table = rule.stored_as
        if rule.mode == "update":
            add(table, None if rule.columns is None else frozenset(rule.columns))
        cols: set[str] = set()
        for template in rule.templates:
            cols.update(template.fields)
        for tag in rule.tags:
            cols.update(tag)
        add(table, frozenset(cols))
    for table, columns in watched:
        add(table, None if columns is None else frozenset(columns))
    return out


def _union(a: Sequence[str], b: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


# ---- statements: which mapped tables does a query touch? --------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*|#[^\n]*", re.S)
_IDENT = re.compile(r"`((?:[^`]|``)+)`|([\w$]+)")
_TXN_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE\s+SAVEPOINT|XA\s+(START|BEGIN|END|PREPARE))\b", re.I
)
_XA_COMMIT = re.compile(r"^\s*XA\s+(COMMIT|ROLLBACK)\b", re.I)
_DATABASE_DDL = re.compile(r"^\s*(DROP|ALTER|CREATE\s+OR\s+REPLACE)\s+(DATABASE|SCHEMA)\b", re.I)


def sql_for_log(sql: str, limit: int = 200) -> str:
    """A statement as logs may show it: cut at its first quote (``ALTER USER '?'...``), so that no string literal
    (``IDENTIFIED BY 'secret'``, ``SET PASSWORD``, data values) is ever shown, whatever the session's quoting
    rules (NO_BACKSLASH_ESCAPES changes where a literal ends), then cut to ``limit`` characters."""
    quote = min((i for i in (sql.find("'"), sql.find('"')) if i >= 0), default=-1)
    text = sql if quote < 0 else sql[:quote] + "'?'..."
    return text[:limit]


def is_txn_control(sql: str) -> bool:
    """BEGIN/COMMIT/... statements that change no table."""
    return bool(_TXN_CONTROL.match(_COMMENT.sub(" ", sql)))


def statement_flushes(sql: str, rules: Iterable[TableRule]) -> list[Flush]:
    """Flushes for a statement that arrived as a query event (DDL or statement-format DML).

    Deliberately broad: any mention of a mapped table's name flushes it (a needless flush costs a cache
    refill; a missed one serves stale data). Names are looked for in the whole text, comments and string
    literals included, so executable comments (``/*! ... */``) and odd quoting cannot hide one.
    ``XA COMMIT`` flushes every mapped table because its rows were seen at ``XA PREPARE``.
    """
    text = _COMMENT.sub(" ", sql)  # only for the statement's leading keywords
    rules = list(rules)
    if _XA_COMMIT.match(text):
        return [Flush("xa_commit", r.schema, r.table, detail=sql_for_log(sql)) for r in rules]
    tokens = {(m.group(1) or m.group(2)).replace("``", "`").lower() for m in _IDENT.finditer(sql)}
    database_ddl = bool(_DATABASE_DDL.match(text))
    out: list[Flush] = []
    for rule in rules:
        if rule.table.lower() in tokens or (database_ddl and rule.schema.lower() in tokens):
            out.append(Flush("statement", rule.schema, rule.table, detail=sql_for_log(sql)))
    return out


def merge_row(columns: Sequence[str], values: Sequence[object]) -> Mapping[str, object]:
    """Helper for tests and loaders: zip column names and values into a row."""
    return dict(zip(columns, values, strict=True))
