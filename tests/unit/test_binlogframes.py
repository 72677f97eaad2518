"""cdc_sync.core.binlogframes: compressed binlog events turned into the uncompressed events they stand for.

The MariaDB fixtures are real events, read from the binlog files of a private MariaDB 10.11.19
(10.11.19-MariaDB-0+deb12u1, binlog_checksum=CRC32, binlog_format=ROW, binlog_row_image=FULL) started with
tools.devservers.start_mariadb. ``SET GLOBAL log_bin_compress=ON, GLOBAL log_bin_compress_min_len=10``, then
from a new connection::

    CREATE TABLE d.t (id INT PRIMARY KEY, name VARCHAR(50), body TEXT)   -- before the compressed run
    CREATE TABLE d.m (id INT PRIMARY KEY, body TEXT NULL)
    INSERT INTO d.t VALUES (1, 'one', 'short body')                       -- WRITE_ONE
    INSERT INTO d.t VALUES (2, 'two', 'b2'), (3, 'three', 'b3'), (4, 'four', NULL)   -- WRITE_THREE
    INSERT INTO d.t VALUES (5, 'long', REPEAT('abcdefghij', 700))         -- WRITE_LONG_TEXT
    UPDATE d.t SET name = CONCAT(name, '!') WHERE id IN (1, 2, 3)         -- UPDATE_THREE
    DELETE FROM d.t WHERE id IN (2, 3, 4)                                 -- DELETE_THREE
    INSERT INTO d.m SELECT seq, REPEAT(CHAR(65 + seq % 26), 300) FROM d.seq_1_to_100
        -- four rows events (binlog_row_event_max_size 8192); WRITE_26_OF_100 is the first
    SET SESSION binlog_format=STATEMENT;
    INSERT INTO d.s VALUES (99, 'a statement-logged insert, long enough to compress')  -- QUERY_INSERT
    ALTER TABLE d.t COMMENT 'a table comment that is long enough to be compressed'     -- QUERY_DDL

The same statements were then run again with ``log_bin_compress=OFF`` against the same tables (same table
ids): the ``*_PLAIN`` fixtures are those events. Uncompressing a compressed event must give the plain event's
body byte for byte (a query event's thread id aside, which belongs to the session) with the plain event's
type and size, while timestamp, server_id, log_pos and flags stay those of the compressed event.

The MySQL TRANSACTION_PAYLOAD_EVENT tests build their events per MySQL's source (there is no MySQL server
here), see the module docstring.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import zstandard

from cdc_sync.core.binlogframes import (
    MARIADB_UNCOMPRESSED_TYPE,
    FrameError,
    Header,
    header,
    mariadb_uncompressed,
    mysql_payload_events,
)

# ---- real MariaDB 10.11.19 events (hex), see the module docstring -------------------------------------

WRITE_ONE = bytes.fromhex(
    "e211116ba601000000400000006b0200000000120000000000010003078115789cfbc1c8c0c0c09c9f97cac5509c915f54a29094"
    "9f5209003cf906476879640d"
)
WRITE_ONE_PLAIN = bytes.fromhex(
    "e211116b1701000000360000003c020000000012000000000001000307f801000000036f6e650a0073686f727420626f64790063f279"
)
WRITE_THREE = bytes.fromhex(
    "e211116ba6010000004d000000ac0300000000120000000000010003078126789cfbc1c4c0c0c05c529ecfc49064f48319c8612d"
    "c9284a4d05728dffb000b92c69f9a54500b105095dfcb4b047"
)
WRITE_THREE_PLAIN = bytes.fromhex(
    "e211116b17010000004700000077030000000012000000000001000307f8020000000374776f02006232f8030000000574687265"
    "6502006233fc0400000004666f757274324f01"
)
UPDATE_THREE = bytes.fromhex(
    "e211116ba7010000006e00000042060000000012000000000001000307078165789cfbc1c8c0c0c09c9f97cac5509c915f54a290"
    "949f52f90324c802145444116502292d29cf67624832027358801c45308f19c8632dc9284a4d05728dc15c363017246d0c007541"
    "1a2bafe4db61"
)
UPDATE_THREE_PLAIN = bytes.fromhex(
    "e211116b1801000000870000004921000000001200000000000100030707f801000000036f6e650a0073686f727420626f6479f8"
    "01000000046f6e65210a0073686f727420626f6479f8020000000374776f02006232f8020000000474776f2102006232f8030000"
    "0005746872656502006233f80300000006746872656521020062332d2b7d41"
)
DELETE_THREE = bytes.fromhex(
    "e211116ba8010000004d0000005a0700000000120000000000010003078128789cfbc1c4c0c0c052529eafc8c49064f48319c863"
    "2bc9284a4d05f18dffb08064d3f24b8b00bf8909a181047344"
)
DELETE_THREE_PLAIN = bytes.fromhex(
    "e211116b1901000000490000005d220000000012000000000001000307f8020000000474776f2102006232f80300000006746872"
    "65652102006233fc0400000004666f75726a6952f5"
)
WRITE_LONG_TEXT = bytes.fromhex(
    "e211116ba60100000062000000f1040000000012000000000001000307821b64789cedc63b1180301400b037808a1aeb0afd01d7"
    "03fb8c28c04132e55d236299cf3d72daf6525b1fc77999999999999999999999999999d9df3e1a92db1fbbdb0aae"
)
WRITE_26_OF_100 = bytes.fromhex(
    "e211116ba601000000cb000000ff100000000017000000000000000203821f2e789cedd05711c2500004c0177a0f10ba064c0009"
    "9dd0ab7f19f7c1cc293801b712165108611e2d4d8602cb5626439165a9c950625966329459b636192a2cdb980c55966d4d861acb"
    "7626439d657b93a1c1b283c9d064d9d16468b1ec6432b459969b0c1d969d4d8698651793a1cbb2abc9d063d9cd64e8b3ec6e3224"
    "2c7b980c03963d4d8621cb5e26c388656f9361ccb28fc93061d9d76498b2ec6732cc58b630d91f614c5965eca5cc29"
)
QUERY_INSERT = bytes.fromhex(
    "e211116ba50100000098000000dc170000000006000000000000000000001a000000000001010000205400000000060373746404"
    "2d002d002d00008151789c05c1b10e40301006e057f9b79294dd68e820914ab4ecc2a524f4a477dedff70d3eb83962f071c2d10a"
    "d67e5c5c40d575166683e8a6f450d6e6e694e8c095858a5adc9c1328f3974e2863e7e72d2462ea1fff4a1a9d7ab63a06"
)
QUERY_INSERT_PLAIN = bytes.fromhex(
    "e211116b020100000090000000dd390100000007000000000000000000001a000000000001010000205400000000060373746404"
    "2d002d002d0000494e5345525420494e544f20642e732056414c554553202839392c2027612073746174656d656e742d6c6f6767"
    "656420696e736572742c206c6f6e6720656e6f75676820746f20636f6d707265737327291f43fa69"
)
QUERY_DDL = bytes.fromhex(
    "e211116ba5010000009b000000150200000000080000000000000000000023000000000001010000205400000000060373746404"
    "2d002d002d00812f0000000000000000814e789c1dca410a80201005d0abfc9dbbee60e14e0bc20b680e1aa81339dd3ff0ad9fb6"
    "de9cf07ab50669116c877366f750011262255cdc1a75819420b8072af70ceafce50261c4399e97c6a0a47ebd2f19e60b616740"
)


# The post-header lengths of that server's format description event (171 of them, index: event type - 1).
MARIADB_10_11_POST_HEADER_LEN = (
    [56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 228, 0, 4, 26, 8, 0, 0, 0, 8, 8, 8, 2, 0, 0, 0, 10, 10, 10]
    + [0] * 6
    + [10, 10, 10]
    + [0] * 119
    + [4, 19, 4, 0, 13, 8, 8, 8, 10, 10, 10]
)

PAIRS = [
    pytest.param(WRITE_ONE, WRITE_ONE_PLAIN, id="write-one-row"),
    pytest.param(WRITE_THREE, WRITE_THREE_PLAIN, id="write-three-rows"),
    pytest.param(UPDATE_THREE, UPDATE_THREE_PLAIN, id="update-three-rows"),
    pytest.param(DELETE_THREE, DELETE_THREE_PLAIN, id="delete-three-rows"),
]


# ---- helpers ------------------------------------------------------------------------------------------


def crc_ok(event: bytes) -> bool:
    """True when the event's last 4 bytes are the CRC32 of the rest."""
    return zlib.crc32(event[:-4]) == int.from_bytes(event[-4:], "little")


