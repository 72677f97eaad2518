"""The binlog stream: the only module that imports pymysqlreplication.

It turns the library's events into the project's RawEvents and its errors into the project's error tree,
and it owns reconnection: the library's own silent reconnect (which, on MariaDB GTID, replays from the
original start) is refused, so the worker reconnects from its own position.

Values are fixed up here so that they equal what a ``SELECT`` through PyMySQL returns (the reader fills
from SELECTs, the worker from the binlog; both must write the same bytes): BIT as an integer, SET as a set (the
empty set included), YEAR 0000 as 0, BINARY(n) padded to n bytes, an empty binary value as bytes, FLOAT as its
shortest float32 text (then as the server prints it, with ``kinds``: 6 significant digits or the column's
decimals; MariaDB's UUID/INET4/INET6 as their text, see rowdecode.server_text), a negative TIME with a fraction
repaired, MySQL JSON documents with text instead of bytes, and latin1 as MySQL's own (Windows-1252 whose five
undefined bytes are the C1 controls).

Row images of mapped tables are decoded by rowdecode.py where it can, only the columns the rules need
(``needed``); the library decodes the rest, and its values go through the fix-ups above.
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
    FormatDescriptionEvent,
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.json_binary import parse_json
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    RowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.adapters.mysql import connection_settings, translate_error
from cdc_sync.adapters.readahead import Dropped, PacketReader, ReadAhead, Replay
from cdc_sync.config import MySQLConfig
from cdc_sync.core.binlogframes import FrameError, header
from cdc_sync.core.events import (
    Op,
    RawBegin,
    RawCommit,
    RawEvent,
    RawHeartbeat,
    RawProgress,
    RawQuery,
    RawRows,
    RawServer,
    RawUnknown,
    RowChange,
)
from cdc_sync.core.positions import kind_of, split_stream
from cdc_sync.core.rowdecode import (
    WIDE_CHARSETS,
    ColumnSpec,
    RowDecoder,
    float32_text,
    json_text,
    server_codec,
    server_text,
    text_encoding,
)
from cdc_sync.errors import ConfigError, DecodeError, HistoryChanged, ServerChanged, SourceError

log = logs.get("cdc_sync.source")
_MARIADB_GTID_STANDALONE = 0x01
_library_encoding = RowsEvent.charset_to_encoding


def _charset_to_encoding(name: str) -> str:
    """The library's codec for a column charset: the server's own table where one was read
    (rowdecode.server_codec), MySQL's byte order for the wide charsets, else MySQL's latin1
    (rowdecode.MYSQL_LATIN1) where the library says cp1252, which refuses five bytes MySQL stores and a SELECT
    returns."""
    encoding: str = _library_encoding(name)
    return server_codec(name) or WIDE_CHARSETS.get(name.lower()) or text_encoding(encoding) or encoding


# The library decodes text by this one hook (RowsEvent.__read_string): both decoders read latin1 as MySQL does.
RowsEvent.charset_to_encoding = staticmethod(_charset_to_encoding)
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
# not PartialUpdateRowsEvent (a subclass of UpdateRowsEvent): looked up by exact type
_ROW_EVENTS = {WriteRowsEvent: Op.INSERT, UpdateRowsEvent: Op.UPDATE, DeleteRowsEvent: Op.DELETE}
_DECODERS_MAX = 256  # compiled row decoders kept per source (one per table layout × needed columns)
# events dropped in a row (a large transaction of another table) before a RawProgress is yielded: the worker then
# queues an empty transaction it holds instead of waiting for this one's end
_PROGRESS_EVERY = 256
_PROGRESS = RawProgress()


class _LibraryReconnect(Exception):
    """Raised inside the library when it tries to reconnect the stream by itself."""


class _MissingMetadata(ValueError):
    """Column names are missing: binlog_row_metadata is not FULL for this event."""


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
        elif col.type == FIELD_TYPE.YEAR:
            fixes.append((col.name, "year"))
        elif col.type == FIELD_TYPE.JSON:
            fixes.append((col.name, "json"))
        elif col.type in (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2):
            fixes.append((col.name, "timestamp"))
        elif col.type == FIELD_TYPE.TIME2:
            fixes.append((col.name, "time2"))
        elif (col.character_set_name or "").lower() == "binary" and col.type != FIELD_TYPE.GEOMETRY:
            # BINARY(n) is padded; any empty binary value comes out of the library as '' (Python decodes
            # b'' with any codec name, even the unknown "binary"): make it bytes again
            fixes.append((col.name, ("pad", _binary_pad(col))))
    return fixes


def _binary_pad(col: Any) -> int:
    """The length a value of this column is padded to with NUL bytes, as a SELECT returns it: BINARY(n)."""
    binary = col.type == FIELD_TYPE.STRING and (getattr(col, "character_set_name", None) or "").lower() == "binary"
    return (getattr(col, "max_length", 0) or 0) if binary else 0


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
        elif fix == "year":
            if value == 1900:  # the library adds 1900 to the stored byte, YEAR 0000's 0 included (1900 is no YEAR)
                values[name] = 0
        elif fix == "json":
            values[name] = json_text(value)
        elif fix == "timestamp":
            if value == _EPOCH:  # the zero TIMESTAMP ('0000-00-00 00:00:00') is stored as epoch 0
                values[name] = None
        elif fix == "time2":
            values[name] = repair_negative_time(value)
        elif fix != "set":
            raw = b"" if value == "" else value
            values[name] = raw.ljust(fix[1], b"\0") if isinstance(raw, bytes) and len(raw) < fix[1] else raw
    return values


def _as_printed(row: Mapping[str, object] | None, kinds: Mapping[str, str]) -> dict[str, object] | None:
    """``row`` with the values of ``kinds``'s columns as a SELECT prints them (rowdecode.server_text)."""
    if row is None:
        return None
    out = dict(row)
    for name, kind in kinds.items():
        value = out.get(name)
        if value is not None:
            out[name] = server_text(kind, value)
    return out


