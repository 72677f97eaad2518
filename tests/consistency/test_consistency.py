"""The short consistency profile: faults while a seeded workload runs; 0 stale reads, 0 divergent keys."""

from __future__ import annotations

import pytest

from tests.consistency.checker import run


@pytest.mark.timeout(400)
def test_short_profile_finds_no_stale_read_and_no_divergent_key() -> None:
    """Every fault kind once or more; every read dated against the commit history; the cache equals the DB."""
    report = run("short", seed=7)
    print(report.line())
    assert report.faults.keys() >= {
        "kill9_worker",
        "redis_restart",
        "mariadb_restart",
        "cut_mysql",
        "cut_redis",
        "purge_while_down",
        "ddl",
    }
    assert report.reads > 1000 and report.ops > 1000
    assert report.stale == [] and report.phantom == [] and report.divergent == []
    assert report.worker_crashes == 0
