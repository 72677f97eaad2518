"""Foreign-key actions (invisible in the binlog) flush the mapped child tables."""

from __future__ import annotations

from cdc_sync.cascades import flushes_for, watches
from cdc_sync.events import Op, RowChange
from cdc_sync.mysql import CascadeEdge
from tests.unit.factories import make_rules

RULES = make_rules({"table": "shop.orders", "key": "order:{id}"}, {"table": "shop.lines", "key": "line:{id}"})


def edge(
    parent: str, child: str, on_delete: bool = True, on_update: bool = False, cols: tuple[str, ...] = ("id",)
) -> CascadeEdge:
    return CascadeEdge(parent, child, cols, on_delete, on_update)


def test_direct_child_is_watched_through_its_parent() -> None:
    """users → orders (ON DELETE CASCADE): users is watched and targets orders."""
    (w,) = watches([edge("shop.users", "shop.orders")], RULES)
    assert w.parent == ("shop", "users")
    assert [t.name for t in w.targets] == ["shop.orders"]


def test_grandchildren_are_reached_through_chains() -> None:
    """users → orders → lines: a users delete flushes both mapped descendants."""
    ws = watches([edge("shop.users", "shop.orders"), edge("shop.orders", "shop.lines")], RULES)
    by_parent = {w.parent: sorted(t.name for t in w.targets) for w in ws}
    assert by_parent[("shop", "users")] == ["shop.lines", "shop.orders"]
    assert by_parent[("shop", "orders")] == ["shop.lines"]


def test_edges_to_unmapped_tables_are_ignored() -> None:
    """A cascade into a table nobody maps needs no watch."""
    assert watches([edge("shop.users", "shop.audit")], RULES) == []


def test_cycles_terminate() -> None:
    """A self-referencing cascade (and cycles) are walked once."""
    ws = watches([edge("shop.orders", "shop.orders"), edge("shop.lines", "shop.orders")], RULES)
    assert {w.parent for w in ws} == {("shop", "orders"), ("shop", "lines")}


def test_delete_fires_only_with_an_on_delete_action() -> None:
    """DELETE of the parent flushes when ON DELETE acts; inserts never do."""
    (w,) = watches([edge("shop.users", "shop.orders", on_delete=True)], RULES)
    delete = RowChange(Op.DELETE, "shop", "users", {"id": 1}, None)
    insert = RowChange(Op.INSERT, "shop", "users", None, {"id": 1})
    assert [(f.table, f.reason) for f in flushes_for(delete, [w])] == [("orders", "fk_cascade")]
    assert flushes_for(insert, [w]) == []
    (quiet,) = watches([edge("shop.users", "shop.orders", on_delete=False, on_update=True)], RULES)
    assert flushes_for(delete, [quiet]) == []


def test_update_fires_only_when_referenced_columns_change() -> None:
    """ON UPDATE CASCADE: an update of the referenced key flushes; an update of other columns does not."""
    (w,) = watches([edge("shop.users", "shop.orders", on_delete=False, on_update=True)], RULES)
    key_change = RowChange(Op.UPDATE, "shop", "users", {"id": 1, "name": "a"}, {"id": 2, "name": "a"})
    name_change = RowChange(Op.UPDATE, "shop", "users", {"id": 1, "name": "a"}, {"id": 1, "name": "b"})
    assert len(flushes_for(key_change, [w])) == 1
    assert flushes_for(name_change, [w]) == []
