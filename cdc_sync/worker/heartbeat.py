"""The freshness heartbeat: ``<ns>:heartbeat`` = a Redis time up to which every commit is applied.

Readers trust the cache only while ``Redis TIME - heartbeat <= max_staleness_ms`` (see reader.py), so
the heartbeat must never run ahead of what the worker has applied, idle or under load. The prober:

1. reads Redis ``TIME`` (T0), then the server's binlog end P (``gtid_binlog_pos``, ``gtid_executed``
   or ``SHOW MASTER STATUS``): every transaction committed before T0 is at or before P;
2. waits until the applied checkpoint reaches P;
3. moves the heartbeat to T0 (only forward, and only while the checkpoint is this worker's).

One clock (Redis's) is used for both ends, so neither MySQL's, the worker's nor the app's clock matters.
The heartbeat trails real time by the apply lag plus one probe interval. No write access to MySQL is
needed (unlike a heartbeat table), and binlog event times (whole seconds, MySQL's clock) are not used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.core.positions import kind_of, reached
from cdc_sync.errors import CdcSyncError, PositionError

log = logs.get("cdc_sync.heartbeat")


class ClockSink(Protocol):
    def time_ms(self) -> int: ...
    def set_heartbeat(self, ms: int, expected: str) -> bool: ...


class PositionSource(Protocol):
    def current_position(self, flavor: str, kind: str) -> str: ...


class Prober:
    """Runs the probe loop in a daemon thread until ``stop()``."""

    def __init__(
        self,
        sink: ClockSink,
        mysql: PositionSource,
        flavor: str,
        applied: AppliedPosition,
        interval_s: float,
        wait_limit_s: float = 30.0,
        streaming: Callable[[], bool] = lambda: True,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        """``streaming``: whether the worker reads the binlog from its position right now. A position the worker
        rewound to, or cannot read (a purged file, a bad checkpoint), is nothing to vouch for. ``settled``: asked
        last, just before the heartbeat moves: whether nothing that invalidations depend on may have been lost
        since (Redis evicted keys: the worker flushes and says False, see sync.py ``evictions_settled``)."""
        self.sink = sink
        self.mysql = mysql
        self.flavor = flavor
        self.applied = applied
        self.streaming = streaming
        self.settled = settled
        self.interval_s = interval_s
        self.wait_limit_s = wait_limit_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdc-sync-heartbeat", daemon=True)
        self.last_beat_at: float | None = None  # monotonic time of the last heartbeat moved (its T0, roughly)

    def heartbeat_age_s(self) -> float | None:
        """Roughly how old the heartbeat is (None before the first one): what /readyz compares."""
        return None if self.last_beat_at is None else time.monotonic() - self.last_beat_at

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        close = getattr(self.mysql, "close", None)
        if close is not None:
            close()

    def probe_once(self) -> bool:
        """One probe; True when the heartbeat was moved."""
        expected = self.applied()
        if expected is None or not self.streaming():
            return False
        probe_started = time.monotonic()
        t0 = self.sink.time_ms()
        target = self.mysql.current_position(self.flavor, kind_of(expected))
        deadline = time.monotonic() + self.wait_limit_s
        while True:
            expected = self.applied()
            if expected is None:
                return False
            if not target:
                return False  # the server has no position of this form (RESET MASTER, no GTID yet): no order
            try:
                if reached(expected, target):
                    break
            except PositionError:
                return False  # the worker rewound to another form of position; probe again
            if self._stop.wait(0.005) or time.monotonic() > deadline:
                return False
        if not self.streaming() or not self.settled():
            return False
        moved = self.sink.set_heartbeat(t0, expected)
        if moved:
            self.last_beat_at = probe_started
            m.HEARTBEATS.inc()
            m.HEARTBEAT_LAG_SECONDS.set(max(0.0, (self.sink.time_ms() - t0) / 1000))
        return moved

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.probe_once()
                failures = 0
            except CdcSyncError as exc:
                failures += 1
                m.HEARTBEAT_ERRORS.inc()
                log.warning("heartbeat.probe_failed", error=str(exc), attempt=failures)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))


class AppliedPosition(Protocol):
    def __call__(self) -> str | None: ...
