"""Caller values in the form the database stores them (pure): what a reader may put into a key or a tag.

MySQL matches many spellings to one stored value: ``id = '05'`` and ``id = 5.0`` find the row ``id = 5``, a
``_ci`` collation matches ``'A@X'`` to ``'a@x'``, PAD SPACE matches ``'a@x '`` to ``'a@x'``. The worker renders
keys and tags from the stored values (the binlog), so a reader may only render a caller's value where it
can prove the stored value of every row the value matches renders the same. ``canonical`` returns that
form, or ``NOT_CANONICAL`` when the proof is not there (the reader then falls back to something coarser).

=============================================  =================================================================
column (information_schema)                     a caller's value is canonical when it is ...
=============================================  =================================================================
any column                                      ``None`` (NULL renders ``%N`` on both sides)
TINYINT .. BIGINT (signed or not)               exactly integral: an int, an integral Decimal, an integral float
                                                or decimal string (``'05'``, ``'5.0'``) below 2**53 (MySQL
                                                compares those as doubles) → the int
DECIMAL(p, s)                                   an int or a Decimal equal to itself quantized to scale s → that
                                                quantized Decimal (``Decimal('5')`` → ``5.00`` for s = 2)
                                                (Decimals: only those whose text has no exponent, which a
                                                driver could send as a double)
VARBINARY, BLOB types                           bytes; a str as its UTF-8 bytes
CHAR, VARCHAR, TEXT types, ENUM with a binary   a str the column's character set can hold → the str without
or ``_bin`` collation                           trailing spaces (PAD SPACE; ``tag_suffix`` strips them too)
DATE / DATETIME(fsp)                            a ``datetime.date`` / naive ``datetime.datetime`` (exactly that
                                                type) whose fraction fits fsp → as is
everything else                                 never: ``_ci``/``_cs``/accent-insensitive collations, TIMESTAMP,
                                                TIME, YEAR, BINARY(n), BIT, SET, JSON, FLOAT/DOUBLE, dates
                                                given as strings, a column the table does not have
=============================================  =================================================================
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import re
from dataclasses import dataclass
from decimal import Decimal

from cdc_sync.core.keys import escape


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """What ``information_schema.COLUMNS`` says about one column (names lower-cased)."""

    data_type: str  # DATA_TYPE: 'int', 'varchar', 'decimal', ...
    column_type: str = ""  # COLUMN_TYPE: 'int(10) unsigned', 'decimal(10,2)', ...
    numeric_scale: int | None = None
    datetime_precision: int | None = None
    charset: str | None = None  # CHARACTER_SET_NAME
    collation: str | None = None  # COLLATION_NAME


class _Marker(enum.Enum):
    NOT_CANONICAL = "not canonical"


NOT_CANONICAL = _Marker.NOT_CANONICAL

INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum"})
BYTES_TYPES = frozenset({"varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
# Integers below this are exact as doubles, and no other integer has the same double (2**53 + 1 has that of
# 2**53). MySQL compares an integer column with a string or a float as doubles.
_DOUBLE_EXACT = 2**53
_DECIMAL_STRING = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?")  # ASCII digits only: str.isdigit() takes others too
_WIDE = decimal.Context(prec=200, traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Overflow])


def canonical(info: ColumnInfo | None, value: object) -> object:
    """``value`` as the worker renders the stored value of every row it matches, or ``NOT_CANONICAL``."""
    if value is None:
        return None
    if info is None:
        return NOT_CANONICAL
    kind = info.data_type
    if kind in INTEGER_TYPES:
        return _integer(value)
    if kind == "decimal":
        return _decimal(value, info.numeric_scale)
    if kind in BYTES_TYPES:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates
                return NOT_CANONICAL
        return NOT_CANONICAL
    if kind in TEXT_TYPES:
        return _text(value, info, kind == "enum")
    if kind == "date":
        return value if type(value) is dt.date else NOT_CANONICAL
    if kind == "datetime":
        if type(value) is not dt.datetime or value.tzinfo is not None:
            return NOT_CANONICAL
        fsp = info.datetime_precision or 0
        return value if value.microsecond % 10 ** (6 - min(max(fsp, 0), 6)) == 0 else NOT_CANONICAL
    return NOT_CANONICAL


def renders_as_given(info: ColumnInfo | None, value: object) -> bool:
    """True when ``value`` itself is canonical: a key rendered from it is the key the worker renders for every
    row it matches (``id=5`` on an INT column; not ``'05'``, ``5.0``, a ``_ci`` string, nor any string under a
    PAD SPACE collation, which also matches stored values with trailing spaces). What may be cached as "absent"."""
    canon = canonical(info, value)
    if canon is NOT_CANONICAL:
        return False
    if canon is None:
        return True
    if info is not None and info.data_type in TEXT_TYPES and _pads(info):
        return False  # PAD SPACE: the value also matches stored spellings with trailing spaces (other keys)
    return escape(canon) == escape(value)


def _pads(info: ColumnInfo) -> bool:
    """A PAD SPACE collation: ``'a'`` equals ``'a '`` (every MariaDB collation but the ``nopad`` ones; MySQL's
    ``_0900_`` ones are NO PAD)."""
    collation = (info.collation or "").lower()
    return "nopad" not in collation and "_0900_" not in collation


def _integer(value: object) -> object:
    if isinstance(value, int):  # bool and IntEnum too: rendered as the plain int
        return int(value)
    if isinstance(value, Decimal):  # an integer column against a DECIMAL literal is compared exactly
        if _plain(value) and value == value.to_integral_value():
            return int(value)
        return NOT_CANONICAL
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _DOUBLE_EXACT:
            return int(value)
        return NOT_CANONICAL
    if isinstance(value, str) and _DECIMAL_STRING.fullmatch(value):
        number = Decimal(value)
        if number == number.to_integral_value() and abs(number) < _DOUBLE_EXACT:
            return int(number)
    return NOT_CANONICAL


def _decimal(value: object, scale: int | None) -> object:
    if scale is None or scale < 0:
        return NOT_CANONICAL
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not _plain(value):
        return NOT_CANONICAL  # floats and strings are compared with a DECIMAL column as doubles
    try:
        quantized = value.quantize(Decimal(1).scaleb(-scale), context=_WIDE)
    except decimal.DecimalException:  # not exact at this scale, or out of any range
        return NOT_CANONICAL
    if quantized != value:
        return NOT_CANONICAL
    return quantized.copy_abs() if quantized.is_zero() else quantized  # the server stores no negative zero


def _plain(value: Decimal) -> bool:
    """A finite Decimal whose text has no exponent: a driver that sends ``str(value)`` (PyMySQL sends fixed
    point) then sends a DECIMAL literal, never ``5E+1``, which MySQL would read as a double."""
    return value.is_finite() and "E" not in str(value)


def _text(value: object, info: ColumnInfo, is_enum: bool) -> object:
    collation = (info.collation or "").lower()
    if not isinstance(value, str) or not (collation == "binary" or collation.endswith("_bin")):
        return NOT_CANONICAL
    if is_enum and value == "":  # the "invalid value" member, index 0: not a value to depend on
        return NOT_CANONICAL
    if not _fits(value, (info.charset or "").lower()):
        return NOT_CANONICAL  # the server would convert it (unknown characters become '?')
    return value.rstrip(" ")


def _fits(value: str, charset: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if charset == "utf8mb4":
        return True
    if charset in ("utf8mb3", "utf8"):
        return all(ord(c) <= 0xFFFF for c in value)
    if charset == "ascii":
        return value.isascii()
    if charset == "latin1":  # MySQL's latin1 is cp1252 (Python leaves five of its code points undefined)
        try:
            value.encode("cp1252")
        except UnicodeEncodeError:
            return False
        return True
    return False