def without_footer(event: bytes) -> bytes:
    """The same event as a binlog without checksums has it."""
    out = bytearray(event[:-4])
    struct.pack_into("<I", out, 9, len(out))
    return bytes(out)


def with_footer(event: bytes) -> bytes:
    """Give a footer-less event (event_size counting no footer) a CRC32 footer and fix its event_size."""
    out = bytearray(event)
    struct.pack_into("<I", out, 9, len(out) + 4)
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


def make_event(event_type: int, body: bytes, *, checksum: bool = True, log_pos: int = 1000) -> bytes:
    """An event of ``event_type`` around ``body``, with a CRC32 footer when ``checksum``."""
    size = 19 + len(body) + (4 if checksum else 0)
    event = struct.pack("<IBIIIH", 1_700_000_000, event_type, 7, size, log_pos, 0) + body
    return event + struct.pack("<I", zlib.crc32(event)) if checksum else event


def mariadb_compress(data: bytes) -> bytes:
    """A MariaDB compressed buffer, as binlog_buf_compress writes it."""
    width = max(1, (len(data).bit_length() + 7) // 8)
    return bytes([0x80 | width]) + len(data).to_bytes(width, "big") + zlib.compress(data)


def rebody(event: bytes, body: bytes) -> bytes:
    """``event`` (with a footer) with its body replaced, its size and CRC32 fixed."""
    return with_footer(event[:19] + body)


def net_length(value: int) -> bytes:
    """MySQL's net_store_length."""
    if value < 251:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def field(kind: int, value: int) -> bytes:
    """One payload header field: type, length, value, each net_store_length-encoded."""
    encoded = net_length(value)
    return net_length(kind) + net_length(len(encoded)) + encoded


def payload_event(
    inner: list[bytes],
    compression: int = 0,
    *,
    content_size: bool = True,
    extra_fields: bytes = b"",
    checksum: bool = True,
) -> bytes:
    """A TRANSACTION_PAYLOAD_EVENT holding ``inner`` (footer-less events), fields in MySQL's encoder order."""
    raw = b"".join(inner)
    payload = zstandard.ZstdCompressor(write_content_size=content_size).compress(raw) if compression == 0 else raw
    fields = field(2, compression)
    if compression != 255:
        fields += field(3, len(raw))
    fields += extra_fields + field(1, len(payload)) + b"\x00"
    return make_event(40, fields + payload, checksum=checksum, log_pos=5555)


# Footer-less inner events, as a MySQL payload holds them: the plain MariaDB ones serve as realistic bodies.
# Its post-header (13 bytes), status variables (26) and empty db's NUL (1), then the statement text.
BEGIN = make_event(2, QUERY_INSERT_PLAIN[19 : 19 + 40] + b"BEGIN", checksum=False)
ROWS = without_footer(WRITE_THREE_PLAIN)
XID = make_event(16, struct.pack("<Q", 42), checksum=False)
INNER = [BEGIN, ROWS, XID]
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# ---- header -------------------------------------------------------------------------------------------


def test_header_decodes_the_six_fields() -> None:
    """The common header's six fields come out in order."""
    assert header(WRITE_ONE) == Header(
        timestamp=0x6B1111E2, event_type=166, server_id=1, event_size=64, log_pos=619, flags=0
    )


def test_header_refuses_a_short_buffer() -> None:
    """Fewer than 19 bytes is not a header."""
    with pytest.raises(FrameError, match="shorter than the 19-byte"):
        header(WRITE_ONE[:18])


# ---- MariaDB: real events -----------------------------------------------------------------------------


@pytest.mark.parametrize(("compressed", "plain"), PAIRS)
def test_rows_event_body_equals_the_uncompressed_server_event(compressed: bytes, plain: bytes) -> None:
    """The uncompressed rows event's body is the body the server wrote with compression off."""
    assert mariadb_uncompressed(compressed, True)[19:-4] == plain[19:-4]


@pytest.mark.parametrize(("compressed", "plain"), PAIRS)
def test_rows_event_gets_the_uncompressed_type_and_size(compressed: bytes, plain: bytes) -> None:
    """Type and event_size are those of the server's uncompressed event."""
    got = header(mariadb_uncompressed(compressed, True))
    assert (got.event_type, got.event_size) == (header(plain).event_type, header(plain).event_size)


def test_rows_event_keeps_the_other_header_fields() -> None:
    """timestamp, server_id, log_pos and flags are the compressed event's."""
    got, was = header(mariadb_uncompressed(UPDATE_THREE, True)), header(UPDATE_THREE)
    assert (got.timestamp, got.server_id, got.log_pos, got.flags) == (
        was.timestamp,
        was.server_id,
        was.log_pos,
        was.flags,
    )


def test_uncompressed_event_has_a_correct_crc32_footer() -> None:
    """With checksum=True the result ends in the CRC32 of its header and body."""
    assert crc_ok(mariadb_uncompressed(DELETE_THREE, True))


def test_uncompressed_event_is_the_server_event_but_for_header_fields() -> None:
    """Byte for byte, footer included, the server's plain event with the compressed event's log_pos."""
    expected = with_footer(WRITE_ONE_PLAIN[:13] + WRITE_ONE[13:17] + WRITE_ONE_PLAIN[17:-4])
    assert mariadb_uncompressed(WRITE_ONE, True) == expected


def test_long_text_row_is_inflated_whole() -> None:
    """A 7000-byte TEXT value compressed into a 98-byte event comes back whole."""
    got = mariadb_uncompressed(WRITE_LONG_TEXT, True)
    assert header(got).event_size == 7045
    assert got[19 + 10 : -4] == bytes.fromhex("f805000000046c6f6e67581b") + b"abcdefghij" * 700


def test_event_split_by_row_event_max_size_holds_its_own_rows() -> None:
    """The first of the four rows events of a 100-row insert holds rows 1 to 26 (8015 bytes uncompressed)."""
    got = mariadb_uncompressed(WRITE_26_OF_100, True)
    rows = b"".join(b"\xfc" + n.to_bytes(4, "little") + b"\x2c\x01" + bytes([65 + n % 26]) * 300 for n in range(1, 27))
    assert (header(got).event_size, got[19 + 10 : -4]) == (8015, rows)


def test_query_event_equals_the_uncompressed_server_event() -> None:
    """A compressed statement-logged DML query is the plain query event (apart from the thread id)."""
    got = mariadb_uncompressed(QUERY_INSERT, True)
    assert header(got).event_type == 2
    assert got[19 + 4 : -4] == QUERY_INSERT_PLAIN[19 + 4 : -4]


def test_query_event_keeps_status_variables_and_db_uncompressed() -> None:
    """Post-header, status variables (Q_XID here) and the db's NUL are copied as they are; only the text inflates."""
    got = mariadb_uncompressed(QUERY_DDL, True)
    prefix = 19 + 13 + struct.unpack_from("<H", QUERY_DDL, 19 + 11)[0] + 1
    assert got[19:prefix] == QUERY_DDL[19:prefix]
    assert got[prefix:-4] == b"ALTER TABLE d.t COMMENT 'a table comment that is long enough to be compressed'"


def test_post_header_lengths_of_the_real_format_description_give_the_same_result() -> None:
    """Passing the server's FDE post-header lengths changes nothing for its events."""
    for event in (WRITE_ONE, UPDATE_THREE, QUERY_DDL):
        assert mariadb_uncompressed(event, True, MARIADB_10_11_POST_HEADER_LEN) == mariadb_uncompressed(event, True)


def test_event_without_checksum_is_uncompressed_without_footer() -> None:
    """checksum=False: no footer is expected in the input nor written in the output."""
    got = mariadb_uncompressed(without_footer(UPDATE_THREE), False)
    assert got == without_footer(mariadb_uncompressed(UPDATE_THREE, True))


def test_type_mapping_covers_the_seven_compressed_types() -> None:
    """165 to 171 map to QUERY, the V1 rows types and the V2 rows types."""
    assert dict(MARIADB_UNCOMPRESSED_TYPE) == {165: 2, 166: 23, 167: 24, 168: 25, 169: 30, 170: 31, 171: 32}


# ---- MariaDB: v2 layouts (never written by the server, built per its source) --------------------------


def v2_body(plain_v1: bytes, extra: bytes, compressed: bool) -> bytes:
    """A v2 rows body from a real V1 one: extra data after table id and flags, rows compressed or not."""
    body = plain_v1[19:-4]
    update = plain_v1[4] == 24
    bitmaps = 1 + (2 if update else 1)  # one column-count byte, one bitmap byte per image (3 columns)
    head, rows = body[: 8 + bitmaps], body[8 + bitmaps :]
    return (
        head[:8]
        + struct.pack("<H", 2 + len(extra))
        + extra
        + head[8:]
        + (mariadb_compress(rows) if compressed else rows)
    )


@pytest.mark.parametrize(
    ("plain", "compressed_type", "v2_type"),
    [(WRITE_THREE_PLAIN, 169, 30), (UPDATE_THREE_PLAIN, 170, 31), (DELETE_THREE_PLAIN, 171, 32)],
)
def test_v2_compressed_rows_event_becomes_the_v2_rows_event(plain: bytes, compressed_type: int, v2_type: int) -> None:
    """169/170/171 skip the extra data (kept as is) and become 30/31/32 with the rows inflated."""
    extra = b"\x00\x04\x01\xaa\xbb"  # RW_V_EXTRAINFO_TAG, then length 4 (itself and format included), format 1, data
    event = make_event(compressed_type, v2_body(plain, extra, compressed=True))
    assert mariadb_uncompressed(event, True) == make_event(v2_type, v2_body(plain, extra, compressed=False))


def test_v2_extra_data_length_below_two_is_refused() -> None:
    """The extra-data length counts its own two bytes."""
    body = bytearray(v2_body(WRITE_THREE_PLAIN, b"", compressed=True))
    body[8] = 1
    with pytest.raises(FrameError, match="extra-data length 1"):
        mariadb_uncompressed(make_event(169, bytes(body)), True)


# ---- MariaDB: malformed input -------------------------------------------------------------------------


def test_not_a_compressed_type_is_refused() -> None:
    """An ordinary rows event is not something to uncompress."""
    with pytest.raises(FrameError, match="event type 23 is not a MariaDB compressed event"):
        mariadb_uncompressed(WRITE_ONE_PLAIN, True)


def test_truncated_event_is_refused() -> None:
    """Fewer bytes than event_size says."""
    with pytest.raises(FrameError, match="event_size says 64 bytes but the event has 63"):
        mariadb_uncompressed(WRITE_ONE[:-1], True)


def test_trailing_bytes_after_the_event_are_refused() -> None:
    """More bytes than event_size says."""
    with pytest.raises(FrameError, match="event_size says 64 bytes but the event has 65"):
        mariadb_uncompressed(WRITE_ONE + b"\x00", True)


def test_bad_crc32_is_refused() -> None:
    """A footer that does not match the event."""
    broken = WRITE_ONE[:-1] + bytes([WRITE_ONE[-1] ^ 1])
    with pytest.raises(FrameError, match="CRC32"):
        mariadb_uncompressed(broken, True)


def test_corrupt_zlib_data_is_refused() -> None:
    """Flipped bits inside the zlib stream."""
    body = bytearray(WRITE_THREE[19:-4])
    body[16] ^= 0xFF
    with pytest.raises(FrameError, match="zlib"):
        mariadb_uncompressed(rebody(WRITE_THREE, bytes(body)), True)


def test_truncated_zlib_stream_is_refused() -> None:
    """A zlib stream cut short (sizes and CRC fixed up)."""
    with pytest.raises(FrameError, match="zlib data is truncated"):
        mariadb_uncompressed(rebody(WRITE_THREE, WRITE_THREE[19:-8]), True)


def test_bytes_after_the_zlib_stream_are_refused() -> None:
    """Nothing may follow the zlib stream in the event."""
    with pytest.raises(FrameError, match="2 bytes follow the zlib data"):
        mariadb_uncompressed(rebody(WRITE_THREE, WRITE_THREE[19:-4] + b"zz"), True)


@pytest.mark.parametrize(
    ("declared", "message"),
    [(37, "inflates past the declared 37"), (39, "inflates to 38 bytes, the buffer declares 39")],
)
def test_declared_length_that_does_not_match_is_refused(declared: int, message: str) -> None:
    """The length before the zlib stream must be the inflated length."""
    body = WRITE_THREE_PLAIN[19:-4]
    rows = body[10:]
    assert len(rows) == 38
    buffer = b"\x81" + bytes([declared]) + zlib.compress(rows)
    with pytest.raises(FrameError, match=message):
        mariadb_uncompressed(make_event(166, body[:10] + buffer), True)


@pytest.mark.parametrize(
    ("first", "message"),
    [(0x01, "not 0x80"), (0x91, "algorithm 1"), (0x80, "0 length bytes"), (0x85, "5 length bytes")],
)
def test_bad_compressed_buffer_header_byte_is_refused(first: int, message: str) -> None:
    """The first byte must be 0x80 | 1..4 (zlib)."""
    body = bytearray(WRITE_THREE[19:-4])
    assert body[10] == 0x81
    body[10] = first
    with pytest.raises(FrameError, match=message):
        mariadb_uncompressed(rebody(WRITE_THREE, bytes(body)), True)


def test_rows_event_without_row_data_is_refused() -> None:
    """An event that ends after its column bitmap."""
    with pytest.raises(FrameError, match="ends before its row data"):
        mariadb_uncompressed(rebody(WRITE_THREE, WRITE_THREE[19 : 19 + 10]), True)


def test_query_event_whose_status_variables_run_past_the_end_is_refused() -> None:
    """A status_vars_len larger than the event."""
    body = bytearray(QUERY_DDL[19:-4])
    struct.pack_into("<H", body, 11, 500)
    with pytest.raises(FrameError, match="ends inside its status variables"):
        mariadb_uncompressed(rebody(QUERY_DDL, bytes(body)), True)


def test_query_event_db_name_without_nul_is_refused() -> None:
    """The byte after the database name must be its NUL."""
    body = bytearray(QUERY_DDL[19:-4])
    body[8] = 1  # db_len 1: the NUL becomes the name, the compressed buffer's first byte its "terminator"
    with pytest.raises(FrameError, match="not NUL-terminated"):
        mariadb_uncompressed(rebody(QUERY_DDL, bytes(body)), True)


def test_rows_post_header_length_that_contradicts_the_type_is_refused() -> None:
    """A format description giving a V1 compressed type the v2 post-header length."""
    lengths = list(MARIADB_10_11_POST_HEADER_LEN)
    lengths[166 - 1] = 10
    with pytest.raises(FrameError, match="needs a post-header of 8 bytes"):
        mariadb_uncompressed(WRITE_ONE, True, lengths)


def test_format_description_without_the_type_is_refused() -> None:
    """A post-header table too short to cover the event's type."""
    with pytest.raises(FrameError, match="none for type 166"):
        mariadb_uncompressed(WRITE_ONE, True, MARIADB_10_11_POST_HEADER_LEN[:165])


# ---- MySQL TRANSACTION_PAYLOAD_EVENT ------------------------------------------------------------------


def test_zstd_payload_with_content_size_yields_its_events() -> None:
    """A zstd frame that records its content size."""
    got = mysql_payload_events(payload_event(INNER), True)
    assert [header(e).event_type for e in got] == [2, 23, 16]


def test_zstd_payload_without_content_size_yields_its_events() -> None:
    """A zstd frame whose header has no content size (as a streaming compressor writes)."""
    event = payload_event(INNER, content_size=False)
    assert zstandard.frame_content_size(event[event.index(ZSTD_MAGIC) : -4]) == -1
    assert [e[19:-4] for e in mysql_payload_events(event, True)] == [e[19:] for e in INNER]


def test_payload_with_compression_none_yields_its_events() -> None:
    """Compression type 255: the payload is the events as they are."""
    assert [e[19:-4] for e in mysql_payload_events(payload_event(INNER, 255), True)] == [e[19:] for e in INNER]


def test_inner_events_get_a_crc32_footer_when_the_stream_has_checksums() -> None:
    """checksum=True: each event gets a footer and event_size + 4, so the decoder can strip it."""
    got = mysql_payload_events(payload_event(INNER), True)
    assert all(crc_ok(e) and header(e).event_size == len(e) for e in got)
    assert [e[19:-4] for e in got] == [e[19:] for e in INNER]


def test_inner_events_get_no_footer_without_checksums() -> None:
    """checksum=False: each event is the inner event, its size unchanged."""
    got = mysql_payload_events(payload_event(INNER, checksum=False), False)
    assert [len(e) for e in got] == [len(e) for e in INNER]


def test_inner_events_take_the_payload_events_log_pos() -> None:
    """Every returned event's log_pos is the payload event's; the rest of the header is the inner event's."""
    got = mysql_payload_events(payload_event(INNER, checksum=False), False)
    assert {header(e).log_pos for e in got} == {5555}
    assert [e[:13] + e[17:] for e in got] == [e[:13] + e[17:] for e in INNER]


def test_unknown_payload_header_field_is_skipped_by_its_length() -> None:
    """A field type this module does not know (9, three bytes) is stepped over."""
    event = payload_event(INNER, extra_fields=b"\x09\x03abc")
    assert len(mysql_payload_events(event, True)) == 3


def test_multi_byte_field_values_are_net_field_length_encoded() -> None:
    """Values of 251 or more (NONE = 255, a 646-byte payload) are 0xfc + 2 bytes, as MySQL's encoder writes them."""
    big = make_event(2, b"x" * 600, checksum=False)
    event = payload_event([big, XID], 255, checksum=False)
    size = struct.pack("<H", len(big) + len(XID))
    assert event[19:].startswith(b"\x02\x03\xfc\xff\x00" + b"\x01\x03\xfc" + size + b"\x00")
    assert [len(e) for e in mysql_payload_events(event, False)] == [len(big), len(XID)]


def test_concatenated_zstd_frames_are_read_across() -> None:
    """Two zstd frames back to back, as a streaming decoder accepts them."""
    raw_a, raw_b = BEGIN + ROWS, XID
    frames = zstandard.ZstdCompressor().compress(raw_a) + zstandard.ZstdCompressor().compress(raw_b)
    fields = field(2, 0) + field(3, len(raw_a + raw_b)) + field(1, len(frames)) + b"\x00"
    assert len(mysql_payload_events(make_event(40, fields + frames), True)) == 3


# ---- MySQL: malformed input ---------------------------------------------------------------------------


def test_unknown_compression_type_is_refused() -> None:
    """Only 0 (ZSTD) and 255 (NONE) exist."""
    fields = field(2, 1) + field(1, 5) + b"\x00"
    with pytest.raises(FrameError, match="unknown payload compression type 1"):
        mysql_payload_events(make_event(40, fields + b"abcde"), True)


def test_corrupt_zstd_data_is_refused() -> None:
    """Flipped bytes inside the zstd frame."""
    event = bytearray(payload_event(INNER)[:-4])
    event[-10] ^= 0xFF
    with pytest.raises(FrameError, match="zstd"):
        mysql_payload_events(with_footer(bytes(event[:9]) + b"\0\0\0\0" + bytes(event[13:])), True)


def test_truncated_zstd_frame_is_refused() -> None:
    """A zstd frame cut short, with the payload size fixed up to match."""
    frame = zstandard.ZstdCompressor().compress(b"".join(INNER))[:-6]
    fields = field(2, 0) + field(1, len(frame)) + b"\x00"
    with pytest.raises(FrameError, match="zstd data is truncated"):
        mysql_payload_events(make_event(40, fields + frame), True)


@pytest.mark.parametrize("delta", [1, -1])
def test_payload_size_that_does_not_match_the_event_is_refused(delta: int) -> None:
    """The payload size field must be the number of bytes after the header."""
    raw = b"".join(INNER)
    fields = field(2, 255) + field(1, len(raw) + delta) + b"\x00"
    with pytest.raises(FrameError, match=f"payload size is {len(raw) + delta}"):
        mysql_payload_events(make_event(40, fields + raw), True)


def test_uncompressed_size_that_does_not_match_is_refused() -> None:
    """The declared uncompressed size must be what the frame inflates to."""
    raw = b"".join(INNER)
    frame = zstandard.ZstdCompressor().compress(raw)
    fields = field(2, 0) + field(3, len(raw) + 1) + field(1, len(frame)) + b"\x00"
    with pytest.raises(FrameError, match=f"declares {len(raw) + 1} uncompressed bytes but holds {len(raw)}"):
        mysql_payload_events(make_event(40, fields + frame), True)


def test_inner_event_running_past_the_payload_is_refused() -> None:
    """The last inner event's event_size claims more bytes than are left."""
    with pytest.raises(FrameError, match="runs past the payload"):
        mysql_payload_events(payload_event([BEGIN, ROWS[:-1]]), True)


def test_payload_tail_too_short_for_a_header_is_refused() -> None:
    """Bytes after the last event that cannot hold an event header."""
    with pytest.raises(FrameError, match="too few for an event header"):
        mysql_payload_events(payload_event([*INNER, b"\x00" * 7]), True)


def test_inner_event_size_below_the_header_is_refused() -> None:
    """An inner event whose event_size is smaller than its own header."""
    bad = bytearray(XID)
    struct.pack_into("<I", bad, 9, 5)
    with pytest.raises(FrameError, match="event_size 5"):
        mysql_payload_events(payload_event([BEGIN, bytes(bad)]), True)


def test_empty_payload_is_refused() -> None:
    """A payload that holds no event at all."""
    with pytest.raises(FrameError, match="holds no event"):
        mysql_payload_events(payload_event([], 255), True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (field(2, 255) + b"\x00", "no payload size"),
        (field(1, 0) + b"\x00", "no compression type"),
        (field(2, 255) + field(1, 0), "truncated before a length-encoded integer"),
        (b"\x02\x02\x00\x00", "field 2 says 2 bytes but its value takes 1"),
        (b"\x09\x40ab", "field 9 of 64 bytes runs past the event"),
        (b"\xfb", "invalid length-encoded integer prefix 0xfb"),
        (b"\xfc\x01", "truncated length-encoded integer"),
    ],
)
def test_malformed_payload_header_is_refused(fields: bytes, message: str) -> None:
    """Missing fields, a missing end mark, a field length that does not match, a bad integer."""
    with pytest.raises(FrameError, match=message):
        mysql_payload_events(make_event(40, fields), True)


def test_payload_event_with_bad_crc32_is_refused() -> None:
    """The outer event's footer is verified."""
    event = payload_event(INNER)
    with pytest.raises(FrameError, match="CRC32"):
        mysql_payload_events(event[:-1] + bytes([event[-1] ^ 1]), True)


def test_other_event_type_is_not_a_payload_event() -> None:
    """Only type 40 is a transaction payload."""
    with pytest.raises(FrameError, match="not TRANSACTION_PAYLOAD_EVENT"):
        mysql_payload_events(WRITE_ONE_PLAIN, True)
