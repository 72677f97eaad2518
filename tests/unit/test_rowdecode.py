"""rowdecode.py on hand-made row images, and which columns the worker asks it for (planner.needed_columns).

The differential test against the library on a real binlog is tests/integration/test_rowdecode.py.
"""

from __future__ import annotations

import datetime
import struct
from decimal import Decimal

import pytest

from cdc_sync.adapters.binlog import repair_negative_time
from cdc_sync.config import TableRule
from cdc_sync.core.keys import KeyTemplate
from cdc_sync.core.planner import needed_columns
from cdc_sync.core.rowdecode import (
    BLOB,
    DATETIME2,
    DECIMAL,
    LONG,
    NEWDECIMAL,
    TIME,
    TIME2,
    TIMESTAMP2,
    VARCHAR,
    ColumnSpec,
    RowDecoder,
)
from cdc_sync.errors import DecodeError

ID = ColumnSpec("id", LONG)
NAME = ColumnSpec("name", VARCHAR, max_length=40 * 4)
BODY = ColumnSpec("body", BLOB, length_size=2, encoding=None)


def _image(nulls: int, *values: bytes) -> bytes:
    return bytes([nulls]) + b"".join(values)


def _varchar(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def test_decodes_rows_and_nulls_in_table_order() -> None:
    """Two images: values by column, a NULL bit gives None and takes no bytes."""
    data = _image(0, struct.pack("<i", 7), _varchar("ann"), struct.pack("<H", 2) + b"\x00\xff")
    data += _image(0b010, struct.pack("<i", -1), struct.pack("<H", 0))
    rows = RowDecoder([ID, NAME, BODY], None).images(data)
    assert rows == [{"id": 7, "name": "ann", "body": b"\x00\xff"}, {"id": -1, "name": None, "body": b""}]
    assert list(rows[0]) == ["id", "name", "body"]


def test_unneeded_columns_are_skipped_not_decoded() -> None:
    """Only the needed column comes out; the others are stepped over by their length prefixes."""
    data = _image(0, struct.pack("<i", 7), _varchar("ann"), struct.pack("<H", 3) + b"xyz")
    data += _image(0, struct.pack("<i", 8), _varchar(""), struct.pack("<H", 0))
    assert RowDecoder([ID, NAME, BODY], frozenset({"id"})).images(data) == [{"id": 7}, {"id": 8}]


def test_a_truncated_image_is_an_error_not_a_short_row() -> None:
    """A length prefix pointing past the event's end raises instead of yielding a cut value."""
    data = _image(0, struct.pack("<i", 7), bytes([10]) + b"abc")
    with pytest.raises(DecodeError):
        RowDecoder([ID, NAME], None).images(data)
    with pytest.raises(DecodeError):
        RowDecoder([ID, NAME], frozenset({"id"})).images(data)


def test_types_it_does_not_decode_are_refused_when_needed_and_skipped_otherwise() -> None:
    """The pre-5.6 TIME is left to the library when needed, and skipped by its size (3 bytes) when not; old
    DECIMAL has no known size at all."""
    old_time = ColumnSpec("tm", TIME)
    with pytest.raises(DecodeError):
        RowDecoder([ID, old_time], None)
    data = _image(0, struct.pack("<i", 1), b"\x01\x02\x03") + _image(0, struct.pack("<i", 2), b"\x00\x00\x00")
    assert RowDecoder([ID, old_time], frozenset({"id"})).images(data) == [{"id": 1}, {"id": 2}]
    with pytest.raises(DecodeError):
        RowDecoder([ID, ColumnSpec("old", DECIMAL)], frozenset({"id"}))


def _time2(seconds: int, micros: int, negative: bool, fsp: int) -> bytes:
    """MySQL's TIME2 bytes (my_time_packed_to_binary) of [-]seconds.micros at precision fsp."""
    h, rest = divmod(seconds, 3600)
    packed = ((h << 12 | (rest // 60) << 6 | rest % 60) << 24) + micros
    packed = -packed if negative else packed
    if fsp >= 5:
        return (packed + 0x800000000000).to_bytes(6, "big")
    n = (fsp + 1) // 2
    intpart, frac = packed >> 24, packed % (1 << 24) - (1 << 24 if packed < 0 and packed % (1 << 24) else 0)
    unit = (1, 10_000, 100)[n]
    raw = (intpart + 0x800000).to_bytes(3, "big")
    return raw + ((frac // unit) % (1 << (8 * n))).to_bytes(n, "big") if n else raw


@pytest.mark.parametrize("fsp", [0, 2, 4, 6])
@pytest.mark.parametrize(("seconds", "micros", "negative"), [(3723, 250000, True), (0, 10000, True), (59, 0, True),
                                                             (3020399, 0, False), (45296, 780000, False)])  # fmt: skip
def test_time2_reads_as_mysql_does(seconds: int, micros: int, negative: bool, fsp: int) -> None:
    """TIME(fsp), negative with a fraction included (stored as the next integer down and a complement)."""
    micros = micros if fsp else 0
    (row,) = RowDecoder([ColumnSpec("t", TIME2, fsp=fsp)], None).images(
        b"\x00" + _time2(seconds, micros, negative, fsp)
    )
    value = datetime.timedelta(seconds=seconds, microseconds=micros)
    assert row["t"] == (-value if negative else value)


def test_the_library_s_negative_fractional_time_is_repaired() -> None:
    """The library reads -01:02:03.25 as -01:02:03.75 (whole seconds, then the stored complement); the
    repair gives the true value and leaves every other TIME alone."""
    assert repair_negative_time(-datetime.timedelta(seconds=3723.75)) == -datetime.timedelta(seconds=3723.25)
    assert repair_negative_time(-datetime.timedelta(microseconds=999999)) == -datetime.timedelta(microseconds=1)
    for unchanged in (-datetime.timedelta(seconds=59), datetime.timedelta(seconds=1.5), None):
        assert repair_negative_time(unchanged) == unchanged


@pytest.mark.parametrize(
    ("stored", "value"),
    [
        (bytes.fromhex("800000303905"), "12345.05"),  # DECIMAL(12,2): 1-byte lead, one 9-digit group, 1-byte frac
        (bytes.fromhex("7fffffcfc6fa"), "-12345.05"),  # negative: every byte inverted
        (bytes.fromhex("800000000000"), "0.00"),
    ],
)
def test_decimal(stored: bytes, value: str) -> None:
    """NEWDECIMAL keeps its scale and sign exactly."""
    col = ColumnSpec("d", NEWDECIMAL, precision=12, decimals=2)
    (row,) = RowDecoder([col], None).images(b"\x00" + stored)
    assert row["d"] == Decimal(value) and str(row["d"]) == value


def test_zero_datetime_and_timestamp_are_none() -> None:
    """'0000-00-00 00:00:00' reads as None for DATETIME and TIMESTAMP, like the library plus its fix-ups."""
    cols = [ColumnSpec("dt", DATETIME2), ColumnSpec("ts", TIMESTAMP2, fsp=3)]
    data = _image(0, b"\x80\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00")
    data += _image(0, bytes.fromhex("99b2c430c5"), struct.pack(">i", 86400) + struct.pack(">H", 1230))
    rows = RowDecoder(cols, None).images(data)
    assert rows[0] == {"dt": None, "ts": None}
    assert rows[1] == {
        "dt": datetime.datetime(2024, 3, 2, 3, 3, 5),
        "ts": datetime.datetime(1970, 1, 2, 0, 0, 0, 123000),
    }


def _rule(table: str, key: str, mode: str = "evict", **kwargs: object) -> TableRule:
    return TableRule(0, "s", table, KeyTemplate.parse(key, "key"), mode=mode, **kwargs)  # type: ignore[arg-type]


def test_needed_columns_per_mode() -> None:
    """Evict mode needs its key, `also` and tag columns; update mode every column unless `columns` names them."""
    also = (KeyTemplate.parse("email:{email}", "also"),)
    rules = [
        _rule("a", "a:{id}", also=also, tags=(("org",),)),
        _rule("b", "b:{id}", mode="update"),
        _rule("c", "c:{id}", mode="update", columns=("id", "name")),
    ]
    assert needed_columns(rules, ()) == {
        ("s", "a"): frozenset({"id", "email", "org"}),
        ("s", "b"): None,
        ("s", "c"): frozenset({"id", "name"}),
    }


def test_needed_columns_add_cascade_parents_and_merge() -> None:
    """A cascade parent needs the columns its watch compares, merged with any rule of the same table."""
    rules = [_rule("a", "a:{id}")]
    watched = [(("s", "a"), ("code",)), (("s", "p"), ("id",)), (("s", "p"), ("ref",))]
    assert needed_columns(rules, watched) == {
        ("s", "a"): frozenset({"id", "code"}),
        ("s", "p"): frozenset({"id", "ref"}),
    }
    assert needed_columns([*rules, _rule("a", "x:{id}", mode="update")], watched)[("s", "a")] is None


def test_a_multibyte_server_table_decodes_as_my_convert_does() -> None:
    """Leads take their sequence; an unknown or cut-off sequence is '?' and the next byte is read afresh (the
    server's ``my_convert``); a registered table is a codec; mixed sequence lengths for one lead are refused."""
    from cdc_sync.core.rowdecode import decode_multibyte, register_server_charset, server_codec

    table = "".join(chr(b) if b < 0x80 else "?" for b in range(256))
    table = table[:0xA1] + "ｱ" + table[0xA2:]
    sequences = {b"\xb0\xa1": "啊", b"\xb0\x41": "癆", b"\xa4\x40": "?", b"\x8f\xb0\xa1": "丂"}
    lengths = {0xB0: 2, 0xA4: 2, 0x8F: 3}
    assert decode_multibyte(b"A\xb0\xa1\xa1", table, sequences, lengths) == "A啊ｱ"
    assert decode_multibyte(b"\xb0A", table, sequences, lengths) == "癆"
    assert decode_multibyte(b"A\xb0", table, sequences, lengths) == "A?"  # cut off at the end
    assert decode_multibyte(b"\xb0\x0aZ", table, sequences, lengths) == "?\nZ"  # no such pair: the trail stays
    assert decode_multibyte(b"\x8f\xb0\xa1\x8f\xb0", table, sequences, lengths) == "丂??"
    assert decode_multibyte(b"\xa4\x40\x80", table, sequences, lengths) == "??"  # stored, not mapped; a stray byte
    register_server_charset("testmb", table, sequences)
    codec = server_codec("testmb")
    assert codec == "mysql_testmb"
    assert b"\xb0\xa1x".decode(codec) == "啊x"
    assert "啊x".encode(codec) == b"\xb0\xa1x"
    with pytest.raises(ValueError):
        register_server_charset("testmb2", table, {b"\xb0\xa1": "a", b"\xb0\xa1\xa1": "b"})
