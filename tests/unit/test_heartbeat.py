"""The freshness heartbeat never runs ahead of what is applied."""

from __future__ import annotations

import threading

from cdc_sync.worker.heartbeat import Prober


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000
        self.beats: list[tuple[int, str]] = []

    def time_ms(self) -> int:
        self.now += 10
        return self.now

    def set_heartbeat(self, ms: int, expected: str) -> bool:
        self.beats.append((ms, expected))
        return True


class Server:
    def __init__(self, position: str, clock: Clock) -> None:
        self.position = position
        self.clock = clock
        self.asked_at: list[int] = []

    def current_position(self, flavor: str, kind: str) -> str:
        self.asked_at.append(self.clock.now)
        return self.position


def test_heartbeat_waits_for_the_applied_position() -> None:
    """A sample's time is written only once the checkpoint reaches the server position read after it."""
    clock = Clock()
    applied = {"pos": "0-1-5"}
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: applied["pos"], interval_s=1)
    assert prober.sample()
    assert prober.settle() is False and clock.beats == [], "no heartbeat while 0-1-5 < 0-1-9"
    applied["pos"] = "0-1-9"
    assert prober.settle()
    ((ms, expected),) = clock.beats
    assert expected == "0-1-9"
    assert ms <= clock.now
    assert not prober.pending


def test_sample_time_is_taken_before_the_position() -> None:
    """T0 is read before the server position, so every commit before T0 is covered by that position."""
    clock = Clock()
    server = Server("bin.000001:500", clock)
    prober = Prober(clock, server, "mysql", lambda: "bin.000001:500", interval_s=1)
    assert prober.sample() and prober.settle()
    ((ms, _),) = clock.beats
    assert ms <= server.asked_at[0]


def test_no_heartbeat_while_the_position_is_not_reached() -> None:
    """A worker that never reaches the position never moves the heartbeat (readers then bypass)."""
    clock = Clock()
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-1", interval_s=1)
    for _ in range(5):
        assert prober.sample()
        assert prober.settle() is False
    assert clock.beats == []


def test_out_of_order_mariadb_numbers_do_not_move_the_heartbeat_early() -> None:
    """Applied 0-1-10; the server's end is a later 0-1-5 (lower number, later in the stream): no heartbeat
    until the stream position reaches the server's end."""
    clock = Clock()
    applied = {"pos": "0-1-10@1:bin.000001:900"}
    server = Server("0-1-5@1:bin.000001:1200", clock)
    prober = Prober(clock, server, "mariadb", lambda: applied["pos"], interval_s=1)
    assert prober.sample()
    assert prober.settle() is False and clock.beats == [], "0-1-10 > 0-1-5 by number, but behind in the stream"
    applied["pos"] = "0-1-5@1:bin.000001:1200"
    assert prober.settle()


def test_samples_do_not_wait_for_each_other_and_the_newest_reached_counts() -> None:
    """Samples taken while earlier ones wait are settled together: the heartbeat moves once, to the newest
    time whose position is applied, and a sample not yet reached keeps waiting."""
    clock = Clock()
    server = Server("0-1-5", clock)
    applied = {"pos": "0-1-1"}
    prober = Prober(clock, server, "mariadb", lambda: applied["pos"], interval_s=1)
    times = []
    for position in ("0-1-5", "0-1-7", "0-1-9"):
        server.position = position
        assert prober.sample()
        times.append(prober.pending[-1].t0)
    applied["pos"] = "0-1-7"
    assert prober.settle()
    assert clock.beats == [(times[1], "0-1-7")]
    assert [s.target for s in prober.pending] == ["0-1-9"]


def test_waiting_samples_are_bounded_and_the_freshest_is_kept() -> None:
    """With every slot waiting, a new sample replaces the newest waiting one (the oldest is kept)."""
    clock = Clock()
    server = Server("0-1-5", clock)
    prober = Prober(clock, server, "mariadb", lambda: "0-1-1", interval_s=1, max_pending=3)
    for seq in range(5, 10):
        server.position = f"0-1-{seq}"
        assert prober.sample()
    assert [s.target for s in prober.pending] == ["0-1-5", "0-1-6", "0-1-9"]


def test_nothing_is_sampled_while_the_worker_is_not_streaming() -> None:
    """A position the worker is not reading from is nothing to vouch for: no sample, no question to the server."""
    clock = Clock()
    server = Server("0-1-5", clock)
    prober = Prober(clock, server, "mariadb", lambda: "0-1-5", interval_s=1, streaming=lambda: False)
    assert prober.sample() is False
    assert server.asked_at == [] and not prober.pending


def test_a_rewind_to_another_form_of_position_drops_the_waiting_samples() -> None:
    """Samples of GTID form cannot be compared with a file position the worker rewound to: they are dropped."""
    clock = Clock()
    applied = {"pos": "0-1-1"}
    prober = Prober(clock, Server("0-1-5", clock), "mariadb", lambda: applied["pos"], interval_s=1)
    assert prober.sample()
    applied["pos"] = "bin.000001:4"
    assert prober.settle() is False
    assert not prober.pending and clock.beats == []


