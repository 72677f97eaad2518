"""cdc_sync.core.codec: JSON and hash encodings of cached values."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest

from cdc_sync.core.codec import encode_hash, encode_json, text_value

TIME_CASES = [
    (dt.timedelta(0), "00:00:00"),
    (dt.timedelta(hours=1, minutes=2, seconds=3), "01:02:03"),
    (dt.timedelta(days=2, hours=1), "49:00:00"),
    (dt.timedelta(hours=838, minutes=59, seconds=59), "838:59:59"),
    (dt.timedelta(microseconds=1), "00:00:00.000001"),
    (dt.timedelta(seconds=5, microseconds=500000), "00:00:05.500000"),
    (dt.timedelta(seconds=-1), "-00:00:01"),
    (-dt.timedelta(hours=1, minutes=2, seconds=3, microseconds=500000), "-01:02:03.500000"),
    (-dt.timedelta(microseconds=1), "-00:00:00.000001"),
    (-dt.timedelta(hours=838, minutes=59, seconds=59), "-838:59:59"),
]


def _json(row: dict[str, object], columns: list[str] | None = None) -> dict[str, object]:
    return json.loads(encode_json(row, list(row) if columns is None else columns))


# ---- JSON ------------------------------------------------------------------------------------------


def test_json_exact_bytes_in_column_order() -> None:
    """The object is compact and its keys follow the given column order."""
    row = {"id": 1, "name": "Ann", "email": "a@x"}
    assert encode_json(row, ["email", "id"]) == b'{"email":"a@x","id":1}'


def test_json_null() -> None:
    """NULL encodes as null and the key is kept."""
    assert encode_json({"a": None}, ["a"]) == b'{"a":null}'


def test_json_missing_column_raises() -> None:
    """Asking for a column the row lacks raises KeyError."""
    with pytest.raises(KeyError):
        encode_json({"a": 1}, ["a", "b"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("12.50"), '"12.50"'),
        (Decimal("-0.00"), '"-0.00"'),
        (Decimal("12345678901234567890.123456789012345678"), '"12345678901234567890.123456789012345678"'),
        (18446744073709551615, "18446744073709551615"),
        (-9223372036854775808, "-9223372036854775808"),
        (1.100000023841858, "1.100000023841858"),
        (True, "true"),
    ],
)
def test_json_numbers_exact(value: object, expected: str) -> None:
    """DECIMAL is an exact string; integers up to unsigned BIGINT are exact numbers."""
    assert encode_json({"v": value}, ["v"]) == b'{"v":' + expected.encode() + b"}"


@pytest.mark.parametrize(
    "value",
    [b"\x00\xff\x10binary", bytearray(b"\x01\x02"), memoryview(b"abc"), b""],
)
def test_json_bytes_base64(value: bytes | bytearray | memoryview) -> None:
    """Binary values are standard base64 strings."""
    encoded = _json({"b": value})["b"]
    assert isinstance(encoded, str)
    assert base64.b64decode(encoded) == bytes(value)


def test_json_binary_padding_kept() -> None:
    """Trailing zero bytes (BINARY(n) padding) survive the encoding."""
    assert _json({"b": b"ab\x00\x00"})["b"] == "YWIAAA=="


@pytest.mark.parametrize(
    ("value", "expected"),
    [({"b", "a", "c"}, ["a", "b", "c"]), (frozenset({"z", "y"}), ["y", "z"]), (set(), [])],
)
def test_json_set_sorted_list(value: object, expected: list[str]) -> None:
    """SET values are sorted arrays of member strings."""
    assert _json({"s": value})["s"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 120000), "2024-01-02T03:04:05.120000"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 1), "2024-01-02T03:04:05.000001"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.time(23, 59, 58), "23:59:58"),
    ],
)
def test_json_datetimes_iso(value: object, expected: str) -> None:
    """DATETIME/TIMESTAMP/DATE render as ISO 8601 strings."""
    assert _json({"d": value})["d"] == expected


@pytest.mark.parametrize(("value", "expected"), TIME_CASES)
def test_json_time_timedelta(value: dt.timedelta, expected: str) -> None:
    """TIME (a timedelta) renders as [-]HH:MM:SS[.ffffff], hours beyond 24 allowed."""
    assert _json({"t": value})["t"] == expected


def test_json_text_kept() -> None:
    """utf8mb4 text is kept as is."""
    assert _json({"s": 'naïve 😀 "quoted"\n'})["s"] == 'naïve 😀 "quoted"\n'


def test_json_native_json_values() -> None:
    """MySQL JSON values (dicts, lists) are embedded as JSON, not as strings."""
    assert _json({"j": {"k": [1, "x", None]}})["j"] == {"k": [1, "x", None]}


def test_json_unsupported_type_raises() -> None:
    """An unknown type is a TypeError, not silently stringified."""
    with pytest.raises(TypeError):
        encode_json({"x": object()}, ["x"])


# ---- hash ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        (True, "1"),
        (False, "0"),
        (0, "0"),
        (18446744073709551615, "18446744073709551615"),
        (Decimal("12.50"), "12.50"),
        (1.5, "1.5"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 7), "2024-01-02T03:04:05.000007"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.time(1, 2, 3), "01:02:03"),
        (b"\x00\xff", "AP8="),
        (bytearray(b"ab"), "YWI="),
        ({"b", "a"}, '["a","b"]'),
        ([1, "x"], '[1,"x"]'),
        ({"k": None}, '{"k":null}'),
    ],
)
def test_text_value(value: object, expected: str) -> None:
    """Hash-field text: numbers in decimal, dates ISO, binary base64, arrays/JSON as JSON text."""
    assert text_value(value) == expected


@pytest.mark.parametrize(("value", "expected"), TIME_CASES)
def test_text_value_time(value: dt.timedelta, expected: str) -> None:
    """TIME renders the same in a hash as in JSON."""
    assert text_value(value) == expected


def test_text_value_unsupported_type_raises() -> None:
    """An unknown type is a TypeError."""
    with pytest.raises(TypeError):
        text_value(object())


def test_hash_flat_field_value_list() -> None:
    """The hash is a flat [field, value, ...] list in column order."""
    row = {"id": 7, "name": "Ann", "score": Decimal("1.50")}
    assert encode_hash(row, ["name", "id", "score"]) == ["name", "Ann", "id", "7", "score", "1.50"]


def test_hash_null_field_omitted() -> None:
    """A NULL column has no field; an empty string does."""
    assert encode_hash({"a": None, "b": "", "c": 0}, ["a", "b", "c"]) == ["b", "", "c", "0"]


def test_hash_all_null_is_empty() -> None:
    """A row whose columns are all NULL encodes as an empty list."""
    assert encode_hash({"a": None, "b": None}, ["a", "b"]) == []


def test_hash_and_json_agree_on_text() -> None:
    """Strings in a hash equal the JSON string values for the same columns."""
    row: dict[str, object] = {
        "d": dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        "t": dt.timedelta(hours=-30),
        "m": Decimal("3.10"),
        "b": b"\x01",
    }
    as_json = _json(row)
    flat = encode_hash(row, list(row))
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == as_json
