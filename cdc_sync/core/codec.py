"""Cached value encoding shared by the worker (update mode) and the reader.

JSON (``format = "json"``): one object keyed by column name, encoded with orjson:

==========================  ===========================================================
MySQL type                  JSON value
==========================  ===========================================================
NULL                        ``null``
integers (incl. unsigned    number (exact; unsigned BIGINT up to 18446744073709551615)
BIGINT), YEAR, BIT
DECIMAL                     string, exact, with the column's scale (``"12.50"``)
FLOAT, DOUBLE               number, as the server prints it (FLOAT: 6 significant digits or its decimals)
DATETIME, TIMESTAMP         string ``YYYY-MM-DDTHH:MM:SS[.ffffff]`` (TIMESTAMP in UTC)
DATE                        string ``YYYY-MM-DD``
TIME                        string ``[-]HH:MM:SS[.ffffff]`` (hours may exceed 24)
CHAR, VARCHAR, TEXT, ENUM   string (utf8mb4 kept as is)
BINARY, VARBINARY, BLOB,    string, standard base64 (BINARY(n) padded with zero bytes to n)
GEOMETRY
SET                         array of member strings, sorted
JSON                        MySQL: the JSON value itself; MariaDB (JSON is LONGTEXT): string
==========================  ===========================================================

Hash (``format = "hash"``): one field per column, the same rendering as text (numbers in decimal,
arrays and JSON values as JSON text); a NULL column has no field.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal

import orjson


def time_text(value: dt.timedelta) -> str:
    """MySQL TIME as ``[-]HH:MM:SS[.ffffff]`` (hours may exceed 24)."""
    micros = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    seconds, frac = divmod(micros, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:06d}" if frac else text


def json_default(value: object) -> object:
    """orjson ``default=``: Decimal, bytes, TIME and SET values as documented above."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return time_text(value)
    if isinstance(value, set | frozenset):
        return sorted(str(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_json(row: Mapping[str, object], columns: Iterable[str] | None) -> bytes:
    """Encode the given columns of ``row`` (None: all, in the row's order) as one JSON object."""
    if columns is None:
        return orjson.dumps(row if isinstance(row, dict) else dict(row), default=json_default)
    return orjson.dumps({c: row[c] for c in columns}, default=json_default)


def text_value(value: object) -> str:
    """Render one non-NULL value as hash-field text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | Decimal | float):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | dict | set | frozenset):
        return orjson.dumps(value, default=json_default).decode()
    encoded = json_default(value)
    assert isinstance(encoded, str)
    return encoded


def encode_hash(row: Mapping[str, object], columns: Iterable[str]) -> list[str]:
    """Encode the given columns of ``row`` as a flat ``[field, value, ...]`` list (NULLs left out)."""
    out: list[str] = []
    for c in columns:
        value = row[c]
        if value is not None:
            out.append(c)
            out.append(text_value(value))
    return out
