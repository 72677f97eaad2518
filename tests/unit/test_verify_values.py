"""verify's query values for columns MySQL cannot compare by the rendered text (pure parts)."""

from __future__ import annotations

import math
import struct

from cdc_sync.ops.verify import _Between, _condition, _float32_between


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def test_a_float_field_is_the_range_around_its_float32_only() -> None:
    for text in ("1.1", "-1.1", "3.4028e38", "1e-40", "0.1", "-0.0", "0"):
        got = _float32_between(text)
        assert isinstance(got, _Between), text
        stored = _f32(float(text))
        assert got.low < stored < got.high
        # the neighbours are the adjacent float32s: nothing else a FLOAT column holds lies between them
        assert _f32(got.low) == got.low and _f32(got.high) == got.high
        assert _f32((got.low + stored) / 2) in (got.low, stored) and _f32((got.high + stored) / 2) in (got.high, stored)
    assert _float32_between("1.1").low < 1.1 < _float32_between("1.1").high  # the double 1.1 is inside too


def test_text_that_is_no_finite_float32_stays_text() -> None:
    for text in ("abc", "nan", "inf", "1e39", ""):
        assert _float32_between(text) == text


def test_a_condition_doubles_a_percent_in_a_name_and_ranges_a_between() -> None:
    sql, args = _condition(["a%b", "w"], ("x", _Between(1.0, 2.0)))
    assert sql == "(`a%%b` = %s AND `w` > %s AND `w` < %s)"
    assert args == ["x", 1.0, 2.0]


def test_the_largest_float32_has_a_finite_range_mysql_can_take() -> None:
    for text in ("3.4028235e38", "-3.4028235e38"):
        got = _float32_between(text)
        assert isinstance(got, _Between)
        assert math.isfinite(got.low) and math.isfinite(got.high) and got.low < float(text) < got.high
