"""The short consistency profile: faults while a seeded workload runs; 0 stale reads, 0 divergent keys."""

from __future__ import annotations

import pytest

from tests.consistency.checker import FAULT_KINDS, MEMORY_FAULTS, run


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
    assert report.verify_checks > 100, "the worker's sampled verifier ran (what it found is in the line)"


@pytest.mark.timeout(300)
def test_compressed_binlog_profile_finds_no_stale_read_and_no_divergent_key() -> None:
    """MariaDB with log_bin_compress=ON (zlib rows and statements) under worker kills, MariaDB restarts and DDL:
    every compressed change is applied; `make consistency-compressed` runs the long profile."""
    report = run(
        "short", seed=5, kinds=("kill9_worker", "mariadb_restart", "ddl", "cut_mysql"), seconds=45, compress=True
    )
    print(report.line())
    assert report.errors == []
    assert report.compressed_events > 1000, "the binlog was written compressed"
    assert report.reads > 1000 and report.ops > 1000
    assert report.stale == [] and report.phantom == [] and report.divergent == []
    assert report.worker_crashes == 0


@pytest.mark.timeout(300)
def test_memory_pressure_profile_finds_no_stale_read_and_no_divergent_key() -> None:
    """Redis with a 4 MB maxmemory under allkeys-random (it may evict any key: tag sets, hold-offs, stamps, the
    checkpoint, the rules) and bursts of another application's keys; `make consistency-memory` runs every policy."""
    report = run("short", seed=3, kinds=MEMORY_FAULTS, seconds=45, memory="allkeys-random")
    print(report.line())
    assert report.errors == []
    assert report.pressure_bursts >= 3 and report.evicted["row"] > 0 and report.eviction_flushes > 0
    assert report.reads > 1000 and report.ops > 1000
    assert report.stale == [] and report.phantom == [] and report.divergent == []
    assert report.worker_crashes == 0
