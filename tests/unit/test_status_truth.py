"""``status`` derives liveness from what the worker keeps refreshing (pure parts: the record, the verdict)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from cdc_sync.core.keys import Namespace
from cdc_sync.ops.status import assess, describe_worker
from cdc_sync.worker.statusreport import StatusReporter

NOW = 1_800_000_000_000  # Redis TIME, in ms


def _rec(seen_ago_ms: int = 300, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": "h:1", "host": "h", "pid": 1, "state": "streaming", "refresh_ms": 1000}
    rec.update({"last_seen_ms": NOW - seen_ago_ms, "uptime_s": 60.0, "loop_idle_s": 0.5, **fields})
    return describe_worker(rec, NOW)


def test_a_recently_refreshed_streaming_worker_with_a_fresh_heartbeat_is_ok() -> None:
    """Seen 0.3 s ago, streaming, heartbeat 0.2 s old: no problem."""
    main, problems = assess([_rec()], 0.2, 5.0, ha=False)
    assert problems == [] and main is not None and main["alive"] and not main["stuck"]


def test_a_record_not_refreshed_within_the_window_is_not_alive() -> None:
    """The last state written says streaming, but the record is 6 s old (window max(3 x 1 s, 5 s)): not running."""
    main, problems = assess([_rec(6000)], 0.2, 5.0, ha=False)
    assert main is not None and not main["alive"]
    assert problems and "no worker is running" in problems[0] and "6.0 s ago while streaming" in problems[0]


def test_a_clean_stop_and_a_failure_are_not_running() -> None:
    """state stopped / failed, however fresh the record: not running, and said so."""
    for state, words in (("stopped", "stopped cleanly"), ("failed", "exited on an error")):
        _main, problems = assess([_rec(state=state)], 0.2, 5.0, ha=False)
        assert words in problems[0]


def test_reconnecting_is_a_problem_with_its_reason() -> None:
    """Alive but reconnecting: not OK, with the last error."""
    rec = _rec(state="reconnecting", last_error="source: binlog stream: connection refused")
    _main, problems = assess([rec], 0.2, 5.0, ha=False)
    assert "reconnecting, not streaming: source: binlog stream: connection refused" in problems[0]


def test_an_alive_worker_whose_loop_does_not_move_is_stuck() -> None:
    """The refresher runs but the sync loop has been still for 2 minutes: stuck, not OK."""
    main, problems = assess([_rec(loop_idle_s=120.0)], 0.2, 5.0, ha=False)
    assert main is not None and main["stuck"] and "has not moved for 120 s" in problems[0]


def test_no_record_at_all_means_no_worker_ever() -> None:
    """A namespace no worker ever reported on: not OK, and said so."""
    main, problems = assess([], None, 5.0, ha=False)
    assert main is None and "no worker has ever reported" in problems[0]
    assert "no freshness heartbeat" in problems[1]


def test_no_record_but_a_checkpoint_does_not_claim_no_worker_ever_ran() -> None:
    """Redis lost the records (restart) while no worker runs: not running, without claiming none ever ran."""
    _main, problems = assess([], None, 5.0, ha=False, checkpoint="0-1-42")
    assert problems[0].startswith("no worker is running") and "0-1-42" in problems[0]
    assert "ever" not in problems[0]


def test_a_heartbeat_older_than_the_staleness_bound_is_a_problem() -> None:
    """Worker streaming, heartbeat 7 s old with max_staleness 5 s: readers bypass, not OK."""
    _main, problems = assess([_rec()], 7.0, 5.0, ha=False)
    assert problems == [
        "the freshness heartbeat is 7.0 s old, past reader.max_staleness_ms (5 s): readers bypass the cache"
    ]


def test_ha_needs_an_applying_leader_standbys_alone_are_not_ok() -> None:
    """HA: a streaming leader plus a standby is OK; standbys alone are not."""
    leader = _rec(role="leader", fence=3)
    standby = _rec(state="standby", role="standby", id="h:2", pid=2)
    main, problems = assess([standby, leader], 0.2, 5.0, ha=True)
    assert problems == [] and main is leader
    _main, problems = assess([standby], 0.2, 5.0, ha=True)
    assert problems and "no leader is applying" in " ".join(problems)


def test_times_come_from_redis_clock_minus_durations() -> None:
    """started_at is Redis's last_seen minus the worker's monotonic uptime: no host clock is read."""
    main = _rec(uptime_s=3600.0, last_error="x", last_error_age_s=60.0)
    assert main["started_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((NOW - 300 - 3_600_000) / 1000))
    assert main["last_error_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((NOW - 300 - 60_000) / 1000))


def _reporter(**facts: Any) -> StatusReporter:
    client = redis.Redis(port=1)  # never contacted: record() builds the record only
    return StatusReporter(client, Namespace("cdc"), facts=lambda: facts)


def test_the_record_uses_no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A skewed host clock cannot reach the record: wall-clock fields from the worker are ignored."""
    reporter = _reporter(loop_idle_s=0.25)
    monkeypatch.setattr(time, "time", lambda: pytest.fail("the record must not read the wall clock"))
    reporter.update({"state": "streaming", "started_at": 1.0, "last_error_at": 2.0, "host": "evil", "start": "0-1-1"})
    rec = reporter.record()
    assert rec["state"] == "streaming" and rec["start"] == "0-1-1" and rec["loop_idle_s"] == 0.25
    assert "started_at" not in rec and "last_error_at" not in rec and rec["host"] != "evil"


def test_a_redis_step_failing_for_a_while_makes_the_state_reconnecting() -> None:
    """The applier retrying Redis for more than a second: reconnecting (redis), with the reason."""
    since = time.monotonic() - 5
    reporter = _reporter(redis_failing={"apply": (since, "redis apply: no answer in time")})
    reporter.update({"state": "streaming"})
    rec = reporter.record()
    assert rec["state"] == "reconnecting" and rec["reconnecting"] == "redis" and "no answer" in rec["detail"]
    fresh = _reporter(redis_failing={"apply": (time.monotonic(), "redis apply: blip")})
    fresh.update({"state": "streaming"})
    assert fresh.record()["state"] == "streaming"


def test_two_workers_without_ha_are_a_problem() -> None:
    """Two alive workers applying on one namespace without [ha]: they fight over the checkpoint; said so."""
    _main, problems = assess([_rec(), _rec(id="h:2", pid=2)], 0.2, 5.0, ha=False)
    assert problems == [
        "2 workers run on this namespace without [ha] (pid 1 on h, pid 2 on h): they fight over the checkpoint"
    ]


def test_the_human_view_lists_live_workers_and_only_the_last_few_gone() -> None:
    """Restarts leave records behind (pruned after a week): the human view shows every live worker and the three
    most recent gone ones, then a count; --json keeps them all."""
    from cdc_sync.ops.status import render

    live = _rec()
    gone = [_rec(60_000 * (n + 1), id=f"h:{n + 10}", pid=n + 10, state="stopped") for n in range(5)]
    data = {"namespace": "cdc", "redis": "redis://r", "ok": True, "problems": [], "workers": [live, *gone]}
    lines = [ln for ln in render(data).splitlines() if ln.startswith("worker")]
    assert len(lines) == 5 and "pid 1 " in lines[0] and "pid 10 " in lines[1]
    assert lines[-1] == "worker       ... and 2 more not running, seen earlier (see --json)"
