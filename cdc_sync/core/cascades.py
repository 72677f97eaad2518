"""Foreign-key actions: changes the binlog never shows. Pure code.

InnoDB applies ``ON DELETE/UPDATE CASCADE`` and ``SET NULL``/``SET DEFAULT`` inside the storage engine,
so the child rows it rewrites produce no row events (MySQL 8.0/8.4, MariaDB). A mapped table that is
such a child (directly or further down a chain) would keep stale keys. The worker therefore also reads
the row events of every such parent, and flushes the mapped descendants when a parent row is deleted
(ON DELETE action) or its referenced columns change (ON UPDATE action).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cdc_sync.config import TableRule
from cdc_sync.core.events import Flush, Op, RowChange


@dataclass(frozen=True, slots=True)
class CascadeEdge:
    """A foreign key whose ON DELETE/ON UPDATE action changes child rows without any binlog row event."""

    parent: str  # schema.table
    child: str  # schema.table
    parent_columns: tuple[str, ...]  # the referenced columns
    on_delete: bool  # CASCADE / SET NULL / SET DEFAULT on delete
    on_update: bool  # ... on update of the referenced columns
    assumed: bool = False  # its actions are hidden from this user: taken to cascade both ways


@dataclass(frozen=True)
class CascadeWatch:
    """Row changes of ``parent`` that rewrite rows of the mapped ``targets`` without row events.

    ``columns``: the referenced columns whose update fires the watch (empty: any update of the parent);
    ``fold_case``: they are spelled as a DDL statement wrote them, so compare them case-insensitively (as MySQL
    compares column names) and decode every column of the parent.
    """

    parent: tuple[str, str]
    columns: tuple[str, ...]
    on_delete: bool
    on_update: bool
    targets: tuple[TableRule, ...]
    fold_case: bool = False


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.partition(".")
    return schema, table


def _folded(row: Mapping[str, object]) -> dict[str, object]:
    return {k.lower(): v for k, v in row.items()}


def _below(edges: Iterable[CascadeEdge]) -> Callable[[str], set[str]]:
    """A function giving a table and every table below it through acting keys."""
    children: dict[str, list[str]] = {}
    for e in edges:
        children.setdefault(e.parent, []).append(e.child)

    def reach(table: str) -> set[str]:
        seen: set[str] = set()
        stack = [table]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            stack.extend(children.get(t, ()))
        return seen

    return reach


def _mapped(tables: Iterable[str], rules: Sequence[TableRule]) -> tuple[TableRule, ...]:
    by_name = {".".join(r.stored_as): r for r in rules}  # information_schema gives the stored names
    return tuple(by_name[t] for t in sorted(tables) if t in by_name)


def watches(edges: Iterable[CascadeEdge], rules: Sequence[TableRule]) -> list[CascadeWatch]:
    """One watch per acting foreign key that leads (directly or through more such keys) to a mapped table."""
    edges = list(edges)
    reach = _below(edges)
    out: list[CascadeWatch] = []
    for e in edges:
        targets = _mapped(reach(e.child), rules)
        if targets and (e.on_delete or e.on_update):
            out.append(CascadeWatch(_split(e.parent), e.parent_columns, e.on_delete, e.on_update, targets))
    return out


def flushes_for(change: RowChange, table_watches: Iterable[CascadeWatch]) -> list[Flush]:
    """The flushes a parent row change calls for (none for inserts, or updates of other columns)."""
    out: list[Flush] = []
    for w in table_watches:
        fire = False
        if change.op is Op.DELETE:
            fire = w.on_delete
        elif change.op is Op.UPDATE and w.on_update and change.before is not None and change.after is not None:
            before, after = (
                (_folded(change.before), _folded(change.after)) if w.fold_case else (change.before, change.after)
            )
            fire = not w.columns or any(before.get(c) != after.get(c) for c in w.columns)
        if fire:
            parent = f"{change.schema}.{change.table}"
            out.extend(
                Flush("fk_cascade", t.schema, t.table, detail=f"{change.op.value} on {parent}") for t in w.targets
            )
    return out


# ---- DDL that may add a cascading foreign key -------------------------------------------------------------

_NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_QUALIFIED = rf"({_NAME})(?:\s*\.\s*({_NAME}))?"
_COMMENT = re.compile(r"/\*(?!!).*?\*/|--[^\n]*|#[^\n]*", re.S)  # executable comments /*! ... */ are kept
_DDL_TARGET = re.compile(
    r"^\s*(?:/\*!\d*\s*)?(?:ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE|CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE)"
    rf"\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?{_QUALIFIED}",
    re.I,
)
_ACTING = r"(?:CASCADE|SET\s+NULL|SET\s+DEFAULT)"
_RULE = r"(?:CASCADE|SET\s+NULL|SET\s+DEFAULT|RESTRICT|NO\s+ACTION)"
# REFERENCES parent [(columns)] [MATCH ...] [ON DELETE rule] [ON UPDATE rule], in either order
_REFERENCES = re.compile(
    rf"\bREFERENCES\s+{_QUALIFIED}\s*(?:\(([^)]*)\))?((?:\s*(?:MATCH\s+\w+|ON\s+(?:DELETE|UPDATE)\s+{_RULE}))*)",
    re.I,
)
_ON_DELETE = re.compile(rf"ON\s+DELETE\s+{_ACTING}\b", re.I)
_ON_UPDATE = re.compile(rf"ON\s+UPDATE\s+{_ACTING}\b", re.I)
# Statements on tables (and DROP DATABASE, which drops them): not ALTER USER, CREATE VIEW, DROP TRIGGER and such
_SCHEMA_CHANGE = re.compile(
    r"^\s*(?:/\*!\d*\s*)?(?:(?:CREATE|ALTER|DROP|RENAME)\s+(?:[A-Z_]+\s+){0,3}?TABLES?\b|DROP\s+(?:DATABASE|SCHEMA)\b)",
    re.I,
)
# MariaDB's per-statement settings, logged verbatim: SET STATEMENT var = value [, ...] FOR <statement>
_SET_STATEMENT = re.compile(
    r"^\s*SET\s+STATEMENT\s.*?\bFOR\s+(?=(?:/\*!\d*\s*)?(?:CREATE|ALTER|DROP|RENAME)\b)", re.I | re.S
)


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def _qualified(first: str, second: str | None, default_schema: str) -> tuple[str, str]:
    return (_unquote(first), _unquote(second)) if second else (default_schema, _unquote(first))


def _body(sql: str) -> str:
    """The statement without comments (executable ones kept) and without a ``SET STATEMENT ... FOR`` prefix."""
    text = _COMMENT.sub(" ", sql)
    return _SET_STATEMENT.sub("", text, count=1)


def is_schema_change(sql: str) -> bool:
    """CREATE, ALTER, DROP or RENAME: a statement after which schema-derived state must be re-read."""
    return bool(_SCHEMA_CHANGE.match(_body(sql)))


@dataclass(frozen=True)
class DeclaredKey:
    """A cascading foreign key as a DDL statement's text declares it (names as written)."""

    parent: tuple[str, str]
    columns: tuple[str, ...]  # the referenced columns as written (empty: none given)
    on_delete: bool
    on_update: bool


