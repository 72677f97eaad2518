"""verify's query values for columns MySQL cannot compare by the rendered text (pure parts)."""

from __future__ import annotations

import math
import struct

from cdc_sync.core.rowdecode import server_text
from cdc_sync.ops.verify import _Between, _condition, _float_between


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def test_a_float_field_is_a_range_holding_the_float32_it_was_printed_from() -> None:
    """The worker renders a FLOAT as the server prints it; the range around that text holds the stored float32."""
    for x in (1.1, -1.1, 3.4028235e38, -3.4028235e38, 1e-40, 0.1, 0.1234567, 123456789, 16777217, 1e-45, 0.0):
        stored = _f32(x)
        for kind, scale in (("float", None), ("float:4", 4), ("float:0", 0), ("float:2", 2)):
            text = str(server_text(kind, stored))
            got = _float_between(text, scale)
            assert isinstance(got, _Between), text
            assert got.low < stored < got.high, (kind, x, text, got)
            assert math.isfinite(got.low) and math.isfinite(got.high)


def test_text_that_is_no_finite_number_stays_text() -> None:
    for text in ("abc", "nan", "inf", "", "1e400"):
        assert _float_between(text) == text


def test_a_condition_doubles_a_percent_in_a_name_and_ranges_a_between() -> None:
    sql, args = _condition(["a%b", "w"], ("x", _Between(1.0, 2.0)))
    assert sql == "(`a%%b` = %s AND `w` > %s AND `w` < %s)"
    assert args == ["x", 1.0, 2.0]
