"""The binlog source: the only module that imports pymysqlreplication (and pymysql for streaming).

It turns the library's events into the project's RawEvents, translates its errors into the project's
error tree, and owns reconnection: the library's own silent reconnect (which, on MariaDB GTID, replays
from the original start) is refused, so the worker reconnects from its own position.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pymysql
import pymysql.cursors
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, RowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc_sync.config import MySQLConfig, TableRule
from cdc_sync.errors import ConfigError, DecodeError, PositionLostError, SourceError
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
    ServerInfo,
)
from cdc_sync.positions import kind_of

ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
_MARIADB_GTID_STANDALONE = 0x01
_DECODE_ERRORS = (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, NotImplementedError, AssertionError)


class _LibraryReconnect(Exception):
    """Raised inside the library when it tries to reconnect the stream by itself."""


def connection_settings(cfg: MySQLConfig) -> dict[str, Any]:
    """PyMySQL keyword arguments for ``cfg`` (TLS included). Holds the password: never log it."""
    settings: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.user,
        "passwd": cfg.password,
        "connect_timeout": cfg.connect_timeout_s,
        "charset": "utf8mb4",
    }
    if cfg.tls:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca)
        ctx.check_hostname = cfg.ssl_verify_identity
        if cfg.ssl_cert:
            ctx.load_cert_chain(cfg.ssl_cert, cfg.ssl_key)
        settings["ssl"] = ctx
    return settings


def _translate(exc: BaseException, what: str) -> SourceError:
    """Map a PyMySQL error to the project's tree (the message never holds the password)."""
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError) and exc.args:
        code = exc.args[0]
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        if code == ER_MASTER_FATAL_ERROR_READING_BINLOG:
            return PositionLostError(f"{what}: server error {code}: {text}")
        return SourceError(f"{what}: MySQL error {code}: {text}")
    return SourceError(f"{what}: {type(exc).__name__}: {exc}")


