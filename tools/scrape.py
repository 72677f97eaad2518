"""A worker's /metrics, read the way the demo, the benches and the tests need it: one metric's total."""

from __future__ import annotations

import re
import urllib.request

ANY_LABELS = r"(?:\{[^}]*\})?"


def metric(port: int, name: str, labels: str = ANY_LABELS) -> float:
    """The sum of metric ``name`` over its series whose labels match the regex ``labels`` (any, by default)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}{labels} ([0-9.e+-]+)$", body, re.M))
