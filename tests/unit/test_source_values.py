"""Binlog value fix-ups: what the worker writes must equal what a SELECT returns."""

from __future__ import annotations

import struct

import orjson

from cdc_sync.adapters.binlog import _fix_row
from cdc_sync.core.rowdecode import float32_text
from cdc_sync.core.rowdecode import json_text as _json_text


def test_mysql_json_bytes_become_text() -> None:
    """MySQL binary JSON decoded with bytes keys and strings becomes plain, encodable JSON."""
    raw = {b"k": [1, 2.5, b"x", None, True], b"nested": {b"u": b"\xc3\xa9"}}
    value = _json_text(raw)
    assert value == {"k": [1, 2.5, "x", None, True], "nested": {"u": "é"}}
    assert orjson.loads(orjson.dumps(value)) == value


def test_float_columns_read_as_mysql_prints_them() -> None:
    """A FLOAT decoded as a double (1.100000023841858) becomes 1.1, the shortest float32 text."""
    single = struct.unpack("<f", struct.pack("<f", 1.1))[0]
    assert single != 1.1
    assert float32_text(single) == 1.1
    assert float32_text(struct.unpack("<f", struct.pack("<f", 3.4028235e38))[0]) == 3.4028235e38


def test_fix_row_applies_each_fix() -> None:
    """BIT → int, empty SET → set(), BINARY(n) padded, FLOAT shortened, JSON text."""
    row = {"b": "101", "s": None, "bin": b"ab", "f": struct.unpack("<f", struct.pack("<f", 0.3))[0], "j": {b"a": b"b"}}
    fixes = [("b", "bit"), ("s", "set"), ("bin", ("pad", 4)), ("f", "float"), ("j", "json")]
    out = _fix_row(row, {"s": "empty set"}, fixes)
    assert out == {"b": 5, "s": set(), "bin": b"ab\0\0", "f": 0.3, "j": {"a": "b"}}


def test_missing_column_names_are_a_decode_error() -> None:
    """Columns without names (binlog_row_metadata not FULL) are refused before any row is decoded."""
    from types import SimpleNamespace

    import pytest

    from cdc_sync.adapters.binlog import _changes

    class NoRows:
        schema, table = "s", "t"
        columns = (SimpleNamespace(name=None, type=3),)

        @property
        def rows(self) -> list[object]:
            raise AssertionError("rows must not be decoded")

    with pytest.raises(ValueError, match="binlog_row_metadata"):
        _changes(NoRows())  # type: ignore[arg-type]


def test_year_0000_is_0_on_the_library_path_too() -> None:
    """The library adds 1900 to YEAR's stored byte, 0 included; SELECT says 0 (1900 is no YEAR value)."""
    assert _fix_row({"y": 1900, "z": 1901}, {}, [("y", "year"), ("z", "year")]) == {"y": 0, "z": 1901}


def test_latin1_reads_as_mysql_does_on_the_library_path() -> None:
    """The library's one text hook maps MySQL latin1 (PyMySQL: cp1252) to the codec that keeps the five bytes
    cp1252 leaves undefined as the C1 controls a SELECT returns."""
    from pymysqlreplication.row_event import RowsEvent

    encoding = RowsEvent.charset_to_encoding("latin1")
    assert b"\x81\x8d\x8f\x90\x9d\x80\xe9".decode(encoding) == "\x81\x8d\x8f\x90\x9d€é"
    assert RowsEvent.charset_to_encoding("utf8mb4") in ("utf8", "utf-8")
