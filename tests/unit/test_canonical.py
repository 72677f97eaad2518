"""cdc_sync.core.canonical: which caller values a reader may render into keys and tags, and in which form."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from cdc_sync.core.canonical import NOT_CANONICAL, ColumnInfo, canonical, renders_as_given
from cdc_sync.core.keys import escape, tag_suffix

INT = ColumnInfo("int", "int(11)")
BIGINT_U = ColumnInfo("bigint", "bigint(20) unsigned")
DEC2 = ColumnInfo("decimal", "decimal(10,2)", numeric_scale=2)
DEC0 = ColumnInfo("decimal", "decimal(10,0)", numeric_scale=0)
CI = ColumnInfo("varchar", "varchar(40)", charset="utf8mb4", collation="utf8mb4_general_ci")
BIN = ColumnInfo("varchar", "varchar(40)", charset="utf8mb4", collation="utf8mb4_bin")
NOPAD = ColumnInfo("varchar", "varchar(40)", charset="utf8mb4", collation="utf8mb4_nopad_bin")
LATIN_BIN = ColumnInfo("varchar", "varchar(40)", charset="latin1", collation="latin1_bin")
UTF8MB3_BIN = ColumnInfo("char", "char(4)", charset="utf8mb3", collation="utf8mb3_bin")
ENUM_BIN = ColumnInfo("enum", "enum('a','b')", charset="utf8mb4", collation="utf8mb4_bin")
ENUM_CI = ColumnInfo("enum", "enum('a','b')", charset="utf8mb4", collation="utf8mb4_general_ci")
VARBIN = ColumnInfo("varbinary", "varbinary(16)", charset=None, collation=None)
BINARY_N = ColumnInfo("binary", "binary(4)")
DATE = ColumnInfo("date", "date")
DATETIME3 = ColumnInfo("datetime", "datetime(3)", datetime_precision=3)
TIMESTAMP = ColumnInfo("timestamp", "timestamp")
DOUBLE = ColumnInfo("double", "double")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (True, 1),
        (Decimal("5"), 5),
        (Decimal("5.00"), 5),
        (5.0, 5),
        ("5", 5),
        ("05", 5),
        ("+5", 5),
        ("-0", 0),
        ("5.0", 5),
        ("5.", 5),
        (2**64, 2**64),
        (float(2**53 - 1), 2**53 - 1),
    ],
)
def test_integer_columns_take_exactly_integral_values(value: object, expected: int) -> None:
    """An int, or an integral Decimal, float or decimal string, renders as the int MySQL matches."""
    assert canonical(INT, value) == expected and type(canonical(INT, value)) is int


@pytest.mark.parametrize(
    "value",
    [
        5.5,
        Decimal("5.1"),
        Decimal("NaN"),
        Decimal("9.00719925474099E+15"),  # a driver sending str() would send a double literal
        Decimal("5E+1"),
        float("inf"),
        "5.5",
        " 5",  # MySQL reads it as 5, but only plain decimal strings are taken
        "5 ",
        "5e0",
        "0x10",  # MySQL reads 0 (it stops at 'x'): never take a guess
        "５",  # a full-width digit: str.isdigit() says yes, MySQL says 0
        "",
        "abc",
        float(2**53),  # the double of 2**53 + 1 too: MySQL compares strings and floats as doubles
        str(2**53),
        "9007199254740993",
        b"5",
        dt.date(2024, 1, 1),
    ],
)
def test_integer_columns_refuse_anything_inexact(value: object) -> None:
    """Fractions, whitespace, exponents, big doubles and other types are not canonical."""
    assert canonical(INT, value) is NOT_CANONICAL


def test_int_subclasses_render_as_plain_ints() -> None:
    """An IntEnum member (an int) is its value."""
    import enum

    class Level(enum.IntEnum):
        HIGH = 5

    assert canonical(INT, Level.HIGH) == 5 and type(canonical(INT, Level.HIGH)) is int


def test_unsigned_bigint_takes_exact_ints_and_decimals() -> None:
    """Ints and Decimals compare exactly with BIGINT (no double rounding), however large."""
    assert canonical(BIGINT_U, 18446744073709551615) == 18446744073709551615
    assert canonical(BIGINT_U, Decimal("18446744073709551615")) == 18446744073709551615


@pytest.mark.parametrize(
    ("info", "value", "text"),
    [
        (DEC2, Decimal("5"), "5.00"),
        (DEC2, 5, "5.00"),
        (DEC2, Decimal("5.1"), "5.10"),
        (DEC2, Decimal("-0"), "0.00"),  # the server keeps no negative zero
        (DEC2, Decimal("-0.50"), "-0.50"),
        (DEC0, Decimal("7.0"), "7"),
        (DEC2, Decimal("12345678.90"), "12345678.90"),
    ],
)
def test_decimal_columns_quantize_to_the_scale(info: ColumnInfo, value: object, text: str) -> None:
    """An int or Decimal equal to itself at the column's scale renders as the binlog's Decimal does."""
    canon = canonical(info, value)
    assert isinstance(canon, Decimal) and escape(canon) == text


@pytest.mark.parametrize(
    "value", [Decimal("5.001"), 5.0, "5.00", Decimal("Infinity"), Decimal("1E+300"), Decimal("5E+1"), Decimal("0E-7")]
)
def test_decimal_columns_refuse_inexact_values_floats_and_strings(value: object) -> None:
    """Rounding, floats and strings (compared with DECIMAL as doubles) are not canonical."""
    assert canonical(DEC2, value) is NOT_CANONICAL


def test_text_with_a_ci_collation_is_never_canonical() -> None:
    """'ABC' and 'abc' are one value under utf8mb4_general_ci: no spelling is provably the stored one."""
    assert canonical(CI, "abc") is NOT_CANONICAL
    assert canonical(ENUM_CI, "a") is NOT_CANONICAL


def test_text_with_a_bin_collation_loses_trailing_spaces() -> None:
    """_bin: the str itself, PAD SPACE stripped (as tag_suffix strips the stored value)."""
    assert canonical(BIN, "A@X") == "A@X"
    assert canonical(BIN, "a@x  ") == "a@x"
    assert canonical(BIN, " a") == " a"
    assert canonical(BIN, b"a") is NOT_CANONICAL
    assert canonical(BIN, 5) is NOT_CANONICAL


def test_text_the_charset_cannot_hold_is_not_canonical() -> None:
    """The server would convert it (unknown characters become '?'), matching other rows."""
    assert canonical(LATIN_BIN, "café €") == "café €"
    assert canonical(LATIN_BIN, "x😀") is NOT_CANONICAL
    assert canonical(UTF8MB3_BIN, "x😀") is NOT_CANONICAL
    assert canonical(UTF8MB3_BIN, "xé") == "xé"
    assert canonical(BIN, "\ud800") is NOT_CANONICAL  # a lone surrogate cannot even be sent


def test_enum_takes_member_names_only() -> None:
    """An ENUM with a _bin collation takes a name; a number would compare with the member index."""
    assert canonical(ENUM_BIN, "a") == "a"
    assert canonical(ENUM_BIN, 1) is NOT_CANONICAL
    assert canonical(ENUM_BIN, "") is NOT_CANONICAL


def test_varbinary_takes_bytes_and_utf8_text() -> None:
    """VARBINARY/BLOB: bytes as they are, a str as its UTF-8 bytes; BINARY(n) (padded) never."""
    assert canonical(VARBIN, b"a\x00") == b"a\x00"
    assert canonical(VARBIN, bytearray(b"a")) == b"a"
    assert canonical(VARBIN, "é") == "é".encode()
    assert canonical(BINARY_N, b"abcd") is NOT_CANONICAL


def test_dates_only_as_their_own_type() -> None:
    """DATE takes a date (not a datetime, not a string); DATETIME(fsp) a naive datetime within fsp."""
    day = dt.date(2024, 1, 2)
    assert canonical(DATE, day) == day
    assert canonical(DATE, dt.datetime(2024, 1, 2)) is NOT_CANONICAL
    assert canonical(DATE, "2024-01-02") is NOT_CANONICAL
    moment = dt.datetime(2024, 1, 2, 3, 4, 5, 123000)
    assert canonical(DATETIME3, moment) == moment
    assert canonical(DATETIME3, moment.replace(microsecond=123456)) is NOT_CANONICAL
    assert canonical(DATETIME3, moment.replace(tzinfo=dt.UTC)) is NOT_CANONICAL
    assert canonical(DATETIME3, dt.date(2024, 1, 2)) is NOT_CANONICAL


@pytest.mark.parametrize("info", [TIMESTAMP, DOUBLE, BINARY_N, None])
def test_other_columns_are_never_canonical(info: ColumnInfo | None) -> None:
    """TIMESTAMP, floats, BINARY(n), and a column the table does not have: never."""
    assert canonical(info, 1) is NOT_CANONICAL
    assert canonical(info, "x") is NOT_CANONICAL


@pytest.mark.parametrize("info", [INT, CI, TIMESTAMP, None])
def test_null_is_canonical_everywhere(info: ColumnInfo | None) -> None:
    """NULL renders %N on both sides, whatever the column."""
    assert canonical(info, None) is None
    assert renders_as_given(info, None)


@pytest.mark.parametrize(
    ("info", "value", "given"),
    [
        (INT, 5, True),
        (INT, "5", True),  # renders 'user:5', the worker's key for the row id=5
        (INT, "05", False),
        (INT, 5.0, False),
        (INT, Decimal("5"), True),
        (INT, Decimal("5.0"), False),
        (DEC2, Decimal("5.00"), True),
        (DEC2, Decimal("5"), False),
        (BIN, "a@x", False),  # utf8mb4_bin is PAD SPACE: 'a@x' also matches a stored 'a@x '
        (NOPAD, "a@x", True),
        (BIN, "a@x ", False),
        (CI, "a@x", False),
    ],
)
def test_renders_as_given(info: ColumnInfo, value: object, given: bool) -> None:
    """A key rendered from the caller's value is the worker's key only if the value renders canonically."""
    assert renders_as_given(info, value) is given


def test_a_canonical_tag_is_the_tag_of_the_stored_value() -> None:
    """The reader's tag from a canonical value equals the worker's tag from the stored value."""
    stored = {"amount": Decimal("5.00"), "email": "a@x", "uid": 5}
    given = {"amount": Decimal("5"), "email": "a@x   ", "uid": "05"}
    infos = {"amount": DEC2, "email": BIN, "uid": INT}
    canon = {c: canonical(infos[c], v) for c, v in given.items()}
    cols = ["amount", "email", "uid"]
    assert tag_suffix("s.t", cols, canon) == tag_suffix("s.t", cols, stored)
