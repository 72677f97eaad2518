"""``cdc-sync checkpoint show|set|reset`` and ``cdc-sync flush``: repairs an operator can make safely.

A running worker notices a changed checkpoint at its next step (or within a server heartbeat when idle):
Redis then holds a checkpoint it did not write, so it rewinds to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc_sync.config import Config, TableRule
from cdc_sync.errors import ConfigError
from cdc_sync.mysql import MySQLAdmin
from cdc_sync.positions import PositionError, PositionTracker
from cdc_sync.sink import RedisSink
from cdc_sync.sync import initial_position


def select_rules(config: Config, tables: Sequence[str]) -> list[TableRule]:
    """The rules named (all when none are); an unknown name is an error."""
    if not tables:
        return list(config.tables)
    by_name = {r.name: r for r in config.tables}
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        raise ConfigError(f"not a mapped table: {', '.join(unknown)} (mapped: {', '.join(by_name)})")
    return [by_name[t] for t in tables]


def show(config: Config) -> str | None:
    sink = RedisSink(config.redis, config.reader.holdoff_ms)
    try:
        return sink.load_checkpoint()
    finally:
        sink.close()


def set_position(config: Config, position: str) -> str:
    """Store ``position`` as the checkpoint (validated first). Returns the previous one."""
    try:
        PositionTracker(position)
    except PositionError as exc:
        formats = (
            "a MariaDB GTID state (0-1-42, one domain-server-sequence per domain), a MySQL GTID set "
            "(uuid:1-42, e.g. 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42), or a file position (bin.000003:1234)"
        )
        raise ConfigError(f"{exc}; a position is {formats}") from None
    sink = RedisSink(config.redis, config.reader.holdoff_ms)
    try:
        previous = sink.load_checkpoint()
        sink.set_checkpoint(position)
        return previous or ""
    finally:
        sink.close()


def reset(config: Config) -> tuple[str, int]:
    """Start from the server's current position with an empty cache. Returns (position, keys flushed).

    The checkpoint is moved first (a running worker's next step then fails its compare-and-set, so it writes
    nothing more from before the new position, and rewinds to it), then every mapped table is flushed.
    """
    admin = MySQLAdmin(config.mysql)
    try:
        start = initial_position(admin.server_info(), "current", config.mysql.position_mode)
    finally:
        admin.close()
    set_position(config, start)
    return start, flush(config, [])


def flush(config: Config, tables: Sequence[str]) -> int:
    """Invalidate the named tables' keys, leases and dependent reader keys, the way DDL does."""
    sink = RedisSink(config.redis, config.reader.holdoff_ms)
    try:
        return sum(sink.flush(rule) for rule in select_rules(config, tables))
    finally:
        sink.close()
