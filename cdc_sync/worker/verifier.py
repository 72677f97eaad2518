"""The continuous sampled verifier (``[verify] sample_rate``): consistency measured as the worker runs, as Meta's
Polaris measures its cache: every applied change is a sample to check against the database.

After each apply step the applier offers the keys the step wrote or evicted; a ``sample_rate`` share of them is
queued. A thread of its own takes at most ``max_checks_per_s`` a second (so the database never sees more than
that many key lookups from it, batched into ``SELECT ... IN``), waits until the freshness heartbeat has passed the
moment it took them (every change committed before is applied by then), and compares each key's cached value with
the row MySQL has (ops/verify.py ``KeyChecker``, the ``verify`` command's comparison). A mismatch counts only if,
after the heartbeat passed once more, the row read again is unchanged and the cache still differs: then it is
logged (``verify.inconsistency``: key, table, the checkpoint, both values' digests), counted, and evicted
(``repair``), so the next reader fills it from MySQL. A key evicted meanwhile has nothing to compare: it counts as
checked and consistent (a reader's later fill is what the next sample checks).

``verify.progress`` (at most every 10 s) logs the keys checked and inconsistencies since the last one. Metrics:
``cdc_sync_verify_checks_total{table}``, ``cdc_sync_verify_inconsistencies_total{table}``,
``cdc_sync_verify_samples_dropped_total`` (the queue full: the rate bound held), and
``cdc_sync_verify_consistency_ratio{window=1m|5m|10m}``.
"""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.adapters.redis import REDIS_ERRORS, make_client
from cdc_sync.config import Config
from cdc_sync.core.planner import Delete, RedisOp, SetHash, SetJson
from cdc_sync.errors import CdcSyncError

log = logs.get("cdc_sync.verify")

WINDOWS = {"1m": 60.0, "5m": 300.0, "10m": 600.0}
TICK_S = 0.5  # how often the thread looks for samples
HEARTBEAT_WAIT_S = 10.0  # a sample the heartbeat does not pass within this is dropped (the worker is behind)
PROGRESS_S = 10.0  # verify.progress at most this often: keys checked and inconsistencies since the last one


def _digest(value: Any) -> str:
    raw = value if isinstance(value, bytes) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:16]


class SampledVerifier:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.cfg = config.verify
        self._samples: deque[str] = deque()
        self._cap = max(100, self.cfg.max_checks_per_s * 10)  # samples waiting at most (then dropped, counted)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-sync-verifier", daemon=True)
        self._history: deque[tuple[float, int, int]] = deque()  # (monotonic, checked, inconsistent) per round
        self.checked = 0
        self.inconsistent = 0
        self._progress, self._progress_at = (0, 0), time.monotonic()  # what verify.progress last reported
        for name, seconds in WINDOWS.items():
            m.VERIFY_CONSISTENCY.labels(window=name).set_function(functools.partial(self.ratio, seconds))

    # ---- the applier's side (its thread): cheap ----------------------------------------------------

    def offer(self, ops: Sequence[RedisOp]) -> None:
        """The keys an apply step wrote or evicted: a ``sample_rate`` share is queued."""
        rate = self.cfg.sample_rate
        picked = [op.key for op in ops if isinstance(op, Delete | SetJson | SetHash) and random.random() < rate]
        if not picked:
            return
        with self._lock:
            room = self._cap - len(self._samples)
            if room < len(picked):
                m.VERIFY_DROPPED.inc(len(picked) - max(0, room))
                picked = picked[: max(0, room)]
            self._samples.extend(picked)

    # ---- the verifier's thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def ratio(self, window_s: float) -> float:
        """The share of checks found consistent in the last ``window_s`` seconds (1.0 with none)."""
        since = time.monotonic() - window_s
        with self._lock:
            rounds = [(c, b) for at, c, b in self._history if at >= since]
        checked = sum(c for c, _ in rounds)
        return 1.0 if checked == 0 else 1.0 - sum(b for _, b in rounds) / checked

    def _take(self, n: int) -> list[str]:
        with self._lock:
            return [self._samples.popleft() for _ in range(min(n, len(self._samples)))]

    def _run(self) -> None:
        from cdc_sync.ops.verify import KeyChecker, _redis_ms, _wait_for_heartbeat

        client = make_client(self.config.redis)
        checker = KeyChecker(self.config, client)
        names = self.config.redis.names
        tokens, last = 0.0, time.monotonic()
        log.info("verify.started", sample_rate=self.cfg.sample_rate, max_checks_per_s=self.cfg.max_checks_per_s)
        try:
            while not self._stop.wait(TICK_S):
                now = time.monotonic()
                rate = self.cfg.max_checks_per_s
                tokens, last = min(float(rate), tokens + rate * (now - last)), now
                keys = self._take(int(tokens))
                if not keys:
                    continue
                tokens -= len(keys)
                try:
                    at = _redis_ms(client, names)
                    if not _wait_for_heartbeat(client, names, at, HEARTBEAT_WAIT_S):
                        m.VERIFY_DROPPED.inc(len(keys))
                        log.warning("verify.heartbeat_behind", samples=len(keys), action="dropped")
                        continue
                    counts, divergent, confirmed = checker.check(keys, HEARTBEAT_WAIT_S)
                except (*REDIS_ERRORS, CdcSyncError, OSError) as exc:
                    log.warning("verify.failed", error=str(exc)[:300], samples=len(keys), action="dropped")
                    continue
                self._record(client, checker, counts, divergent, confirmed)
        finally:
            checker.close()
            client.close()

    def _record(
        self,
        client: Any,
        checker: Any,
        counts: dict[str, int],
        divergent: list[tuple[str, Any]],
        confirmed: bool,
    ) -> None:
        for table, n in counts.items():
            m.VERIFY_CHECKS.labels(table=table).inc(n)
        checked = sum(counts.values())
        bad = len(divergent) if confirmed else 0
        if divergent and confirmed:
            checkpoint = client.get(self.config.redis.names.checkpoint)
            for table, d in divergent:
                m.VERIFY_INCONSISTENT.labels(table=table).inc()
                log.error(
                    "verify.inconsistency",
                    key=d.key,
                    table=table,
                    checkpoint=checkpoint.decode() if checkpoint else None,
                    cached_digest=_digest(d.cached),
                    database_digest=_digest(d.database),
                    action="evicted" if self.cfg.repair else "reported",
                )
            if self.cfg.repair:
                checker.evict([d.key for _, d in divergent])
        with self._lock:
            self.checked += checked
            self.inconsistent += bad
            now = time.monotonic()
            self._history.append((now, checked, bad))
            while self._history and self._history[0][0] < now - max(WINDOWS.values()):
                self._history.popleft()
            if now - self._progress_at >= PROGRESS_S:
                done = (self.checked - self._progress[0], self.inconsistent - self._progress[1])
                self._progress, self._progress_at = (self.checked, self.inconsistent), now
            else:
                done = None
        if done is not None:
            log.info("verify.progress", checked=done[0], inconsistent=done[1], consistency_5m=round(self.ratio(300), 6))
