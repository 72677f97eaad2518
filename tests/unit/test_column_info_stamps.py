"""RowLoader's remembered column info: stamped with the reader's schema epoch, and never replaced by an older read."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from cdc_sync.adapters.mysql import RowLoader
from tests.unit.factories import make_config

USERS = {"table": "shop.users", "key": "user:{id}"}


def _column(collation: str) -> dict[str, Any]:
    return {"c": "code", "t": "varchar", "ct": "varchar(10)", "s": None, "p": None, "cs": "utf8mb4", "co": collation}


class ScriptedLoader(RowLoader):
    """Answers information_schema reads from a list of collations, one per read, without a server."""

    def __init__(self, collations: Sequence[str]) -> None:
        super().__init__(make_config(USERS).mysql, 1)
        self.collations = list(collations)
        self.gate: threading.Event | None = None  # the first read waits for it (a slow read)
        self.started = threading.Event()

    def _run(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        collation = self.collations.pop(0)
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.started.set()
            assert gate.wait(5)
        return [_column(collation)]


def test_read_column_info_is_remembered_with_its_stamp() -> None:
    """What a reader read at epoch '4' is found with '4' (and the plain cached view is the same info)."""
    loader = ScriptedLoader(["utf8mb4_bin"])
    info = loader.read_column_info("shop.users", "4")
    assert loader.stamped_column_info("shop.users") == (info, "4")
    assert loader.cached_column_info("shop.users") == info
    assert loader.kinds("shop.users") == {"code": "varchar"}


def test_a_read_without_a_stamp_has_none() -> None:
    """Info read by the loader itself (column_info, kinds) has no epoch: a reader reads it again before use."""
    loader = ScriptedLoader(["utf8mb4_bin"])
    loader.column_info("shop.users")
    stamped = loader.stamped_column_info("shop.users")
    assert stamped is not None and stamped[1] is None


def test_a_slow_older_read_never_replaces_a_later_one() -> None:
    """Two reads race: the one started first (before a DDL) ends last; the later one's info is kept."""
    loader = ScriptedLoader(["utf8mb4_bin", "utf8mb4_general_ci"])
    gate = loader.gate = threading.Event()
    slow = threading.Thread(target=loader.read_column_info, args=("shop.users", "1"))
    slow.start()
    assert loader.started.wait(5)
    loader.read_column_info("shop.users", "2")  # started after the slow one, ends before it
    gate.set()
    slow.join(5)
    stamped = loader.stamped_column_info("shop.users")
    assert stamped is not None
    assert stamped[1] == "2"
    assert stamped[0]["code"].collation == "utf8mb4_general_ci"


def test_forgotten_info_is_read_again() -> None:
    """forget_column_info (a flush or a moved epoch seen) drops it."""
    loader = ScriptedLoader(["utf8mb4_bin"])
    loader.read_column_info("shop.users", "1")
    loader.forget_column_info(["shop.users"])
    assert loader.stamped_column_info("shop.users") is None
