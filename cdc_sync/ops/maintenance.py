"""``cdc-sync checkpoint show|set|reset`` and ``cdc-sync flush``: repairs an operator can make safely.

A running worker notices a changed checkpoint at its next step (or within a server heartbeat when idle):
Redis then holds a checkpoint it did not write, so it rewinds to it. Whoever moves the checkpoint by hand marks
the affected tables as flushing first (``_move``), so the heartbeat never vouches for keys that a jump skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence

from cdc_sync.adapters.mysql import MySQLAdmin
from cdc_sync.adapters.redis import RedisSink
from cdc_sync.adapters.redis_cluster import make_sink
from cdc_sync.config import Config, TableRule
from cdc_sync.core.positions import FilePos, PositionTracker, contains, kind_of, reached, same_state, split_stream
from cdc_sync.core.requirements import initial_position
from cdc_sync.errors import CdcSyncError, ConfigError, PositionError

OPERATOR_LOCK_TTL_MS = 60_000  # an operator command that died releases the lock after this


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
    sink = make_sink(config.redis, config.reader.holdoff_ms)
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
        raise ConfigError(str(exc)) from None
    _check_on_server(config, position)
    sink = make_sink(config.redis, config.reader.holdoff_ms)
    try:
        with _operator(sink, "checkpoint set"):
            previous = sink.load_checkpoint()
            if previous is not None and _reaches(previous, position):
                _move(sink, [], position)
                return previous, None
            return previous or "", _move(sink, list(config.tables), position)
    finally:
        sink.close()


def _check_on_server(config: Config, position: str) -> None:
    """Refuse a position the server cannot stream from: another flavor's form, a file or offset the server does
    not have, a MariaDB state that is not the server's at its stated file position, GTIDs the server lacks."""
    admin = MySQLAdmin(config.mysql)
    try:
        info = admin.server_info()
        kind = kind_of(position)
        if kind not in ("file", info.flavor):
            raise ConfigError(f"{position!r} is a {kind} position, but the server is {info.flavor}")
        gtid, stream = split_stream(position) if kind == "mariadb" else (position, None)
        if stream is not None:
            at = admin.gtid_at(str(stream.at)) if admin.binlog_server_id(stream.at.file) == stream.server_id else None
            if at is None or not same_state(at, gtid):
                raise ConfigError(
                    f"{position!r} is not a position of this server's binlog (its GTID state at {stream.at} is "
                    f"{at!r}); take one from 'cdc-sync checkpoint show' or 'cdc-sync status'"
                )
        elif kind == "file":
            at_file = FilePos.parse(position)
            sizes = {str(r["Log_name"]): int(r["File_size"]) for r in admin.query("SHOW BINARY LOGS")}
            if at_file.file not in sizes or at_file.pos > sizes[at_file.file]:
                raise ConfigError(f"{position!r} is not in the server's binary logs ({', '.join(sizes) or 'none'})")
        elif not info.gtid_position or not contains(info.gtid_position, gtid):
            raise ConfigError(
                f"{position!r} holds GTIDs the server has not logged (its state is {info.gtid_position!r})"
            )
    finally:
        admin.close()


@contextlib.contextmanager
def _operator(sink: RedisSink, what: str) -> Iterator[None]:
    """One operator command at a time moves the checkpoint or holds tables (``<ns>:operator``): two holding the
    same table would release each other's hold. The lock is kept alive while the command runs, and it fences the
    command: every flush and checkpoint step checks the token in the same script (``sink.operator_token``), so a
    command paused past the lock's TTL stops (OperatorLockLost) instead of releasing the next command's holds."""
    token = f"{what} on {socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(4)})"
    holder = sink.take_operator_lock(token, OPERATOR_LOCK_TTL_MS)
    if holder is not None:
        raise CdcSyncError(
            f"another operator command is running: {holder}; wait for it (a command that died lets go of "
            f"{sink.keys.operator} {OPERATOR_LOCK_TTL_MS // 1000} s after it stopped)"
        )
    done = threading.Event()

    def keep() -> None:
        while not done.wait(OPERATOR_LOCK_TTL_MS / 3000):
            with contextlib.suppress(CdcSyncError):
                sink.keep_operator_lock(token, OPERATOR_LOCK_TTL_MS)

    sink.operator_token = token
    keeper = threading.Thread(target=keep, name="cdc-sync-operator-lock", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join(5)
        sink.operator_token = None
        with contextlib.suppress(CdcSyncError):
            sink.keep_operator_lock(token, 0)


def reset(config: Config) -> tuple[str, int]:
    """Start from the server's current position with an empty cache. Returns (position, keys flushed)."""
    admin = MySQLAdmin(config.mysql)
    try:
        start = initial_position(admin.server_info(), "current", config.mysql.position_mode)
    finally:
        admin.close()
    sink = make_sink(config.redis, config.reader.holdoff_ms)
    try:
        with _operator(sink, "checkpoint reset"):
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
    sink = make_sink(config.redis, config.reader.holdoff_ms)
    try:
        with _operator(sink, "flush"):
            sink.hold_flushing(rules)
            return sum(sink.flush(rule, held=True) for rule in rules)
    finally:
        sink.close()
