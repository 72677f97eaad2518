"""The short consistency profile: faults while a seeded workload runs; 0 stale reads, 0 divergent keys."""

from __future__ import annotations

import pytest

from tests.consistency.checker import FAULT_KINDS, run


@pytest.mark.timeout(400)
def test_short_profile_finds_no_stale_read_and_no_divergent_key() -> None:
    """Every fault kind once or more; every read dated against the commit history; the cache equals the DB."""
    report = run("short", seed=7)
    print(report.line())
    assert report.errors == [], "a fault could not be injected (or the checker failed)"
    assert report.faults.keys() >= set(FAULT_KINDS)
    assert report.reads > 1000 and report.ops > 1000
    assert report.stale == [] and report.phantom == [] and report.divergent == []
    assert report.worker_crashes == 0
