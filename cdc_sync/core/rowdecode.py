"""Fast decoding of row images, only of the columns the worker needs. Pure code: bytes in, dicts out.

python-mysql-replication decodes every column of every row through several method calls per value, and
that was most of the worker's CPU (py-spy: 84% of the reading thread). Evict mode needs only the key, tag
and cascade columns, and even update mode can decode a row in one tight loop. This module decodes the body
of a rows event (the bytes after the columns-present bitmaps) with one precompiled step per column: a
needed column is read, any other is skipped by its size, so its bytes are never turned into values.

The values equal what the library returns after source.py's fix-ups (a differential test against the
library holds them to that, type by type), and a TIME is decoded as MySQL itself does (``time2_value``;
the library gets negative fractional TIMEs wrong, which source.py repairs on its path). A table whose needed
columns include a type this module does not decode (pre-5.6 temporal types, old DECIMAL), or whose images
are not FULL, is left to the library.
Every decoded event must end exactly at the end of its body; anything else raises ``DecodeError``.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import math
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_sync.errors import DecodeError

# Column type codes of the binlog's table map (MySQL include/field_types.h).
DECIMAL, TINY, SHORT, LONG, FLOAT, DOUBLE, NULL, TIMESTAMP, LONGLONG, INT24 = range(10)
DATE, TIME, DATETIME, YEAR, NEWDATE, VARCHAR, BIT, TIMESTAMP2, DATETIME2, TIME2 = range(10, 20)
JSON, NEWDECIMAL, ENUM, SET = 245, 246, 247, 248
BLOB, VAR_STRING, STRING, GEOMETRY = 252, 253, 254, 255

EPOCH = datetime.datetime(1970, 1, 1)
_DECIMAL_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)  # bytes of a group of 0..9 decimal digits
_INTS = {
    (TINY, False): "<b",
    (TINY, True): "<B",
    (SHORT, False): "<h",
    (SHORT, True): "<H",
    (LONG, False): "<i",
    (LONG, True): "<I",
    (LONGLONG, False): "<q",
    (LONGLONG, True): "<Q",
}
_FIXED = {TINY: 1, SHORT: 2, INT24: 3, LONG: 4, LONGLONG: 8, FLOAT: 4, DOUBLE: 8, YEAR: 1, DATE: 3}
_FIXED_OLD = {TIME: 3, DATETIME: 8, TIMESTAMP: 4}  # skippable, not decoded here

Step = Callable[[bytes, int], tuple[Any, int]]
JsonParser = Callable[[int, bytes], Any]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """What the table map says of one column (see source.py, which builds these from the library's)."""

    name: str
    type: int
    unsigned: bool = False
    max_length: int = 0  # VARCHAR/CHAR: declared bytes (decides the 1- or 2-byte length prefix)
    length_size: int = 0  # BLOB/TEXT/JSON/GEOMETRY: bytes of the length prefix
    precision: int = 0  # NEWDECIMAL
    decimals: int = 0
    fsp: int = 0  # fractional seconds of TIME2/DATETIME2/TIMESTAMP2
    encoding: str | None = "utf-8"  # text columns: Python codec; None: the library keeps bytes
    binary_pad: int = 0  # BINARY(n): pad to n bytes with NUL, as a SELECT returns it
    bits: int = 0  # BIT
    size: int = 0  # ENUM/SET: bytes of the stored index or mask
    enum_values: tuple[str, ...] | None = None
    set_values: tuple[str, ...] | None = None


def float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32: what MySQL prints for a FLOAT."""
    single = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):
        candidate = float(f"{single:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == single:
            return candidate
    return float(single)


def json_text(value: Any) -> Any:
    """MySQL binary JSON as the library decodes it (bytes keys and strings) → plain JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {json_text(k): json_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_text(v) for v in value]
    return value


def _fsp_bytes(fsp: int) -> int:
    return (fsp + 1) // 2


def _prefix(size: int) -> Callable[[bytes, int], int]:
    """Reader of a little-endian length prefix of ``size`` bytes."""
    if size == 1:
        return lambda data, pos: data[pos]
    if size == 2:
        unpack = struct.Struct("<H").unpack_from
        return lambda data, pos: unpack(data, pos)[0]
    return lambda data, pos: int.from_bytes(data[pos : pos + size], "little")


def _prefix_size(spec: ColumnSpec) -> int:
    if spec.type in (VARCHAR, STRING):
        return 2 if spec.max_length > 255 else 1
    return spec.length_size


def _fixed_size(spec: ColumnSpec) -> int | None:
    """Bytes of a non-NULL value of a fixed-size type; None for length-prefixed or unknown types."""
    t = spec.type
    if t in _FIXED:
        return _FIXED[t]
    if t in _FIXED_OLD:
        return _FIXED_OLD[t]
    if t == TIMESTAMP2:
        return 4 + _fsp_bytes(spec.fsp)
    if t == DATETIME2:
        return 5 + _fsp_bytes(spec.fsp)
    if t == TIME2:
        return 3 + _fsp_bytes(spec.fsp)
    if t == NEWDECIMAL:
        return _decimal_layout(spec)[0]
    if t in (ENUM, SET):
        return spec.size
    if t == BIT:
        return (spec.bits + 7) // 8
    return None


def _skip(spec: ColumnSpec) -> tuple[int, Any]:
    """How RowDecoder.images steps over a value of this column: (0, its fixed size), (1 or 2, None) for a
    1- or 2-byte length prefix, or (3, a step returning the position after a longer-prefixed value)."""
    size = _fixed_size(spec)
    if size is not None:
        return 0, size
    if spec.type in (VARCHAR, STRING, BLOB, JSON, GEOMETRY):
        k = _prefix_size(spec)
        if k in (1, 2):
            return k, None
        prefix = _prefix(k)
        return 3, lambda data, pos: (None, pos + k + prefix(data, pos))
    raise DecodeError(f"column {spec.name!r}: no size known for type {spec.type}")


def _decimal_layout(spec: ColumnSpec) -> tuple[int, int, int, int, int, int]:
    """(total bytes, leading integer group bytes, full integer groups, full fraction groups, trailing
    fraction group bytes, trailing fraction digits) of a NEWDECIMAL(precision, decimals)."""
    integral = spec.precision - spec.decimals
    ui, ci = divmod(integral, 9)
    uf, cf = divmod(spec.decimals, 9)
    lead, trail = _DECIMAL_BYTES[ci], _DECIMAL_BYTES[cf]
    return lead + 4 * (ui + uf) + trail, lead, ui, uf, trail, cf


def _decimal_step(spec: ColumnSpec) -> Step:
    size, lead, ui, uf, trail, cf = _decimal_layout(spec)
    full, sign = (1 << (8 * size)) - 1, 1 << (8 * size - 1)
    # The stored number is a big-endian integer of ``size`` bytes made of base-10**9 groups (shorter ones
    # at both ends). Its value in units of 10**-decimals is sum(group * weight) over (shift, mask, weight).
    widths = [lead] * bool(lead) + [4] * (ui + uf) + [trail] * bool(trail)
    digits = [9] * (len(widths) - bool(trail)) + [cf] * bool(trail)  # digits below each group: the weight
    groups = []
    shift = 8 * size
    for k, nbytes in enumerate(widths):
        shift -= 8 * nbytes
        groups.append((shift, (1 << (8 * nbytes)) - 1, 10 ** sum(digits[k + 1 :])))
    terms = " + ".join(f"(raw >> {sh} & {mask}) * {weight}" for sh, mask, weight in groups) or "0"
    # One expression per column layout, compiled once: a loop over the groups costs several times more.
    value_of: Callable[[int], int] = eval(f"lambda raw: {terms}")  # noqa: S307 - built from integers only
    scale = spec.decimals
    dec = decimal.Decimal
    from_bytes = int.from_bytes

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        if len(data) < pos + size:
            raise DecodeError("decimal past the end of the row")
        raw = from_bytes(data[pos : pos + size], "big") ^ sign  # the first bit is set for non-negative values
        negative = raw & sign
        if negative:
            raw ^= full  # negative values are stored inverted
        text = str(value_of(raw))
        if scale:
            text = text.rjust(scale + 1, "0")
            text = f"{text[:-scale]}.{text[-scale:]}"
        return dec(f"-{text}" if negative else text), pos + size

    return read


def _micro(fsp: int) -> Callable[[bytes, int], int]:
    """Reader of the fractional seconds that follow a TIMESTAMP2/DATETIME2, as microseconds."""
    n = _fsp_bytes(fsp)
    scale = int(10 ** (6 - fsp))
    odd = fsp % 2 == 1

    def micro(data: bytes, pos: int) -> int:
        value = int.from_bytes(data[pos : pos + n], "big")
        if odd:
            value //= 10
        return value * scale

    return micro


def _datetime2_step(spec: ColumnSpec) -> Step:
    n = _fsp_bytes(spec.fsp)
    micro = _micro(spec.fsp)
    dt = datetime.datetime

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        v = int.from_bytes(data[pos : pos + 5], "big")
        ym = (v >> 22) & 0x1FFFF
        try:
            value: Any = dt(ym // 13, ym % 13, (v >> 17) & 31, (v >> 12) & 31, (v >> 6) & 63, v & 63)
        except ValueError:  # zero dates ('0000-00-00 ...'), as the library: None
            return None, pos + 5 + n
        if n:
            us = micro(data, pos + 5)
            if us > 0:
                value = value.replace(microsecond=us)
        return value, pos + 5 + n

    return read


def _timestamp2_step(spec: ColumnSpec) -> Step:
    n = _fsp_bytes(spec.fsp)
    micro = _micro(spec.fsp)
    unpack = struct.Struct(">i").unpack_from
    delta = datetime.timedelta

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        seconds = unpack(data, pos)[0]
        us = micro(data, pos + 4) if n else 0
        if seconds == 0 and us == 0:
            return None, pos + 4 + n  # the zero TIMESTAMP ('0000-00-00 00:00:00') is stored as epoch 0
        return EPOCH + delta(seconds=seconds, microseconds=us), pos + 4 + n

    return read


def time2_value(packed: int) -> datetime.timedelta:
    """A TIME from MySQL's packed form: (seconds part as h<<12 | m<<6 | s) << 24 plus microseconds, signed."""
    negative = packed < 0
    if negative:
        packed = -packed
    hms, micro = packed >> 24, packed & 0xFFFFFF
    value = datetime.timedelta(
        hours=(hms >> 12) & 0x3FF, minutes=(hms >> 6) & 0x3F, seconds=hms & 0x3F, microseconds=micro
    )
    return -value if negative else value


def _time2_step(spec: ColumnSpec) -> Step:
    """TIME(fsp) as MySQL reads it (my_time_packed_from_binary): a 3-byte offset integer part, then 0-3 bytes
    of fraction; a negative value with a fraction stores the next integer down and the fraction's complement."""
    n = _fsp_bytes(spec.fsp)
    size = 3 + n
    scale = (0, 10_000, 100, 1)[n]  # the stored fraction's unit, in microseconds

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        if n == 3:  # fsp 5 and 6: one 48-bit offset number
            packed = int.from_bytes(data[pos : pos + 6], "big") - 0x800000000000
            return time2_value(packed), pos + 6
        intpart = int.from_bytes(data[pos : pos + 3], "big") - 0x800000
        frac = int.from_bytes(data[pos + 3 : pos + size], "big") if n else 0
        if intpart < 0 and frac:
            intpart += 1
            frac -= 1 << (8 * n)
        return time2_value((intpart << 24) + frac * scale), pos + size

    return read


def _date_step(data: bytes, pos: int) -> tuple[Any, int]:
    v = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
    year, month, day = (v >> 9) & 0x7FFF, (v >> 5) & 15, v & 31
    if not (year and month and day):
        return None, pos + 3  # '0000-00-00' and partial zero dates, as the library: None
    return datetime.date(year, month, day), pos + 3


def _string_step(spec: ColumnSpec) -> Step:
    k = _prefix_size(spec)
    prefix = _prefix(k)
    encoding = spec.encoding
    pad = spec.binary_pad

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        start = pos + k
        end = start + prefix(data, pos)
        raw = data[start:end]
        if encoding is not None:
            return raw.decode(encoding), end
        if pad and len(raw) < pad:
            return raw.ljust(pad, b"\0"), end
        return raw, end

    return read


def _json_step(spec: ColumnSpec, parse: JsonParser) -> Step:
    k = spec.length_size
    prefix = _prefix(k)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        start = pos + k
        end = start + prefix(data, pos)
        if end == start:
            return None, end
        return json_text(parse(data[start], data[start + 1 : end])), end

    return read


def _int_step(fmt: str) -> Step:
    s = struct.Struct(fmt)
    unpack, size = s.unpack_from, s.size
    return lambda data, pos: (unpack(data, pos)[0], pos + size)


def _decode_step(spec: ColumnSpec, parse_json: JsonParser | None) -> Step | None:
    """The step that decodes a value of this column, or None when this module does not decode its type."""
    t = spec.type
    if (t, spec.unsigned) in _INTS:
        return _int_step(_INTS[t, spec.unsigned])
    if t == INT24:
        signed = not spec.unsigned
        return lambda data, pos: (int.from_bytes(data[pos : pos + 3], "little", signed=signed), pos + 3)
    if t == FLOAT:
        unpack_f = struct.Struct("<f").unpack_from
        return lambda data, pos: (float32_text(unpack_f(data, pos)[0]), pos + 4)
    if t == DOUBLE:
        return _int_step("<d")
    if t == YEAR:
        return lambda data, pos: (data[pos] + 1900 if data[pos] else 0, pos + 1)  # YEAR 0000 is 0, as SELECT says
    if t in (VARCHAR, STRING, BLOB, GEOMETRY):
        return _string_step(spec)
    if t == NEWDECIMAL:
        return _decimal_step(spec)
    if t == DATETIME2:
        return _datetime2_step(spec)
    if t == TIME2:
        return _time2_step(spec)
    if t == TIMESTAMP2:
        return _timestamp2_step(spec)
    if t == DATE:
        return _date_step
    if t == ENUM:
        return _enum_step(spec)
    if t == SET:
        return _set_step(spec)
    if t == BIT:
        nbytes, mask = (spec.bits + 7) // 8, (1 << spec.bits) - 1
        return lambda data, pos: (int.from_bytes(data[pos : pos + nbytes], "big") & mask, pos + nbytes)
    if t == JSON and parse_json is not None:
        return _json_step(spec, parse_json)
    return None


def _enum_step(spec: ColumnSpec) -> Step:
    size, values = spec.size, spec.enum_values

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        index = int.from_bytes(data[pos : pos + size], "little")
        return (values[index] if values else None), pos + size

    return read


def _set_step(spec: ColumnSpec) -> Step:
    size, values = spec.size, spec.set_values or ()

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        mask = int.from_bytes(data[pos : pos + size], "little")
        return {v for i, v in enumerate(values) if mask >> i & 1}, pos + size

    return read


class RowDecoder:
    """Decodes the row images of one table map, keeping only ``needed`` columns (None: all of them)."""

    def __init__(
        self, specs: Sequence[ColumnSpec], needed: frozenset[str] | None, parse_json: JsonParser | None = None
    ) -> None:
        self.columns = len(specs)
        self.null_bytes = (len(specs) + 7) // 8
        # (null bit, name, how, arg): how 0 skips arg bytes, 1 and 2 skip a value with a 1- or 2-byte
        # length prefix (VARCHAR, TEXT), 3 decodes with the step arg (name None: decode only to skip).
        steps: list[tuple[int, str | None, int, Any]] = []
        for i, spec in enumerate(specs):
            if needed is None or spec.name in needed:
                step = _decode_step(spec, parse_json)
                if step is None:
                    raise DecodeError(f"column {spec.name!r}: type {spec.type} is left to the library")
                steps.append((1 << i, spec.name, 3, step))
                continue
            steps.append((1 << i, None, *_skip(spec)))
        self.steps = tuple(steps)

    def images(self, data: bytes) -> list[dict[str, Any]]:
        """Every row image in ``data`` (the body after the bitmaps), in order; raises DecodeError."""
        out: list[dict[str, Any]] = []
        pos, end, nb = 0, len(data), self.null_bytes
        steps = self.steps
        from_bytes = int.from_bytes
        while pos < end:
            nulls = from_bytes(data[pos : pos + nb], "little")
            pos += nb
            row: dict[str, Any] = {}
            for bit, name, how, arg in steps:
                if nulls & bit:
                    if name is not None:
                        row[name] = None
                elif how == 3:
                    value, pos = arg(data, pos)
                    if name is not None:
                        row[name] = value
                elif how == 0:
                    pos += arg
                elif how == 1:
                    pos += 1 + data[pos]
                else:
                    pos += 2 + data[pos] + (data[pos + 1] << 8)
            if pos > end:
                raise DecodeError(f"row image ends {pos - end} bytes past the event")
            out.append(row)
        return out


def text_encoding(library_encoding: str) -> str | None:
    """The Python codec for a column's encoding name as the library gives it; None when Python has none
    (the library then keeps the bytes: BINARY, VARBINARY, BLOB). MySQL's latin1, which PyMySQL names cp1252,
    is ``mysql_latin1`` (below)."""
    try:
        name = codecs.lookup(library_encoding).name
    except LookupError:
        return None
    return MYSQL_LATIN1 if name == "cp1252" else name


# ---- values the binlog carries in another form than a SELECT prints (kinds from information_schema) ------------


def server_text(kind: str, value: Any) -> Any:
    """A decoded value as a SELECT returns it, for the column kinds ``value_kind`` names: MariaDB's UUID, INET4
    and INET6 (the binlog has their bytes, SELECT their text) and FLOAT (the binlog has the float32, SELECT prints
    6 significant digits, or the column's decimals: ``float:D``). Other values pass unchanged."""
    if kind == "uuid" and isinstance(value, bytes) and len(value) == 16:
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if kind == "inet4" and isinstance(value, bytes) and len(value) == 4:
        return ".".join(str(b) for b in value)
    if kind == "inet6" and isinstance(value, bytes) and len(value) == 16:
        return inet6_text(value)
    if kind.startswith("float") and isinstance(value, float) and math.isfinite(value):
        exact = struct.unpack("<f", struct.pack("<f", value))[0]  # the float32 itself (value reads back as it)
        scale = kind.partition(":")[2]
        return float(f"{exact:.{int(scale)}f}") if scale else float(f"{exact:.6g}")
    return value


def value_kind(data_type: str, numeric_scale: int | None) -> str | None:
    """The ``server_text`` kind of a column by its information_schema DATA_TYPE and NUMERIC_SCALE (None: the
    decoded value is already what a SELECT returns)."""
    if data_type in ("uuid", "inet4", "inet6"):
        return data_type
    if data_type == "float":
        return f"float:{numeric_scale}" if numeric_scale is not None else "float"
    return None


def inet6_text(raw: bytes) -> str:
    """An IPv6 address as MariaDB prints an INET6 (inet_ntop's rules): the longest run of two or more zero
    groups as ``::`` (the first of equal runs), lowercase hex, and the last 32 bits as a dotted quad for an
    IPv4-compatible (``::1.2.3.4``) or IPv4-mapped (``::ffff:1.2.3.4``) address."""
    words = [raw[i] << 8 | raw[i + 1] for i in range(0, 16, 2)]
    best, best_len, start = -1, 0, -1
    for i, w in enumerate([*words, 1]):  # (a sentinel ends a trailing run)
        if w == 0 and start < 0:
            start = i
        elif w != 0 and start >= 0:
            if i - start > best_len:
                best, best_len = start, i - start
            start = -1
    if best_len < 2:
        return ":".join(f"{w:x}" for w in words)
    if best == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
        return ("::" if best_len == 6 else "::ffff:") + ".".join(str(b) for b in raw[12:])
    head = ":".join(f"{w:x}" for w in words[:best])
    tail = ":".join(f"{w:x}" for w in words[best + best_len :])
    return f"{head}::{tail}"


# MySQL's latin1 is Windows-1252 with the five bytes it leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) read as
# the C1 controls of the same number, which is what the server converts them to (a SELECT over a utf8mb4
# connection returns U+0081 for 0x81): Python's cp1252 refuses those bytes.
MYSQL_LATIN1 = "mysql_latin1"


def _latin1_char(b: int) -> str:
    try:
        return bytes([b]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(b)


_LATIN1_DECODING = "".join(_latin1_char(b) for b in range(256))


# Charsets as the server itself maps them (sync.py reads each mapped column's charset once): Python's codecs of
# the same names differ from MySQL's in places. Single-byte: cp1256, greek, hebrew, cp866 map some bytes to other
# characters, cp1250/cp1257 leave bytes undefined that MySQL reads as '?', and some have no codec (dec8, swe7).
# Multi-byte: sjis and ujis read 0x815F/0xA1C0 as '\\' (Python: U+FF3C), eucjpms is Microsoft's variant (Python
# has none), euckr holds the CP949 extension, big5 maps 7 codes elsewhere, and every one of them stores codes
# that have no Unicode mapping (GBK's a4 40), which a SELECT prints as '?' and Python refuses.
# (charset name -> 256 characters, and each multi-byte sequence with its character: what mysql.server_charsets reads)
CharsetTable = tuple[str, dict[bytes, str]]
# MySQL's wide charsets are big-endian (utf16le aside) and carry no byte order mark; the library names Python
# codecs that read a mark or the machine's order (utf16, utf32) or none at all (ucs2, utf16le).
WIDE_CHARSETS = {"ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le", "utf32": "utf-32-be"}
_SERVER_TABLES: dict[str, str] = {}  # charset name -> 256 characters, byte b decodes as [b]


@dataclass(frozen=True)
class _Sequences:
    chars: dict[bytes, str]  # each multi-byte sequence -> its character
    lengths: dict[int, int]  # lead byte -> the length of its sequences
    inverse: dict[str, bytes]  # character -> its shortest spelling (for encode)
    ascii_same: bool  # bytes below 0x80 stand for themselves (runs of them decode as ASCII)


_SERVER_SEQUENCES: dict[str, _Sequences] = {}  # the multi-byte charsets among _SERVER_TABLES


def register_server_charset(charset: str, table: str, sequences: Mapping[bytes, str] | None = None) -> None:
    """Decode ``charset`` as the server converts it: ``table`` gives each byte alone (``CONVERT(x'NN' USING
    charset)``), ``sequences`` every multi-byte sequence the server reads as one character ('?' for those it
    stores but cannot map). A byte that starts a sequence never stands alone."""
    if len(table) != 256:
        raise ValueError(f"{charset}: a byte table has 256 characters, not {len(table)}")
    name = charset.lower()
    _SERVER_SEQUENCES.pop(name, None)
    if sequences:
        lengths: dict[int, int] = {}
        for seq in sequences:
            if len(seq) not in (2, 3) or lengths.setdefault(seq[0], len(seq)) != len(seq):
                raise ValueError(f"{charset}: sequences are 2 or 3 bytes long, one length per lead byte")
        inverse = {ch: bytes([b]) for b, ch in enumerate(table) if b not in lengths}
        for seq, ch in sequences.items():
            inverse.setdefault(ch, seq)
        _SERVER_SEQUENCES[name] = _Sequences(dict(sequences), lengths, inverse, table[:128] == _ASCII)
    _SERVER_TABLES[name] = table


def server_charset_known(charset: str) -> bool:
    """Whether the server's own table of ``charset`` was read (charsets do not change while a server runs)."""
    return charset.lower() in _SERVER_TABLES


def server_codec(charset: str | None) -> str | None:
    """The codec name for a MySQL charset the server's own table was read for (None: none was)."""
    if charset is None or charset.lower() not in _SERVER_TABLES:
        return None
    return f"mysql_{charset.lower()}"


def _charmap(name: str, decoding: Callable[[], str]) -> codecs.CodecInfo:
    def decode(data: Any, errors: str = "strict") -> tuple[str, int]:  # (data: any buffer)
        return codecs.charmap_decode(data, errors, decoding())

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        return codecs.charmap_encode(text, errors, codecs.charmap_build(decoding()))

    return codecs.CodecInfo(name=name, encode=encode, decode=decode)


_ASCII_RUN = re.compile(rb"[\x00-\x7f]+")
_ASCII = "".join(chr(b) for b in range(128))


def decode_multibyte(
    raw: bytes,
    table: str,
    sequences: Mapping[bytes, str],
    lengths: Mapping[int, int],
    ascii_same: bool | None = None,
) -> str:
    """``raw`` as the server converts it (``my_convert``): a lead byte and its trail bytes as their character,
    a byte that starts no known sequence, or a sequence cut short by the end, as '?' and the next byte read
    afresh (so ``b0 41`` in GBK is one character and ``41 b0`` is 'A?'), any other byte from ``table``."""
    if ascii_same is None:
        ascii_same = table[:128] == _ASCII
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b < 0x80 and ascii_same:
            run = _ASCII_RUN.match(raw, i)
            assert run is not None
            out.append(run.group().decode("ascii"))
            i = run.end()
            continue
        k = lengths.get(b)
        if k is None:
            out.append(table[b])
            i += 1
            continue
        ch = sequences.get(raw[i : i + k])
        if ch is None:
            out.append("?")
            i += 1
        else:
            out.append(ch)
            i += k
    return "".join(out)


def _multibyte(name: str, charset: str) -> codecs.CodecInfo:
    def decode(data: Any, errors: str = "strict") -> tuple[str, int]:  # (every byte string decodes, as the server's)
        raw = bytes(data)
        known = _SERVER_SEQUENCES[charset]
        return decode_multibyte(raw, _SERVER_TABLES[charset], known.chars, known.lengths, known.ascii_same), len(raw)

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        inverse = _SERVER_SEQUENCES[charset].inverse
        for i, ch in enumerate(text):
            if ch not in inverse:
                raise UnicodeEncodeError(name, text, i, i + 1, "no such character in the server's table")
        return b"".join(inverse[ch] for ch in text), len(text)

    return codecs.CodecInfo(name=name, encode=encode, decode=decode)


def _mysql_codec(name: str) -> codecs.CodecInfo | None:
    if not name.startswith("mysql_"):
        return None
    charset = name[len("mysql_") :]
    if charset in _SERVER_SEQUENCES:
        return _multibyte(name, charset)
    if charset in _SERVER_TABLES:  # (read at call time: codecs.lookup caches this CodecInfo)
        return _charmap(name, lambda: _SERVER_TABLES[charset])
    if name == MYSQL_LATIN1:
        return _charmap(name, lambda: _SERVER_TABLES.get("latin1", _LATIN1_DECODING))
    return None


codecs.register(_mysql_codec)
