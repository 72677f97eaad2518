"""cdc_sync.adapters.mysql.normalize_row: a PyMySQL SELECT row made equal to the binlog's view of the same row."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from pymysqlreplication.constants import FIELD_TYPE

from cdc_sync.adapters.binlog import _fix_row, _fixers
from cdc_sync.adapters.mysql import normalize_row


def _one(value: Any, kind: str) -> Any:
    return normalize_row({"c": value}, {"c": kind})["c"]


def test_set_text_becomes_a_set() -> None:
    """SET 'a,c' becomes {'a', 'c'}."""
    assert _one("a,c", "set") == {"a", "c"}


def test_single_member_set() -> None:
    """SET 'a' becomes {'a'}."""
    assert _one("a", "set") == {"a"}


def test_empty_set_text_becomes_an_empty_set() -> None:
    """SET '' becomes set(), not {''}."""
    assert _one("", "set") == set()


def test_bit_bytes_become_an_int() -> None:
    """BIT bytes are read big-endian."""
    assert _one(b"\x01\x02", "bit") == 258


def test_bit_high_byte_first() -> None:
    """The first byte is the most significant one."""
    assert _one(b"\x80\x00", "bit") == 0x8000


def test_bit_zero() -> None:
    """b'\\x00' is 0."""
    assert _one(b"\x00", "bit") == 0


def test_json_text_becomes_a_value_for_kind_json() -> None:
    """MySQL JSON text is parsed to its value."""
    assert _one('{"k": [1, 2.5, "x", null, true]}', "json") == {"k": [1, 2.5, "x", None, True]}


def test_json_bytes_become_a_value_for_kind_json() -> None:
    """JSON delivered as bytes is parsed too."""
    assert _one(b'["\xc3\xa9"]', "json") == ["é"]


@pytest.mark.parametrize("kind", ["longtext", "varchar", "text"])
def test_json_looking_text_of_other_kinds_is_untouched(kind: str) -> None:
    """MariaDB JSON (LONGTEXT) and other text columns stay strings."""
    assert _one('{"k": 1}', kind) == '{"k": 1}'


@pytest.mark.parametrize(
    ("value", "kind"),
    [("0000-00-00", "date"), ("0000-00-00 00:00:00", "datetime"), ("0000-00-00 00:00:00", "timestamp")],
)
def test_zero_dates_become_null(value: str, kind: str) -> None:
    """Zero dates, which PyMySQL leaves as strings, become None."""
    assert _one(value, kind) is None


def test_zero_datetime_with_fraction_becomes_null() -> None:
    """'0000-00-00 00:00:00.000000' (DATETIME(6)) is a zero date too."""
    assert _one("0000-00-00 00:00:00.000000", "datetime") is None


def test_valid_dates_are_untouched() -> None:
    """Dates PyMySQL parsed stay as they are."""
    day, moment = dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5)
    row = normalize_row({"d": day, "t": moment}, {"d": "date", "t": "datetime"})
    assert row == {"d": day, "t": moment}


def test_zero_date_text_of_a_text_column_is_untouched() -> None:
    """'0000-00-00' in a VARCHAR is just text."""
    assert _one("0000-00-00", "varchar") == "0000-00-00"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("a,c", "varchar"),
        (b"\x01\x02", "blob"),
        (b"\x01", "binary"),
        (5, "int"),
        (Decimal("1.50"), "decimal"),
        ("x", "enum"),
        (dt.timedelta(hours=1), "time"),
    ],
)
def test_other_kinds_are_untouched(value: Any, kind: str) -> None:
    """Values of kinds without a fix-up are returned as they are."""
    assert _one(value, kind) == value


@pytest.mark.parametrize("kind", ["set", "bit", "json", "date", "datetime", "timestamp", "varchar"])
def test_nulls_are_untouched(kind: str) -> None:
    """NULL stays None (an empty SET is '' in a SELECT, never NULL)."""
    row = normalize_row({"c": None}, {"c": kind})
    assert row == {"c": None}


def test_already_normalized_values_are_untouched() -> None:
    """A set, an int and a parsed value are not converted again."""
    row = {"s": {"a"}, "b": 5, "j": {"k": 1}}
    assert normalize_row(dict(row), {"s": "set", "b": "bit", "j": "json"}) == row


def test_columns_missing_from_the_row_are_not_added() -> None:
    """Kinds of columns the row lacks add nothing and raise nothing."""
    assert normalize_row({"id": 1}, {"id": "int", "s": "set", "d": "date"}) == {"id": 1}


def test_several_columns_in_one_row() -> None:
    """Each column gets its own kind's fix-up, the others stay."""
    row = {"id": 1, "s": "b,a", "bt": b"\x05", "j": "[1]", "d": "0000-00-00", "n": "a,b"}
    kinds = {"id": "int", "s": "set", "bt": "bit", "j": "json", "d": "date", "n": "varchar"}
    assert normalize_row(row, kinds) == {"id": 1, "s": {"a", "b"}, "bt": 5, "j": [1], "d": None, "n": "a,b"}


@pytest.mark.parametrize(("value", "kind"), [("2024-00-15", "date"), ("2024-01-00 10:00:00", "datetime")])
def test_partial_zero_dates_become_null(value: str, kind: str) -> None:
    """A date with a zero part, which PyMySQL leaves as a string, becomes None like a zero date."""
    assert _one(value, kind) is None


def test_zero_timestamp_matches_the_binlog_value() -> None:
    """SELECT and binlog views of a zero TIMESTAMP normalize to the same value."""
    # pymysqlreplication decodes a TIMESTAMP2 of 0 seconds as utcfromtimestamp(0).
    event = SimpleNamespace(columns=[SimpleNamespace(name="ts", type=FIELD_TYPE.TIMESTAMP2, character_set_name=None)])
    from_binlog = _fix_row({"ts": dt.datetime(1970, 1, 1)}, {}, _fixers(event))
    from_select = normalize_row({"ts": "0000-00-00 00:00:00"}, {"ts": "timestamp"})
    assert from_select == from_binlog
