"""``cdc-sync checkpoint show|set|reset`` and ``cdc-sync flush``: repairs an operator can make safely.

A running worker notices a changed checkpoint at its next step (or within a server heartbeat when idle):
Redis then holds a checkpoint it did not write, so it rewinds to it. Whoever moves the checkpoint by hand marks
the affected tables as flushing first (``_move``), so the heartbeat never vouches for keys that a jump skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc_sync.config import Config, TableRule
from cdc_sync.errors import ConfigError
from cdc_sync.mysql import MySQLAdmin
from cdc_sync.positions import PositionError, PositionTracker, kind_of, reached, split_stream
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


def set_position(config: Config, position: str) -> tuple[str, int | None]:
    """Store ``position`` as the checkpoint (validated first). Returns (the previous one, keys flushed, None
    for a rewind, which flushes nothing).

    A position at or behind the stored one in stream order is a rewind: the worker replays from it, and nothing
    it skipped can be cached. Any other position (a jump forward, another form, or one whose order is unknown,
    such as a bare MariaDB GTID state) may skip changes, so every mapped table is flushed.
    """
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
        if previous is not None and _reaches(previous, position):
            _move(sink, [], position)
            return previous, None
        return previous or "", _move(sink, list(config.tables), position)
    finally:
        sink.close()


def reset(config: Config) -> tuple[str, int]:
    """Start from the server's current position with an empty cache. Returns (position, keys flushed)."""
    admin = MySQLAdmin(config.mysql)
    try:
        start = initial_position(admin.server_info(), "current", config.mysql.position_mode)
    finally:
        admin.close()
    sink = RedisSink(config.redis, config.reader.holdoff_ms)
    try:
        return start, _move(sink, list(config.tables), start)
    finally:
        sink.close()


def _move(sink: RedisSink, rules: Sequence[TableRule], position: str) -> int:
    """Move the checkpoint, flushing ``rules`` so that no reader trusts what the move skipped.

    The tables are marked as flushing *before* the checkpoint moves: a running worker rewinds to the new
    position at its next step and its heartbeat prober may soon vouch again, while the tables are flushed one
    by one; readers bypass every marked table (and fills are refused) until its own flush is done. The
    checkpoint and the heartbeat go in one step (readers bypass until the worker has caught up from there).
    """
    sink.hold_flushing(rules)
    sink.set_checkpoint(position)
    return sum(sink.flush(rule, held=True) for rule in rules)


def _reaches(applied: str, target: str) -> bool:
    """``applied`` is at or past ``target`` in stream order (MariaDB: only positions with stream parts tell)."""
    try:
        if kind_of(target) == "mariadb" and (split_stream(applied)[1] is None or split_stream(target)[1] is None):
            return False
        return reached(applied, target)
    except PositionError:
        return False


def flush(config: Config, tables: Sequence[str]) -> int:
    """Invalidate the named tables' keys, leases and dependent reader keys, the way DDL does."""
    rules = select_rules(config, tables)
    sink = RedisSink(config.redis, config.reader.holdoff_ms)
    try:
        sink.hold_flushing(rules)
        return sum(sink.flush(rule, held=True) for rule in rules)
    finally:
        sink.close()