class MySQLAdmin:
    """Short queries over an ordinary connection: server identity, positions, table columns."""

    def __init__(self, cfg: MySQLConfig) -> None:
        self.cfg = cfg

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        try:
            conn = pymysql.connect(**connection_settings(self.cfg), cursorclass=pymysql.cursors.DictCursor)
        except pymysql.MySQLError as exc:
            raise _translate(exc, f"connect to {self.cfg.host}:{self.cfg.port}") from exc
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            raise _translate(exc, sql.split()[0]) from exc
        finally:
            conn.close()

    def server_info(self) -> ServerInfo:
        """Flavor, version, current GTID and file positions, oldest binlog, key variables."""
        rows = self._query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', 'log_bin', "
            "'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'gtid_mode', 'gtid_binlog_pos', "
            "'gtid_executed', 'server_uuid', 'server_id', 'gtid_domain_id', 'log_bin_compress', "
            "'binlog_transaction_compression')"
        )
        variables = {r["Variable_name"].lower(): str(r["Value"]) for r in rows}
        flavor = (
            "mariadb"
            if "mariadb" in (variables.get("version", "") + variables.get("version_comment", "")).lower()
            else "mysql"
        )
        if flavor == "mariadb":
            gtid = variables.get("gtid_binlog_pos", "")
        else:
            gtid = variables.get("gtid_executed", "") if variables.get("gtid_mode", "OFF").upper() == "ON" else ""
        status = self._binlog_status(flavor)
        logs = self._query("SHOW BINARY LOGS") if variables.get("log_bin", "OFF").upper() == "ON" else []
        first = str(logs[0]["Log_name"]) if logs else ""
        return ServerInfo(
            flavor=flavor,
            version=variables.get("version", ""),
            gtid_position=gtid.replace("\n", ""),
            file_position=status,
            first_file=first,
            server_uuid=variables.get("server_uuid", ""),
            variables=variables,
        )

    def _binlog_status(self, flavor: str) -> str:
        """``file:pos`` of the server's binlog end: SHOW BINARY LOG STATUS (MySQL 8.2+), else SHOW MASTER STATUS."""
        statements = ["SHOW MASTER STATUS"] if flavor == "mariadb" else ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"]
        for i, sql in enumerate(statements):
            try:
                rows = self._query(sql)
            except SourceError:
                if i + 1 < len(statements):
                    continue
                raise
            return f"{rows[0]['File']}:{rows[0]['Position']}" if rows else ""
        return ""

    def table_columns(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Columns in table order for each ``schema.table`` that exists."""
        out: dict[str, list[str]] = {}
        for name in names:
            schema, _, table = name.partition(".")
            rows = self._query(
                "SELECT COLUMN_NAME AS c FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (schema, table),
            )
            if rows:
                out[name] = [str(r["c"]) for r in rows]
        return out


def _fixers(event: RowsEvent) -> list[tuple[str, Any]]:
    """Per-column value fixes so binlog values match what a SELECT returns (see codec.py)."""
    fixes: list[tuple[str, Any]] = []
    for col in event.columns:
        if col.type == FIELD_TYPE.BIT:
            fixes.append((col.name, "bit"))
        elif col.type == FIELD_TYPE.SET:
            fixes.append((col.name, "set"))
        elif col.type == FIELD_TYPE.STRING and (col.character_set_name or "").lower() == "binary":
            fixes.append((col.name, ("pad", getattr(col, "max_length", 0))))
    return fixes


def _fix_row(values: dict[str, Any], nones: Mapping[str, str], fixes: list[tuple[str, Any]]) -> dict[str, Any]:
    for name, fix in fixes:
        value = values.get(name)
        if fix == "bit":
            if isinstance(value, str):
                values[name] = int(value, 2) if value else 0
        elif fix == "set":
            if value is None and nones.get(name) == "empty set":
                values[name] = set()
        elif isinstance(value, bytes) and len(value) < fix[1]:
            values[name] = value.ljust(fix[1], b"\0")
    return values


def _changes(event: RowsEvent) -> tuple[RowChange, ...]:
    schema, table = event.schema, event.table
    fixes = _fixers(event)
    out: list[RowChange] = []
    if isinstance(event, WriteRowsEvent):
        for row in event.rows:
            after = _fix_row(row["values"], row.get("none_sources", {}), fixes)
            out.append(RowChange(Op.INSERT, schema, table, None, after))
    elif isinstance(event, UpdateRowsEvent):
        for row in event.rows:
            before = _fix_row(row["before_values"], row.get("before_none_sources", {}), fixes)
            after = _fix_row(row["after_values"], row.get("after_none_sources", {}), fixes)
            out.append(RowChange(Op.UPDATE, schema, table, before, after))
    elif isinstance(event, DeleteRowsEvent):
        for row in event.rows:
            before = _fix_row(row["values"], row.get("none_sources", {}), fixes)
            out.append(RowChange(Op.DELETE, schema, table, before, None))
    for change in out:
        image = change.after if change.after is not None else change.before
        if image is not None and any(str(k).startswith("UNKNOWN_COL") for k in image):
            raise DecodeError(f"{schema}.{table}: column names missing (binlog_row_metadata is not FULL)")
    return tuple(out)


class BinlogSource:
    """Streams RawEvents from a position; one instance per connection attempt."""

    def __init__(self, cfg: MySQLConfig, rules: Sequence[TableRule], flavor: str) -> None:
        self.cfg = cfg
        self.rules = list(rules)
        self.flavor = flavor
        self._stream: BinLogStreamReader | None = None
        self._mapped = {(r.schema, r.table) for r in self.rules}

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

        Raises SourceError (PositionLostError for a purged position) and DecodeError never: an event that
        cannot be decoded is yielded as RawUnknown so the worker can flush what it may have changed.
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
            only_schemas=sorted({r.schema for r in self.rules}),
            only_tables=sorted({r.table for r in self.rules}),
            filter_non_implemented_events=False,
            enable_logging=False,
            pymysql_wrapper=self._wrapper(),
            **position_args,
        )
        try:
            while True:
                try:
                    event = stream.fetchone()
                except _LibraryReconnect as exc:
                    raise SourceError("binlog connection lost") from exc
                except pymysql.MySQLError as exc:
                    raise _translate(exc, "binlog stream") from exc
                except (OSError, EOFError) as exc:
                    raise SourceError(f"binlog stream: {type(exc).__name__}: {exc}") from exc
                except _DECODE_ERRORS as exc:
                    yield RawUnknown(-1, detail=f"decode error: {type(exc).__name__}: {exc}"[:300])
                    continue
                if event is None:
                    raise SourceError("binlog stream ended")
                raw = self._translate_event(event, stream)
                if raw is not None:
                    yield raw
        finally:
            self.close()

    def _translate_event(self, event: Any, stream: BinLogStreamReader) -> RawEvent | None:
        if isinstance(event, RowsEvent):
            if (event.schema, event.table) not in self._mapped:
                return None
            try:
                return RawRows(_changes(event))
            except DecodeError as exc:
                return RawUnknown(-1, detail=str(exc))
        if isinstance(event, XidEvent):
            return RawCommit(stream.log_file, stream.log_pos, event.timestamp)
        if isinstance(event, MariadbGtidEvent):
            standalone = bool(event.flags & _MARIADB_GTID_STANDALONE)
            return RawBegin(gtid=event.gtid, opens=not standalone)
        if isinstance(event, GtidEvent):
            return RawBegin(gtid=event.gtid, opens=False)
        if isinstance(event, QueryEvent):
            sql = event.query.strip()
            head = sql[:16].upper()
            if head.startswith("BEGIN") or head.startswith("XA START") or head.startswith("XA BEGIN"):
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
            return RawUnknown(int(event.event_type))
        return None  # rotate, format description, table map, GTID lists, checkpoints, intvar...

    def close(self) -> None:
        if self._stream is not None:
            # closing a broken connection must not mask the error that broke it
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None