_REWIRING = re.compile(r"^\s*RENAME\b|\bRENAME\s+(?:TO|AS)\b|\bFOREIGN\s+KEY\b|\bREFERENCES\b", re.I)


def may_rewire(sql: str) -> bool:
    """A DDL statement that may change which tables cascade into which: RENAME (a table swap brings the new
    table's keys under the old name), or any text declaring or dropping foreign keys."""
    return bool(_REWIRING.search(_body(sql)))


def ddl_references(sql: str, default_schema: str) -> tuple[tuple[str, str] | None, list[DeclaredKey]]:
    """The table a DDL statement creates or alters (None when the text does not say) and the cascading foreign
    keys it declares (``REFERENCES p (c) ON DELETE CASCADE`` and the like; RESTRICT and NO ACTION, the default,
    rewrite no child row). Names are as written; the caller resolves them to stored names."""
    text = _body(sql)
    keys: list[DeclaredKey] = []
    for m in _REFERENCES.finditer(text):
        actions = m.group(4) or ""
        on_delete, on_update = bool(_ON_DELETE.search(actions)), bool(_ON_UPDATE.search(actions))
        if on_delete or on_update:
            columns = tuple(_unquote(c.strip()).lower() for c in (m.group(3) or "").split(",") if c.strip())
            parent = _qualified(m.group(1), m.group(2), default_schema)
            keys.append(DeclaredKey(parent, columns, on_delete, on_update))
    if not keys:
        return None, []
    target = _DDL_TARGET.match(text)
    return (_qualified(target.group(1), target.group(2), default_schema) if target else None), keys


def provisional_watches(
    child: tuple[str, str] | None,
    keys: Sequence[DeclaredKey],
    edges: Iterable[CascadeEdge],
    rules: Sequence[TableRule],
) -> list[CascadeWatch]:
    """Watches for the cascading keys a DDL statement declared that information_schema does not show now.

    The worker may read information_schema long after the statement (it lags, or a later DDL dropped the key
    again), while the parent's deletes in between did cascade. Such a key is watched for its declared actions
    and columns (an ON UPDATE action fires when a referenced column, compared case-insensitively, changes; on
    any update when the text names none), flushing the mapped tables reachable from the child (every mapped
    table when the child is not known), for the rest of this run. A key information_schema does show is already
    watched exactly by ``watches``.
    """
    edges = list(edges)
    known = {(e.parent, e.child) for e in edges}
    targets = tuple(rules) if child is None else _mapped(_below(edges)(".".join(child)), rules)
    out: list[CascadeWatch] = []
    for key in keys:
        if not targets or (child is not None and (".".join(key.parent), ".".join(child)) in known):
            continue
        out.append(CascadeWatch(key.parent, key.columns, key.on_delete, key.on_update, targets, fold_case=True))
    return out
