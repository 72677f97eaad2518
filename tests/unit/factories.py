"""Builders shared by the unit tests: table rules built through the real config validation."""

from __future__ import annotations

from typing import Any

from cdc_sync.config import Config, TableRule, from_dict


def make_config(*tables: dict[str, Any], **sections: Any) -> Config:
    """A validated Config with the given [[tables]] entries (and optional other sections)."""
    return from_dict({"tables": list(tables), **sections}, env={})


def make_rule(table: str = "shop.users", key: str = "user:{id}", **settings: Any) -> TableRule:
    """One validated TableRule."""
    return make_config({"table": table, "key": key, **settings}).tables[0]


def make_rules(*tables: dict[str, Any]) -> list[TableRule]:
    return list(make_config(*tables).tables)