def test_samples_follow_the_stream_and_idle_ones_wait_an_interval() -> None:
    """After a sample with nothing waiting the next is an interval away; a nudge (the checkpoint moved) or a
    sample still waiting brings it to the minimum gap."""
    clock = Clock()
    server = Server("0-1-5", clock)
    applied = {"pos": "0-1-5"}
    prober = Prober(clock, server, "mariadb", lambda: applied["pos"], interval_s=30, min_gap_s=0.01)
    assert prober.sample() and prober.settle()
    assert prober._due_in() > 20, "idle: the next sample is an interval away"
    prober.nudge()
    assert prober._due_in() <= 0.01, "the checkpoint moved: sample again after the minimum gap"
    server.position = "0-1-9"
    assert prober.sample() and prober.settle() is False
    assert prober._due_in() <= 0.01, "a sample waits: keep sampling at the minimum gap"


def test_the_prober_thread_moves_the_heartbeat_when_the_applier_nudges() -> None:
    """Running: a sample waiting for the applied position is settled when the applier nudges, without waiting
    for the next interval."""
    clock = Clock()
    applied = {"pos": "0-1-1"}
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: applied["pos"], interval_s=3600)
    prober.start()
    try:
        deadline = threading.Event()
        while not prober.pending and not deadline.wait(0.01):
            pass
        applied["pos"] = "0-1-9"
        prober.nudge()
        while not clock.beats and not deadline.wait(0.01):
            pass
        assert clock.beats and clock.beats[0][1] == "0-1-9"
    finally:
        prober.stop()


def test_a_sample_that_can_no_longer_be_reached_does_not_block_newer_ones() -> None:
    """A failover behind the same address: the oldest sample names the old server's stream, which the worker
    never reaches; a newer sample it does reach moves the heartbeat at once (and drops the older ones)."""
    clock = Clock()
    server = Server("0-1-9@1:bin.000007:900", clock)
    applied = {"pos": "0-1-5@1:bin.000007:500"}
    prober = Prober(clock, server, "mariadb", lambda: applied["pos"], interval_s=1)
    assert prober.sample()
    server.position = "0-1-12@2:bin.000001:300"
    assert prober.sample()
    applied["pos"] = "0-1-12@2:bin.000001:300"
    assert prober.settle()
    assert clock.beats == [(clock.beats[0][0], "0-1-12@2:bin.000001:300")] and not prober.pending


def test_samples_waiting_longer_than_the_limit_are_dropped() -> None:
    """A sample older than wait_limit_s is given up (a later one is taken instead): none waits forever."""
    clock = Clock()
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-1", interval_s=1, wait_limit_s=0.0)
    assert prober.sample()
    assert prober.settle() is False and not prober.pending


def test_waiting_samples_are_dropped_while_the_worker_does_not_stream() -> None:
    """A reconnect (the worker not streaming) drops the waiting samples: it may read another server next."""
    clock = Clock()
    streaming = {"on": True}
    prober = Prober(
        clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-1", interval_s=1, streaming=lambda: streaming["on"]
    )
    assert prober.sample() and prober.pending
    streaming["on"] = False
    assert prober.sample() is False and not prober.pending


def test_a_sample_outlives_a_heartbeat_write_that_lost_its_race() -> None:
    """The heartbeat's compare-and-set lost to the applier (the checkpoint moved meanwhile): the sample stays and
    the next settle writes it."""
    clock = Clock()
    results = [False, True]
    clock.set_heartbeat = lambda ms, expected: (clock.beats.append((ms, expected)), results.pop(0))[1]  # type: ignore[method-assign]
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-9", interval_s=1)
    assert prober.sample()
    assert prober.settle() is False and len(prober.pending) == 1
    assert prober.settle() is True and not prober.pending


def test_a_worker_far_behind_samples_less_often() -> None:
    """The oldest waiting sample is 5 s old (the worker lags): the next one is due a tenth of that after the
    last, not at the minimum gap, so a long catch-up does not poll the server 50 times a second."""
    clock = Clock()
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-1", interval_s=2, min_gap_s=0.02)
    assert prober.sample()
    oldest = prober.pending[0]
    prober.pending[0] = oldest._replace(taken=oldest.taken - 5)
    assert 0.4 < prober._due_in() <= 0.5


def test_the_prober_survives_an_unexpected_error_and_logs_it() -> None:
    """A sample that fails with something outside the project's error tree (a library's RuntimeError) is logged
    and counted, and the thread goes on: a dead prober would leave every reader bypassing, silently."""
    from prometheus_client import REGISTRY
    from structlog.testing import capture_logs

    class Flaky(Server):
        def current_position(self, flavor: str, kind: str) -> str:
            if not self.asked_at:
                self.asked_at.append(self.clock.now)
                raise RuntimeError("cryptography is required for sha256_password")
            return super().current_position(flavor, kind)

    clock = Clock()
    errors = REGISTRY.get_sample_value("cdc_sync_heartbeat_errors_total") or 0.0
    prober = Prober(clock, Flaky("0-1-9", clock), "mariadb", lambda: "0-1-9", interval_s=0.05)
    with capture_logs() as logs:
        prober.start()
        try:
            waited = threading.Event()
            for _ in range(1000):  # (10 s at most)
                if clock.beats or waited.wait(0.01):
                    break
        finally:
            prober.stop()
    assert clock.beats, "the heartbeat moved after the failure"
    assert (REGISTRY.get_sample_value("cdc_sync_heartbeat_errors_total") or 0.0) - errors >= 1
    assert any(e["event"] == "heartbeat.probe_failed" and "RuntimeError" in e["error"] for e in logs)
