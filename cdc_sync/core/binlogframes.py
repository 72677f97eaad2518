"""Compressed binlog events, turned into the equivalent uncompressed events as raw bytes.

Pure functions over bytes: the result is handed, unchanged, to a decoder that only knows the uncompressed
event types. An event's bytes are the 19-byte common header (timestamp u32, type u8, server_id u32,
event_size u32, log_pos u32, flags u16, little-endian), the body, and, when the binlog has checksums, a
4-byte CRC32 footer (``zlib.crc32`` of header + body, little-endian); ``event_size`` counts all of it.

MariaDB 10.2+ (``log_bin_compress=ON``) compresses one part of an event in place, with zlib:

* ``QUERY_COMPRESSED_EVENT`` (165): only the statement text. The post-header, the status variables and
  the database name with its NUL stay as they are; the text after the NUL is the compressed buffer.
* ``WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT_V1`` (166-168) and ``..._EVENT`` (169-171, the v2 layout
  with the variable-length "extra data" header): only the row images. The post-header (table id, flags,
  v2 extra data), the column count and the column bitmap(s) (two for updates) stay as they are.

A compressed buffer is one byte ``0x80 | n`` (bits 4-6: algorithm, 0 = zlib, the only one; bits 0-2: ``n``,
1 to 4), then the uncompressed length in ``n`` bytes, most significant byte first, then a zlib stream.

Sources read (MariaDB/server, via the code index; the index gives character offsets, not lines):
``sql/log_event.cc`` (the part shared by server and mariadb-binlog since 10.5): ``binlog_buf_compress``,
``binlog_get_uncompress_len``, ``binlog_buf_uncompress``, ``query_event_uncompress``,
``row_log_event_uncompress`` (the slave I/O thread's and mariadb-binlog's event rewrite this module mirrors),
``Query_compressed_log_event::Query_compressed_log_event``, ``Rows_log_event::Rows_log_event`` and
``Rows_log_event::uncompress_buf``, the ``Format_description_log_event`` post-header lengths (165: 13,
166-168: 8, 169-171: 10); ``sql/log_event_server.cc`` (commit 001f93df2be5): ``Query_log_event::write``,
``Query_compressed_log_event::write``, ``Rows_log_event::write_data_header`` (always the 8-byte v1
post-header), ``Rows_log_event::write_data_body`` and ``Rows_log_event::write_compressed``. Checked against
a real MariaDB 10.11.19 binlog (see tests/unit/test_binlogframes.py): it writes the V1 types 166-168 only.

MySQL 8.0.20+ (``binlog_transaction_compression=ON``) writes a whole transaction after its GTID event as one
``TRANSACTION_PAYLOAD_EVENT`` (40): a header of fields, each a type, a length and a value, all three
net_field_length-encoded (0 ends the header; 1 payload size, 2 compression type, 0 ZSTD or 255 NONE,
3 uncompressed size; unknown types are skipped by their length), then the payload: the events back to back,
each with its common header and without a checksum, as one zstd stream (or raw for NONE).

Sources read: mysql/mysql-server ``libs/mysql/binlog/event/codecs/binary.cpp``
(``Transaction_payload::decode``: payload size and compression type are required, uncompressed size is
informational, unknown fields are skipped by length; ``Transaction_payload::encode``: uncompressed size is
written only when the type is not NONE), ``libs/mysql/binlog/event/control_events.cpp``
(``Transaction_payload_event(const char *buf, ...)``: the fields start right after the common header, the
payload right after the end mark), ``Decompressing_event_object_istream::decode_from_buffer`` ("Events
contained in a Transaction_payload_log_event never have a checksum (regardless of configuration)"; it sets
each inner event's log_pos to the payload event's) and mysqlbinlog's
``Transaction_payload_log_event::print`` (adds a CRC32 footer to each inner event, event_size + 4, when the
outer binlog has CRC32, and sets log_pos to the payload event's). Cross-checked with go-mysql-org/go-mysql
``replication/transaction_payload_event.go``: same field numbers and compression codes, inner events parsed
with checksums off and split by the event_size at offset 9; differences: it reads the field type and length
as single bytes and the value as a fixed-length little-endian integer of that length (the same as
net_field_length below 251 only; it never uses the size it reads), refuses NONE, takes the payload as the
rest of the event, and drops a tail shorter than a header silently. This module follows MySQL and refuses
such a tail. There is no MySQL server here: the MySQL side is checked against those sources only.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import zstandard

HEADER_LEN = 19
CHECKSUM_LEN = 4

QUERY_EVENT = 2
WRITE_ROWS_EVENT_V1 = 23
UPDATE_ROWS_EVENT_V1 = 24
DELETE_ROWS_EVENT_V1 = 25
WRITE_ROWS_EVENT_V2 = 30
UPDATE_ROWS_EVENT_V2 = 31
DELETE_ROWS_EVENT_V2 = 32
TRANSACTION_PAYLOAD_EVENT = 40
QUERY_COMPRESSED_EVENT = 165
WRITE_ROWS_COMPRESSED_EVENT_V1 = 166
UPDATE_ROWS_COMPRESSED_EVENT_V1 = 167
DELETE_ROWS_COMPRESSED_EVENT_V1 = 168
WRITE_ROWS_COMPRESSED_EVENT = 169
UPDATE_ROWS_COMPRESSED_EVENT = 170
DELETE_ROWS_COMPRESSED_EVENT = 171

MARIADB_UNCOMPRESSED_TYPE: Mapping[int, int] = {
    QUERY_COMPRESSED_EVENT: QUERY_EVENT,
    WRITE_ROWS_COMPRESSED_EVENT_V1: WRITE_ROWS_EVENT_V1,
    UPDATE_ROWS_COMPRESSED_EVENT_V1: UPDATE_ROWS_EVENT_V1,
    DELETE_ROWS_COMPRESSED_EVENT_V1: DELETE_ROWS_EVENT_V1,
    WRITE_ROWS_COMPRESSED_EVENT: WRITE_ROWS_EVENT_V2,
    UPDATE_ROWS_COMPRESSED_EVENT: UPDATE_ROWS_EVENT_V2,
    DELETE_ROWS_COMPRESSED_EVENT: DELETE_ROWS_EVENT_V2,
}
"""Each MariaDB compressed event type and the uncompressed type :func:`mariadb_uncompressed` gives it."""

# The post-header lengths MariaDB 10.2+ declares in its format description event for these types.
MARIADB_POST_HEADER_LEN: Mapping[int, int] = {
    QUERY_COMPRESSED_EVENT: 13,
    WRITE_ROWS_COMPRESSED_EVENT_V1: 8,
    UPDATE_ROWS_COMPRESSED_EVENT_V1: 8,
    DELETE_ROWS_COMPRESSED_EVENT_V1: 8,
    WRITE_ROWS_COMPRESSED_EVENT: 10,
    UPDATE_ROWS_COMPRESSED_EVENT: 10,
    DELETE_ROWS_COMPRESSED_EVENT: 10,
}

PAYLOAD_COMPRESSION_ZSTD = 0
PAYLOAD_COMPRESSION_NONE = 255

_HEADER = struct.Struct("<IBIIIH")
_EVENT_SIZE_OFFSET = 9
_LOG_POS_OFFSET = 13
_QUERY_HEADER_LEN = 13  # thread_id 4, exec_time 4, db_len 1, error_code 2, status_vars_len 2
_Q_DB_LEN_OFFSET = 8
_Q_STATUS_VARS_LEN_OFFSET = 11
_ROWS_HEADER_LEN_V1 = 8  # table_id 6, flags 2
_ROWS_HEADER_LEN_V2 = 10  # ... then the length (2 bytes, counting itself) of the extra data
_UPDATE_TYPES = frozenset({UPDATE_ROWS_COMPRESSED_EVENT_V1, UPDATE_ROWS_COMPRESSED_EVENT})
_V2_TYPES = frozenset({WRITE_ROWS_COMPRESSED_EVENT, UPDATE_ROWS_COMPRESSED_EVENT, DELETE_ROWS_COMPRESSED_EVENT})

_FIELD_END = 0
_FIELD_PAYLOAD_SIZE = 1
_FIELD_COMPRESSION_TYPE = 2
_FIELD_UNCOMPRESSED_SIZE = 3


class FrameError(ValueError):
    """The bytes are not a well-formed event of the kind expected; the message says what is wrong."""


class Header(NamedTuple):
    """The 19-byte common header of a binlog event."""

    timestamp: int
    event_type: int
    server_id: int
    event_size: int
    log_pos: int
    flags: int


def header(data: bytes) -> Header:
    """Decode the common header at the start of ``data`` (only its first 19 bytes are read)."""
    if len(data) < HEADER_LEN:
        raise FrameError(f"event of {len(data)} bytes is shorter than the {HEADER_LEN}-byte common header")
    return Header(*_HEADER.unpack_from(data))


def mariadb_uncompressed(data: bytes, checksum: bool, post_header_len: Sequence[int] | None = None) -> bytes:
    """Return a MariaDB compressed query or rows event as the uncompressed event it stands for.

    ``data`` is exactly one event (header, body and, when ``checksum`` is True, its CRC32 footer, which is
    verified). The result has the uncompressed type (:data:`MARIADB_UNCOMPRESSED_TYPE`), the same header
    otherwise (timestamp, server_id, log_pos and flags untouched), the uncompressed statement text or row
    images in place of the compressed buffer, ``event_size`` fixed and, when ``checksum`` is True, a new
    CRC32 footer. ``post_header_len`` is the format description event's post-header lengths, indexed by
    event type - 1 (e.g. pymysqlreplication's ``FormatDescriptionEvent.post_header_len``); None means
    MariaDB 10.2+'s (:data:`MARIADB_POST_HEADER_LEN`). Raises :class:`FrameError` when ``data`` is not such
    an event or is malformed in any way.
    """
    head, body = _split(data, checksum)
    kind = head.event_type
    if kind not in MARIADB_UNCOMPRESSED_TYPE:
        raise FrameError(f"event type {kind} is not a MariaDB compressed event")
    fixed = _post_header_len(kind, post_header_len)
    start = _query_text_start(body, fixed) if kind == QUERY_COMPRESSED_EVENT else _rows_data_start(body, kind, fixed)
    plain = _mariadb_inflate(body[start:])
    event = bytearray(data[:HEADER_LEN])
    event[4] = MARIADB_UNCOMPRESSED_TYPE[kind]
    event += body[:start]
    event += plain
    return _finish(event, checksum)


def mysql_payload_events(data: bytes, checksum: bool) -> list[bytes]:
    """Return the events a MySQL ``TRANSACTION_PAYLOAD_EVENT`` holds, in order, as full event bytes.

    ``data`` is exactly one event (header, body and, when ``checksum`` is True, its CRC32 footer, which is
    verified). The payload holds the transaction's events after its GTID event (``QUERY`` BEGIN,
    ``TABLE_MAP``, rows events, ``XID``...). MySQL writes those inner events without a checksum whatever the
    binlog's ``binlog_checksum``; since the caller's decoder strips a 4-byte footer from every event when
    ``checksum`` is True, each returned event then gets a CRC32 footer (and ``event_size`` + 4), as
    mysqlbinlog does; with ``checksum`` False it is returned without one. Each returned event's ``log_pos``
    is set to the payload event's (the inner events' own log_pos is not a position in the binlog), as
    MySQL's applier and mysqlbinlog do. Raises :class:`FrameError` on anything malformed: truncation, bad
    zstd data, an unknown compression type, a size that does not match, an inner event that runs past the
    payload, or a payload that holds no event.
    """
    head, body = _split(data, checksum)
    if head.event_type != TRANSACTION_PAYLOAD_EVENT:
        raise FrameError(f"event type {head.event_type} is not TRANSACTION_PAYLOAD_EVENT ({TRANSACTION_PAYLOAD_EVENT})")
    payload_size, compression, uncompressed_size, start = _payload_fields(body)
    if payload_size != len(body) - start:
        raise FrameError(f"payload size is {payload_size} but {len(body) - start} bytes follow the payload header")
    payload = body[start:]
    if compression == PAYLOAD_COMPRESSION_ZSTD:
        raw = _zstd_inflate(payload)
    elif compression == PAYLOAD_COMPRESSION_NONE:
        raw = payload
    else:
        raise FrameError(f"unknown payload compression type {compression}")
    if uncompressed_size is not None and uncompressed_size != len(raw):
        raise FrameError(f"payload declares {uncompressed_size} uncompressed bytes but holds {len(raw)}")
    return [_finish(inner, checksum, log_pos=head.log_pos) for inner in _split_events(raw)]


# ---- shared ----------------------------------------------------------------------------------------


def _split(data: bytes, checksum: bool) -> tuple[Header, bytes]:
    """Check that ``data`` is exactly one event (and its footer's CRC32) and return its header and body."""
    head = header(data)
    if head.event_size != len(data):
        raise FrameError(f"event_size says {head.event_size} bytes but the event has {len(data)}")
    end = len(data) - (CHECKSUM_LEN if checksum else 0)
    if end < HEADER_LEN:
        raise FrameError(f"event of {len(data)} bytes has no room for header and checksum")
    if checksum and zlib.crc32(data[:end]) != int.from_bytes(data[end:], "little"):
        raise FrameError("CRC32 footer does not match the event")
    return head, data[HEADER_LEN:end]


def _finish(event: bytearray | bytes, checksum: bool, log_pos: int | None = None) -> bytes:
    """Fix ``event_size`` (and ``log_pos`` if given) of a footer-less event and append a CRC32 if asked."""
    out = bytearray(event)
    struct.pack_into("<I", out, _EVENT_SIZE_OFFSET, len(out) + (CHECKSUM_LEN if checksum else 0))
    if log_pos is not None:
        struct.pack_into("<I", out, _LOG_POS_OFFSET, log_pos)
    if checksum:
        out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def _net_field_length(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """Decode a length-encoded integer at ``pos``; return it and the position after it."""
    if pos >= len(buf):
        raise FrameError(f"{what}: truncated before a length-encoded integer")
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    width = {252: 2, 253: 3, 254: 8}.get(first)
    if width is None:
        raise FrameError(f"{what}: invalid length-encoded integer prefix 0x{first:02x}")
    if pos + 1 + width > len(buf):
        raise FrameError(f"{what}: truncated length-encoded integer")
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


# ---- MariaDB ---------------------------------------------------------------------------------------


def _post_header_len(kind: int, post_header_len: Sequence[int] | None) -> int:
    """The post-header length of ``kind``, from the format description's table or MariaDB's defaults."""
    if post_header_len is None:
        return MARIADB_POST_HEADER_LEN[kind]
    if len(post_header_len) < kind:
        raise FrameError(f"format description lists {len(post_header_len)} post-header lengths, none for type {kind}")
    length = post_header_len[kind - 1]
    if kind == QUERY_COMPRESSED_EVENT:
        if length < _QUERY_HEADER_LEN:
            raise FrameError(f"query post-header length {length} is shorter than {_QUERY_HEADER_LEN}")
    elif length != MARIADB_POST_HEADER_LEN[kind]:
        raise FrameError(
            f"rows event type {kind} needs a post-header of {MARIADB_POST_HEADER_LEN[kind]} bytes, "
            f"the format description says {length}"
        )
    return length


def _query_text_start(body: bytes, fixed: int) -> int:
    """Where the compressed statement text starts in a query event's body (after the db name's NUL)."""
    if len(body) < fixed:
        raise FrameError(f"query event body of {len(body)} bytes is shorter than its {fixed}-byte post-header")
    db_len = body[_Q_DB_LEN_OFFSET]
    status_len = int.from_bytes(body[_Q_STATUS_VARS_LEN_OFFSET : _Q_STATUS_VARS_LEN_OFFSET + 2], "little")
    nul = fixed + status_len + db_len
    if nul >= len(body):
        raise FrameError("query event ends inside its status variables or database name")
    if body[nul] != 0:
        raise FrameError("query event's database name is not NUL-terminated")
    return nul + 1


def _rows_data_start(body: bytes, kind: int, fixed: int) -> int:
    """Where the compressed row images start in a rows event's body (after the column bitmaps)."""
    pos = _ROWS_HEADER_LEN_V1
    if len(body) < fixed:
        raise FrameError(f"rows event body of {len(body)} bytes is shorter than its {fixed}-byte post-header")
    if kind in _V2_TYPES:
        extra_len = int.from_bytes(body[pos : pos + 2], "little")
        if extra_len < 2:
            raise FrameError(f"rows event extra-data length {extra_len} is below 2")
        pos += extra_len
    width, pos = _net_field_length(body, pos, "rows event column count")
    pos += ((width + 7) // 8) * (2 if kind in _UPDATE_TYPES else 1)
    if pos >= len(body):
        raise FrameError("rows event ends before its row data")
    return pos


def _mariadb_inflate(buf: bytes) -> bytes:
    """Decompress a MariaDB compressed buffer (``0x80 | n``, n-byte big-endian length, zlib stream)."""
    if not buf:
        raise FrameError("compressed buffer is empty")
    first = buf[0]
    if first & 0xE0 != 0x80:
        raise FrameError(f"compressed buffer starts with 0x{first:02x}, not 0x80 | length bytes")
    if first & 0x70:
        raise FrameError(f"compressed buffer uses algorithm {(first & 0x70) >> 4}; only 0 (zlib) exists")
    width = first & 0x07
    if not 1 <= width <= 4:
        raise FrameError(f"compressed buffer declares {width} length bytes; 1 to 4 are allowed")
    if len(buf) < 1 + width:
        raise FrameError("compressed buffer is truncated inside its length")
    length = int.from_bytes(buf[1 : 1 + width], "big")
    if length == 0:
        raise FrameError("compressed buffer declares an uncompressed length of 0")
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(buf[1 + width :], length + 1)
    except zlib.error as exc:
        raise FrameError(f"bad zlib data: {exc}") from exc
    if len(plain) > length:
        raise FrameError(f"zlib data inflates past the declared {length} bytes")
    if not inflater.eof:
        raise FrameError("zlib data is truncated")
    if inflater.unused_data:
        raise FrameError(f"{len(inflater.unused_data)} bytes follow the zlib data")
    if len(plain) != length:
        raise FrameError(f"zlib data inflates to {len(plain)} bytes, the buffer declares {length}")
    return plain


# ---- MySQL -----------------------------------------------------------------------------------------


def _payload_fields(body: bytes) -> tuple[int, int, int | None, int]:
    """Decode the payload header: (payload size, compression type, uncompressed size or None, payload start)."""
    fields: dict[int, int] = {}
    pos = 0
    while True:
        kind, pos = _net_field_length(body, pos, "payload header field type")
        if kind == _FIELD_END:
            break
        length, pos = _net_field_length(body, pos, "payload header field length")
        if pos + length > len(body):
            raise FrameError(f"payload header field {kind} of {length} bytes runs past the event")
        if kind in (_FIELD_PAYLOAD_SIZE, _FIELD_COMPRESSION_TYPE, _FIELD_UNCOMPRESSED_SIZE):
            value, end = _net_field_length(body, pos, f"payload header field {kind}")
            if end - pos != length:
                raise FrameError(f"payload header field {kind} says {length} bytes but its value takes {end - pos}")
            fields[kind] = value
        pos += length
    if _FIELD_PAYLOAD_SIZE not in fields:
        raise FrameError("payload header has no payload size")
    if _FIELD_COMPRESSION_TYPE not in fields:
        raise FrameError("payload header has no compression type")
    return fields[_FIELD_PAYLOAD_SIZE], fields[_FIELD_COMPRESSION_TYPE], fields.get(_FIELD_UNCOMPRESSED_SIZE), pos


def _zstd_inflate(payload: bytes) -> bytes:
    """Decompress a zstd stream (one or more frames; a frame may lack its content size)."""
    if not payload:
        raise FrameError("zstd payload is empty")
    parts: list[bytes] = []
    rest = payload
    decompressor = zstandard.ZstdDecompressor()
    while rest:
        inflater = decompressor.decompressobj()
        try:
            parts.append(inflater.decompress(rest))
        except zstandard.ZstdError as exc:
            raise FrameError(f"bad zstd data: {exc}") from exc
        if not inflater.eof:
            raise FrameError("zstd data is truncated")
        rest = inflater.unused_data
    return b"".join(parts)


def _split_events(raw: bytes) -> list[bytes]:
    """Cut a payload into the events it holds, back to back, each sized by its header's event_size."""
    events: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < HEADER_LEN:
            raise FrameError(f"payload ends with {len(raw) - pos} bytes, too few for an event header")
        size = header(raw[pos : pos + HEADER_LEN]).event_size
        if size < HEADER_LEN:
            raise FrameError(f"inner event at payload offset {pos} has event_size {size}, below {HEADER_LEN}")
        if pos + size > len(raw):
            raise FrameError(
                f"inner event at payload offset {pos} of {size} bytes runs past the payload's {len(raw)} bytes"
            )
        events.append(raw[pos : pos + size])
        pos += size
    if not events:
        raise FrameError("payload holds no event")
    return events
