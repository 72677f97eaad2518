"""Foreign-key actions: changes the binlog never shows. Pure code.

InnoDB applies ``ON DELETE/UPDATE CASCADE`` and ``SET NULL``/``SET DEFAULT`` inside the storage engine,
so the child rows it rewrites produce no row events (MySQL 8.0/8.4, MariaDB). A mapped table that is
such a child (directly or further down a chain) would keep stale keys. The worker therefore also reads
the row events of every such parent, and flushes the mapped descendants when a parent row is deleted
(ON DELETE action) or its referenced columns change (ON UPDATE action).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cdc_sync.config import TableRule
from cdc_sync.events import Flush, Op, RowChange
from cdc_sync.mysql import CascadeEdge


@dataclass(frozen=True)
class CascadeWatch:
    """Row changes of ``parent`` that rewrite rows of the mapped ``targets`` without row events."""

    parent: tuple[str, str]
    columns: tuple[str, ...]
    on_delete: bool
    on_update: bool
    targets: tuple[TableRule, ...]


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.partition(".")
    return schema, table


def watches(edges: Iterable[CascadeEdge], rules: Sequence[TableRule]) -> list[CascadeWatch]:
    """One watch per acting foreign key that leads (directly or through more such keys) to a mapped table."""
    edges = list(edges)
    children: dict[str, list[CascadeEdge]] = {}
    for e in edges:
        children.setdefault(e.parent, []).append(e)
    by_name = {r.name: r for r in rules}

    def reach(table: str) -> set[str]:
        """``table`` and every table below it through acting keys."""
        seen: set[str] = set()
        stack = [table]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            stack.extend(e.child for e in children.get(t, ()))
        return seen

    out: list[CascadeWatch] = []
    for e in edges:
        targets = tuple(by_name[t] for t in sorted(reach(e.child)) if t in by_name)
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
            fire = any(change.before.get(c) != change.after.get(c) for c in w.columns)
        if fire:
            parent = f"{change.schema}.{change.table}"
            out.extend(
                Flush("fk_cascade", t.schema, t.table, detail=f"{change.op.value} on {parent}") for t in w.targets
            )
    return out
