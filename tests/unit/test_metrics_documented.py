"""Every metric the worker and readers export is named in the README (operators alert on what they can find)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from cdc_sync import metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_metric_is_in_the_readme() -> None:
    exported = [v for v in vars(metrics).values() if isinstance(v, Counter | Gauge | Histogram)]
    assert len(exported) > 20
    missing = []
    for metric in exported:
        name = metric._name  # (counters are exported with _total, which the README may leave out)
        if not re.search(rf"`{re.escape(name)}(_total)?[`{{]", README):
            missing.append(name)
    assert missing == []
