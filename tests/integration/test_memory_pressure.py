"""Trust under memory pressure: a fetch result whose tag set is gone (Redis evicted it) is still invalidated,
because every result carries a stamp of its tables' schema epochs and a flush bumps them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pymysql
import redis

from cdc_sync import CacheReader
from tests.helpers import cli, connect, execute, query_rows, wait_caught_up, wait_heartbeat
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget


def test_a_flush_invalidates_a_result_whose_tag_set_is_gone_even_inside_the_plain_read_window(
    start_worker: StartWorker,
    reader_for: Callable[..., CacheReader],
    tmp_path: Path,
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """The tag set is deleted by hand (what an eviction does), the table is flushed (what the worker does when it
    sees evictions), and the row changes: the flush cannot find the result through the set, but its stamp no
    longer matches the table's epoch, so neither a plain read inside the window nor the script serves it."""
    execute(
        sql, "CREATE TABLE orders (id INT PRIMARY KEY, user_id INT, total INT)", "INSERT INTO orders VALUES (1, 5, 10)"
    )
    extra = "[reader]\nholdoff_ms = 0\nmax_staleness_ms = 60000\nfreshness_check_ms = 60000\n"
    w = start_worker(f'[[tables]]\ntable = "{db}.orders"\ntags = ["user_id"]\n', extra=extra)
    wait_heartbeat(r)
    reader = reader_for()
    table = f"{db}.orders"
    dep = [(table, {"user_id": 5})]
    loads = connect(mysql_server, db)

    def totals() -> list[int]:
        return [int(t) for (t,) in query_rows(loads, "SELECT total FROM orders WHERE user_id = 5")]

    try:
        assert reader.fetch("totals:5", totals, ttl=3600, depends_on=dep) == [10]
        assert reader.fetch("totals:5", totals, ttl=3600, depends_on=dep) == [10]  # a checked hit: window open
        assert reader.in_window()
        assert r.get("cdc:stamp:totals:5") is not None
        r.delete(f"cdc:tag:{table}:user_id=5")
        assert cli(tmp_path / "w.toml", "flush", table).returncode == 0
        assert r.exists("totals:5"), "the flush found no way to the result"
        execute(sql, "UPDATE orders SET total = 99 WHERE id = 1")
        wait_caught_up(r, sql, mysql_server.flavor, w)
        assert reader.fetch("totals:5", totals, ttl=3600, depends_on=dep) == [99]
    finally:
        loads.close()
