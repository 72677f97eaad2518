"""The freshness heartbeat: ``<ns>:heartbeat`` = a Redis time up to which every commit is applied.

Readers trust the cache only while ``Redis TIME - heartbeat <= max_staleness_ms`` (see reader.py), so
the heartbeat must never run ahead of what the worker has applied, idle or under load. The prober takes
samples and settles them:

1. a sample reads Redis ``TIME`` (T0), then the server's binlog end P (``gtid_binlog_pos``, ``gtid_executed``
   or ``SHOW MASTER STATUS``): every transaction committed before T0 is at or before P;
2. as soon as the applied checkpoint reaches P, the heartbeat moves to T0 (only forward, and only while the
   checkpoint is this worker's); of several samples reached at once, the newest counts.

Samples follow the stream: while the checkpoint moves (the applier nudges the prober after every step) or
samples wait to be reached, a new one is taken every ``min_gap_s``, without waiting for the previous ones, so
under load the heartbeat trails real time by about the apply lag plus ``min_gap_s``; a worker far behind samples
less often (every tenth of the oldest waiting sample's age). An idle server is sampled once per ``interval_s``.
At most ``max_pending`` samples wait; when they are all waiting, the newest is replaced, so the heartbeat still
catches up to fresh times once the worker does. The newest is tried first, a sample waiting longer than
``wait_limit_s`` is dropped, and a reconnect drops them all.

One clock (Redis's) is used for both ends, so neither MySQL's, the worker's nor the app's clock matters.
No write access to MySQL is needed (unlike a heartbeat table), and binlog event times (whole seconds, MySQL's
clock) are not used.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.core.positions import kind_of, reached
from cdc_sync.errors import CdcSyncError, PositionError

log = logs.get("cdc_sync.heartbeat")
_SETTLE_GAP_S = 0.005


class ClockSink(Protocol):
    def time_ms(self) -> int: ...
    def set_heartbeat(self, ms: int, expected: str) -> bool: ...


class PositionSource(Protocol):
    def current_position(self, flavor: str, kind: str) -> str: ...


class Sample(NamedTuple):
    t0: int  # Redis time (ms), read first
    target: str  # the server's binlog end, read after it
    taken: float  # monotonic time the sample was taken


class Prober:
    """Runs the sampling loop in a daemon thread until ``stop()``."""

    def __init__(
        self,
        sink: ClockSink,
        mysql: PositionSource,
        flavor: str,
        applied: AppliedPosition,
        interval_s: float,
        min_gap_s: float = 0.02,
        max_pending: int = 64,
        wait_limit_s: float = 30.0,
        streaming: Callable[[], bool] = lambda: True,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        """``streaming``: whether the worker reads the binlog from its position right now. A position the worker
        rewound to, or cannot read (a purged file, a bad checkpoint), is nothing to vouch for. ``settled``: asked
        last, just before the heartbeat moves: whether nothing that invalidations depend on may have been lost
        since (Redis evicted keys: the worker flushes and says False, see loop.py ``evictions_settled``)."""
        self.sink = sink
        self.mysql = mysql
        self.flavor = flavor
        self.applied = applied
        self.streaming = streaming
        self.settled = settled
        self.interval_s = interval_s
        self.min_gap_s = min(min_gap_s, interval_s)
        self.max_pending = max(1, max_pending)
        self.wait_limit_s = wait_limit_s
        self.pending: deque[Sample] = deque()
        self._progress = threading.Event()  # the checkpoint moved (nudge) since the last sample
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sampled_at = -float("inf")  # monotonic time of the last sample
        self._unready = True  # the last sample found the worker not streaming (from start-up on)
        self._thread = threading.Thread(target=self._loop, name="cdc-sync-heartbeat", daemon=True)
        self.last_beat_at: float | None = None  # monotonic time of the last heartbeat moved (its T0, roughly)

    def heartbeat_age_s(self) -> float | None:
        """Roughly how old the heartbeat is (None before the first one): what /readyz compares."""
        return None if self.last_beat_at is None else time.monotonic() - self.last_beat_at

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        close = getattr(self.mysql, "close", None)
        if close is not None:
            close()

    def nudge(self) -> None:
        """The checkpoint moved (called by the applier after every step): settle, and sample again soon."""
        self._progress.set()
        self._wake.set()

    def sample(self) -> bool:
        """Take one sample (T0, then P); True when one was taken (the worker streams from a known position)."""
        self._sampled_at = taken = time.monotonic()
        self._progress.clear()
        expected = self.applied()
        if expected is None or not self.streaming():
            # Asked again after the minimum gap (no server is asked anything meanwhile). Waiting samples are
            # dropped: after a reconnect the worker may read another server, or from another position.
            self._unready = True
            self.pending.clear()
            return False
        self._unready = False
        t0 = self.sink.time_ms()
        target = self.mysql.current_position(self.flavor, kind_of(expected))
        if not target:
            return False  # the server has no position of this form (RESET MASTER, no GTID yet): no order
        if len(self.pending) >= self.max_pending:
            self.pending.pop()  # keep the oldest (closest to being reached) and the freshest
        self.pending.append(Sample(t0, target, taken))
        return True

    def settle(self) -> bool:
        """Move the heartbeat to the newest waiting sample the applied checkpoint has reached; True if moved.

        Reaching a sample's position vouches for its time whatever became of earlier samples, so the newest is
        tried first; then samples from the oldest on. A sample waiting longer than ``wait_limit_s`` is dropped
        (its position may never be reached: another server's, after a failover behind the same address).
        """
        while self.pending and time.monotonic() - self.pending[0].taken > self.wait_limit_s:
            self.pending.popleft()
        expected = self.applied()
        if not self.pending or expected is None:
            return False
        try:
            if reached(expected, self.pending[-1].target):
                index = len(self.pending) - 1
            else:
                index = -1
                while index + 1 < len(self.pending) and reached(expected, self.pending[index + 1].target):
                    index += 1
        except PositionError:
            self.pending.clear()  # the worker rewound to another form of position: sample again
            return False
        if index < 0 or not self.streaming() or not self.settled():
            return False
        newest = self.pending[index]
        moved = self.sink.set_heartbeat(newest.t0, expected)
        if moved:
            for _ in range(index + 1):
                self.pending.popleft()
            self.last_beat_at = newest.taken
            m.HEARTBEATS.inc()
            m.HEARTBEAT_LAG_SECONDS.set(max(0.0, time.monotonic() - newest.taken))
        return moved

    def _due_in(self) -> float:
        """Seconds until the next sample is due: ``min_gap_s`` after the last one while the stream moves, but
        at least a tenth of how long the oldest sample has waited (a worker far behind is not helped by fine
        samples, and the server is not polled hard for them), and ``interval_s`` when idle."""
        now = time.monotonic()
        if not (self.pending or self._progress.is_set() or self._unready):
            return self._sampled_at + self.interval_s - now
        gap = self.min_gap_s
        if self.pending:
            gap = max(gap, min(self.interval_s, (now - self.pending[0].taken) / 10))
        return self._sampled_at + gap - now

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()  # (before the work: a nudge during it wakes the wait below at once)
            try:
                self.settle()
                if self._due_in() <= 0 and self.sample():
                    self.settle()  # at once, when nothing was waiting to be applied
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a dead prober would leave readers bypassing, silently
                failures += 1
                m.HEARTBEAT_ERRORS.inc()
                if isinstance(exc, CdcSyncError):
                    log.warning("heartbeat.probe_failed", error=str(exc), attempt=failures)
                else:
                    log.error("heartbeat.probe_failed", error=repr(exc)[:300], attempt=failures)
                self._stop.wait(self.interval_s)  # not at min_gap_s: a server away is not polled hard
                continue
            # at most every _SETTLE_GAP_S: the applier nudges after every step, and the reader thread needs the GIL
            if self._stop.wait(min(_SETTLE_GAP_S, self.min_gap_s)):
                break
            self._wake.wait(max(0.0, min(self._due_in(), self.interval_s)))


class AppliedPosition(Protocol):
    def __call__(self) -> str | None: ...
