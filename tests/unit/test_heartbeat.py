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
    """The probe's time is written only once the checkpoint reaches the server position read after it."""
    clock = Clock()
    applied = {"pos": "0-1-5"}
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: applied["pos"], interval_s=1, wait_limit_s=5)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(prober.probe_once()))
    t.start()
    t.join(0.2)
    assert t.is_alive() and clock.beats == [], "no heartbeat while 0-1-5 < 0-1-9"
    applied["pos"] = "0-1-9"
    t.join(5)
    assert result == [True]
    ((ms, expected),) = clock.beats
    assert expected == "0-1-9"
    assert ms <= clock.now


def test_probe_time_is_taken_before_the_position() -> None:
    """T0 is read before the server position, so every commit before T0 is covered by that position."""
    clock = Clock()
    server = Server("bin.000001:500", clock)
    prober = Prober(clock, server, "mysql", lambda: "bin.000001:500", interval_s=1)
    assert prober.probe_once()
    ((ms, _),) = clock.beats
    assert ms <= server.asked_at[0]


def test_no_heartbeat_when_the_wait_times_out() -> None:
    """A worker that never reaches the position never moves the heartbeat (readers then bypass)."""
    clock = Clock()
    prober = Prober(clock, Server("0-1-9", clock), "mariadb", lambda: "0-1-1", interval_s=1, wait_limit_s=0.05)
    assert prober.probe_once() is False
    assert clock.beats == []


def test_out_of_order_mariadb_numbers_do_not_move_the_heartbeat_early() -> None:
    """Applied 0-1-10; the server's end is a later 0-1-5 (lower number, later in the stream): no heartbeat
    until the stream position reaches the server's end."""
    clock = Clock()
    applied = {"pos": "0-1-10@1:bin.000001:900"}
    server = Server("0-1-5@1:bin.000001:1200", clock)
    prober = Prober(clock, server, "mariadb", lambda: applied["pos"], interval_s=1, wait_limit_s=5)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(prober.probe_once()))
    t.start()
    t.join(0.2)
    assert t.is_alive() and clock.beats == [], "0-1-10 > 0-1-5 by number, but it is behind in the stream"
    applied["pos"] = "0-1-5@1:bin.000001:1200"
    t.join(5)
    assert result == [True]
