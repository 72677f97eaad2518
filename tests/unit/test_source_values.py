"""Binlog value fix-ups: what the worker writes must equal what a SELECT returns."""

from __future__ import annotations

import struct

import orjson

from cdc_sync.rowdecode import float32_text
from cdc_sync.rowdecode import json_text as _json_text
from cdc_sync.source import _fix_row


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

    from cdc_sync.source import _changes

    class NoRows:
        schema, table = "s", "t"
        columns = (SimpleNamespace(name=None, type=3),)

        @property
        def rows(self) -> list[object]:
            raise AssertionError("rows must not be decoded")

    with pytest.raises(ValueError, match="binlog_row_metadata"):
        _changes(NoRows())  # type: ignore[arg-type]
