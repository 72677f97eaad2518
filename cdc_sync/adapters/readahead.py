"""The binlog's packets read ahead of python-mysql-replication: the events of every transaction, cheaply.

A single-row transaction is four or five events (GTID, annotation, table map, rows, XID), and most of them
belong to tables nobody maps. The library builds an event object for each, with its table map parsed anew
every time; that, not row decoding, is what small transactions cost. Here each packet's 19-byte header is read
first, and:

* a GTID (MariaDB's or MySQL's) or an XID becomes the RawBegin or RawCommit it stands for, from a few fixed
  fields;
* a MariaDB annotation (the statement's text, which the worker never reads) is dropped;
* a table map of a table that is not streamed is dropped after its names are read, and so are the rows events
  that refer to it by table id;
* a rows event of a streamed table (plain insert, update or delete, v1 or v2) has its header and bitmaps read
  here and its row images handed to ``rows`` (binlog.py decodes them with rowdecode.py), with the library's
  Table of its map; ``rows`` may return None (a layout rowdecode does not read): the library decodes it;
* a table map of a streamed table whose bytes (table id, names, column types, metadata) were seen before puts
  the library's Table built then back in the library's table map, so its columns are the same objects and the
  compiled row decoder is found by identity (binlog.py);
* a compressed event (MariaDB's ``log_bin_compress``, MySQL's transaction payloads) is expanded into the
  uncompressed events it stands for (core/binlogframes.py), which are then read as if the server had sent them;
* everything else (format descriptions, rotations, queries, heartbeats, rows of mapped tables, XA, any type
  this module does not know) goes to the library, which reads the very same packet.

The library keeps the connection: it connects, and it is handed back the packet read here when it should decode
one (``Replay``). What it reads by itself is watched as well (``library_read``), so its table map and this
module's view of table ids never disagree.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import pymysql
from pymysql.protocol import MysqlPacket

from cdc_sync import metrics as m
from cdc_sync.core.binlogframes import (
    MARIADB_UNCOMPRESSED_TYPE,
    TRANSACTION_PAYLOAD_EVENT,
    mariadb_uncompressed,
    mysql_payload_events,
)
from cdc_sync.core.events import Op, RawBegin, RawCommit, RawEvent

XID_EVENT = 16
TABLE_MAP_EVENT = 19
ROTATE_EVENT = 4
MARIADB_ANNOTATE_ROWS_EVENT = 160
MARIADB_GTID_EVENT = 162
MYSQL_GTID_EVENT = 33
# rows events: v1 (MariaDB), v2 (MySQL), MySQL's partial JSON update, MariaDB's compressed v1 and v2
ROWS_EVENTS = frozenset({23, 24, 25, 30, 31, 32, 39, 166, 167, 168, 169, 170, 171})
_MARIADB_GTID_STANDALONE = 0x01
_HEADER = struct.Struct("<xIBIIIH")  # the OK byte, then timestamp, type, server id, size, next position, flags
_GTID = struct.Struct("<QIB")  # MariaDB GTID: sequence number, domain, flags
_MYSQL_GNO = struct.Struct("<Q")  # MySQL GTID: flags (1), source uuid (16), then the transaction number
_MAPS_MAX = 1024  # table maps remembered (a table's map changes with its DDL; the bound is for churn)


# (the change, table id, the library's Table of its map, number of columns, whether both images are FULL, the row
# images)
RowsHook = Callable[[Op, int, Any, int, bool, bytes], RawEvent | None]
# plain rows events: v1 (23-25, MariaDB) and v2 (30-32, MySQL); an update's has two column bitmaps
_PLAIN_ROWS = {23: Op.INSERT, 24: Op.UPDATE, 25: Op.DELETE, 30: Op.INSERT, 31: Op.UPDATE, 32: Op.DELETE}


def rows_body(
    data: bytes, kind: int, post_header_len: tuple[int, ...] | None, checksum: bool
) -> tuple[Op, int, bool, bytes] | None:
    """A plain rows event packet's change, number of columns, whether its column bitmaps are all set (FULL
    images), and its row images; None for another kind or layout (compressed, partial JSON, a post-header of
    unusual length)."""
    op = _PLAIN_ROWS.get(kind)
    if op is None:
        return None
    v2 = kind >= 30
    standard = 10 if v2 else 8  # table id (6), flags (2), [v2: the extra data's length (2), which counts itself]
    if post_header_len is not None and len(post_header_len) >= kind and post_header_len[kind - 1] != standard:
        return None
    at = 28
    if v2:
        extra = data[28] | data[29] << 8
        if extra < 2:
            return None
        at = 28 + extra
    end = len(data) - 4 if checksum else len(data)
    first = data[at]
    if first < 251:
        columns, at = first, at + 1
    elif first == 252:
        columns, at = data[at + 1] | data[at + 2] << 8, at + 3
    elif first == 253:
        columns, at = int.from_bytes(data[at + 1 : at + 4], "little"), at + 4
    else:
        return None
    width = (columns + 7) // 8
    full = _full_bitmap(columns)
    ok = data[at : at + width] == full
    at += width
    if op is Op.UPDATE:
        ok = ok and data[at : at + width] == full
        at += width
    if at > end:
        return None
    return op, columns, ok, data[at:end]


@functools.lru_cache(maxsize=64)
def _full_bitmap(columns: int) -> bytes:
    return ((1 << columns) - 1).to_bytes((columns + 7) // 8, "little")


class Dropped:
    """An event read here that nothing downstream needs."""


DROPPED = Dropped()


class ReadAhead:
    """Decides, per packet, whether the library needs to see it (see the module docstring).

    ``tables``: the (schema, table) pairs whose events are decoded, as the binlog names them.
    """

    def __init__(self, tables: set[tuple[str, str]], rows: RowsHook | None = None) -> None:
        self.tables = tables
        self.rows = rows
        self.checksum = False  # whether events end with a CRC32 (as the library found at connect)
        self.unmapped: set[int] = set()  # table ids of tables that are not streamed (in the current file)
        self._maps: dict[bytes, Any] = {}  # a streamed table's map (body, no checksum) -> the library's Table
        self._pending_map: tuple[int, bytes] | None = None  # the map handed to the library, to remember its Table
        self.post_header_len: tuple[int, ...] | None = None  # of the last format description event
        self.decided = 0  # events decided here (tests, bench)
        self.rows_decided = 0  # ... of which rows events of streamed tables
        self.expanded = 0  # compressed events expanded (tests, bench)
        self._expanded_metric = {k: m.COMPRESSED_EVENTS.labels(kind=k) for k in ("mariadb", "mysql")}

    def decide(self, data: bytes, stream: Any) -> RawEvent | Dropped | None:
        """What a packet of the stream is: a RawEvent, DROPPED, or None when the library must decode it.

        ``stream``: the library's reader, whose table map (table id -> Table) and position (``log_pos``) are
        updated as its own ``fetchone`` would for an event decided here.
        """
        if len(data) < 24 or data[0] != 0:
            return None  # not an event packet (end of stream, error): the library knows what to do
        timestamp, kind, server_id, _size, next_pos, _flags = _HEADER.unpack_from(data)
        if kind == MARIADB_GTID_EVENT:
            seq, domain, flags = _GTID.unpack_from(data, 20)
            raw: RawEvent | Dropped = RawBegin(
                gtid=f"{domain}-{server_id}-{seq}", opens=not flags & _MARIADB_GTID_STANDALONE
            )
        elif kind == MYSQL_GTID_EVENT and len(data) >= 45:
            sid = data[21:37].hex()
            (gno,) = _MYSQL_GNO.unpack_from(data, 37)
            raw = RawBegin(gtid=f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}:{gno}", opens=False)
        elif kind == XID_EVENT:
            raw = RawCommit(stream.log_file, next_pos, timestamp)
        elif kind == MARIADB_ANNOTATE_ROWS_EVENT:
            raw = DROPPED
        elif kind == TABLE_MAP_EVENT:
            if not self._table_map(data, stream.table_map):
                return None
            raw = DROPPED
        elif kind in ROWS_EVENTS:
            table_id = int.from_bytes(data[20:26], "little")
            if table_id in self.unmapped:
                raw = DROPPED
            else:
                table = stream.table_map.get(table_id)
                body = rows_body(data, kind, self.post_header_len, self.checksum) if table is not None else None
                rows = self.rows(body[0], table_id, table, *body[1:]) if body is not None and self.rows else None
                if rows is None:
                    return None
                self.rows_decided += 1
                raw = rows
        else:
            return None
        self.decided += 1
        if next_pos:
            stream.log_pos = next_pos  # as the library's fetchone does for every event but a rotation
        return raw

    def _table_map(self, data: bytes, table_map: dict[int, Any]) -> bool:
        """Whether the map is dealt with here (not streamed, or a streamed table's map seen before)."""
        table_id = int.from_bytes(data[20:26], "little")
        at = 28  # table id (6), flags (2), then the schema name (length byte, bytes, NUL), the table name likewise
        schema_len = data[at]
        schema = data[at + 1 : at + 1 + schema_len]
        at += 2 + schema_len
        table = data[at + 1 : at + 1 + data[at]]
        if (schema.decode("utf-8", "replace"), table.decode("utf-8", "replace")) not in self.tables:
            self.unmapped.add(table_id)
            table_map.pop(table_id, None)
            return True
        self.unmapped.discard(table_id)
        body = data[20 : len(data) - 4] if self.checksum else data[20:]
        known = self._maps.get(body)
        if known is not None:
            table_map[table_id] = known
            return True
        self._pending_map = (table_id, body)
        return False

    def expand(self, data: bytes) -> list[bytes] | None:
        """The packets a compressed event stands for, or None when ``data`` is no compressed event.

        Raises binlogframes.FrameError when it cannot be expanded (the caller reports it as undecodable).
        """
        if len(data) < 24 or data[0] != 0:
            return None
        kind = data[5]
        if kind in MARIADB_UNCOMPRESSED_TYPE:
            events = [mariadb_uncompressed(data[1:], self.checksum, self.post_header_len)]
            self._expanded_metric["mariadb"].inc()
        elif kind == TRANSACTION_PAYLOAD_EVENT:
            events = mysql_payload_events(data[1:], self.checksum)
            self._expanded_metric["mysql"].inc()
        else:
            return None
        self.expanded += 1
        return [b"\0" + event for event in events]

    def library_read(self, event: Any) -> None:
        """Called with each event the library returned (None at the end), to keep the table ids in step."""
        table_id = getattr(event, "table_id", None)
        pending, self._pending_map = self._pending_map, None
        if type(event).__name__ == "TableMapEvent" and table_id is not None:
            self.unmapped.discard(table_id)
            if pending is not None and pending[0] == table_id:
                if len(self._maps) >= _MAPS_MAX:
                    self._maps.clear()
                self._maps[pending[1]] = event.get_table()
        elif type(event).__name__ == "FormatDescriptionEvent":
            self.post_header_len = tuple(event.post_header_len)
        elif type(event).__name__ == "RotateEvent":
            # a new file may come from a restarted server, which numbers its tables anew (the library empties its
            # table map then too)
            self.unmapped.clear()


_MAX_PACKET = 0xFFFFFF  # a payload this long continues in the next packet
_READ_SIZE = 256 * 1024


class PacketReader:
    """The stream connection's packets, read through one buffer of its own (taking over what the connection had
    buffered), so that whether the next packet is already here is known (``buffered``).

    Errors as PyMySQL raises them: an error packet raises its MySQL error, a wrong sequence number or a closed
    connection ``OperationalError`` 2013; a read timeout is the socket's ``TimeoutError``.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._rfile = connection._rfile
        self._buf = b""
        self._pos = 0

    def _fill(self, need: int) -> None:
        while (missing := need - (len(self._buf) - self._pos)) > 0:
            # what is there (up to _READ_SIZE, waiting only when nothing is), or a large event's rest in one read
            chunk = self._rfile.read1(_READ_SIZE) if missing <= _READ_SIZE else self._rfile.read(missing)
            if not chunk:
                raise pymysql.err.OperationalError(2013, "Lost connection to the server: the binlog stream closed")
            self._buf = self._buf[self._pos :] + chunk
            self._pos = 0

    def read(self) -> bytes:
        """The next packet's payload (the parts of one longer than 16 MB joined)."""
        parts: list[bytes] = []
        while True:
            self._fill(4)
            at = self._pos
            buf = self._buf
            length = buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16
            seq = buf[at + 3]
            if seq != self._connection._next_seq_id:
                raise pymysql.err.OperationalError(
                    2013, f"packet sequence number wrong: got {seq}, expected {self._connection._next_seq_id}"
                )
            self._connection._next_seq_id = (seq + 1) % 256
            self._fill(4 + length)
            at = self._pos
            parts.append(self._buf[at + 4 : at + 4 + length])
            self._pos = at + 4 + length
            if length < _MAX_PACKET:
                break
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if data[:1] == b"\xff":
            MysqlPacket(data, "utf8").raise_for_error()
        return data

    def buffered(self) -> bool:
        """Whether a whole packet is already in the buffer (reading it will not wait for the network)."""
        left = len(self._buf) - self._pos
        if left < 4:
            return False
        at = self._pos
        return left >= 4 + (self._buf[at] | self._buf[at + 1] << 8 | self._buf[at + 2] << 16)


class Replay:
    """The stream connection's packet reader, as the library calls it (``_read_packet``): first the packets put
    back (read here, or expanded here from a compressed event), in order, then the PacketReader's."""

    def __init__(self, reader: PacketReader) -> None:
        self.reader = reader
        self.pending: deque[bytes] = deque()

    def next(self) -> bytes:
        """The next packet's payload."""
        return self.pending.popleft() if self.pending else self.reader.read()

    def buffered(self) -> bool:
        return bool(self.pending) or self.reader.buffered()

    def __call__(self, packet_type: type = MysqlPacket) -> Any:
        return packet_type(self.next(), "utf8")
