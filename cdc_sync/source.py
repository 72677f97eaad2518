"""The binlog stream: the only module that imports pymysqlreplication.

It turns the library's events into the project's RawEvents and its errors into the project's error tree,
and it owns reconnection: the library's own silent reconnect (which, on MariaDB GTID, replays from the
original start) is refused, so the worker reconnects from its own position.

Values are fixed up here so that they equal what a ``SELECT`` through PyMySQL returns (the reader fills
from SELECTs, the worker from the binlog; both must write the same bytes): BIT as an integer, SET as a
set (the empty set included), BINARY(n) padded to n bytes, FLOAT as its shortest float32 text, and MySQL
JSON documents with text instead of bytes.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    ExecuteLoadQueryEvent,
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    RowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc_sync.config import MySQLConfig
from cdc_sync.errors import ConfigError, SourceError
from cdc_sync.events import (
    Op,
    RawBegin,
    RawCommit,
    RawEvent,
    RawHeartbeat,
    RawQuery,
    RawRows,
    RawUnknown,
    RowChange,
)
from cdc_sync.mysql import connection_settings, translate_error
from cdc_sync.positions import kind_of

_MARIADB_GTID_STANDALONE = 0x01
REPORT_HOST = f"cdc-sync@{socket.gethostname()}"[:60]
# What the library (or a fix-up below) raises for bytes it cannot decode. Such an event is reported as
# RawUnknown, so the worker flushes what it may have changed instead of dying on it at every restart.
_DECODE_ERRORS = (
    UnicodeDecodeError,
    LookupError,
    ValueError,
    IndexError,
    TypeError,
    NotImplementedError,
    AssertionError,
    struct.error,
)


_EPOCH = datetime.datetime(1970, 1, 1)


class _LibraryReconnect(Exception):
    """Raised inside the library when it tries to reconnect the stream by itself."""


class _MissingMetadata(ValueError):
    """Column names are missing: binlog_row_metadata is not FULL for this event."""


def float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32: what MySQL prints for a FLOAT."""
    single = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):
        candidate = float(f"{single:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == single:
            return candidate
    return float(single)


def _json_text(value: Any) -> Any:
    """MySQL binary JSON as the library decodes it (bytes keys and strings) → plain JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {_json_text(k): _json_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_text(v) for v in value]
    return value


def _fixers(event: RowsEvent) -> list[tuple[str, Any]]:
    """Per-column value fixes for this event's table (see the module docstring)."""
    fixes: list[tuple[str, Any]] = []
    for col in event.columns:
        if col.type == FIELD_TYPE.BIT:
            fixes.append((col.name, "bit"))
        elif col.type == FIELD_TYPE.SET:
            fixes.append((col.name, "set"))
        elif col.type == FIELD_TYPE.FLOAT:
            fixes.append((col.name, "float"))
        elif col.type == FIELD_TYPE.JSON:
            fixes.append((col.name, "json"))
        elif col.type in (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2):
            fixes.append((col.name, "timestamp"))
        elif col.type == FIELD_TYPE.STRING and (col.character_set_name or "").lower() == "binary":
            fixes.append((col.name, ("pad", getattr(col, "max_length", 0))))
    return fixes


def _fix_row(values: dict[str, Any], nones: Mapping[str, str], fixes: list[tuple[str, Any]]) -> dict[str, Any]:
    for name, fix in fixes:
        value = values.get(name)
        if value is None:
            if fix == "set" and nones.get(name) == "empty set":
                values[name] = set()
        elif fix == "bit":
            values[name] = int(value, 2) if isinstance(value, str) and value else int(value or 0)
        elif fix == "float":
            values[name] = float32_text(value)
        elif fix == "json":
            values[name] = _json_text(value)
        elif fix == "timestamp":
            if value == _EPOCH:  # the zero TIMESTAMP ('0000-00-00 00:00:00') is stored as epoch 0
                values[name] = None
        elif fix != "set" and isinstance(value, bytes) and len(value) < fix[1]:
            values[name] = value.ljust(fix[1], b"\0")
    return values


def _changes(event: RowsEvent) -> tuple[RowChange, ...]:
    """Decode every row of the event (the library decodes lazily, on ``event.rows``)."""
    schema, table = event.schema, event.table
    if any(not col.name for col in event.columns):  # the library would invent UNKNOWN_COL<n> names
        raise _MissingMetadata(f"{schema}.{table}: column names missing: binlog_row_metadata is not FULL")
    fixes = _fixers(event)
    out: list[RowChange] = []
    rows: Iterable[dict[str, Any]] = event.rows
    if isinstance(event, WriteRowsEvent):
        for row in rows:
            after = _fix_row(row["values"], row.get("none_sources", {}), fixes)
            out.append(RowChange(Op.INSERT, schema, table, None, after))
    elif isinstance(event, UpdateRowsEvent):
        for row in rows:
            before = _fix_row(row["before_values"], row.get("before_none_sources", {}), fixes)
            after = _fix_row(row["after_values"], row.get("after_none_sources", {}), fixes)
            out.append(RowChange(Op.UPDATE, schema, table, before, after))
    elif isinstance(event, DeleteRowsEvent):
        for row in rows:
            before = _fix_row(row["values"], row.get("none_sources", {}), fixes)
            out.append(RowChange(Op.DELETE, schema, table, before, None))
    return tuple(out)


class BinlogSource:
    """Streams RawEvents of the given tables from a position; one instance per connection attempt."""

    def __init__(self, cfg: MySQLConfig, tables: Iterable[tuple[str, str]], flavor: str) -> None:
        self.cfg = cfg
        self.tables = set(tables)  # (schema, table) pairs whose row events are decoded
        self.flavor = flavor
        self._stream: BinLogStreamReader | None = None

    def _wrapper(self) -> Any:
        stream_connects = 0

        def connect(**kwargs: Any) -> pymysql.connections.Connection[Any]:
            nonlocal stream_connects
            if kwargs.get("db") != "information_schema":
                stream_connects += 1
                if stream_connects > 1:
                    raise _LibraryReconnect("binlog stream lost")
            return pymysql.connect(**kwargs)

        return connect

    def events(self, start: str) -> Iterator[RawEvent]:
        """Yield RawEvents from ``start`` (a position string) until the connection fails.

        Raises SourceError (PositionLostError for a purged position). An event that cannot be decoded is
        yielded as RawUnknown so the worker can flush what it may have changed.
        """
        kind = kind_of(start)  # raises PositionError for an unparseable position: never stream from ""
        settings = connection_settings(self.cfg)
        # A read that sees nothing for this long means a dead link: heartbeats arrive every heartbeat_s.
        settings["read_timeout"] = max(3.0, self.cfg.heartbeat_s * 4)
        position_args: dict[str, Any]
        if kind == "file":
            file, _, pos = start.rpartition(":")
            position_args = {"log_file": file, "log_pos": int(pos), "resume_stream": True, "is_mariadb": False}
        else:
            if (kind == "mariadb") != (self.flavor == "mariadb"):
                raise ConfigError(f"checkpoint {start!r} is a {kind} GTID but the server is {self.flavor}")
            position_args = {"auto_position": start, "is_mariadb": kind == "mariadb"}
        self._stream = stream = BinLogStreamReader(
            connection_settings=settings,
            server_id=self.cfg.server_id,
            blocking=True,
            slave_heartbeat=self.cfg.heartbeat_s,
            only_schemas=sorted({s for s, _ in self.tables}),
            only_tables=sorted({t for _, t in self.tables}),
            filter_non_implemented_events=False,
            enable_logging=False,
            pymysql_wrapper=self._wrapper(),
            # registered, so SHOW SLAVE HOSTS / SHOW REPLICAS (and `cdc-sync doctor`) can see this server_id
            report_slave=REPORT_HOST,
            **position_args,
        )
        try:
            while True:
                try:
                    event = stream.fetchone()
                    raw = self._translate(event, stream) if event is not None else None
                except _LibraryReconnect as exc:
                    raise SourceError("binlog connection lost") from exc
                except pymysql.MySQLError as exc:
                    raise translate_error(exc, "binlog stream") from exc
                except (OSError, EOFError) as exc:
                    raise SourceError(f"binlog stream: {type(exc).__name__}: {exc}") from exc
                except _DECODE_ERRORS as exc:
                    detail = f"decode error: {type(exc).__name__}: {exc}"[:300]
                    yield RawUnknown(-1, detail, stream.log_file or "", int(stream.log_pos or 0))
                    continue
                if event is None:
                    raise SourceError("binlog stream ended")
                if raw is not None:
                    yield raw
        finally:
            self.close()

    def _translate(self, event: Any, stream: BinLogStreamReader) -> RawEvent | None:
        if isinstance(event, RowsEvent):
            if (event.schema, event.table) not in self.tables:
                return None
            # A partial JSON update carries a diff, not the value: evict instead of writing.
            return RawRows(_changes(event), evict_only=isinstance(event, PartialUpdateRowsEvent))
        if isinstance(event, XidEvent):
            return RawCommit(stream.log_file, stream.log_pos, event.timestamp)
        if isinstance(event, MariadbGtidEvent):
            standalone = bool(event.flags & _MARIADB_GTID_STANDALONE)
            return RawBegin(gtid=event.gtid, opens=not standalone)
        if isinstance(event, GtidEvent):
            return RawBegin(gtid=event.gtid, opens=False)
        if isinstance(event, QueryEvent | ExecuteLoadQueryEvent):
            sql = event.query.strip()
            head = sql[:16].upper()
            if head.startswith(("BEGIN", "XA START", "XA BEGIN")):
                return RawBegin(opens=True)
            if head.startswith("COMMIT"):
                return RawCommit(stream.log_file, stream.log_pos, event.timestamp)
            if head.startswith("ROLLBACK") and "TO" not in head:
                return RawCommit(stream.log_file, stream.log_pos, event.timestamp, rollback=True)
            schema = event.schema.decode("utf-8", "replace") if isinstance(event.schema, bytes) else str(event.schema)
            return RawQuery(sql, schema, stream.log_file, stream.log_pos, event.timestamp)
        if isinstance(event, XAPrepareEvent):
            return RawCommit(stream.log_file, stream.log_pos, event.timestamp, rollback=True)
        if isinstance(event, HeartbeatLogEvent):
            return RawHeartbeat(stream.log_file or "", int(stream.log_pos or 0))
        if isinstance(event, NotImplementedEvent):
            return RawUnknown(int(event.event_type), "", stream.log_file or "", int(stream.log_pos or 0))
        return None  # rotate, format description, table map, GTID lists, binlog checkpoints, intvar...

    def close(self) -> None:
        if self._stream is not None:
            # closing a broken connection must not mask the error that broke it
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None