def repair_negative_time(value: Any) -> Any:
    """The true value of a TIME the library decoded. For a negative TIME with a fraction, MySQL stores the
    next integer down and the fraction's complement (rowdecode.time2_value); the library reads them as they
    are, so -01:02:03.25 comes out as -01:02:03.75: whole seconds A and fraction g read as -(A + g) mean
    -(A + 1 - g)."""
    if not isinstance(value, datetime.timedelta) or value >= datetime.timedelta(0):
        return value
    whole, frac = divmod(-value // datetime.timedelta(microseconds=1), 1_000_000)
    if not frac:
        return value
    return -datetime.timedelta(seconds=whole, microseconds=1_000_000 - frac)


def _require_names(event: RowsEvent) -> None:
    if any(not col.name for col in event.columns):  # the library would invent UNKNOWN_COL<n> names
        raise _MissingMetadata(f"{event.schema}.{event.table}: column names missing: binlog_row_metadata is not FULL")


def _changes(event: RowsEvent) -> tuple[RowChange, ...]:
    """Decode every row of the event (the library decodes lazily, on ``event.rows``)."""
    schema, table = event.schema, event.table
    _require_names(event)
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


def column_spec(col: Any) -> ColumnSpec:
    """A rowdecode.ColumnSpec of a library Column (see rowdecode.py for what each field decides)."""
    charset = getattr(col, "character_set_name", None)
    encoding: str | None = "utf-8"  # the library decodes text without a known charset as UTF-8
    if col.type == FIELD_TYPE.GEOMETRY:
        encoding = None
    elif charset is not None:
        encoding = text_encoding(RowsEvent.charset_to_encoding(charset))  # (the hook: the server's table first)
    enum_values, set_values = getattr(col, "enum_values", None), getattr(col, "set_values", None)
    return ColumnSpec(
        name=col.name,
        type=col.type,
        unsigned=bool(getattr(col, "unsigned", False)),
        max_length=getattr(col, "max_length", 0) or 0,
        length_size=getattr(col, "length_size", 0) or 0,
        precision=getattr(col, "precision", 0) or 0,
        decimals=getattr(col, "decimals", 0) or 0,
        fsp=getattr(col, "fsp", 0) or 0,
        encoding=encoding,
        binary_pad=_binary_pad(col),
        bits=getattr(col, "bits", 0) or 0,
        size=getattr(col, "size", 0) or 0,
        enum_values=tuple(enum_values) if enum_values else None,
        set_values=tuple(set_values) if set_values else None,
    )


def _image_bits(event: RowsEvent) -> tuple[int, int]:
    """The columns-present bitmaps of the before and the after image (one bitmap serves inserts and deletes)."""
    before = event.columns_present_bitmap
    return int.from_bytes(before, "little"), int.from_bytes(getattr(event, "columns_present_bitmap2", before), "little")


def _images_full(event: RowsEvent) -> bool:
    full = (1 << len(event.columns)) - 1
    return _image_bits(event) == (full, full)


def _without_absent_columns(event: RowsEvent, changes: tuple[RowChange, ...]) -> tuple[RowChange, ...] | None:
    """The changes without the columns a non-FULL row image left out (None: every image is FULL).

    The library reports an absent column as None, which would read as NULL. In an update's after image an
    absent column was not set by the statement, so it keeps the before image's value where that has one.
    """
    if _images_full(event):
        return None
    before_bits, after_bits = _image_bits(event)
    absent_before = {c.name for i, c in enumerate(event.columns) if not before_bits >> i & 1}
    absent_after = {c.name for i, c in enumerate(event.columns) if not after_bits >> i & 1}
    out: list[RowChange] = []
    for change in changes:
        before = after = None
        if change.before is not None:
            before = {k: v for k, v in change.before.items() if k not in absent_before}
        if change.after is not None:
            kept = before or {}
            after = {
                k: kept[k] if k in absent_after else v
                for k, v in change.after.items()
                if k in kept or k not in absent_after
            }
        out.append(change._replace(before=before, after=after))
    return tuple(out)


def _changes_of(op: Op, schema: str, table: str, images: list[dict[str, Any]]) -> tuple[RowChange, ...]:
    """The row changes of a rows event's decoded images (an update's come in before/after pairs)."""
    if op is Op.INSERT:
        return tuple(RowChange(Op.INSERT, schema, table, None, after) for after in images)
    if op is Op.DELETE:
        return tuple(RowChange(Op.DELETE, schema, table, before, None) for before in images)
    if len(images) % 2:
        raise DecodeError("an update event with an odd number of row images")
    pairs = zip(images[::2], images[1::2], strict=True)
    return tuple(RowChange(Op.UPDATE, schema, table, before, after) for before, after in pairs)


class BinlogSource:
    """Streams RawEvents of the given tables from a position; one instance per connection attempt."""

    def __init__(
        self,
        cfg: MySQLConfig,
        tables: Iterable[tuple[str, str]],
        flavor: str,
        needed: Mapping[tuple[str, str], frozenset[str] | None] | None = None,
        fast: bool = True,
        kinds: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
        read_ahead: bool = True,
    ) -> None:
        """``needed``: per table, the only columns to decode (None or absent: all); ``fast``: decode row
        images with rowdecode.py where it can (False: always the library, as the differential test does);
        ``kinds``: per table, the columns whose values are turned into what a SELECT prints
        (rowdecode.server_text; read at each event, so the caller may update it after DDL); ``read_ahead``: decide
        the events of every transaction from their bytes where readahead.py can (False: the library decodes
        every event, as the differential test compares)."""
        self.cfg = cfg
        self.tables = set(tables)  # (schema, table) pairs whose row events are decoded
        self.flavor = flavor
        self.needed = dict(needed or {})
        self.fast = fast
        self.read_ahead = read_ahead
        self.ahead: ReadAhead | None = None  # of the current connection (tests, bench)
        self._replay: Replay | None = None
        self.kinds: Mapping[tuple[str, str], Mapping[str, str]] = kinds if kinds is not None else {}
        self.decoded = {"fast": 0, "library": 0}  # rows events of mapped tables, by decoder (tests, bench)
        self._decoded_metric = {k: m.ROWS_EVENTS_DECODED.labels(decoder=k) for k in self.decoded}
        self._stream: BinLogStreamReader | None = None
        self._resume_server: int | None = None  # resuming by a file position of this server: it must be this one
        self._resume_file: tuple[str, int] = ("", 0)  # ... in this file, created then (0: unknown)
        self._by_table_id: dict[int, tuple[object, RowDecoder | None]] = {}  # last table map seen per id
        self._by_layout: dict[tuple[tuple[ColumnSpec, ...], frozenset[str] | None], RowDecoder | None] = {}

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
        self._resume_server, self._resume_file = None, ("", 0)
        if kind != "file" and (kind == "mariadb") != (self.flavor == "mariadb"):
            raise ConfigError(f"checkpoint {start!r} is a {kind} GTID but the server is {self.flavor}")
        gtid, stream_pos = split_stream(start) if kind == "mariadb" else (start, None)
        if kind == "file" or stream_pos is not None:
            # A MariaDB position with its stream part resumes by that file position (exact stream order, even
            # when sequence numbers went backwards), provided the binlog is still that server's (checked on the
            # format description event, before any change is read).
            at = str(stream_pos.at) if stream_pos is not None else start
            file, _, pos = at.rpartition(":")
            position_args = {"log_file": file, "log_pos": int(pos), "resume_stream": True, "is_mariadb": False}
            self._resume_server = stream_pos.server_id if stream_pos is not None else None
            self._resume_file = (stream_pos.at.file, stream_pos.created) if stream_pos is not None else ("", 0)
        else:
            position_args = {"auto_position": gtid, "is_mariadb": kind == "mariadb"}
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
        ahead = ReadAhead(self.tables, self._ahead_rows) if self.read_ahead else None
        self.ahead, self._replay = ahead, None
        replay: Replay | None = None  # the connection's packet reader, once the library has connected
        dropped = 0  # events dropped by the read-ahead since the last one yielded
        try:
            while True:
                try:
                    if replay is None:
                        event = stream.fetchone()  # (connects)
                        if ahead is not None and event is not None:
                            replay = self._attach(stream, ahead)
                    else:
                        assert ahead is not None
                        data = replay.next()
                        decided = ahead.decide(data, stream)
                        if isinstance(decided, Dropped):
                            dropped += 1
                            if dropped >= _PROGRESS_EVERY:  # (bounds how long an empty transaction is held)
                                dropped = 0
                                yield _PROGRESS
                            continue
                        dropped = 0
                        if decided is not None:
                            yield decided
                            continue
                        try:
                            expanded = ahead.expand(data)
                        except FrameError as exc:
                            # reported as the event it is, ending where it ends: a MySQL payload or a compressed
                            # statement still commits by itself (its GTID is not lost), a rows event flushes
                            yield self._unexpandable(data, stream, exc)
                            continue
                        if expanded is not None:  # read next, as if the server had sent them
                            replay.pending.extendleft(reversed(expanded))
                            continue
                        replay.pending.appendleft(data)  # the library decodes this very packet
                        event = stream.fetchone()
                    if ahead is not None:
                        ahead.library_read(event)
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

    @staticmethod
    def _unexpandable(data: bytes, stream: BinLogStreamReader, exc: FrameError) -> RawUnknown:
        head = header(data[1:])
        if head.log_pos:
            stream.log_pos = head.log_pos
        detail = f"decode error: compressed event: {exc}"[:300]
        return RawUnknown(head.event_type, detail, stream.log_file or "", int(stream.log_pos or 0))

    def more_buffered(self) -> bool:
        """Whether the next event is already read from the network (the read-ahead's buffer holds a packet): an
        empty transaction may then wait for the next one (see loop.py)."""
        return self._replay is not None and self._replay.buffered()

    def _attach(self, stream: BinLogStreamReader, ahead: ReadAhead) -> Replay:
        """Read the connected stream's packets here first (readahead.py); the library gets them from a Replay."""
        connection = stream._stream_connection
        replay = self._replay = Replay(PacketReader(connection))
        connection._read_packet = replay
        # set by the library when it connected (BINLOG_CHECKSUM); the version is pinned in pyproject.toml
        ahead.checksum = bool(stream._BinLogStreamReader__use_checksum)
        return replay

    def _translate(self, event: Any, stream: BinLogStreamReader) -> RawEvent | None:
        if isinstance(event, RowsEvent):
            if (event.schema, event.table) not in self.tables:
                return None
            # A partial JSON update carries a diff, not the value: evict instead of writing.
            evict_only = isinstance(event, PartialUpdateRowsEvent)
            changes = None if evict_only or not self.fast else self._fast_changes(event)
            decoder = "library" if changes is None else "fast"
            self.decoded[decoder] += 1
            self._decoded_metric[decoder].inc()
            if changes is None:
                changes = _changes(event)
                partial = _without_absent_columns(event, changes)
                if partial is not None:
                    # Not FULL (a session's binlog_row_image): absent is not NULL. Evict only, and a key
                    # whose columns are absent fails planning, which flushes the table.
                    name = f"{event.schema}.{event.table}"
                    m.PARTIAL_IMAGES.labels(table=name).inc()
                    log.warning("source.partial_row_image", table=name, rows=len(changes), action="evict_only")
                    changes, evict_only = partial, True
            return self._rows(event.schema, event.table, changes, evict_only)
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
            # XA PREPARE: evict-only now; the rows become visible at its XA COMMIT, which evicts them again
            xid = (
                None if event.one_phase else (int(event.xid_format_id), bytes(event.xid_gtrid), bytes(event.xid_bqual))
            )
            return RawCommit(stream.log_file, stream.log_pos, event.timestamp, rollback=True, xid=xid)
        if isinstance(event, HeartbeatLogEvent):
            return RawHeartbeat(stream.log_file or "", int(stream.log_pos or 0))
        if isinstance(event, FormatDescriptionEvent):
            server_id = int(event.packet.server_id)
            if self._resume_server is not None and server_id != self._resume_server:
                raise ServerChanged(
                    f"the binlog at {stream.log_file} is server {server_id}'s, not server {self._resume_server}'s"
                )
            created = int(event.timestamp or 0)
            file, was = self._resume_file
            if file == stream.log_file and was and created and created != was:
                raise HistoryChanged(
                    f"binlog file {file} was created at {created}, not at {was} as when the checkpoint was written "
                    "(RESET MASTER?)"
                )
            return RawServer(server_id, stream.log_file or "", created)
        if isinstance(event, NotImplementedEvent):
            return RawUnknown(int(event.event_type), "", stream.log_file or "", int(stream.log_pos or 0))
        return None  # rotate, format description, table map, GTID lists, binlog checkpoints, intvar...

    def _rows(self, schema: str, table: str, changes: tuple[RowChange, ...], evict_only: bool = False) -> RawRows:
        kinds = self.kinds.get((schema, table))
        if kinds:
            changes = tuple(
                c._replace(before=_as_printed(c.before, kinds), after=_as_printed(c.after, kinds)) for c in changes
            )
        return RawRows(changes, evict_only=evict_only)

    def _ahead_rows(self, op: Op, table_id: int, table: Any, columns: int, full: bool, body: bytes) -> RawRows | None:
        """A rows event of a streamed table, read ahead (readahead.rows_body): its RawRows, or None when the library
        must decode it (the same conditions as _fast_changes)."""
        schema, name = table.schema, table.table
        if not self.fast or not full or (schema, name) not in self.tables or columns != len(table.columns):
            return None
        if any(not c.name for c in table.columns):
            return None  # (the library path reports the missing metadata)
        decoder = self._decoder(table_id, table.columns, schema, name)
        if decoder is None:
            return None
        changes = _changes_of(op, schema, name, decoder.images(body))
        self.decoded["fast"] += 1
        self._decoded_metric["fast"].inc()
        return self._rows(schema, name, changes)

    def _decoder(self, table_id: int, columns: Any, schema: str, table: str) -> RowDecoder | None:
        """The compiled decoder of a table map's columns, or None when the library must decode it."""
        cached = self._by_table_id.get(table_id)
        if cached is not None and cached[0] is columns:  # the same table map as the last event of this id
            return cached[1]
        specs = tuple(column_spec(c) for c in columns)
        needed = self.needed.get((schema, table))
        layout = (specs, needed)
        if layout in self._by_layout:
            decoder = self._by_layout[layout]
        else:
            try:
                decoder = RowDecoder(specs, needed, parse_json)
            except DecodeError as exc:
                decoder = None
                log.info("source.library_decoding", table=f"{schema}.{table}", reason=str(exc))
            if len(self._by_layout) >= _DECODERS_MAX:
                self._by_layout.clear()
            self._by_layout[layout] = decoder
        if len(self._by_table_id) >= _DECODERS_MAX:  # table ids change with every DDL: keep this bounded
            self._by_table_id.clear()
        self._by_table_id[table_id] = (columns, decoder)
        return decoder

    def _fast_changes(self, event: RowsEvent) -> tuple[RowChange, ...] | None:
        """Decode the event's rows with rowdecode.py; None leaves them to the library (nothing read yet)."""
        if type(event) not in _ROW_EVENTS or not event.complete or event.number_of_columns != len(event.columns):
            return None
        if not _images_full(event):
            return None
        _require_names(event)
        decoder = self._decoder(event.table_id, event.columns, event.schema, event.table)
        if decoder is None:
            return None
        images = decoder.images(event.packet.read(event.event_size - event.packet.read_bytes))
        return _changes_of(_ROW_EVENTS[type(event)], event.schema, event.table, images)

    def close(self) -> None:
        if self._stream is not None:
            # closing a broken connection must not mask the error that broke it
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None
